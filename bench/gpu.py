"""The GPU run of issue 16 in one command: raw JAX at its best batch, then the gateway end to end.

    KERAS_BACKEND=jax python -m bench.gpu --json bench/out/gpu.json

1. Raw: the model alone on RUNTIME (jax) at each `--raw-batch-sizes`, in a child process; the best
   images/s is the bound.
2. The gateway on the same machine: redis-server, one gunicorn with `--web-procs` processes (no nginx:
   gunicorn's own accept queue spreads the connections; nginx is rarely on a GPU box), and `--workers`
   model workers on RUNTIME with BATCH_SIZE `--batch-size` (CACHE_TTL=0: every request runs the model).
3. Load: `--loaders` processes of closed-loop clients (one Python process cannot drive a GPU) at each
   total concurrency of `--concurrency`, `--duration` s each after `--warmup` s.

Writes the JSON and prints `end_to_end_images_per_s`, `raw_images_per_s` and their ratio (target >= 0.5).
On the device machine (no internet, no TensorFlow), carry the wheels that `bench/gpu_wheels.sh` downloads;
bench/README.md has the whole `run` command. `--runtime tensorflow --quick` runs the same steps on a CPU box.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from bench import log, system
from bench.loadgen import BodyPool, LoadGenerator, make_photos
from bench.raw_model import measure_raw_in_child
from deploy.cluster import Cluster
from image_gateway import settings as settings_module

TARGET_RATIO = 0.5


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="bench/out/gpu.json", help="where to write the results")
    parser.add_argument("--runtime", default="jax", help="RUNTIME of the raw run and the workers (jax)")
    parser.add_argument("--raw-batch-sizes", default="1,32,64,128,256")
    parser.add_argument("--raw-seconds", type=float, default=5.0)
    parser.add_argument("--web-procs", type=int, default=max(1, (os.cpu_count() or 2) - 4),
                        help="gunicorn processes of the web tier (cores minus 4)")
    parser.add_argument("--workers", type=int, default=1, help="model worker processes (one GPU: 1)")
    parser.add_argument("--worker-threads", type=int, default=2, help="WORKER_THREADS of each worker")
    parser.add_argument("--batch-size", type=int, default=64, help="BATCH_SIZE of the workers")
    parser.add_argument("--loaders", type=int, default=4, help="load-generator processes")
    parser.add_argument("--concurrency", default="64,128,256", help="total clients per level")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--photos", type=int, default=400, help="distinct photos per loader (reused marked)")
    parser.add_argument("--quick", action="store_true", help="small everything: a smoke run on any machine")
    args = parser.parse_args(argv)
    if args.quick:
        args.raw_batch_sizes, args.raw_seconds, args.web_procs, args.batch_size = "1,8", 1.0, 1, 8
        args.loaders, args.concurrency, args.duration, args.warmup, args.photos = 2, "4", 3.0, 1.0, 40
    return args


def load_level(url: str, clients: int, duration_s: float, warmup_s: float, photos: int, seed: int) -> dict:
    """One loader process: `clients` closed-loop clients for warm-up + duration; its answers and latencies."""
    pool = BodyPool.from_jpegs(make_photos(seed * 100_000, photos))
    result = LoadGenerator(url, pool, timeout_s=60).run_level(clients, duration_s, warmup_s)
    ok = [o.latency_s * 1000 for o in result.outcomes_in_window if o.ok]
    return {"ok": len(ok), "latencies_ms": ok, "window_s": result.window_s, "errors": result.errors_total}


def run_level(url: str, total: int, args: argparse.Namespace, level: int) -> dict:
    """`total` clients spread over the loader processes; images/s is the sum of theirs."""
    shares = [total // args.loaders + (i < total % args.loaders) for i in range(args.loaders)]
    with ProcessPoolExecutor(len(shares)) as loaders:
        futures = [loaders.submit(load_level, url, clients, args.duration, args.warmup, args.photos, level * 100 + i)
                   for i, clients in enumerate(shares)]
        parts = [future.result() for future in futures]
    latencies = np.array([ms for part in parts for ms in part["latencies_ms"]] or [np.nan])
    errors: dict[str, int] = {}
    for part in parts:
        for code, count in part["errors"].items():
            errors[code] = errors.get(code, 0) + count
    return {"concurrency": total, "images_per_s": round(sum(p["ok"] / p["window_s"] for p in parts), 1),
            "p50_ms": round(float(np.nanpercentile(latencies, 50)), 1),
            "p99_ms": round(float(np.nanpercentile(latencies, 99)), 1), "errors": errors}


def gateway_env(args: argparse.Namespace) -> dict[str, str]:
    backend = {"jax": "jax", "tensorflow": "tensorflow"}.get(args.runtime, os.environ.get("KERAS_BACKEND", ""))
    return {"RUNTIME": args.runtime, "KERAS_BACKEND": backend, "BATCH_SIZE": str(args.batch_size),
            "WORKER_THREADS": str(args.worker_threads), "CACHE_TTL": "0", "QUEUE_LIMIT": "100000",
            "REQUEST_TIMEOUT": "60", "LOG_LEVEL": "WARNING"}


def run(args: argparse.Namespace) -> dict:
    env = gateway_env(args)
    log(f"raw {args.runtime} at batch sizes {args.raw_batch_sizes} ...")
    raw = measure_raw_in_child(settings_module.load({**os.environ, **env}),
                               [int(b) for b in args.raw_batch_sizes.split(",")], args.raw_seconds, env)
    best_batch, best_row = max(raw["rows"].items(), key=lambda item: item[1]["images_per_s"])
    log(f"raw best {best_row['images_per_s']:.1f} images/s at batch {best_batch} on {raw['backend']}")
    levels = []
    cluster = Cluster(web=1, gunicorn_workers=args.web_procs, workers=args.workers, env=env, nginx=False,
                      say=log).start(timeout_s=600)     # a first JAX compile can take minutes
    try:
        for index, total in enumerate(int(c) for c in args.concurrency.split(",")):
            levels.append(run_level(cluster.url, total, args, index))
            log(f"  {total:4d} clients: {levels[-1]['images_per_s']:8.1f} images/s  p50 {levels[-1]['p50_ms']} ms"
                f"  errors {levels[-1]['errors'] or 0}")
    finally:
        cluster.stop()
    best = max(levels, key=lambda level: level["images_per_s"])
    ratio = best["images_per_s"] / best_row["images_per_s"]
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": system.machine_info(),
            "runtime": args.runtime, "backend": raw["backend"], "settings": env, "web_procs": args.web_procs,
            "loaders": args.loaders, "raw_rows": raw["rows"], "raw_best_batch": int(best_batch),
            "raw_images_per_s": best_row["images_per_s"], "levels": levels,
            "end_to_end_images_per_s": best["images_per_s"], "ratio": round(ratio, 3),
            "target_ratio": TARGET_RATIO, "errors": sum(sum(level["errors"].values()) for level in levels)}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = run(args)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    log(f"end to end {result['end_to_end_images_per_s']} images/s = {result['ratio']} x raw "
        f"{result['raw_images_per_s']:.1f} (target >= {TARGET_RATIO}); errors {result['errors']}; {args.json}")


if __name__ == "__main__":
    main()
