"""The LiteRT runtime: same answers as the Keras Classifier, a reused on-disk cache, no TensorFlow
import when the cache exists, one interpreter per thread."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from image_gateway.models import Classifier, get_spec
from image_gateway.models.litert import (
    LiteRTClassifier,
    LiteRTError,
    cache_key,
    cache_path,
    file_digest,
    load_cached_litert,
    load_litert,
    load_litert_model,
    source_weights_path,
    write_atomic,
)
from image_gateway.models.spec import DEFAULT_MODEL

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "data" / "golden_efficientnet_lite0.npz"
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    with np.load(GOLDEN) as data:
        return data["pixels"]


@pytest.fixture(scope="module")
def file_key() -> str:
    """The key a worker computes from the weights file, before loading anything."""
    return cache_key(get_spec(DEFAULT_MODEL), file_digest(source_weights_path(DEFAULT_MODEL)))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory, classifier, file_key) -> Path:
    """A cache holding the default model, converted once under the worker's key."""
    directory = tmp_path_factory.mktemp("litert")
    load_litert(classifier, str(directory), key=file_key)
    return directory


@pytest.fixture(scope="module")
def lite(cache_dir, file_key) -> LiteRTClassifier:
    loaded = load_cached_litert(get_spec(DEFAULT_MODEL), file_key, str(cache_dir))
    assert loaded is not None
    return loaded


@pytest.fixture(scope="module")
def keras_probabilities(classifier, pixels) -> np.ndarray:
    return classifier.predict(pixels)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_matches_keras_on_every_golden_photo(lite, pixels, keras_probabilities, dtype):
    probabilities = lite.predict(pixels.astype(dtype))
    assert probabilities.shape == (5, 1000) and probabilities.dtype == np.float32
    assert np.abs(probabilities - keras_probabilities).max() < TOLERANCE
    for mine, theirs in zip(probabilities, keras_probabilities, strict=True):
        assert list(np.argsort(-mine)[:5]) == list(np.argsort(-theirs)[:5])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("count", [1, 3])
def test_batches_of_one_and_three(lite, pixels, keras_probabilities, count):
    probabilities = lite.predict(pixels[:count])
    assert probabilities.shape == (count, 1000)
    assert np.abs(probabilities - keras_probabilities[:count]).max() < TOLERANCE


@pytest.mark.parametrize("bad", [np.zeros((1, 224, 224), np.uint8), np.zeros((1, 200, 200, 3), np.uint8),
                                 np.zeros((1, 224, 224, 3), np.float64), np.zeros((0, 224, 224, 3), np.uint8),
                                 np.zeros((257, 224, 224, 3), np.uint8), [[0]]])
def test_rejects_what_the_classifier_rejects(lite, bad):
    with pytest.raises(ValueError):
        lite.predict(bad)


def test_second_load_reuses_the_cache_without_converting(classifier, tmp_path, monkeypatch, pixels):
    first = load_litert(classifier, str(tmp_path))
    [cached] = list(tmp_path.glob("*.tflite"))
    assert first.model_path == str(cached) and oct(cached.stat().st_mode & 0o777) == "0o644"
    before = cached.stat().st_mtime_ns

    def no_conversion(*_args, **_kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr("image_gateway.models.litert.convert", no_conversion)
    second = load_litert(classifier, str(tmp_path))
    assert second.model_path == str(cached) and cached.stat().st_mtime_ns == before
    np.testing.assert_array_equal(second.predict(pixels), first.predict(pixels))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


CHILD = """
import json, sys
import numpy as np
from image_gateway.models.litert import LiteRTClassifier, load_litert_model
model = load_litert_model(cache_dir=sys.argv[1])
probabilities = model.predict(np.load(sys.argv[2])["pixels"])
heavy = sorted(m for m in ("tensorflow", "keras", "jax") if m in sys.modules)
print(json.dumps({"litert": isinstance(model, LiteRTClassifier), "heavy": heavy,
                  "probabilities": probabilities.tolist()}))
"""


def test_worker_loads_from_the_cache_without_tensorflow(cache_dir, lite, pixels):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", CHILD, str(cache_dir), str(GOLDEN)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["litert"] and answer["heavy"] == []
    np.testing.assert_array_equal(np.array(answer["probabilities"], np.float32), lite.predict(pixels))


def test_two_threads_predict_the_same_answers(lite, pixels):
    expected = lite.predict(pixels)
    results, interpreters = {}, {}

    def call(index: int) -> None:
        interpreters[index] = lite._interpreter()[0]
        results[index] = [lite.predict(pixels[[i % 5, (i + 1) % 5]]) for i in range(5)]

    threads = [threading.Thread(target=call, args=(index,)) for index in range(2)]
    [thread.start() for thread in threads]
    [thread.join() for thread in threads]
    assert interpreters[0] is not interpreters[1]
    for answers in results.values():
        for i, answer in enumerate(answers):
            np.testing.assert_allclose(answer, expected[[i % 5, (i + 1) % 5]], atol=1e-6)


def test_an_unreadable_cache_file_is_dropped(tmp_path, file_key):
    spec = get_spec(DEFAULT_MODEL)
    path = Path(cache_path(str(tmp_path), spec, file_key))
    write_atomic(str(path), b"not a flatbuffer")
    assert load_cached_litert(spec, file_key, str(tmp_path)) is None
    assert not path.exists()


def test_the_key_follows_weights_converter_and_input_size(monkeypatch):
    spec = get_spec(DEFAULT_MODEL)
    key = cache_key(spec, "a" * 64)
    assert key == cache_key(spec, "a" * 64) != cache_key(spec, "b" * 64)
    monkeypatch.setattr("image_gateway.models.litert.converter_version", lambda: "9.9.9")
    assert cache_key(spec, "a" * 64) != key
    assert cache_path("/c", spec, key) == f"/c/efficientnet_lite0-{key[:32]}.tflite"


def _tiny_keras_file(tmp_path: Path) -> tuple[str, str]:
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(x)
    outputs = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x))
    path, labels = tmp_path / "tiny.keras", tmp_path / "labels.txt"
    keras.Model(inputs, outputs).save(path)
    labels.write_text("a\nb\nc\n")
    return str(path), str(labels)


def test_a_keras_file_converts_and_falls_back_when_it_cannot(tmp_path, monkeypatch):
    model_path, labels = _tiny_keras_file(tmp_path)
    lite = load_litert_model(model_path, str(tmp_path / "cache"), labels_path=labels)
    assert isinstance(lite, LiteRTClassifier) and lite.spec.labels == ("a", "b", "c")
    batch = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)

    def refuse(classifier, *_args):
        raise LiteRTError("no")

    monkeypatch.setattr("image_gateway.models.litert.convert", refuse)
    fallback = load_litert_model(model_path, str(tmp_path / "other"), labels_path=labels, fallback=True)
    assert isinstance(fallback, Classifier)
    assert np.abs(lite.predict(batch) - fallback.predict(batch)).max() < TOLERANCE
    with pytest.raises(LiteRTError):
        load_litert_model(model_path, str(tmp_path / "other"), labels_path=labels)


def test_a_lone_call_borrows_the_solo_interpreter_and_overlapping_calls_do_not(lite, pixels, monkeypatch):
    """One call at a time runs on the shared interpreter with a thread per core (a lone request at the
    model's best latency); a call made while another runs uses its thread's 1-thread interpreter."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one core: there is no solo interpreter")
    assert lite._solo is not None and lite._solo[0] is not lite._interpreter()[0]
    used, inside, release = [], threading.Event(), threading.Event()
    invoke = LiteRTClassifier._invoke

    def recording(self, interpreter_and_indices, batch):
        used.append("solo" if interpreter_and_indices is self._solo else "own")
        if len(used) == 1:
            inside.set()
            release.wait(10)            # hold the first call open while the second one starts
        return invoke(self, interpreter_and_indices, batch)

    monkeypatch.setattr(LiteRTClassifier, "_invoke", recording)
    answers = {}
    first = threading.Thread(target=lambda: answers.setdefault("first", lite.predict(pixels[:2])))
    first.start()
    assert inside.wait(10)
    answers["second"] = lite.predict(pixels[2:4])
    release.set()
    first.join()
    answers["third"] = lite.predict(pixels[4:5])
    assert used == ["solo", "own", "solo"]
    monkeypatch.undo()
    own = lite._invoke(lite._interpreter(), pixels)
    np.testing.assert_allclose(np.concatenate([answers["first"], answers["second"], answers["third"]]), own,
                               atol=1e-6)


def test_the_solo_interpreters_pool_threads_are_counted_as_the_models_cpu(lite, pixels):
    """A lone call splits the model's work with the solo interpreter's pool thread: helper_cpu_s is that
    thread's CPU, so the caller's thread time plus it is what the whole process spent on the call (the
    worker adds it to gateway_model_cpu_seconds_total). A call on a thread's own interpreter has none."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one core: there is no solo interpreter")
    assert lite._solo_helpers                           # found when the solo interpreter was created
    batch = np.repeat(pixels, 4, axis=0)                # long enough for the clocks' resolution
    lite.predict(batch)
    process, caller = time.process_time(), time.thread_time()
    lite.predict(batch)
    process, caller = time.process_time() - process, time.thread_time() - caller
    assert lite.helper_cpu_s() > 0.2 * caller
    assert abs(caller + lite.helper_cpu_s() - process) < 0.15 * process
    lite._invoke(lite._interpreter(), pixels[:1])       # warm this thread's own interpreter
    busy, release = threading.Event(), threading.Event()
    invoke = lite._invoke_solo

    def held(batch):
        busy.set()
        release.wait(10)
        return invoke(batch)

    lite._invoke_solo = held                            # a lone call in flight on another thread ...
    other = threading.Thread(target=lite.predict, args=(pixels[:1],))
    other.start()
    assert busy.wait(10)
    lite.predict(pixels[:1])                            # ... so this one runs on its own interpreter
    release.set()
    other.join()
    del lite._invoke_solo
    assert lite.helper_cpu_s() == 0.0
