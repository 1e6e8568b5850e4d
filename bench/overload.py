"""Overload (issue 17): goodput and refusals at 3x the saturating concurrency, with QUEUE_LIMIT binding.

    python -m bench --overload [--json bench/out/overload.json] [--duration 20] [--queue-limit 16]
                               [--peak-clients 16] [--overload-clients 48] [--retry-ms 50] [--sweep 4,8,16]
    python -m bench --overload --url URL --redis-url REDIS_URL [--pid PID]   # a gateway already running

Without --url it starts `python run_server.py` with QUEUE_LIMIT (16) and CACHE_TTL=0, then:
1. a short sweep (`--sweep`, `--sweep-seconds` each) finds the saturating concurrency: the smallest
   level within 5 % of the best goodput;
2. the peak: `--peak-clients` closed-loop clients for `--duration` s;
3. the overload: `--overload-clients` (3x the peak's) for `--duration` s; a client that gets a 503 sends
   its next request `--retry-ms` later instead of waiting the whole Retry-After.
It checks: goodput (200s per second) >= 90 % of the peak; every refusal is 503 SERVER_BUSY with p99
<= 50 ms; every accepted request is answered within REQUEST_TIMEOUT; the RSS of the gateway and its
Redis and Redis' used_memory stay flat: the floor (least used, sampled every 0.5 s) of the overload's
last quarter is within 5 % of its first quarter's.
"""
from __future__ import annotations

import argparse
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import redis

from bench import log, report, system
from bench.gateway import Gateway
from bench.loadgen import DEFAULT_RECIPE, BodyPool, LoadGenerator, Outcome, make_photos
from bench.system import process_tree, read_stat
from image_gateway import settings as settings_module
from image_gateway.processes import get_json

GROWTH_LIMIT_PCT = 5.0


# ------------------------------------------------------------------------------ clients that retry
class PausingPool:
    """The bodies of a BodyPool, handed to a client whose last answer was an error (a 503) only after
    `retry_s`: bench.loadgen's client asks for its next body just before it sends it, untimed."""

    def __init__(self, pool: BodyPool, retry_s: float):
        self.pool, self.retry_s, self.local = pool, retry_s, threading.local()

    def take(self) -> bytes:
        outcomes, stop = getattr(self.local, "outcomes", None), getattr(self.local, "stop", None)
        last_error = outcomes[-1].error if outcomes else None
        if last_error and not last_error.startswith("0 "):   # loadgen already pauses after socket errors
            stop.wait(self.retry_s)
        return self.pool.take()


class RetryingClients(LoadGenerator):
    """The closed loop of bench.loadgen, except that a refused client waits `retry_s` before its next try."""

    def __init__(self, url: str, pool: BodyPool, timeout_s: float, retry_s: float):
        super().__init__(url, PausingPool(pool, retry_s), timeout_s)

    def _client(self, stop: threading.Event, outcomes: list[Outcome]) -> None:
        self.pool.local.outcomes, self.pool.local.stop = outcomes, stop
        super()._client(stop, outcomes)

    def run(self, clients: int, duration_s: float, warmup_s: float = 0.0,
            on_window=None) -> tuple[float, list[Outcome]]:
        """(window seconds, the answers that arrived inside the window)."""
        level = self.run_level(clients, duration_s, warmup_s, on_window)
        return level.window_s, level.outcomes_in_window


def percentile_ms(latencies_s: list[float], q: float) -> float | None:
    return round(float(np.percentile(np.array(latencies_s) * 1000, q)), 1) if latencies_s else None


def summarise(shots: list[Outcome], window_s: float) -> dict:
    """Goodput, the latencies of successes and of refusals, and every other outcome by code."""
    ok = [s.latency_s for s in shots if s.error is None]
    busy = [s.latency_s for s in shots if s.error == "503 SERVER_BUSY"]
    others: dict[str, int] = {}
    for shot in shots:
        if shot.error and shot.error != "503 SERVER_BUSY":
            others[shot.error] = others.get(shot.error, 0) + 1
    return {"goodput_per_s": round(len(ok) / window_s, 2), "ok": len(ok), "refused_503_server_busy": len(busy),
            "refusals_per_s": round(len(busy) / window_s, 1), "other_errors": others,
            "ok_p50_ms": percentile_ms(ok, 50), "ok_p99_ms": percentile_ms(ok, 99),
            "ok_max_ms": round(max(ok) * 1000, 1) if ok else None,
            "refusal_p50_ms": percentile_ms(busy, 50), "refusal_p99_ms": percentile_ms(busy, 99),
            "refusal_max_ms": round(max(busy) * 1000, 1) if busy else None, "window_s": round(window_s, 2)}


# ------------------------------------------------------------------------------ memory
def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def processes_rss(roots: dict[str, int]) -> dict[str, int]:
    """RSS (KiB) of every process of the trees under `roots` (label -> pid), by 'label/name:pid'."""
    out = {}
    for label, root in roots.items():
        for pid in process_tree(root):
            stat, rss = read_stat(pid), rss_kib(pid)
            if stat and rss is not None:
                out[f"{label}/{stat[0]}:{pid}"] = rss
    return out


def redis_used_memory(source: str | None) -> int | None:
    """Redis' used_memory: from a Redis URL (--redis-url), or from a gateway's /status (the embedded
    Redis has a private password; the gateway reports its memory)."""
    if not source:
        return None
    if source.startswith("http"):
        status = get_json(source + "/status", 5)
        memory = (status or {}).get("redis_memory") or {}
        return sum(int(shard["used_memory"]) for shard in memory.values()) if memory else None
    client = redis.Redis.from_url(source, socket_timeout=5)
    try:
        return int(client.info("memory")["used_memory"])
    except redis.RedisError:
        return None
    finally:
        client.close()


def memory_snapshot(roots: dict[str, int], redis_url: str | None) -> dict:
    return {"rss_kib": processes_rss(roots), "redis_used_memory": redis_used_memory(redis_url),
            "at": time.strftime("%H:%M:%S")}


class MemorySampler:
    """A memory snapshot every `period_s` in a thread. Queued jobs (151 KB each) and buffers come and go,
    so a window's memory is its floor: the least each process (and Redis) used in it; a leak lifts it."""

    def __init__(self, roots: dict[str, int], redis_url: str | None, period_s: float = 1.0):
        self.roots, self.redis_url, self.period_s = roots, redis_url, period_s
        self.samples: list[tuple[float, dict]] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True, name="memory-sampler")

    def __enter__(self) -> MemorySampler:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join(10)

    def _sample(self) -> None:
        while not self.stopped.is_set():
            self.samples.append((time.perf_counter(), memory_snapshot(self.roots, self.redis_url)))
            self.stopped.wait(self.period_s)

    def floor(self, start: float, end: float) -> dict:
        """The floor of the samples taken between perf_counter() `start` and `end`."""
        inside = [sample for at, sample in self.samples if start <= at <= end] or [self.samples[-1][1]]
        names = set.intersection(*(set(sample["rss_kib"]) for sample in inside))
        used = [sample["redis_used_memory"] for sample in inside if sample["redis_used_memory"] is not None]
        return {"rss_kib": {name: min(sample["rss_kib"][name] for sample in inside) for name in sorted(names)},
                "redis_used_memory": min(used) if used else None, "samples": len(inside)}


def growth_pct(start: float | None, end: float | None) -> float | None:
    return round(100.0 * (end - start) / start, 2) if start and end is not None else None


def memory_growth(start: dict, end: dict) -> dict:
    """Per process (present at both ends) and Redis: start, end and growth in %."""
    rows = {name: {"start_kib": kib, "end_kib": end["rss_kib"][name],
                   "growth_pct": growth_pct(kib, end["rss_kib"][name])}
            for name, kib in start["rss_kib"].items() if name in end["rss_kib"]}
    rows["redis_used_memory"] = {"start_bytes": start["redis_used_memory"], "end_bytes": end["redis_used_memory"],
                                 "growth_pct": growth_pct(start["redis_used_memory"], end["redis_used_memory"])}
    return rows


def flat(growth: dict) -> bool:
    return all(row["growth_pct"] is None or row["growth_pct"] <= GROWTH_LIMIT_PCT for row in growth.values())


# ------------------------------------------------------------------------------ the run
def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench --overload", description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="bench/out/overload.json", help="where to write the results")
    parser.add_argument("--url", help="a gateway already running (then set its QUEUE_LIMIT yourself)")
    parser.add_argument("--redis-url", help="with --url: its Redis, for used_memory")
    parser.add_argument("--pid", type=int, action="append", default=[], help="with --url: a local process of it "
                        "(repeat; its children count too), for RSS")
    parser.add_argument("--queue-limit", type=int, default=16, help="QUEUE_LIMIT of the started gateway (16)")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds of the peak and the overload")
    parser.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds before each phase")
    parser.add_argument("--peak-clients", type=int, default=16)
    parser.add_argument("--overload-clients", type=int, help="default 3x --peak-clients")
    parser.add_argument("--retry-ms", type=float, default=50.0, help="a refused client's pause before retrying")
    parser.add_argument("--sweep", default="4,8,16", help="levels that find the saturating concurrency ('' skips)")
    parser.add_argument("--sweep-seconds", type=float, default=5.0)
    parser.add_argument("--pool", type=int, default=600, help="distinct photos built up front")
    args = parser.parse_args(argv)
    args.overload_clients = args.overload_clients or 3 * args.peak_clients
    return args


@contextmanager
def gateway_under_test(args: argparse.Namespace):
    """(url, pids to watch, redis url): the --url gateway, or `python run_server.py` with QUEUE_LIMIT binding."""
    if args.url:
        yield args.url.rstrip("/"), {f"pid-{pid}": pid for pid in args.pid}, args.redis_url
        return
    saved = {name: os.environ.get(name) for name in ("QUEUE_LIMIT", "CACHE_TTL")}
    os.environ.update({"QUEUE_LIMIT": str(args.queue_limit), "CACHE_TTL": "0"})
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    gateway = Gateway(Path(args.json).with_suffix(".gateway.log"))
    try:
        log(f"starting python run_server.py (QUEUE_LIMIT={args.queue_limit}, CACHE_TTL=0) on port {gateway.port}")
        gateway.start()
        yield gateway.url, {"gateway": gateway.process.pid}, gateway.url
    finally:
        gateway.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def find_saturation(clients: RetryingClients, levels: list[int], seconds: float, warmup_s: float) -> dict:
    """Goodput per level; the saturating concurrency is the smallest level within 5 % of the best."""
    goodput = {}
    for level in levels:
        window_s, shots = clients.run(level, seconds, warmup_s)
        goodput[level] = summarise(shots, window_s)["goodput_per_s"]
        log(f"sweep c={level}: {goodput[level]:.1f} answers/s")
    best = max(goodput.values(), default=0.0)
    saturating = min((level for level, value in goodput.items() if value >= 0.95 * best), default=None)
    return {"goodput_per_s": goodput, "saturating_concurrency": saturating}


def overload_phase(clients: RetryingClients, args: argparse.Namespace, roots: dict[str, int],
                   redis_url: str | None) -> tuple[dict, dict, dict]:
    """The overload, memory sampled twice a second: (summary, floor of its first quarter, of its last quarter)."""
    marks: dict[str, float] = {}
    with MemorySampler(roots, redis_url, period_s=0.5) as sampler:
        window_s, shots = clients.run(args.overload_clients, args.duration, args.warmup,
                                      lambda edge: marks.__setitem__(edge, time.perf_counter()))
    quarter_s = window_s / 4
    return (summarise(shots, window_s), sampler.floor(marks["start"], marks["start"] + quarter_s),
            sampler.floor(marks["end"] - quarter_s, marks["end"]))


def verdict(peak: dict, over: dict, growth: dict, request_timeout: float) -> dict:
    """The issue's four checks."""
    ratio = over["goodput_per_s"] / peak["goodput_per_s"] if peak["goodput_per_s"] else 0.0
    return {"goodput_ratio": round(ratio, 3), "goodput_ok": ratio >= 0.9,
            "refusals_all_server_busy": not over["other_errors"],
            "refusal_p99_ok": over["refusal_p99_ms"] is None or over["refusal_p99_ms"] <= 50.0,
            "accepted_within_request_timeout": (over["ok_max_ms"] or 0) <= request_timeout * 1000,
            "memory_flat": flat(growth)}


def run(args: argparse.Namespace) -> dict:
    config = settings_module.load()
    started = time.perf_counter()
    pool = BodyPool.from_jpegs(make_photos(0, args.pool, DEFAULT_RECIPE, processes=os.cpu_count() or 1))
    log(f"{args.pool} distinct photos ({time.perf_counter() - started:.1f} s); bodies past them get a unique marker")
    machine = system.machine_info()
    with gateway_under_test(args) as (url, roots, redis_url):
        clients = RetryingClients(url, pool, config.request_timeout + 10, args.retry_ms / 1000)
        levels = [int(level) for level in args.sweep.split(",") if level.strip()]
        saturation = find_saturation(clients, levels, args.sweep_seconds, 1.0) if levels else {}
        window_s, shots = clients.run(args.peak_clients, args.duration, args.warmup)
        peak = summarise(shots, window_s)
        log(f"peak c={args.peak_clients}: {peak['goodput_per_s']:.1f} answers/s, p99 {peak['ok_p99_ms']} ms")
        over, memory_start, memory_end = overload_phase(clients, args, roots, redis_url)
        log(f"overload c={args.overload_clients}: {over['goodput_per_s']:.1f} answers/s, "
            f"{over['refusals_per_s']:.0f} refusals/s (p99 {over['refusal_p99_ms']} ms), others {over['other_errors']}")
    growth = memory_growth(memory_start, memory_end)
    return {"mode": "overload", "saturation": saturation, "peak": {"clients": args.peak_clients, **peak},
            "overload": {"clients": args.overload_clients, "retry_ms": args.retry_ms, **over},
            "checks": verdict(peak, over, growth, config.request_timeout), "memory": growth,
            "memory_snapshots": {"start": memory_start, "end": memory_end},
            "settings": {"queue_limit": args.queue_limit if not args.url else "of the --url gateway",
                         "request_timeout": config.request_timeout, "duration_s": args.duration,
                         "bodies_reused_with_marker": pool.marked},
            "machine": {**machine, "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}}


def format_table(result: dict) -> str:
    peak, over, checks = result["peak"], result["overload"], result["checks"]
    lines = [f"saturation sweep: {result['saturation'].get('goodput_per_s')} -> saturating concurrency "
             f"{result['saturation'].get('saturating_concurrency')}",
             f"peak     c={peak['clients']:<3} goodput {peak['goodput_per_s']:7.1f}/s  p99 {peak['ok_p99_ms']} ms",
             f"overload c={over['clients']:<3} goodput {over['goodput_per_s']:7.1f}/s  ({checks['goodput_ratio']:.0%} "
             f"of peak)  ok p99 {over['ok_p99_ms']} ms, max {over['ok_max_ms']} ms",
             f"refusals {over['refused_503_server_busy']} x 503 SERVER_BUSY ({over['refusals_per_s']}/s), "
             f"p50 {over['refusal_p50_ms']} ms, p99 {over['refusal_p99_ms']} ms; other errors {over['other_errors']}"]
    for name, row in result["memory"].items():
        lines.append(f"memory {name}: {row.get('start_kib', row.get('start_bytes'))} -> "
                     f"{row.get('end_kib', row.get('end_bytes'))} ({row['growth_pct']} %)")
    lines.append("checks: " + ", ".join(f"{name}={value}" for name, value in checks.items()))
    return "\n".join(lines)


def write_report(result: dict, table: str, path: str) -> None:
    """The table to the terminal and next to the JSON (<json>.txt), the result to the JSON."""
    print(f"\n{table}")
    report.write_json(result, path)
    Path(path).with_suffix(".txt").write_text(table + "\n")
    log(f"wrote {path} and its .txt")


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    result = run(args)
    write_report(result, format_table(result), args.json)
