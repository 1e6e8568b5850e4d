"""End-to-end benchmark: raw model baseline, then the gateway under a closed-loop concurrency sweep.

    python -m bench --json results/bench.json [--url URL] [--duration S] [--concurrency 1,4,16,64]
                    [--png PATH] [--quick]

Order (never two measurements at once): build the photo pool; measure the raw model in a child process
(its TensorFlow threads and memory are gone before anything else runs); time each gateway stage in this
process; start `python run_server.py` (unless --url); sweep; stop it; print, write JSON and PNG.
See bench/README.md for what every number means.
"""
from __future__ import annotations

import argparse
import gc
import http.client
import importlib.metadata
import io
import json
import os
import platform
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import classify_worker  # noqa: E402  (its threading settings; no TensorFlow here)
import imaging  # noqa: E402
import models  # noqa: E402  (get_spec only: no TensorFlow in this process)
import protocol  # noqa: E402
import settings as settings_module  # noqa: E402
from bench import loadgen, report  # noqa: E402
from redis_server import RedisServer, free_port  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ------------------------------------------------------------------------------- command line
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True, help="where to write the results")
    parser.add_argument("--png", help="the plot (default: the JSON path with .png)")
    parser.add_argument("--url", help="benchmark this running gateway instead of starting one")
    parser.add_argument("--pid", type=int, help="with --url: a local gateway's pid, to account its CPU")
    parser.add_argument("--quick", action="store_true", help="levels 1,16 for 3 s each, shorter raw run")
    parser.add_argument("--duration", type=float, help="seconds measured per concurrency level (10; quick 3)")
    parser.add_argument("--warmup", type=float, help="seconds of unmeasured load before each level (2; quick 1)")
    parser.add_argument("--concurrency", help="comma-separated levels (1,4,16,64; quick 1,16)")
    parser.add_argument("--raw-seconds", type=float, help="seconds per raw batch size (3; quick 1.5)")
    parser.add_argument("--raw-batch-sizes", help="raw batch sizes (1,8,16,32,64 and BATCH_SIZE)")
    parser.add_argument("--pool", type=int, help="distinct photos built up front (2000; quick 500); more are "
                        "built between levels when a level could use them up")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-breakdown", action="store_true", help="skip the per-stage CPU micro-benchmarks")
    parser.add_argument("--timeout", type=float, help="client socket timeout, s (REQUEST_TIMEOUT + 10)")
    args = parser.parse_args(argv)
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)
    args.concurrency = [int(c) for c in (args.concurrency or ("1,16" if args.quick else "1,4,16,64")).split(",")]
    args.raw_seconds = args.raw_seconds or (1.5 if args.quick else 3.0)
    args.pool = args.pool or (500 if args.quick else 2000)
    args.png = args.png or str(Path(args.json).with_suffix(".png"))
    return args


# ------------------------------------------------------------------------------ CPU accounting
def process_tree(root: int) -> list[int]:
    """root and all its descendants (the gateway and its embedded redis-server)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _read_stat(int(entry))
            if stat:
                children.setdefault(stat[1], []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def _read_stat(pid: int) -> tuple[str, int, float] | None:
    """(command name, parent pid, utime+stime seconds) from /proc/<pid>/stat."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = text[text.index("(") + 1:text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    return name, int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def tree_cpu(root: int | None) -> dict[str, float]:
    """CPU seconds so far of each process of the tree, by '<name>:<pid>'."""
    if root is None:
        return {}
    cpu = {}
    for pid in process_tree(root):
        stat = _read_stat(pid)
        if stat:
            cpu[f"{stat[0]}:{pid}"] = stat[2]
    return cpu


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before.get(name, 0.0) for name in after}


def machine_busy_s() -> float:
    """CPU seconds all processes of the machine have been busy (from /proc/stat), to see other load."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ------------------------------------------------------------------------------ machine, settings
def machine_info() -> dict:
    cpu_model = ""
    try:
        cpu_model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                          if line.startswith("model name")), "")
    except OSError:
        pass
    from PIL import features

    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "cpu_model": cpu_model, "nproc": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "kernel": platform.release(), "python": platform.python_version(),
        "tensorflow": version("tensorflow") or version("tensorflow-cpu"), "keras": version("keras"),
        "numpy": np.__version__, "pillow": version("pillow"), "libjpeg_turbo": features.check_feature("libjpeg_turbo"),
        "flask": version("flask"), "werkzeug": version("werkzeug"), "cheroot": version("cheroot"), "redis_py": version("redis"),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
    }


def settings_record(config: settings_module.Settings, source: str) -> dict:
    record = {k: v for k, v in config.__dict__.items() if k not in ("api_key", "redis_url")}
    record["redis"] = "REDIS_URL" if config.redis_url else "embedded"
    record["source"] = source
    return record


# ------------------------------------------------------------------------------- raw baseline
# The other honest way to run the model: one caller whose predict uses every core.
ONE_CALLER = {"WORKER_THREADS": "1", "MODEL_THREADS": "0"}


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
    classify_worker.set_framework_threads(config)      # the worker's own threading, before TensorFlow loads
    threads = classify_worker.predict_threads(config)
    started = time.perf_counter()
    classifier = models.load_model(config.model, weights_path=config.model_weights, labels_path=config.model_labels)
    load_s = time.perf_counter() - started
    import keras

    from bench.raw_model import measure_raw
    rows = {}
    for batch_size in sorted({int(b) for b in args.batch_sizes.split(",")}):
        cpu_before = time.process_time()
        row = measure_raw(classifier, (batch_size,), args.seconds, threads)[batch_size]
        images = batch_size * (row["calls"] + 1)    # + measure_batch's untimed warm-up call
        row["cpu_ms_per_image"] = 1000 * (time.process_time() - cpu_before) / images
        row["model_threads"] = config.model_threads
        rows[batch_size] = row
        print(f"  raw batch {batch_size:>3} x {threads} callers ({config.model_threads or 'default'} threads each): "
              f"{row['images_per_s']:7.1f} images/s  p50 {row['latency_ms_p50']:7.2f} ms"
              f"  cpu {row['cpu_ms_per_image']:.2f} ms/image", flush=True)
    # One image at a time, one caller: what a lone request meets (concurrent callers run faster each).
    alone = measure_raw(classifier, (1,), args.seconds, threads=1)[1]
    check = real_photo_check(classifier, config, args.seconds, threads)
    Path(args.out).write_text(json.dumps({"rows": rows, "load_s": load_s, "backend": keras.backend.backend(),
                                          "batch1_alone_ms": alone["latency_ms_p50"], "real_photo_check": check}))


def real_photo_check(classifier, config: settings_module.Settings, seconds: float, threads: int) -> dict:
    """measure_raw feeds random pixels; the same timing (same batch, same callers) on preprocessed real
    photos shows whether the network's cost depends on the content (it is dense arithmetic)."""
    from bench.raw_model import measure_batch
    spec = classifier.spec
    photos = [imaging.prepare_image(path.read_bytes(), size=spec.input_size, crop_fraction=spec.crop_fraction,
                                    resample=spec.resample, max_pixels=config.max_image_pixels)
              for path in sorted(loadgen.PHOTO_DIR.glob("*.jpg"))]
    photos += [np.ascontiguousarray(p[:, ::-1]) for p in photos]
    real = np.stack([photos[i % len(photos)] for i in range(config.batch_size)])
    random = np.random.default_rng(1).integers(0, 256, real.shape, dtype=np.uint8)
    return {"batch_size": config.batch_size, "callers": threads,
            "real_images_per_s": round(measure_batch(classifier, real, seconds, threads)["images_per_s"], 2),
            "random_images_per_s": round(measure_batch(classifier, random, seconds, threads)["images_per_s"], 2)}


# ------------------------------------------------------------------------- per-stage CPU costs
def per_image_cpu_ms(work, items) -> float:
    """CPU ms of this process per item for work(item), after one untimed call."""
    work(items[0])
    started = time.process_time()
    for item in items:
        work(item)
    return 1000 * (time.process_time() - started) / len(items)


def stage_costs(jpegs: list[bytes], spec, config: settings_module.Settings) -> tuple[dict, dict]:
    """CPU ms per image of each stage the gateway runs, timed alone in this process:
    ({stage: ms}, {details})."""
    from werkzeug.test import EnvironBuilder
    from werkzeug.wrappers import Request

    from classify_worker import top_predictions
    from run_server import to_wire

    def prepare(jpeg: bytes) -> np.ndarray:
        return imaging.prepare_image(jpeg, size=spec.input_size, crop_fraction=spec.crop_fraction,
                                     resample=spec.resample, max_pixels=config.max_image_pixels)

    costs, details = {}, {"images": len(jpegs), "mean_jpeg_kib": round(float(np.mean([len(j) for j in jpegs])) / 1024, 1)}
    costs["decode_resize"] = per_image_cpu_ms(prepare, jpegs)
    arrays = [prepare(jpeg) for jpeg in jpegs]

    def environ(jpeg: bytes) -> dict:
        body = loadgen.multipart_body(jpeg)
        return EnvironBuilder(path="/predict", method="POST", input_stream=io.BytesIO(body),
                              content_type=loadgen.CONTENT_TYPE, content_length=len(body)).get_environ()

    environ_iter = iter([environ(jpeg) for jpeg in jpegs[:1] + jpegs])   # one each, plus the warm-up's
    costs["multipart_parse"] = per_image_cpu_ms(lambda _: Request(next(environ_iter)).files["image"].read(), jpegs)

    for dtype in protocol.WIRE_DTYPES:
        def encode(array, dtype=dtype) -> bytes:
            return protocol.Job(id=protocol.new_job_id(), model=spec.name, deadline=time.time() + 10,
                                array=to_wire(array, dtype), trace_id="t" * 32).encode()
        messages = [encode(array) for array in arrays]
        costs[f"serialise_{dtype}"] = (per_image_cpu_ms(encode, arrays)
                                       + per_image_cpu_ms(protocol.Job.decode, messages))
        details[f"message_kib_{dtype}"] = round(len(messages[0]) / 1024, 1)
        stacked = [protocol.Job.decode(m).array for m in messages[:config.batch_size]]
        costs[f"batch_stack_{dtype}"] = per_image_cpu_ms(lambda _: np.stack(stacked), [0] * 20) / len(stacked)
    costs["serialise"] = costs[f"serialise_{config.wire_dtype}"]
    costs["batch_stack"] = costs[f"batch_stack_{config.wire_dtype}"]

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(len(arrays), len(spec.labels))).astype(np.float32)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    costs["postprocess"] = per_image_cpu_ms(
        lambda row: json.dumps(protocol.success_result("x" * 36, top_predictions(row, spec.labels, config.top_k))),
        list(probabilities))

    redis_cost, redis_details = redis_costs(arrays, spec, config)
    costs["redis"] = redis_cost
    details.update(redis_details)
    return {k: round(v, 3) for k, v in costs.items()}, details


class _Encoded:
    """A Job stand-in whose encode() is already done, so the Redis timing excludes serialisation."""

    def __init__(self, raw: bytes):
        self.raw = raw

    def encode(self) -> bytes:
        return self.raw


def redis_costs(arrays: list[np.ndarray], spec, config: settings_module.Settings,
                min_seconds: float = 1.0) -> tuple[float, dict]:
    """CPU ms per image (this client + redis-server) of the job's Redis round trips: cache lookup,
    enqueue, claim, publish with ack, BLPOP; claims and publishes batched at BATCH_SIZE as the worker
    does."""
    import redis

    from classify_worker import top_predictions
    messages = []
    for array in arrays:
        job = protocol.Job(id=protocol.new_job_id(), model=spec.name, deadline=time.time() + 600,
                           array=np.ascontiguousarray(array, dtype=config.wire_dtype), trace_id="t" * 32)
        messages.append((job.id, _Encoded(job.encode())))
    predictions = top_predictions(np.linspace(0, 1, len(spec.labels)), spec.labels, config.top_k)
    batch = max(1, min(config.batch_size, len(messages)))
    with RedisServer(config.redis_server_bin) as server:
        client = redis.Redis.from_url(server.url)
        queue = protocol.JobQueue(client, spec.name, "bench")

        def round_trip(group: list) -> None:
            for job_id, message in group:
                assert queue.cached(job_id) is None       # the handler's cache lookup, a miss
                queue.enqueue(message, 10_000)
            claimed = queue.claim("bench-worker", len(group))
            assert len(claimed) == len(group)
            queue.publish([protocol.success_result(job_id, predictions) for job_id, _ in group], 60,
                          ack=("bench-worker", len(group)))
            for job_id, _ in group:
                assert queue.wait_result(job_id, 5.0) is not None

        groups = [messages[i:i + batch] for i in range(0, len(messages) - batch + 1, batch)] or [messages]
        results = {}
        for name, work in (("batched", groups), ("single", [[m] for m in messages])):
            round_trip(work[0])
            server_before, own_before, wall_before = tree_cpu(server.process.pid), time.process_time(), time.perf_counter()
            images = 0
            while images == 0 or time.perf_counter() - wall_before < min_seconds:   # /proc counts in 10 ms ticks
                for group in work:
                    round_trip(group)
                    images += len(group)
            server_s = sum(cpu_delta(server_before, tree_cpu(server.process.pid)).values())
            results[name] = {"cpu_ms": 1000 * (time.process_time() - own_before + server_s) / images,
                             "server_cpu_ms": 1000 * server_s / images,
                             "wall_ms": 1000 * (time.perf_counter() - wall_before) / images}
        client.close()
    details = {f"redis_{name}_{k}": round(v, 3) for name, row in results.items() for k, v in row.items()}
    details["redis_batch_size"] = batch
    return results["batched"]["cpu_ms"], details


def http_costs(url: str, root_pid: int | None, min_seconds: float) -> dict:
    """Per GET /healthz on the running gateway: the client's wall ms and the gateway's CPU ms."""
    connection = http.client.HTTPConnection(*_host_port(url), timeout=10)
    path = urlsplit(url).path.rstrip("/") + "/healthz"

    def get() -> None:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"GET /healthz answered {response.status}")

    for _ in range(20):
        get()
    idle_before = tree_cpu(root_pid)
    time.sleep(1.0)
    idle_s = sum(cpu_delta(idle_before, tree_cpu(root_pid)).values())   # heartbeats, idle worker
    before, started, requests = tree_cpu(root_pid), time.perf_counter(), 0
    while requests < 50 or time.perf_counter() - started < min_seconds:   # /proc counts in 10 ms ticks
        get()
        requests += 1
    wall = time.perf_counter() - started
    busy_s = sum(cpu_delta(before, tree_cpu(root_pid)).values()) - idle_s * wall
    connection.close()
    return {"http_healthz_wall_ms": round(1000 * wall / requests, 3),
            "http_healthz_gateway_cpu_ms": round(1000 * busy_s / requests, 3) if root_pid else None}


def _host_port(url: str) -> tuple[str, int]:
    parsed = urlsplit(url)
    return parsed.hostname, parsed.port or 80


# ---------------------------------------------------------------------------- the gateway itself
class Gateway:
    """`python run_server.py --port P` (embedded Redis + worker thread) as a child process."""

    def __init__(self, log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.descendants: list[int] = []

    def start(self, timeout_s: float = 300.0) -> "Gateway":
        log_file = open(self.log_path, "wb")
        self.process = subprocess.Popen([sys.executable, "run_server.py", "--host", "127.0.0.1", "--port", str(self.port)],
                                        cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log_file.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the gateway exited ({self.process.returncode}); its log:\n{self.log_tail()}")
            if _get_status(self.url + "/readyz") == 200:
                self.descendants = process_tree(self.process.pid)[1:]
                return self
            time.sleep(0.25)
        self.stop()
        raise SystemExit(f"the gateway was not ready within {timeout_s:.0f} s; its log:\n{self.log_tail()}")

    def stop(self) -> int | None:
        """SIGTERM (the gateway finishes requests in flight and stops its Redis), then wait."""
        if not self.process or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for pid in self.descendants:          # an embedded redis-server orphaned by a kill
            if _read_stat(pid):
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        return self.process.returncode

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _get_status(url: str) -> int | None:
    try:
        connection = http.client.HTTPConnection(*_host_port(url), timeout=5)
        connection.request("GET", urlsplit(url).path or "/")
        status = connection.getresponse().status
        connection.close()
        return status
    except (OSError, http.client.HTTPException):
        return None


def _get_text(url: str) -> str | None:
    try:
        connection = http.client.HTTPConnection(*_host_port(url), timeout=10)
        connection.request("GET", urlsplit(url).path or "/")
        response = connection.getresponse()
        text = response.read().decode(errors="replace")
        connection.close()
        return text if response.status == 200 else None
    except (OSError, http.client.HTTPException):
        return None


METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")
WATCHED_METRICS = ("gateway_batch_size_sum", "gateway_batch_size_count", "gateway_inference_seconds_sum",
                   "gateway_cache_hits_total", "gateway_timeouts_total", "gateway_jobs_expired_total")


def scrape(url: str) -> dict[str, float]:
    """The gateway's counters that explain a level: batch sizes, model time, cache hits, timeouts."""
    text = _get_text(url.rstrip("/") + "/metrics") or ""
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = METRIC_LINE.match(line)
        if match and (match.group(1) in WATCHED_METRICS or match.group(1) == "gateway_batch_size_bucket"):
            key = match.group(1) + (match.group(2) or "")
            try:
                values[key] = values.get(key, 0.0) + float(match.group(3))
            except ValueError:
                pass
    return values


def level_diagnostics(before: dict, after: dict, window_s: float) -> dict:
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    batches = delta.get("gateway_batch_size_count", 0.0)
    out = {"mean_batch_size": round(delta.get("gateway_batch_size_sum", 0.0) / batches, 2) if batches else None,
           "batches": int(batches),
           "model_busy_fraction": round(delta.get("gateway_inference_seconds_sum", 0.0) / window_s, 3) if after else None,
           "cache_hits": int(delta.get("gateway_cache_hits_total", 0.0)),
           "timeouts": int(delta.get("gateway_timeouts_total", 0.0)),
           "expired": int(delta.get("gateway_jobs_expired_total", 0.0))}
    buckets = {re.search(r'le="([^"]+)"', k).group(1): v for k, v in delta.items() if k.startswith("gateway_batch_size_bucket")}
    if buckets:
        out["batch_size_buckets"] = {le: int(v) for le, v in buckets.items()}   # cumulative, as Prometheus counts
    return out


# -------------------------------------------------------------------------------------- the run
def ensure_pool(pool: loadgen.BodyPool, needed: int, recipe: loadgen.PhotoRecipe) -> None:
    missing = needed - pool.remaining()
    if missing > 0:
        started = time.perf_counter()
        pool.extend_jpegs(loadgen.make_photos(len(pool.bodies), missing, recipe, processes=os.cpu_count() or 1))
        log(f"built {missing} more distinct photos ({time.perf_counter() - started:.1f} s, not measured)")


def sweep(args, url: str, pool: loadgen.BodyPool, recipe, root_pid: int | None, raw_ips: float,
          raw_batch1_ms: float, timeout_s: float) -> dict:
    generator = loadgen.LoadGenerator(url, pool, timeout_s=timeout_s)
    ensure_pool(pool, int(min(raw_ips, 4000 / raw_batch1_ms) * max(args.warmup, 1.0) * 1.5) + 64, recipe)
    log(f"warm-up: {max(args.warmup, 1.0):.1f} s at concurrency 4")
    generator.run_level(4, max(args.warmup, 1.0))
    levels = {}
    for concurrency in args.concurrency:
        # The gateway cannot beat the raw model, nor C clients answered no faster than batch 1.
        expected_ips = min(raw_ips, concurrency * 1000 / raw_batch1_ms)
        ensure_pool(pool, int(expected_ips * (args.duration + args.warmup) * 1.3) + 4 * concurrency, recipe)
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
        images = max(summary["ok"], 1)
        gateway_cpu = cpu_delta(marks["start"][0], marks["end"][0])
        summary.update(level_diagnostics(marks["metrics"], marks["metrics_end"], result.window_s))
        summary["gateway_cpu_ms_per_image"] = round(1000 * sum(gateway_cpu.values()) / images, 2) if root_pid else None
        summary["gateway_cpu_ms_per_image_by_process"] = {k: round(1000 * v / images, 2) for k, v in gateway_cpu.items() if v > 0}
        summary["gateway_cpu_cores"] = round(sum(gateway_cpu.values()) / result.window_s, 2) if root_pid else None
        summary["client_cpu_ms_per_image"] = round(1000 * (marks["end"][1] - marks["start"][1]) / images, 2)
        machine_cores = (marks["end"][2] - marks["start"][2]) / result.window_s
        client_cores = (marks["end"][1] - marks["start"][1]) / result.window_s
        summary["client_cpu_cores"] = round(client_cores, 2)
        summary["machine_busy_cores"] = round(machine_cores, 2)
        if root_pid:   # CPU of everything that is neither the gateway nor this client: colleagues, noise
            summary["other_processes_cores"] = round(machine_cores - client_cores - summary["gateway_cpu_cores"], 2)
        summary["reused_bodies"] = pool.marked - marked_before
        levels[concurrency] = summary
        log(f"c={concurrency:<3} {summary['images_per_s']:7.1f} images/s  p50 {summary['p50_ms']} ms  p99 {summary['p99_ms']} ms"
            f"  errors {summary['errors']}  mean batch {summary['mean_batch_size']}  gateway cpu "
            f"{summary['gateway_cpu_ms_per_image']} ms/image  client cpu {summary['client_cpu_ms_per_image']} ms/image")
    return levels


def cpu_summary(stages: dict, http: dict, raw_rows: dict, levels: dict) -> dict:
    """Per-image CPU of each stage, the model's own, their sum and the measured total at saturation."""
    summary = {k: stages[k] for k in ("decode_resize", "multipart_parse", "serialise", "redis", "batch_stack", "postprocess")
               if k in stages}
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


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_raw"]:
        return raw_child(argv[1:])
    args = parse_args(argv)
    config = settings_module.load()
    spec = models.get_spec(config.model, weights_path=config.model_weights, labels_path=config.model_labels)
    machine = machine_info()
    recipe = loadgen.PhotoRecipe(seed=args.seed)
    timeout_s = args.timeout or config.request_timeout + 10

    started = time.perf_counter()
    jpegs = loadgen.make_photos(0, args.pool, recipe, processes=os.cpu_count() or 1)
    pool = loadgen.BodyPool.from_jpegs(jpegs)
    log(f"{len(jpegs)} distinct photos, mean {np.mean([len(j) for j in jpegs]) / 1024:.0f} KiB "
        f"({time.perf_counter() - started:.1f} s)")

    batch_sizes = ([int(b) for b in args.raw_batch_sizes.split(",")] if args.raw_batch_sizes
                   else sorted({1, 8, 16, 32, 64, config.batch_size}))
    log(f"raw model {spec.name}: batch sizes {batch_sizes}, {args.raw_seconds:g} s each (child process)")
    busy_before, children_before, wall_before = machine_busy_s(), _children_cpu_s(), time.perf_counter()
    raw = measure_raw_in_child(config, batch_sizes, args.raw_seconds)
    one_caller = measure_raw_in_child(config, batch_sizes, args.raw_seconds, ONE_CALLER)
    raw["other_processes_cores"] = round((machine_busy_s() - busy_before - (_children_cpu_s() - children_before))
                                         / (time.perf_counter() - wall_before), 2)
    raw_rows = best_raw_rows(raw["rows"], one_caller["rows"])
    raw_batch1_ms = min(raw["batch1_alone_ms"], one_caller["batch1_alone_ms"])
    best_batch, raw_ips = report.best_raw(raw_rows)
    log(f"raw best {raw_ips:.1f} images/s at batch {best_batch}; one image alone p50 {raw_batch1_ms:.2f} ms")

    stages, stage_details = {}, {}
    if not args.no_breakdown:
        sample = jpegs[: (60 if args.quick else 200)]
        stages, stage_details = stage_costs(sample, spec, config)
        log("stage CPU ms per image: " + ", ".join(f"{k} {v:.3f}" for k, v in stages.items()))
    del jpegs
    gc.collect()

    gateway = None
    try:
        if args.url:
            url, root_pid = args.url.rstrip("/"), args.pid
        else:
            gateway = Gateway(Path(args.json).with_suffix(".gateway.log"))
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            log(f"starting python run_server.py on port {gateway.port} (log {gateway.log_path})")
            gateway.start()
            url, root_pid = gateway.url, gateway.process.pid
            log(f"gateway ready ({url})")
        http = {} if args.no_breakdown else http_costs(url, root_pid, 1.0 if args.quick else 2.0)
        levels = sweep(args, url, pool, recipe, root_pid, raw_ips or 100.0,
                       raw_batch1_ms, timeout_s)
        status_text = _get_text(url + "/status")
    finally:
        exit_code = gateway.stop() if gateway else None
    gateway_status = json.loads(status_text) if status_text else None

    result = report.build_result(
        raw_rows, levels, raw_batch1_ms=raw_batch1_ms,
        cpu_per_image_ms=cpu_summary(stages, http, raw_rows, levels) if stages else {},
        settings=settings_record(config, "bench environment" + (" (the --url gateway may differ)" if args.url else "")),
        machine={**machine, "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
                 "tensorflow_backend": raw.get("backend")},
        raw_load_s=round(raw["load_s"], 2), raw_real_photo_check=raw.get("real_photo_check"),
        raw_other_processes_cores=raw.get("other_processes_cores"),
        cpu_breakdown_details={**stage_details, **http},
        gateway={"url": url if args.url else "embedded (python run_server.py)", "status_after": gateway_status,
                 "exit_code": exit_code, "log": str(gateway.log_path) if gateway else None},
        load={"duration_s": args.duration, "warmup_s": args.warmup, "concurrency": args.concurrency,
              "distinct_bodies_sent": pool.taken, "bodies_reused_with_marker": pool.marked,
              "pool_recipe": recipe.__dict__},
    )
    print()
    print(report.format_table(result))
    report.write_json(result, args.json)
    report.plot(result, args.png)
    log(f"wrote {args.json} and {args.png}")


if __name__ == "__main__":
    main()
