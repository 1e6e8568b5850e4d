"""Soak (issue 17): the cluster layout at 80 % of its peak for MINUTES; errors, p99 and memory over time.

    python -m bench --soak 30 [--json bench/out/soak.json] [--fraction 0.8] [--web 2] [--workers 2]

Starts `deploy.cluster.Cluster` (redis-server, `--web` gunicorn web servers, `--workers` model workers,
nginx in front; CACHE_TTL=0), finds its peak (`--peak-clients` closed-loop clients for `--peak-seconds`),
then sends requests at `--fraction` of that rate for MINUTES, paced on a schedule by `--threads` client
threads (as many as the peak's clients: never more in flight than the peak had). Every `--interval`
seconds (default: a twelfth of the run, at least 10 s) it records the answers, errors by code,
p50/p99, the RSS of every process of the cluster and Redis' used_memory. Memory is sampled all along
(RSS from /proc, INFO memory); an interval's figure is its floor, the least used in it, since queued
jobs and buffers come and go. The first interval (after `--warmup` seconds at the soak rate) against
the last: growth beyond 5 % fails the check.
"""
from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time

from bench import log, system
from bench.loadgen import DEFAULT_RECIPE, BodyPool, LoadGenerator, Outcome, make_photos
from bench.overload import GROWTH_LIMIT_PCT, MemorySampler, memory_growth, summarise, write_report
from bench.overload import flat as memory_flat
from deploy.cluster import Cluster
from image_gateway import settings as settings_module


class PacedPool:
    """The bodies of a BodyPool on a schedule: the i-th is handed out at `start` + i / rate (bench.loadgen's
    clients ask for a body just before they send it), as soon as a client is free when behind."""

    def __init__(self, pool: BodyPool, rate: float):
        self.pool, self.rate, self.tickets = pool, rate, itertools.count()
        self.start, self.most_behind_s = time.perf_counter(), 0.0

    def take(self) -> bytes:
        delay = self.start + next(self.tickets) / self.rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        else:
            self.most_behind_s = max(self.most_behind_s, -delay)
        return self.pool.take()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench --soak MINUTES", description=__doc__.splitlines()[0])
    parser.add_argument("--soak", type=float, required=True, metavar="MINUTES", help="minutes at the soak rate")
    parser.add_argument("--json", default="bench/out/soak.json", help="where to write the results")
    parser.add_argument("--fraction", type=float, default=0.8, help="of the peak rate (0.8)")
    parser.add_argument("--web", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--peak-clients", type=int, default=16)
    parser.add_argument("--peak-seconds", type=float, default=15.0)
    parser.add_argument("--threads", type=int, help="client threads that send the paced requests (default "
                        "--peak-clients: never more in flight than the peak saw, whose memory is the high-water mark)")
    parser.add_argument("--interval", type=float, help="seconds per report row (a twelfth of the run, >= 10)")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds at the soak rate before memory's start")
    parser.add_argument("--pool", type=int, default=600, help="distinct photos built up front")
    args = parser.parse_args(argv)
    args.interval = args.interval or max(10.0, args.soak * 60 / 12)
    args.threads = args.threads or args.peak_clients
    return args


def cluster_roots(cluster: Cluster) -> dict[str, int]:
    """Every process the cluster started, by role (nginx's and gunicorn's children come with them)."""
    redis_servers = getattr(cluster.redis, "servers", [cluster.redis] if cluster.redis else [])
    roots = {f"redis-{i}": server.process.pid for i, server in enumerate(redis_servers)}
    roots.update({child.name: child.pid for child in cluster.children if child.pid})
    return roots


def interval_row(shots: list[Outcome], start: float, window_s: float, memory: dict) -> dict:
    summary = summarise([shot for shot in shots if start <= shot.done < start + window_s], window_s)
    busy = summary["refused_503_server_busy"]
    return {"answers_per_s": summary["goodput_per_s"], "ok": summary["ok"],
            "errors": {**summary["other_errors"], **({"503 SERVER_BUSY": busy} if busy else {})},
            "p50_ms": summary["ok_p50_ms"], "p99_ms": summary["ok_p99_ms"], "max_ms": summary["ok_max_ms"],
            "rss_mib_total_floor": round(sum(memory["rss_kib"].values()) / 1024, 1),
            "redis_used_memory_floor": memory["redis_used_memory"]}


def soak(url: str, cluster: Cluster, pool: BodyPool, rate: float, args: argparse.Namespace) -> dict:
    """Warm-up, then MINUTES at `rate`, memory sampled all along; rows per interval, memory floors compared."""
    paced, total_s, marks = PacedPool(pool, rate), args.soak * 60, {}
    clients = LoadGenerator(url, paced, settings_module.load().request_timeout + 10)
    with MemorySampler(cluster_roots(cluster), cluster.redis_url, period_s=min(1.0, args.interval / 10)) as sampler:
        level = clients.run_level(args.threads, total_s, args.warmup,
                                  lambda edge: marks.__setitem__(edge, time.perf_counter()))
    start, end = marks["start"], marks["end"]
    count = max(1, round((end - start) / args.interval))
    windows = [(start + i * args.interval, min(start + (i + 1) * args.interval, end)) for i in range(count)]
    rows = [{"at_s": round(a - start, 1), **interval_row(level.outcomes_in_window, a, b - a, sampler.floor(a, b))}
            for a, b in windows]
    whole = interval_row(level.outcomes_in_window, start, end - start, {"rss_kib": {}, "redis_used_memory": 0})
    first, middle, last = (sampler.floor(*windows[i]) for i in (0, len(windows) // 2, -1))
    growth = memory_growth(first, last)
    return {"rate_per_s": round(rate, 2), "answers_per_s": whole["answers_per_s"], "ok": whole["ok"],
            "errors": whole["errors"], "p50_ms": whole["p50_ms"], "p99_ms": whole["p99_ms"], "max_ms": whole["max_ms"],
            "most_behind_schedule_s": round(paced.most_behind_s, 3), "intervals": rows, "memory": growth,
            "memory_second_half": memory_growth(middle, last),   # warm-up excluded: what a leak would show
            "memory_floors": {"first_interval": first, "middle_interval": middle, "last_interval": last},
            "checks": {"no_errors": not whole["errors"],
                       f"memory_growth_at_most_{GROWTH_LIMIT_PCT:g}_pct": memory_flat(growth)}}


def run(args: argparse.Namespace) -> dict:
    config = settings_module.load()
    pool = BodyPool.from_jpegs(make_photos(0, args.pool, DEFAULT_RECIPE, processes=os.cpu_count() or 1))
    machine = system.machine_info()
    run_dir = tempfile.mkdtemp(prefix="gateway-soak-")
    log(f"starting the cluster: {args.web} web, {args.workers} workers, nginx (logs in {run_dir})")
    with Cluster(web=args.web, workers=args.workers, env={"CACHE_TTL": "0"}, run_dir=run_dir) as cluster:
        level = LoadGenerator(cluster.url, pool, config.request_timeout + 10).run_level(
            args.peak_clients, args.peak_seconds, 3.0)
        peak = summarise(level.outcomes_in_window, level.window_s)
        rate = args.fraction * peak["goodput_per_s"]
        log(f"peak {peak['goodput_per_s']:.1f}/s at {args.peak_clients} clients; soak at {rate:.1f}/s "
            f"for {args.soak:g} min")
        result = soak(cluster.url, cluster, pool, rate, args)
    return {"mode": "soak", "minutes": args.soak, "fraction": args.fraction,
            "layout": {"web": args.web, "workers": args.workers, "nginx": 1, "redis": 1, "run_dir": run_dir},
            "peak": {"clients": args.peak_clients, **peak}, **result, "bodies_reused_with_marker": pool.marked,
            "machine": {**machine, "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}}


def format_table(result: dict) -> str:
    lines = [f"peak {result['peak']['goodput_per_s']}/s; soak at {result['rate_per_s']}/s for "
             f"{result['minutes']:g} min: {result['ok']} answers, errors {result['errors']}, "
             f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms",
             "  t (s)   answers/s  p50 ms  p99 ms  errors  RSS MiB  redis used_memory (floors of the interval)"]
    for row in result["intervals"]:
        errors = sum(row["errors"].values())
        lines.append(f"  {row['at_s']:>6}  {row['answers_per_s']:>9}  {row['p50_ms']!s:>6}  {row['p99_ms']!s:>6}  "
                     f"{errors:>6}  {row['rss_mib_total_floor']:>7}  {row['redis_used_memory_floor']}")
    for name, row in result["memory"].items():
        half = result["memory_second_half"].get(name, {}).get("growth_pct")
        lines.append(f"memory {name}: {row.get('start_kib', row.get('start_bytes'))} -> "
                     f"{row.get('end_kib', row.get('end_bytes'))} ({row['growth_pct']} %; second half {half} %)")
    lines.append("checks: " + ", ".join(f"{name}={value}" for name, value in result["checks"].items()))
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    result = run(args)
    write_report(result, format_table(result), args.json)
