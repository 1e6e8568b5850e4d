"""The gateway end to end over HTTP: real redis-server, the real web server, real model, real photos."""
from __future__ import annotations

import base64
import http.client
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from conftest import DATA, ROOT, children_of, cmdline, config_env, make_config, wait_for
from image_gateway import imaging
from image_gateway.redis_server import free_port

# What the default model answers for the photos in tests/data (see tests/data/README.md).
EXPECTED = {"cat.jpg": {"Egyptian_cat", "tabby", "tiger_cat"}, "coffee.jpg": {"espresso", "cup"}}


def post_file(url: str, path, **kwargs) -> requests.Response:
    with open(path, "rb") as image:
        return requests.post(f"{url}/predict", files={"image": image}, timeout=30, **kwargs)


BOUNDARY = "gateway-test-boundary"


def multipart_body(jpeg: bytes) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + jpeg + f"\r\n--{BOUNDARY}--\r\n".encode()


def accepts_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def variants(count: int) -> list[bytes]:
    """Distinct JPEGs made from the test photos (crops and flips), so no two requests are alike."""
    photos = sorted(DATA.glob("*.jpg"))
    out = []
    for i in range(count):
        image = Image.open(photos[i % len(photos)]).convert("RGB")
        w, h = image.size
        shift = (i // len(photos)) * 7
        image = image.crop((shift, shift, w - shift, h - shift))
        if (i // len(photos)) % 2:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def expected_top(classifier, data: bytes) -> tuple[int, float]:
    array = imaging.prepare_image(data, classifier.spec, max_pixels=10**8)
    probabilities = classifier.predict(array[None])[0]
    return int(np.argmax(probabilities)), float(np.max(probabilities))


class CountingClassifier:
    """The real classifier, counting the rows it predicts (to prove nothing is predicted twice)."""

    def __init__(self, classifier):
        self.classifier = classifier
        self.spec = classifier.spec
        self.rows = 0

    def predict(self, batch):
        if batch.any():                                 # not the worker's all-zero warm-up call
            self.rows += len(batch)
        return self.classifier.predict(batch)


def test_a_real_photo_gets_the_right_label(redis_url, classifier, gateway_factory):
    web, _ = gateway_factory(make_config(redis_url), classifier)
    response = post_file(web.url, DATA / "cat.jpg")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True and body["model"] == "efficientnet_lite0"
    uuid.UUID(body["id"])
    assert len(body["predictions"]) == 5
    assert body["predictions"][0]["label"] in EXPECTED["cat.jpg"]
    assert body["predictions"][0]["class_id"] in (281, 282, 285)
    probabilities = [p["probability"] for p in body["predictions"]]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1.0001
    assert response.headers["X-Request-ID"]


def test_json_base64_upload_and_top_k(redis_url, classifier, gateway_factory):
    web, _ = gateway_factory(make_config(redis_url), classifier)
    encoded = base64.b64encode((DATA / "coffee.jpg").read_bytes()).decode()
    response = requests.post(f"{web.url}/predict", json={"image": encoded, "top_k": 3}, timeout=30)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 3 and predictions[0]["label"] in EXPECTED["coffee.jpg"]


@pytest.mark.parametrize("batch_wait_ms", [0, 20])
def test_fifty_concurrent_requests_each_get_their_own_answer(batch_wait_ms, redis_url, classifier, gateway_factory):
    web, [worker] = gateway_factory(make_config(redis_url, batch_wait_ms=batch_wait_ms), classifier)
    images = variants(50)
    expected = [expected_top(classifier, data) for data in images]

    def post(data: bytes):
        return requests.post(f"{web.url}/predict", files={"image": ("x.jpg", data)}, timeout=60).json()

    with ThreadPoolExecutor(50) as pool:
        bodies = list(pool.map(post, images))
    for body, (class_id, probability) in zip(bodies, expected, strict=True):
        assert body["success"], body
        assert body["predictions"][0]["class_id"] == class_id
        assert body["predictions"][0]["probability"] == pytest.approx(probability, abs=2e-3)
    assert len({body["id"] for body in bodies}) == 50
    assert max(worker.worker.batch_sizes) > 1           # concurrency really was batched


def test_two_workers_on_one_queue_answer_every_job_exactly_once(redis_url, classifier, gateway_factory):
    counting = CountingClassifier(classifier)
    web, workers = gateway_factory(make_config(redis_url, batch_size=4), counting, workers=2)
    images = variants(40)
    with ThreadPoolExecutor(20) as pool:
        statuses = list(pool.map(lambda data: requests.post(
            f"{web.url}/predict", files={"image": ("x.jpg", data)}, timeout=60).status_code, images))
    assert statuses == [200] * 40
    assert counting.rows == 40                          # the model saw each job once
    # A worker counts a batch's jobs just after publishing their answers: give the last count a moment.
    wait_for(lambda: sum(w.worker.jobs for w in workers) == 40, 5, message="the workers' job counts")
    assert all(w.worker.jobs > 0 for w in workers)      # both workers shared the queue


def test_no_worker_means_504_within_the_timeout(redis_url, gateway_factory):
    web, _ = gateway_factory(make_config(redis_url, request_timeout=1.5))
    started = time.monotonic()
    response = post_file(web.url, DATA / "cat.jpg")
    elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert response.json()["success"] is False and response.json()["error"]["code"] == "TIMEOUT"
    assert 1.4 <= elapsed <= 1.5 + 1.0


def test_float32_wire_dtype_gives_the_same_answer(redis_url, classifier, gateway_factory):
    web, _ = gateway_factory(make_config(redis_url, wire_dtype="float32"), classifier)
    body = post_file(web.url, DATA / "cat.jpg").json()
    class_id, probability = expected_top(classifier, (DATA / "cat.jpg").read_bytes())
    assert body["predictions"][0]["class_id"] == class_id
    assert body["predictions"][0]["probability"] == pytest.approx(probability, abs=1e-4)


def test_client_script_prints_ranked_labels_and_fails_on_errors(redis_url, classifier, gateway_factory, tmp_path):
    web, _ = gateway_factory(make_config(redis_url), classifier)
    client = [sys.executable, str(ROOT / "simple_request.py"), "--url", f"{web.url}/predict"]
    ok = subprocess.run(client + [str(DATA / "cat.jpg")], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    first = ok.stdout.splitlines()[0]
    assert first.startswith("1. ") and first.split(": ")[0][3:] in EXPECTED["cat.jpg"]
    assert len(ok.stdout.splitlines()) == 5
    (tmp_path / "notes.txt").write_text("not an image")
    base_url_client = [sys.executable, str(ROOT / "simple_request.py"), "--url", web.url]   # /predict implied
    bad = subprocess.run(base_url_client + [str(tmp_path / "notes.txt")], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "IMAGE_UNREADABLE" in bad.stdout


def test_the_embedded_default_runs_its_models_in_a_child_process_it_restarts(tmp_path):
    """The models run in a child process (two GILs: worker/child.py): it got the Redis URL through a pipe
    (its environment and command line carry no password), the parent's /metrics carries its worker
    metrics once each, and when it is killed the parent starts another one, which answers the request
    accepted while no worker was alive. SIGTERM stops both."""
    port = free_port()
    env = {**config_env(make_config(None)), "PORT": str(port), "DATA_DIR": str(tmp_path / "data")}
    env.pop("REDIS_URL", None)
    log_path = tmp_path / "gateway.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen([sys.executable, str(ROOT / "run_server.py")], env=env, cwd=ROOT, stdout=log,
                                  stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def worker_pids() -> list[int]:
        return [pid for pid in children_of(server.pid) if "image_gateway.worker.main" in cmdline(pid)]

    def predict(name: str) -> requests.Response:
        return requests.post(f"{url}/predict", files={"image": (DATA / name).read_bytes()}, timeout=60)

    try:
        wait_for(lambda: accepts_connections(port) or server.poll() is not None, 120, 0.25, "the gateway")
        assert server.poll() is None, log_path.read_text()
        [first] = worker_pids()
        environment = Path(f"/proc/{first}/environ").read_bytes().decode(errors="replace")
        for text in (environment, cmdline(first)):
            assert "redis://" not in text and not re.search(r"[0-9a-f]{48}", text)
        assert predict("cat.jpg").json()["predictions"][0]["label"] in EXPECTED["cat.jpg"]
        exposition = requests.get(f"{url}/metrics", timeout=10).text
        families = [family.name for family in text_string_to_metric_families(exposition)]
        assert len(families) == len(set(families))
        batches = re.search(r'^gateway_batch_size_count{model="efficientnet_lite0",version="1"} (\S+)$', exposition,
                            re.M)
        assert batches and float(batches.group(1)) >= 1

        os.kill(first, signal.SIGKILL)
        with ThreadPoolExecutor(1) as pool:           # accepted while no worker lives: answered by the next one
            waiting = pool.submit(predict, "coffee.jpg")
            [second] = wait_for(lambda: [pid for pid in worker_pids() if pid != first], 60, 0.1, "a new worker")
            answer = waiting.result()
        assert first not in worker_pids() and second in worker_pids()
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"][0]["label"] in EXPECTED["coffee.jpg"]
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(60)
    assert code == 0
    assert children_of(server.pid) == [] and "exited with code -9; starting it again" in log_path.read_text()


@pytest.mark.parametrize("where", ["process", "thread"])
def test_one_command_default_runs_embedded_redis_and_a_worker(tmp_path, where):
    port = free_port()
    env = {**config_env(make_config(None)), "PORT": str(port), "DATA_DIR": str(tmp_path / "data"),
           "EMBEDDED_WORKER": where}
    env.pop("REDIS_URL", None)
    server = subprocess.Popen([sys.executable, str(ROOT / "run_server.py")], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        def ready():
            try:
                return requests.get(f"{url}/readyz", timeout=2).status_code == 200
            except requests.ConnectionError:
                assert server.poll() is None, server.stdout.read().decode()
                return False
        wait_for(ready, 120, 0.25, "the embedded gateway to be ready")
        workers = [pid for pid in children_of(server.pid) if "image_gateway.worker.main" in cmdline(pid)]
        assert len(workers) == (1 if where == "process" else 0)
        with requests.Session() as session:              # keep-alive: one connection, two answers
            for _ in range(2):
                response = session.post(f"{url}/predict", files={"image": (DATA / "cat.jpg").read_bytes()}, timeout=30)
                assert response.status_code == 200
                assert response.json()["predictions"][0]["label"] in EXPECTED["cat.jpg"]
        # A request whose body is still arriving when SIGTERM comes is answered before the server exits.
        body = multipart_body((DATA / "coffee.jpg").read_bytes())
        in_flight = socket.create_connection(("127.0.0.1", port), timeout=30)
        in_flight.sendall(f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}"
                          f"\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body[:1000])
        time.sleep(0.5)
    finally:
        server.send_signal(signal.SIGTERM)
    wait_for(lambda: not accepts_connections(port), 10, 0.05, "the server to stop accepting")
    in_flight.sendall(body[1000:])
    answer = http.client.HTTPResponse(in_flight)
    answer.begin()
    assert answer.status == 200
    assert json.loads(answer.read())["predictions"][0]["label"] in EXPECTED["coffee.jpg"]
    in_flight.close()
    assert server.wait(30) == 0
    server.stdout.close()
    children = subprocess.run(["pgrep", "-P", str(server.pid)], capture_output=True, text=True).stdout
    assert children == ""                               # the embedded redis-server is gone too
