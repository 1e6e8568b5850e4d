"""Redis memory under distinct images (issue 25): the result cache stays within CACHE_MAX_MB.

    python -m bench --cache-memory MINUTES [--json bench/out/cache_memory.json] [--cache-max-mb 16]

Starts `python run_server.py` with the cache on (CACHE_TTL 3600) and CACHE_MAX_MB, then runs 16
closed-loop clients, every body a distinct image (bench.loadgen: new bytes once the photo pool is used
up), one level per minute. After each minute it reads the gateway's /status: Redis' used_memory, and
that the queue's keys still answer. The report is one row per minute; `within_cap` says whether
used_memory stayed under the minute-0 baseline plus the cap plus MARGIN_MB.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench import log
from bench.gateway import Gateway
from bench.loadgen import DEFAULT_RECIPE, BodyPool, LoadGenerator, make_photos
from image_gateway.processes import get_json

MARGIN_MB = 16.0


def used_memory(url: str) -> int:
    status = get_json(url + "/status", 10) or {}
    return sum(int(shard["used_memory"]) for shard in (status.get("redis_memory") or {}).values())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench --cache-memory", description=__doc__.splitlines()[0])
    parser.add_argument("minutes", type=int)
    parser.add_argument("--json", default="bench/out/cache_memory.json")
    parser.add_argument("--cache-max-mb", type=float, default=16.0)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args(argv)
    env = {"CACHE_TTL": "3600", "CACHE_MAX_MB": str(args.cache_max_mb), "LOG_LEVEL": "WARNING"}
    gateway = Gateway(Path(args.json).with_suffix(".log"), env).start()
    pool = BodyPool.from_jpegs(make_photos(0, 500, DEFAULT_RECIPE))
    rows = []
    try:
        baseline = used_memory(gateway.url)
        load = LoadGenerator(gateway.url, pool)
        for minute in range(1, args.minutes + 1):
            level = load.run_level(args.clients, 60.0)
            memory = used_memory(gateway.url)
            status = get_json(gateway.url + "/status", 10) or {}
            rows.append({"minute": minute, "answers": len(level.outcomes_in_window),
                         "errors": sum(not o.ok for o in level.outcomes_in_window),
                         "used_memory_mb": round(memory / 2**20, 2), "queue_keys_answer": "queue_depth" in status})
            log(f"minute {minute}: {rows[-1]}")
    finally:
        gateway.stop()
    peak_mb = max(row["used_memory_mb"] for row in rows)
    result = {"cache_max_mb": args.cache_max_mb, "baseline_mb": round(baseline / 2**20, 2), "peak_mb": peak_mb,
              "distinct_images": pool.taken, "within_cap": peak_mb <= baseline / 2**20 + args.cache_max_mb + MARGIN_MB,
              "minutes": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result
