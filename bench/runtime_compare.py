"""TensorFlow Classifier vs LiteRT (XNNPACK): ms per image, conversion time, worker start and memory.

    python -m bench.runtime_compare [--model NAME] [--seconds S] [--cache-dir DIR] [--threads N]

Each runtime is measured in its own child process, one after the other, so neither's threads or
memory touch the other: the TensorFlow child loads Keras (start time and RSS at its first answer),
times predict, then converts into the cache; the LiteRT child then starts from that cache, never
importing TensorFlow. Start time is from spawning the child to its first prediction. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BATCHES = (1, 8)
ROOT = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        names = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    return names[0] if names else platform.processor()


def memory_mb() -> dict:
    """This process's resident set now and at its peak, MiB (Linux /proc)."""
    with open("/proc/self/status", encoding="utf-8") as status:
        fields = dict(line.split(":", 1) for line in status if ":" in line)
    return {"rss_mb": int(fields["VmRSS"].split()[0]) / 1024, "peak_rss_mb": int(fields["VmHWM"].split()[0]) / 1024}


def ms_per_image(predict, batch: np.ndarray, seconds: float) -> float:
    """Mean wall ms per image over repeated calls for about `seconds` (after one warm-up call)."""
    predict(batch)
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < seconds:
        predict(batch)
        calls += 1
    return 1000 * (time.perf_counter() - start) / (calls * len(batch))


def ready(model) -> np.ndarray:
    """One prediction (the worker is ready), then the parent is told on stdout."""
    size = model.spec.input_size
    pixels = np.random.default_rng(0).integers(0, 256, (max(BATCHES), size, size, 3), dtype=np.uint8)
    model.predict(pixels[:1])
    print("READY", flush=True)
    return pixels


def child_tensorflow(args) -> dict:
    os.environ.update(TF_NUM_INTRAOP_THREADS=str(args.threads), TF_NUM_INTEROP_THREADS="1")
    from image_gateway.models import load_model
    from image_gateway.models.litert import (
        cache_key,
        cache_path,
        convert,
        file_digest,
        source_weights_path,
        write_atomic,
    )

    classifier = load_model(args.model)
    pixels = ready(classifier)
    result = {**memory_mb(), **{f"batch{n}_ms_per_image": ms_per_image(classifier.predict, pixels[:n], args.seconds)
                                for n in BATCHES}}
    start = time.perf_counter()
    content = convert(classifier)  # always converts (and checks against Keras), whatever is cached
    result["conversion_s"] = time.perf_counter() - start
    source = source_weights_path(args.model)  # where the LiteRT child will look (None: it converts too)
    if source:
        write_atomic(cache_path(args.cache_dir, classifier.spec, cache_key(classifier.spec, file_digest(source))),
                     content)
    return result


def child_litert(args) -> dict:
    from image_gateway.models.litert import LiteRTClassifier, load_litert_model

    lite = load_litert_model(args.model, args.cache_dir, args.threads)
    assert isinstance(lite, LiteRTClassifier)
    pixels = ready(lite)
    result = {**memory_mb(), "tensorflow_imported": "tensorflow" in sys.modules, "cache_file": lite.model_path}
    result.update({f"batch{n}_ms_per_image": ms_per_image(lite.predict, pixels[:n], args.seconds) for n in BATCHES})
    result["batch8_one_invoke_ms_per_image"] = ms_per_image(_one_invoke(lite), pixels, args.seconds)
    return result


def _one_invoke(lite):
    """The whole batch as one invoke (the converted file has a dynamic batch dimension)."""
    interpreter, input_index, output_index = lite._interpreter()

    def predict(batch: np.ndarray) -> np.ndarray:
        if tuple(interpreter.get_input_details()[0]["shape"]) != batch.shape:
            interpreter.resize_tensor_input(input_index, batch.shape)
            interpreter.allocate_tensors()
        interpreter.set_tensor(input_index, batch.astype(np.float32))
        interpreter.invoke()
        return interpreter.get_tensor(output_index)

    return predict


def run_child(runtime: str, args) -> dict:
    command = [sys.executable, "-m", "bench.runtime_compare", "--child", runtime, "--model", args.model,
               "--seconds", str(args.seconds), "--cache-dir", args.cache_dir, "--threads", str(args.threads)]
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    started = result = None
    for line in child.stdout:
        if line.strip() == "READY":
            started = time.perf_counter() - start
        elif line.startswith("{"):
            result = json.loads(line)
    if child.wait() != 0 or started is None or result is None:
        raise SystemExit(f"the {runtime} child failed (exit {child.returncode})")
    return {"start_s": started, **result}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per batch size")
    parser.add_argument("--threads", type=int, default=1, help="threads per predict call, both runtimes")
    parser.add_argument("--cache-dir", help="LiteRT cache (default: a fresh temporary folder)")
    parser.add_argument("--child", choices=("tensorflow", "litert"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps((child_tensorflow if args.child == "tensorflow" else child_litert)(args)), flush=True)
        return
    with tempfile.TemporaryDirectory() as scratch:
        args.cache_dir = args.cache_dir or scratch
        report = {"cpu": cpu_model(), "cores": os.cpu_count(), "model": args.model, "threads": args.threads,
                  "tensorflow": run_child("tensorflow", args), "litert": run_child("litert", args)}
    tf_row, lite_row = report["tensorflow"], report["litert"]
    report["speedup"] = {f"batch{n}": tf_row[f"batch{n}_ms_per_image"] / lite_row[f"batch{n}_ms_per_image"]
                         for n in BATCHES}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
