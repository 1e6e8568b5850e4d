"""Raw model baseline: load time, throughput and latency of the model's predict alone.

Why: the end-to-end benchmark compares the gateway against this number; the gap is the cost of
HTTP, Redis and batching. `python -m bench` measures it in child processes (`python -m bench _raw`,
raw_child below), so their TensorFlow threads and memory are gone before the gateway starts. The
model is loaded as the gateway's worker loads it (load_for_runtime): LiteRT where RUNTIME resolves
to it, else Keras. Alone: `python -m bench.raw_model [--model NAME] [--seconds S]` (Keras).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench import loadgen
from image_gateway import imaging, models
from image_gateway import settings as settings_module
from image_gateway.worker.threads import predict_threads, set_framework_threads  # loads no TensorFlow

ROOT = Path(__file__).resolve().parent.parent
# The other honest way to run the model: one caller whose predict uses every core.
ONE_CALLER = {"WORKER_THREADS": "1", "MODEL_THREADS": "0"}


def measure_raw(classifier, batch_sizes=(1, 8, 32), seconds: float = 3.0, threads: int = 1) -> dict:
    """{batch size: {images_per_s, latency_ms_mean, latency_ms_p50, latency_ms_p95, calls}},
    each measured warm (one untimed call first) for about `seconds` on random uint8 images, with
    `threads` callers predicting at once (as a worker process with WORKER_THREADS does)."""
    size = classifier.spec.input_size
    rng = np.random.default_rng(0)
    return {batch_size: measure_batch(classifier, rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8),
                                      seconds, threads)
            for batch_size in batch_sizes}


def measure_batch(classifier, batch: np.ndarray, seconds: float, threads: int) -> dict:
    """One row of measure_raw: `threads` callers predicting `batch` for `seconds`, after one warm-up call."""
    classifier.predict(batch)
    per_thread = _concurrent_calls(classifier, batch, seconds, threads)
    latencies = [latency for thread in per_thread for latency in thread]
    return {
        "images_per_s": sum(len(batch) * len(thread) / sum(thread) for thread in per_thread),
        "latency_ms_mean": 1000 * float(np.mean(latencies)),
        "latency_ms_p50": 1000 * float(np.percentile(latencies, 50)),
        "latency_ms_p95": 1000 * float(np.percentile(latencies, 95)),
        "calls": len(latencies),
        "threads": threads,
    }


def _concurrent_calls(classifier, batch: np.ndarray, seconds: float, threads: int) -> list[list[float]]:
    """The call latencies of each of `threads` callers predicting `batch` for `seconds`."""
    results: list[list[float]] = [[] for _ in range(threads)]
    callers = [threading.Thread(target=lambda out=out: out.extend(_timed_calls(classifier, batch, seconds)))
               for out in results]
    [caller.start() for caller in callers]
    [caller.join() for caller in callers]
    return results


def _timed_calls(classifier, batch: np.ndarray, seconds: float) -> list[float]:
    latencies = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(latencies) < 3:
        start = time.perf_counter()
        classifier.predict(batch)
        latencies.append(time.perf_counter() - start)
    return latencies


# ------------------------------------------------------------------- in a child of `python -m bench`
def load_for_runtime(config: settings_module.Settings, interpreter_threads: int = 1) -> tuple[object, str]:
    """(the classifier, its runtime) as the worker loads config.model (model_host's _load_model for a
    built-in): for RUNTIME auto/litert/onnxruntime models.runtime_choice.load_builtin (LiteRT from
    LITERT_CACHE_DIR or its ONNX twin; auto falls back to TensorFlow when the model does not convert),
    Keras for tensorflow/jax. interpreter_threads: the runtime's own threads per call."""
    if config.runtime in ("tensorflow", "jax"):
        classifier = models.load_model(config.model, weights_path=config.model_weights,
                                       labels_path=config.model_labels)
    else:
        from image_gateway.models import runtime_choice

        options = runtime_choice.options_from(config)
        classifier = runtime_choice.load_builtin(config.model, dataclasses.replace(
            options, threads=max(1, interpreter_threads), callers=predict_threads(config)))
    return classifier, getattr(classifier, "runtime", "jax" if config.runtime == "jax" else "tensorflow")


def best_raw_rows(primary: dict, alternative: dict) -> dict:
    """Per batch size, the faster of the worker's threading and the one-caller threading."""
    rows = {int(b): row for b, row in primary.items()}
    for batch, row in alternative.items():
        if int(batch) not in rows or row["images_per_s"] > rows[int(batch)]["images_per_s"]:
            rows[int(batch)] = row
    return rows


def measure_raw_in_child(config: settings_module.Settings, batch_sizes: list[int], seconds: float,
                         extra_env: dict | None = None) -> dict:
    """Run the raw baseline in a child process, so its TensorFlow is gone before the gateway starts."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "raw.json"
        command = [sys.executable, "-m", "bench", "_raw", "--out", str(out), "--seconds", str(seconds),
                   "--batch-sizes", ",".join(map(str, batch_sizes))]
        env = {"TF_CPP_MIN_LOG_LEVEL": "2", **os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})}
        with open(Path(tmp) / "stderr", "w+") as stderr:    # TensorFlow's start-up chatter, shown on failure
            completed = subprocess.run(command, cwd=ROOT, env=env, stderr=stderr)
            if completed.returncode != 0:
                stderr.seek(0)
                raise SystemExit(f"the raw-model child failed (exit {completed.returncode}):\n{stderr.read()[-4000:]}")
        return json.loads(out.read_text())


def raw_child(argv: list[str]) -> None:
    """`python -m bench _raw --out PATH ...`: load the model, measure_raw each batch size, write JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench _raw")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--batch-sizes", default="1,8,16,32,64")
    args = parser.parse_args(argv)
    config = settings_module.load()
    set_framework_threads(config)      # the worker's own threading, before TensorFlow loads
    threads = predict_threads(config)
    started = time.perf_counter()
    # LiteRT: MODEL_THREADS threads per interpreter, 0 (the one-caller run) meaning every core.
    classifier, runtime = load_for_runtime(config, config.model_threads or len(os.sched_getaffinity(0)))
    load_s = time.perf_counter() - started
    rows = {batch_size: _raw_row(classifier, config, batch_size, args.seconds, threads)
            for batch_size in sorted({int(b) for b in args.batch_sizes.split(",")})}
    # One image at a time, one caller: what a lone request meets (concurrent callers run faster each).
    alone = measure_raw(classifier, (1,), args.seconds, threads=1)[1]
    check = real_photo_check(classifier, config, args.seconds, threads)
    Path(args.out).write_text(json.dumps({"rows": rows, "load_s": load_s, "runtime": runtime,
                                          "backend": _backend(runtime), "batch1_alone_ms": alone["latency_ms_p50"],
                                          "real_photo_check": check}))


def _backend(runtime: str) -> str:
    """Keras' backend when Keras runs the model (importing it then costs nothing more), else the runtime."""
    if runtime == "litert":
        return runtime
    import keras

    return keras.backend.backend()


def _raw_row(classifier, config: settings_module.Settings, batch_size: int, seconds: float, threads: int) -> dict:
    """measure_raw at one batch size, with this process's CPU per image; printed as it comes."""
    cpu_before = time.process_time()
    row = measure_raw(classifier, (batch_size,), seconds, threads)[batch_size]
    images = batch_size * (row["calls"] + 1)    # + measure_batch's untimed warm-up call
    row["cpu_ms_per_image"] = 1000 * (time.process_time() - cpu_before) / images
    row["model_threads"] = config.model_threads
    print(f"  raw batch {batch_size:>3} x {threads} callers ({config.model_threads or 'default'} threads each): "
          f"{row['images_per_s']:7.1f} images/s  p50 {row['latency_ms_p50']:7.2f} ms"
          f"  cpu {row['cpu_ms_per_image']:.2f} ms/image", flush=True)
    return row


def real_photo_check(classifier, config: settings_module.Settings, seconds: float, threads: int) -> dict:
    """measure_raw feeds random pixels; the same timing (same batch, same callers) on preprocessed real
    photos shows whether the network's cost depends on the content (it is dense arithmetic)."""
    photos = [imaging.prepare_image(path.read_bytes(), classifier.spec, max_pixels=config.max_image_pixels)
              for path in sorted(loadgen.PHOTO_DIR.glob("*.jpg"))]
    photos += [np.ascontiguousarray(p[:, ::-1]) for p in photos]
    real = np.stack([photos[i % len(photos)] for i in range(config.batch_size)])
    random = np.random.default_rng(1).integers(0, 256, real.shape, dtype=np.uint8)
    return {"batch_size": config.batch_size, "callers": threads,
            "real_images_per_s": round(measure_batch(classifier, real, seconds, threads)["images_per_s"], 2),
            "random_images_per_s": round(measure_batch(classifier, random, seconds, threads)["images_per_s"], 2)}


# ------------------------------------------------------------------------------------------ alone
def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.raw_model", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--batch-sizes", default="1,8,32")
    args = parser.parse_args()

    start = time.perf_counter()
    import keras

    classifier = models.load_model(args.model)
    load_s = time.perf_counter() - start
    print(f"model {args.model}  backend {keras.backend.backend()}  load {load_s:.2f} s "
          "(imports, weights, compile)")
    sizes = tuple(int(s) for s in args.batch_sizes.split(","))
    for batch_size, row in measure_raw(classifier, sizes, args.seconds).items():
        print(f"batch {batch_size:>3}: {row['images_per_s']:8.1f} images/s  "
              f"latency mean {row['latency_ms_mean']:7.1f} ms  p50 {row['latency_ms_p50']:7.1f} ms"
              f"  p95 {row['latency_ms_p95']:7.1f} ms  ({row['calls']} calls)")


if __name__ == "__main__":
    main()
