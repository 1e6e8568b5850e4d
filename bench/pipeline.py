"""The bound that includes decoding: decode+resize plus the model on the same cores, with no server.

pipeline_images_per_s: one process per usable core (no GIL between them), each loading the model
as the gateway's worker does (RUNTIME, one thread per call), all released together by a barrier,
each looping for `seconds`: the next photo -> imaging.prepare_image -> a batch of B -> np.stack ->
predict. Measured per batch size; the fastest counts. No HTTP, multipart, Redis or JSON: what the
gateway adds to the model and the decode is exactly what ratio_pipeline charges it for.
decode_ms: the median wall ms of imaging.prepare_image of one photo of the load, alone.
gateway_runtime: the runtime the gateway's workers really use, from GET /v1/models.
"""
from __future__ import annotations

import multiprocessing
import os
import queue
import statistics
import time
import traceback
from collections.abc import Callable, Sequence

import numpy as np

from bench.system import machine_busy_s
from image_gateway import imaging, models, processes
from image_gateway import settings as settings_module

LOAD_TIMEOUT_S = 900.0     # a first LiteRT conversion, or TensorFlow on a slow disk
# Each pipeline process: one thread per predict call, whatever the environment says.
ONE_THREAD_ENV = {"MODEL_THREADS": "1", "WORKER_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1",
                  "TF_NUM_INTEROP_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


def worker_model(config: settings_module.Settings) -> tuple[object, str]:
    """The default loader: the model as the worker loads it, one thread per call (bench.raw_model)."""
    from bench.raw_model import load_for_runtime

    return load_for_runtime(config, 1)


def pipeline_loop(classifier, jpegs: Sequence[bytes], batch_size: int, seconds: float, max_pixels: int) -> dict:
    """Decode+resize `batch_size` photos, stack, predict; again until `seconds` have passed (at least
    once). {images, wall_s, cpu_s, images_per_s}."""
    spec, position, images = classifier.spec, 0, 0
    cpu_before, started = time.process_time(), time.perf_counter()
    while images == 0 or time.perf_counter() - started < seconds:
        batch = []
        for _ in range(batch_size):
            batch.append(imaging.prepare_image(jpegs[position % len(jpegs)], spec, max_pixels=max_pixels))
            position += 1
        classifier.predict(np.stack(batch))
        images += batch_size
    wall_s = time.perf_counter() - started
    return {"images": images, "wall_s": wall_s, "cpu_s": time.process_time() - cpu_before,
            "images_per_s": images / wall_s}


def _child(index: int, jpegs: list[bytes], batch_sizes: list[int], seconds: float, env: dict,
           loader: Callable, barrier, results) -> None:
    """One pipeline process: load, warm every batch size, then one barrier-started window per size."""
    try:
        os.environ.update(env)
        config = settings_module.load()
        started = time.perf_counter()
        classifier, runtime = loader(config)
        load_s = time.perf_counter() - started
        for batch_size in batch_sizes:                      # warm: one untimed batch of each size
            pipeline_loop(classifier, jpegs, batch_size, 0.0, config.max_image_pixels)
        for number, batch_size in enumerate(batch_sizes):
            barrier.wait(LOAD_TIMEOUT_S if number == 0 else 60.0 + 10 * seconds)
            busy_before = machine_busy_s()
            row = pipeline_loop(classifier, jpegs, batch_size, seconds, config.max_image_pixels)
            row["machine_busy_s"] = machine_busy_s() - busy_before
            results.put((index, batch_size, {**row, "runtime": runtime, "load_s": load_s}))
    except BaseException:      # the parent reports it; the others leave the barrier
        barrier.abort()
        results.put((index, None, traceback.format_exc()))


def measure_pipeline(jpegs: Sequence[bytes], batch_sizes: Sequence[int], seconds: float, *,
                     processes_count: int | None = None, env: dict | None = None,
                     loader: Callable = worker_model) -> dict:
    """pipeline_images_per_s: `processes_count` (default: usable cores) processes, each loader(config)
    with this environment + `env` + ONE_THREAD_ENV, each running pipeline_loop on its share of
    `jpegs`, together, for `seconds` per batch size. {images_per_s, best_batch_size, rows, ...}."""
    count = processes_count or len(os.sched_getaffinity(0))
    context = multiprocessing.get_context("spawn")         # fresh interpreters: no TensorFlow here
    barrier, results = context.Barrier(count), context.Queue()
    shares = [list(jpegs[i::count]) or list(jpegs) for i in range(count)]
    children = [context.Process(target=_child, daemon=True,
                                args=(i, shares[i], list(batch_sizes), seconds, {**(env or {}), **ONE_THREAD_ENV},
                                      loader, barrier, results)) for i in range(count)]
    [child.start() for child in children]
    try:
        rows = _collect(results, count, list(batch_sizes), seconds)
    finally:
        for child in children:
            child.join(timeout=30)
            if child.is_alive():
                child.kill()
    best = max(rows, key=lambda b: rows[b]["images_per_s"])
    return {"images_per_s": rows[best]["images_per_s"], "best_batch_size": best, "processes": count,
            "threads_per_process": 1, "runtime": rows[best]["runtime"], "seconds": seconds,
            "rows": {str(b): row for b, row in rows.items()}}


def _collect(results, count: int, batch_sizes: list[int], seconds: float) -> dict[int, dict]:
    """Every child's row per batch size, summed: {batch size: {images_per_s, cpu_ms_per_image, ...}}."""
    per_batch: dict[int, list[dict]] = {b: [] for b in batch_sizes}
    for number in range(count * len(batch_sizes)):
        try:
            index, batch_size, row = results.get(timeout=LOAD_TIMEOUT_S if number < count else 120 + 10 * seconds)
        except queue.Empty:
            raise SystemExit("the pipeline processes stopped answering") from None
        if batch_size is None:
            raise SystemExit(f"pipeline process {index} failed:\n{row}")
        per_batch[batch_size].append(row)
    return {b: _sum_rows(rows) for b, rows in per_batch.items()}


def _sum_rows(rows: list[dict]) -> dict:
    images, cpu_s = sum(r["images"] for r in rows), sum(r["cpu_s"] for r in rows)
    wall_s = max(r["wall_s"] for r in rows)
    others = max(r["machine_busy_s"] for r in rows) - cpu_s    # busy cores that were not the pipeline's
    return {"images_per_s": round(sum(r["images_per_s"] for r in rows), 2), "images": images,
            "cpu_ms_per_image": round(1000 * cpu_s / images, 3), "other_processes_cores": round(others / wall_s, 2),
            "load_s": round(max(r["load_s"] for r in rows), 2), "runtime": rows[0]["runtime"]}


def decode_ms(jpegs: Sequence[bytes], spec: models.ModelSpec, max_pixels: int) -> dict:
    """decode_ms (median wall ms of imaging.prepare_image of one photo, alone), with p90 and CPU ms."""
    imaging.prepare_image(jpegs[0], spec, max_pixels=max_pixels)
    wall, cpu = [], []
    for jpeg in jpegs:
        wall_before, cpu_before = time.perf_counter(), time.process_time()
        imaging.prepare_image(jpeg, spec, max_pixels=max_pixels)
        wall.append(1000 * (time.perf_counter() - wall_before))
        cpu.append(1000 * (time.process_time() - cpu_before))
    return {"decode_ms": round(statistics.median(wall), 3), "p90_ms": round(float(np.percentile(wall, 90)), 3),
            "cpu_ms_median": round(statistics.median(cpu), 3), "images": len(jpegs)}


def gateway_runtime(url: str, model: str | None = None) -> str | None:
    """The runtime of the default model's (else `model`'s) newest READY version (else newest), as
    GET /v1/models reports it: what the workers really run ("litert"), not the RUNTIME setting."""
    document = processes.get_json(url.rstrip("/") + "/v1/models", timeout_s=10) or {}
    served = document.get("models") or []
    entry = next((m for m in served if m.get("default")), None) or next(
        (m for m in served if m.get("name") == model), None)
    if not entry or not entry.get("versions"):
        return None
    newest_first = sorted(entry["versions"], key=lambda version: -int(version.get("version", 0)))
    ready = [version for version in newest_first if version.get("state") == "READY"]
    return (ready or newest_first)[0].get("runtime")
