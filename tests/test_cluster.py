"""The scaled-out gateway: real nginx -> two real gunicorn web servers -> Redis -> two real worker processes.

One cluster for the module (the model loads once per worker). The tests that stop processes run last,
in file order: a web server under load, then the workers.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import DATA, ROOT, wait_for
from deploy import nginx_conf
from deploy.cluster import Cluster, ClusterError
from image_gateway import settings as settings_module
from image_gateway.redis_server import free_port

HEARTBEAT_TTL_S = 2.0
MAX_UPLOAD_BYTES = 2 * 1024 * 1024
PHOTOS = sorted(DATA.glob("*.jpg"))
CLUSTER_ENV = {"WORKER_THREADS": "1", "HEARTBEAT_INTERVAL": "0.5", "HEARTBEAT_TTL": str(HEARTBEAT_TTL_S),
               "CACHE_TTL": "0", "REQUEST_TIMEOUT": "10", "MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
               "LOG_FORMAT": "json", "LOG_LEVEL": "INFO"}


@pytest.fixture(scope="module")
def cluster():
    try:
        nginx_conf.find_nginx()
    except RuntimeError as error:
        pytest.fail(f"{error}: the cluster tests need a real nginx (.ci/run installs it)")
    cluster = Cluster(web=2, workers=2, env=CLUSTER_ENV)
    try:
        cluster.start(timeout_s=150)
    except ClusterError as error:
        pytest.fail(f"the cluster did not start: {error}")
    yield cluster
    cluster.stop()
    shutil.rmtree(cluster.run_dir, ignore_errors=True)


def predict(url: str, photo: Path, headers: dict | None = None) -> requests.Response:
    with open(photo, "rb") as image:
        return requests.post(f"{url}/predict", files={"image": image}, headers=headers or {}, timeout=30)


def burst(url: str, count: int, concurrency: int = 6) -> list[requests.Response]:
    with ThreadPoolExecutor(concurrency) as pool:
        responses = list(pool.map(lambda i: predict(url, PHOTOS[i % len(PHOTOS)]), range(count)))
    for response in responses:
        assert response.status_code == 200, response.text
    return responses


def live_workers(url: str) -> list[dict]:
    return requests.get(f"{url}/status", timeout=5).json()["workers"]


def requests_total(url: str, status: str | None = None) -> float:
    """gateway_requests_total of one web server (all its gunicorn processes), optionally one status."""
    text = requests.get(f"{url}/metrics", timeout=5).text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "gateway_requests_total" and status in (None, sample.labels.get("status")))


def json_lines(path: Path) -> list[dict]:
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except ValueError:
                pass
    return lines


# ------------------------------------------------------------------------- configuration agrees
def test_nginx_limits_agree_with_the_app():
    config = settings_module.load(CLUSTER_ENV)
    text = nginx_conf.render(["10.0.0.1:5000", "10.0.0.2:5000"], "0.0.0.0:80", "/tmp/x", config)
    assert f"client_max_body_size {config.max_upload_bytes};" in text
    read_timeout = int(re.search(r"proxy_read_timeout (\d+)s;", text).group(1))
    assert read_timeout > config.request_timeout
    # Failover on connection failures only: the app's own 503/504 answers are final.
    retry_on = re.search(r"^\s*proxy_next_upstream ([^;]*);", text, re.MULTILINE).group(1).split()
    assert sorted(retry_on) == ["error", "non_idempotent", "timeout"]
    assert text.count("server 10.0.0.") == 2


# --------------------------------------------------------------------------- the running cluster
def test_both_web_servers_and_both_workers_serve(cluster):
    served_by: set[str] = set()

    def both_workers_batched() -> bool:
        served_by.update(r.headers["X-Served-By"] for r in burst(cluster.url, 12))
        workers = live_workers(cluster.url)
        return len(workers) == 2 and all(int(w["jobs"]) > 0 and int(w["batches"]) > 0 for w in workers)

    wait_for(both_workers_batched, 60, interval_s=0.6, message="both workers to answer batches (GET /status)")
    assert served_by == {"web-0", "web-1"}


def test_metrics_through_nginx_parse_and_count_the_requests_sent(cluster):
    text = requests.get(f"{cluster.url}/metrics", timeout=5).text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    for name in ("gateway_requests", "gateway_request_seconds", "gateway_queue_depth", "gateway_live_workers"):
        assert name in families, f"{name} missing from /metrics"
    assert families["gateway_live_workers"].samples[0].value == 2

    # Each web server reports its own processes: the sum over both is the whole tier.
    before = sum(requests_total(web.url, "200") for web in cluster.web)
    sent = 7
    for i in range(sent):
        assert predict(cluster.url, PHOTOS[i % len(PHOTOS)]).status_code == 200
    after = sum(requests_total(web.url, "200") for web in cluster.web)
    assert after - before == sent


def test_nginx_refuses_a_body_over_max_upload_bytes_with_the_json_envelope(cluster):
    response = requests.post(f"{cluster.url}/predict", files={"image": b"\0" * (MAX_UPLOAD_BYTES + 1)}, timeout=10)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert response.headers["X-Request-ID"]


def test_one_request_id_in_nginx_web_and_worker_logs(cluster):
    trace_id = f"trace-test-{uuid.uuid4().hex[:8]}"
    response = predict(cluster.url, PHOTOS[0], headers={"X-Request-ID": trace_id})
    assert response.status_code == 200, response.text
    assert response.headers["X-Request-ID"] == trace_id
    run_dir = Path(cluster.run_dir)
    web_log = run_dir / f"{response.headers['X-Served-By']}.log"

    def logged(paths, matches) -> bool:
        return any(matches(line) for path in paths for line in json_lines(path))

    wait_for(lambda: logged([web_log], lambda line: line.get("trace_id") == trace_id), 5,
             message=f"{trace_id} in {web_log}")
    wait_for(lambda: logged(run_dir.glob("worker-*.log"), lambda line: trace_id in line.get("trace_ids", [])
                            or line.get("trace_id") == trace_id), 5, message=f"{trace_id} in a worker log")
    wait_for(lambda: logged([run_dir / "nginx" / "access.log"], lambda line: line.get("request_id") == trace_id),
             5, message=f"{trace_id} in nginx's access log")


def test_launcher_command_starts_and_stops_on_sigterm(cluster):
    """`python -m deploy.cluster` with --redis-url: its one web server is ready thanks to the cluster's workers."""
    port = free_port()
    launcher = subprocess.Popen([sys.executable, "-m", "deploy.cluster", "--web", "1", "--workers", "0",
                                 "--port", str(port), "--redis-url", cluster.redis_url, "--timeout", "30",
                                 "--run-dir", os.path.join(cluster.run_dir, "launcher")],
                                cwd=ROOT, env={**os.environ, **CLUSTER_ENV}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    output = read_until(launcher, "ready:", timeout_s=40)
    pids = [int(pid) for pid in re.findall(r"pid (\d+)", output)]
    assert len(pids) == 2, output          # web-0 and nginx (Redis is not its own)
    assert predict(f"http://127.0.0.1:{port}", PHOTOS[0]).status_code == 200
    launcher.send_signal(signal.SIGTERM)
    rest, _ = launcher.communicate(timeout=60)
    assert launcher.returncode == 0, output + rest
    assert "stopped" in rest
    assert not [pid for pid in pids if process_exists(pid)], f"left running: {pids}"


def read_until(process: subprocess.Popen, marker: str, timeout_s: float) -> str:
    """stdout of `process` up to the line containing `marker` (fails on exit or timeout)."""
    lines: list[str] = []
    found = threading.Event()

    def reader():
        for line in process.stdout:
            lines.append(line)
            if marker in line:
                found.set()
                return

    threading.Thread(target=reader, daemon=True).start()
    if not found.wait(timeout_s):
        process.kill()
        pytest.fail(f"no {marker!r} from the launcher within {timeout_s}s:\n{''.join(lines)}")
    return "".join(lines)


def process_exists(pid: int) -> bool:
    """Running (a zombie waiting to be reaped does not count)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


# ------------------------------------------------------------------- destructive: these run last
def test_stopping_a_web_server_under_load_loses_no_request(cluster):
    results: list[tuple[float, int | str, str]] = []
    stop = threading.Event()

    def client(offset: int) -> None:
        i = offset
        while not stop.is_set():
            try:
                response = predict(cluster.url, PHOTOS[i % len(PHOTOS)])
                results.append((time.monotonic(), response.status_code, response.headers.get("X-Served-By", "")))
            except requests.RequestException as error:
                results.append((time.monotonic(), repr(error), ""))
            i += 1

    clients = [threading.Thread(target=client, args=(n,)) for n in range(3)]
    for thread in clients:
        thread.start()
    time.sleep(1.5)
    cluster.web[0].terminate()
    stopped_at = time.monotonic()
    time.sleep(2.0)
    stop.set()
    for thread in clients:
        thread.join(30)

    failures = [result for result in results if result[1] != 200]
    assert not failures, f"{len(failures)} of {len(results)} requests failed: {failures[:5]}"
    assert {"web-0", "web-1"} <= {served for _, _, served in results}
    after = [served for at, _, served in results if at > stopped_at]
    assert after and set(after) == {"web-1"}


def test_readiness_follows_the_workers(cluster):
    cluster.workers[0].terminate()          # graceful: it leaves the worker set at once
    ready = requests.get(f"{cluster.url}/readyz", timeout=5)
    assert ready.status_code == 200, ready.text
    assert ready.json()["live_workers"] == 1
    assert predict(cluster.url, PHOTOS[0]).status_code == 200

    cluster.workers[1].kill()               # a crash: only its heartbeat going stale tells
    killed_at = time.monotonic()
    wait_for(lambda: requests.get(f"{cluster.url}/readyz", timeout=5).status_code == 503, HEARTBEAT_TTL_S + 1,
             interval_s=0.1, message="/readyz to turn 503 with no live worker")
    assert time.monotonic() - killed_at <= HEARTBEAT_TTL_S + 1
    assert requests.get(f"{cluster.url}/readyz", timeout=5).json()["ready"] is False
