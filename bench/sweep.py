"""The closed-loop sweep over concurrency levels, each level's CPU accounting, and the CPU summary."""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from bench import loadgen, log
from bench.scrape import STEP_CPU, level_diagnostics, scrape
from bench.system import cpu_delta, machine_busy_s, own_cpu_s, tree_cpu


def ensure_pool(pool: loadgen.BodyPool, needed: int, recipe: loadgen.PhotoRecipe) -> None:
    """Top the pool up (untimed) so that `needed` distinct bodies remain."""
    missing = needed - pool.remaining()
    if missing > 0:
        started = time.perf_counter()
        pool.extend_jpegs(loadgen.make_photos(len(pool.bodies), missing, recipe, processes=os.cpu_count() or 1))
        log(f"built {missing} more distinct photos ({time.perf_counter() - started:.1f} s, not measured)")


def sweep(args: argparse.Namespace, url: str, pool: loadgen.BodyPool, recipe: loadgen.PhotoRecipe,
          root_pid: int | None, raw_ips: float, raw_batch1_ms: float, timeout_s: float) -> dict:
    """A warm-up at concurrency 4, then each of args.concurrency: {concurrency: level summary}."""
    generator = loadgen.LoadGenerator(url, pool, timeout_s=timeout_s)
    ensure_pool(pool, int(min(raw_ips, 4000 / raw_batch1_ms) * max(args.warmup, 1.0) * 1.5) + 64, recipe)
    log(f"warm-up: {max(args.warmup, 1.0):.1f} s at concurrency 4")
    generator.run_level(4, max(args.warmup, 1.0))
    levels = {}
    for concurrency in args.concurrency:
        # The gateway cannot beat the raw model, nor C clients answered no faster than batch 1.
        expected_ips = min(raw_ips, concurrency * 1000 / raw_batch1_ms)
        ensure_pool(pool, int(expected_ips * (args.duration + args.warmup) * 1.3) + 4 * concurrency, recipe)
        levels[concurrency] = run_level(generator, concurrency, args, url, pool, root_pid)
    return levels


def run_level(generator: loadgen.LoadGenerator, concurrency: int, args: argparse.Namespace, url: str,
              pool: loadgen.BodyPool, root_pid: int | None) -> dict:
    """One measured level: the load generator's summary, the gateway's counters and everyone's CPU."""
    marks: dict[str, tuple] = {}

    def on_window(edge: str) -> None:
        if edge == "start":
            marks["metrics"] = scrape(url)
            marks["start"] = (tree_cpu(root_pid), own_cpu_s(), machine_busy_s())
        else:
            marks["end"] = (tree_cpu(root_pid), own_cpu_s(), machine_busy_s())
            marks["metrics_end"] = scrape(url)

    marked_before = pool.marked
    result = generator.run_level(concurrency, args.duration, args.warmup, on_window)
    summary = result.summary()
    summary.update(level_diagnostics(marks["metrics"], marks["metrics_end"], result.window_s))
    summary.update(_level_cpu(marks["start"], marks["end"], max(summary["ok"], 1), result.window_s, root_pid))
    summary.update(_server_cpu(summary, marks["metrics"], marks["metrics_end"]))
    summary["reused_bodies"] = pool.marked - marked_before
    log(f"c={concurrency:<3} {summary['images_per_s']:7.1f} images/s  p50 {summary['p50_ms']} ms"
        f"  p99 {summary['p99_ms']} ms  errors {summary['errors']}  mean batch {summary['mean_batch_size']}"
        f"  gateway cpu {summary['gateway_cpu_ms_per_image']} ms/image"
        f"  client cpu {summary['client_cpu_ms_per_image']} ms/image")
    return summary


def _level_cpu(start: tuple, end: tuple, images: int, window_s: float, root_pid: int | None) -> dict:
    """CPU per image and cores of the gateway, this client and the rest of the machine over a window.
    `start` and `end` are (tree_cpu, own_cpu_s, machine_busy_s) at the window's edges."""
    gateway_cpu = cpu_delta(start[0], end[0])
    gateway_s = sum(gateway_cpu.values())
    client_s = end[1] - start[1]
    client_cores, machine_cores = client_s / window_s, (end[2] - start[2]) / window_s
    cpu = {"gateway_cpu_ms_per_image": round(1000 * gateway_s / images, 2) if root_pid else None,
           "gateway_cpu_ms_per_image_by_process": {k: round(1000 * v / images, 2)
                                                   for k, v in gateway_cpu.items() if v > 0},
           "gateway_cpu_cores": round(gateway_s / window_s, 2) if root_pid else None,
           "client_cpu_ms_per_image": round(1000 * client_s / images, 2),
           "client_cpu_cores": round(client_cores, 2),
           "machine_busy_cores": round(machine_cores, 2)}
    if root_pid:   # CPU of everything that is neither the gateway nor this client: colleagues, noise
        cpu["other_processes_cores"] = round(machine_cores - client_cores - cpu["gateway_cpu_cores"], 2)
    return cpu


def _server_cpu(summary: dict, before: dict, after: dict) -> dict:
    """server_cpu_ms_per_image: the gateway's CPU per image less what its own counters say decoding and the
    model cost (bench/serving.py splits it by process). The load generator runs in this process: none of
    its CPU (client_cpu_ms_per_image) is in the gateway's."""
    steps_s = sum(after.get(name, 0.0) - before.get(name, 0.0) for name in STEP_CPU)
    if summary.get("gateway_cpu_ms_per_image") is None or steps_s <= 0:
        return {}
    steps_ms = 1000 * steps_s / max(summary["ok"], 1)
    return {"decode_and_model_cpu_ms_per_image": round(steps_ms, 2),
            "server_cpu_ms_per_image": round(summary["gateway_cpu_ms_per_image"] - steps_ms, 2)}


def cpu_summary(stages: dict, http: dict, raw_rows: dict, levels: dict) -> dict:
    """Per-image CPU of each stage, the model's own, their sum and the measured total at saturation."""
    summary = {k: stages[k] for k in ("decode_resize", "multipart_parse", "serialise", "redis", "batch_stack",
                                      "postprocess") if k in stages}
    if http.get("http_healthz_gateway_cpu_ms") is not None:
        summary["http_request"] = http["http_healthz_gateway_cpu_ms"]
    saturated = max(levels.values(), key=lambda level: level["images_per_s"]) if levels else {}
    batch = saturated.get("mean_batch_size") or 1
    nearest = min(raw_rows, key=lambda b: abs(np.log(int(b)) - np.log(batch))) if raw_rows else None
    if nearest is not None:
        summary["model"] = round(raw_rows[nearest]["cpu_ms_per_image"], 3)
        summary["model_at_batch"] = int(nearest)
    stage_names = [k for k in summary if k != "model_at_batch"]
    summary["stages_sum"] = round(sum(summary[k] for k in stage_names), 3)
    if saturated.get("gateway_cpu_ms_per_image") is not None:
        summary["gateway_total"] = saturated["gateway_cpu_ms_per_image"]
        summary["unaccounted"] = round(summary["gateway_total"] - summary["stages_sum"], 3)
    summary["serialise_uint8"] = stages.get("serialise_uint8")
    summary["serialise_float32"] = stages.get("serialise_float32")
    return summary
