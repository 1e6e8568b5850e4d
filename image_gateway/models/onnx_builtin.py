"""The built-in classifiers on ONNX Runtime: an ONNX twin of each cached LiteRT file.

Made once per LiteRT file by tf2onnx's TFLite path (`tf2onnx.convert.from_tflite`), so the ONNX graph is
the LiteRT graph op for op: the gateway's normalisation inside, float32 RGB 0..255 in (NHWC, free batch),
probabilities out. Cached beside it, `<model>-<key>.onnx` for `<model>-<key>.tflite`, so it follows the
same key (weights, TensorFlow and Keras versions). The conversion runs in a child process
(`python -m image_gateway.models.onnx_builtin SRC DST`): tf2onnx imports TensorFlow, and the worker stays
without it and keeps its memory; a later start finds the file and needs no TensorFlow at all. A failed
conversion leaves `<model>-<key>.onnx.error` with the reason, so it is not retried at every start; workers
starting at once convert one at a time (a lock file, `.onnx.lock`), the others then find the file.
"""
from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

from image_gateway.models.classifier import _check_batch
from image_gateway.models.errors import ModelError
from image_gateway.models.onnx_model import RUNTIME, open_session
from image_gateway.models.spec import ModelSpec

OPSET = 17
CONVERT_TIMEOUT_S = 600
log = logging.getLogger("gateway.onnx")


def onnx_path(tflite_path: str) -> str:
    """Where the ONNX twin of a cached LiteRT file is kept."""
    return tflite_path.removesuffix(".tflite") + ".onnx"


def error_path(tflite_path: str) -> str:
    return onnx_path(tflite_path) + ".error"


def ensure_onnx(tflite_path: str) -> str:
    """The ONNX twin's path, converted now (in a child process) when the cache lacks it. ModelError when
    tf2onnx is missing or the conversion failed (now or before: the reason is cached)."""
    path = onnx_path(tflite_path)
    if os.path.isfile(path):
        return path
    if importlib.util.find_spec("tf2onnx") is None:
        raise ModelError("tf2onnx is not installed (pip install tf2onnx==1.17.0)")
    try:
        lock = open(path + ".lock", "a")    # noqa: SIM115  (held until converted: workers starting at once wait)
    except OSError:
        lock = None                          # a read-only cache: convert without it
    try:
        if lock is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        return path if os.path.isfile(path) else _convert_in_child(tflite_path, path)
    finally:
        if lock is not None:
            lock.close()


def _convert_in_child(tflite_path: str, path: str) -> str:
    with contextlib.suppress(OSError), open(error_path(tflite_path), encoding="utf-8") as stream:
        raise ModelError(f"an earlier ONNX conversion failed: {stream.read().strip()}")
    command = [sys.executable, "-m", "image_gateway.models.onnx_builtin", tflite_path, path]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=CONVERT_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise ModelError(f"the ONNX conversion took over {CONVERT_TIMEOUT_S} s") from None
    if done.returncode != 0 or not os.path.isfile(path):
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        reason = f"tf2onnx failed (exit {done.returncode}): {lines[-1] if lines else 'no message'}"[:300]
        with contextlib.suppress(OSError):
            Path(error_path(tflite_path)).write_text(reason + "\n", encoding="utf-8")
        raise ModelError(reason)
    log.info("converted %s to ONNX at %s", os.path.basename(tflite_path), path)
    return path


def convert_file(tflite_path: str, path: str) -> None:
    """tf2onnx's TFLite path (imports TensorFlow: run it in a child process)."""
    import tf2onnx

    from image_gateway.models.litert import write_atomic

    proto, _ = tf2onnx.convert.from_tflite(tflite_path, opset=OPSET)
    write_atomic(path, proto.SerializeToString())


class OnnxClassifier:
    """spec + predict(batch) -> probabilities, on ONNX Runtime, as LiteRTClassifier on LiteRT: a session
    of `threads` intra-op threads that concurrent calls share (its run is thread-safe), and a call made
    while no other is running uses the "solo" session with a thread per core (a lone request's latency),
    whose idle threads sleep rather than spin (spinning took the cores the web tier needs)."""

    runtime = RUNTIME

    def __init__(self, spec: ModelSpec, model_path: str, threads: int = 1):
        self.spec, self.model_path, self.threads = spec, model_path, threads
        self.accuracy: dict | None = None
        self.choice: dict | None = None        # RUNTIME=auto: why this runtime (runtime_choice)
        self.session = open_session(Path(model_path), threads)
        cores = len(os.sched_getaffinity(0))
        self._solo = open_session(Path(model_path), cores, spin=False) if threads == 1 and cores > 1 else None
        self._calls, self._calls_lock = 0, threading.Lock()
        given, output = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self._input = given.name
        size = spec.input_size
        if list(given.shape[1:]) != [size, size, 3] or given.type != "tensor(float)":
            raise ModelError(f"{spec.name}: the ONNX input is {given.shape} {given.type}, expected "
                             f"(N, {size}, {size}, 3) float")
        if output.shape[-1] != len(spec.labels):
            raise ModelError(f"{spec.name}: the ONNX model has {output.shape[-1]} outputs for "
                             f"{len(spec.labels)} labels")

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 or float32 RGB 0..255 -> (N, num_classes) float32 probabilities."""
        _check_batch(batch, self.spec.input_size)
        with self._calls_lock:
            alone, self._calls = self._calls == 0, self._calls + 1
        try:
            session = self._solo if alone and self._solo else self.session
            probabilities = session.run(None, {self._input: batch.astype(np.float32, copy=False)})[0]
        finally:
            with self._calls_lock:
                self._calls -= 1
        if probabilities.shape != (batch.shape[0], len(self.spec.labels)):
            raise ModelError(f"model returned {probabilities.shape} for a batch of {batch.shape[0]}")
        return np.asarray(probabilities, np.float32)


if __name__ == "__main__":      # the conversion's child process: SRC.tflite DST.onnx
    convert_file(sys.argv[1], sys.argv[2])
