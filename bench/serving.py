"""The serving path's own CPU per image: web process, worker process and Redis apart, model and decode taken out.

    python -m bench --serving --json bench/out/serving.json [--baseline REF] [--rounds 3] [--duration 10]

The gateway runs as three processes on one private redis-server: `run_server.py --no-worker` (the web
tier), `classify_worker.py` (the worker, its metrics on a port of its own) and redis-server, so each one's
CPU is read from /proc apart. The load is the main bench's: C closed-loop clients (16) posting distinct
photos to /predict. Over each measured window:

- `cpu_ms_per_image`: web, worker and redis CPU per answered image;
- `decode_cpu_ms` and `model_cpu_ms`: what the gateway's own counters say those two steps cost
  (gateway_decode_cpu_seconds_total in the web tier, gateway_model_cpu_seconds_total in the worker, each
  timed on its own thread);
- `server_cpu_ms_per_image`: (web - decode) + (worker - model) + redis, what the serving path itself costs;
- `client_cpu_ms_per_image`: the load generator's own CPU, measured in this process. It runs in its own
  process, so none of it is inside the server's figure: it is reported, not subtracted.

With `--baseline REF` (a git commit or branch) the same runs against a worktree of REF, alternating round
by round with this checkout, so both see the same machine. A commit from before the CPU counters has no
decode or model figure: its server figure uses this checkout's (the same code runs both steps).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import loadgen, log, system
from bench.scrape import counters
from image_gateway import processes
from image_gateway.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
STEP_COUNTERS = ("gateway_decode_cpu_seconds_total", "gateway_model_cpu_seconds_total",
                 "gateway_batch_size_sum", "gateway_batch_size_count")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench --serving", description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True, help="where to write the results")
    parser.add_argument("--baseline", help="a git ref to measure too, round by round (a temporary worktree)")
    parser.add_argument("--rounds", type=int, default=3, help="measured windows per checkout (3)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per window (10)")
    parser.add_argument("--concurrency", type=int, default=16, help="closed-loop clients (16)")
    parser.add_argument("--photos", type=int, default=3000, help="distinct photos built up front (3000)")
    return parser.parse_args(argv)


class Deployment:
    """Web process, worker process and a private redis-server of one checkout."""

    def __init__(self, checkout: Path, port: int, log_path: Path):
        self.checkout, self.port, self.log_path = checkout, port, log_path
        self.url = f"http://127.0.0.1:{port}"
        self.worker_url = f"http://127.0.0.1:{port + 1}"

    def __enter__(self) -> Deployment:
        self.redis = RedisServer(None).start()
        env = {**os.environ, "REDIS_URL": self.redis.url, "PORT": str(self.port), "METRICS_PORT": str(self.port + 1),
               "PYTHONPATH": str(self.checkout), "PIPELINES": "", "CACHE_TTL": os.environ.get("CACHE_TTL", "3600")}
        started = dict(log_path=self.log_path, append=True, env=env, cwd=self.checkout, die_with_parent=True)
        self.web = processes.start([sys.executable, "run_server.py", "--no-worker"], **started)
        self.worker = processes.start([sys.executable, "classify_worker.py"], **started)
        deadline = time.monotonic() + 300
        while not (processes.get_json(self.url + "/readyz") or {}).get("ready"):
            if time.monotonic() > deadline or self.web.poll() is not None or self.worker.poll() is not None:
                self.__exit__()
                raise RuntimeError(f"the gateway of {self.checkout} did not become ready (log {self.log_path})")
            time.sleep(0.5)
        return self

    def __exit__(self, *exc) -> None:
        for process in (self.web, self.worker):
            processes.stop(process, 30)
        self.redis.close()

    def cpu_s(self) -> dict[str, float]:
        return {"web": sum(system.tree_cpu(self.web.pid).values()),
                "worker": sum(system.tree_cpu(self.worker.pid).values()),
                "redis": sum(system.tree_cpu(self.redis.process.pid).values())}

    def steps(self) -> dict[str, float]:
        """The step counters, summed over both processes (each exports every counter; one of them moves)."""
        web, worker = counters(self.url, STEP_COUNTERS), counters(self.worker_url, STEP_COUNTERS)
        return {name: web.get(name, 0.0) + worker.get(name, 0.0) for name in {*web, *worker}}


def measure(deployment: Deployment, pool: loadgen.BodyPool, args: argparse.Namespace) -> dict:
    """One measured window against a running deployment."""
    marks: dict[str, tuple] = {}

    def on_window(edge: str) -> None:
        marks[edge] = (deployment.cpu_s(), deployment.steps(), system.own_cpu_s())

    generator = loadgen.LoadGenerator(deployment.url, pool, timeout_s=30)
    summary = generator.run_level(args.concurrency, args.duration, 2.0, on_window).summary()
    images = max(1, summary["ok"])
    (cpu0, steps0, own0), (cpu1, steps1, own1) = marks["start"], marks["end"]
    per_image = {name: round(1000 * (cpu1[name] - cpu0[name]) / images, 3) for name in cpu0}
    step = {name: steps1.get(name, 0.0) - steps0.get(name, 0.0) for name in STEP_COUNTERS}
    counted = "gateway_decode_cpu_seconds_total" in steps1
    row = {"images_per_s": summary["images_per_s"], "errors": summary["errors"], "p50_ms": summary["p50_ms"],
           "cpu_ms_per_image": per_image,
           "decode_cpu_ms": round(1000 * step["gateway_decode_cpu_seconds_total"] / images, 3) if counted else None,
           "model_cpu_ms": round(1000 * step["gateway_model_cpu_seconds_total"] / images, 3) if counted else None,
           "mean_batch_size": round(step["gateway_batch_size_sum"] / max(1.0, step["gateway_batch_size_count"]), 2),
           "client_cpu_ms_per_image": round(1000 * (own1 - own0) / images, 3)}
    log(f"{deployment.checkout.name}: {row['images_per_s']} images/s, cpu ms/image {per_image}, decode "
        f"{row['decode_cpu_ms']}, model {row['model_cpu_ms']}, batch {row['mean_batch_size']}")
    return row


def server_cpu(row: dict, decode_ms: float, model_ms: float) -> float:
    cpu = row["cpu_ms_per_image"]
    return round(cpu["web"] - decode_ms + cpu["worker"] - model_ms + cpu["redis"], 3)


def summarise(rows: list[dict], steps: tuple[float, float] | None = None) -> dict:
    """The median of each figure over the rounds, and the serving path's CPU."""
    median = lambda values: round(statistics.median(values), 3)      # noqa: E731
    cpu = {name: median([r["cpu_ms_per_image"][name] for r in rows]) for name in rows[0]["cpu_ms_per_image"]}
    out = {key: median([r[key] for r in rows]) for key in ("images_per_s", "p50_ms", "mean_batch_size",
                                                             "client_cpu_ms_per_image")}
    decode, model = steps or (median([r["decode_cpu_ms"] for r in rows]), median([r["model_cpu_ms"] for r in rows]))
    out.update({"cpu_ms_per_image": cpu, "decode_cpu_ms": decode, "model_cpu_ms": model,
                "errors": sum(r["errors"] for r in rows), "rounds": rows,
                "server_cpu_ms_per_image": server_cpu({"cpu_ms_per_image": cpu}, decode, model),
                "stages_ms_per_image": {"web_serving": round(cpu["web"] - decode, 3), "decode": decode,
                                        "worker_serving": round(cpu["worker"] - model, 3), "model": model,
                                        "redis": cpu["redis"]}})
    return out


def worktree(ref: str, folder: Path) -> Path:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(folder), ref], check=True,
                   capture_output=True)
    return folder


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    log(f"building {args.photos} distinct photos")
    pool = loadgen.BodyPool.from_jpegs(loadgen.make_photos(0, args.photos, processes=os.cpu_count() or 1))
    with tempfile.TemporaryDirectory(prefix="bench-baseline-") as scratch:
        checkouts = {"current": ROOT}
        if args.baseline:
            checkouts["baseline"] = worktree(args.baseline, Path(scratch) / "baseline")
        try:
            rows = run_rounds(checkouts, pool, args, out)
        finally:
            if args.baseline:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(checkouts["baseline"])],
                               capture_output=True)
    result = {"current": summarise(rows["current"])}
    if args.baseline:
        counted = all(row["decode_cpu_ms"] is not None for row in rows["baseline"])
        steps = None if counted else (result["current"]["decode_cpu_ms"], result["current"]["model_cpu_ms"])
        result["baseline"] = {"ref": args.baseline, **summarise(rows["baseline"], steps)}
        result["server_cpu_ratio"] = round(result["current"]["server_cpu_ms_per_image"]
                                           / result["baseline"]["server_cpu_ms_per_image"], 3)
    result["machine"] = system.machine_info()
    result["load"] = {"concurrency": args.concurrency, "duration_s": args.duration, "rounds": args.rounds,
                      "distinct_bodies_sent": pool.taken}
    out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"server_cpu_ms_per_image {result['current']['server_cpu_ms_per_image']}"
        + (f", baseline {result['baseline']['server_cpu_ms_per_image']}, ratio {result['server_cpu_ratio']}"
           if args.baseline else "") + f"; written to {out}")


def run_rounds(checkouts: dict[str, Path], pool: loadgen.BodyPool, args: argparse.Namespace,
               out: Path) -> dict[str, list[dict]]:
    """`rounds` windows per checkout, alternating between them; each window on a deployment started for it
    (never two at once)."""
    rows: dict[str, list[dict]] = {name: [] for name in checkouts}
    port = free_port()
    deployments = {name: Deployment(path, port + 2 * i, out.with_suffix(f".{name}.log"))
                   for i, (name, path) in enumerate(checkouts.items())}
    for round_number in range(args.rounds):
        for name, deployment in deployments.items():
            with deployment:
                time.sleep(1.0)
                rows[name].append(measure(deployment, pool, args))
        log(f"round {round_number + 1}/{args.rounds} done")
    return rows
