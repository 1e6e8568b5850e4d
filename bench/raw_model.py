"""Raw model baseline: load time, throughput and latency of Classifier.predict alone.

Why: the end-to-end benchmark compares the gateway against this number; the gap is the cost of
HTTP, Redis and batching. Run: `python bench/raw_model.py [--model NAME] [--seconds S]`.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--batch-sizes", default="1,8,32")
    args = parser.parse_args()

    start = time.perf_counter()
    import keras

    from models import load_model

    classifier = load_model(args.model)
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
