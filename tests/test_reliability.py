"""Faults cost at most a clear error: dead workers, Redis restarts, floods, bad input, deadlines, keys."""
from __future__ import annotations

import base64
import io
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import redis
import requests
from PIL import Image
from test_gateway import CountingClassifier, expected_top, variants

from conftest import ARTIFACTS, DATA, ServerThread, WorkerThread, make_config, start_worker_process, wait_for
from image_gateway import protocol
from image_gateway.redis_server import RedisServer
from image_gateway.web.app import create_app


def post_bytes(url: str, payload: bytes, timeout: float = 60, **kwargs) -> requests.Response:
    return requests.post(f"{url}/predict", files={"image": ("upload", payload)}, timeout=timeout, **kwargs)


def jpeg(size=(64, 48), color=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "JPEG")
    return buffer.getvalue()


# ------------------------------------------------------------------------------- dead workers
def test_kill_9_of_a_worker_mid_batch_loses_no_request(redis_url, redis_client, classifier, gateway_factory):
    config = make_config(redis_url, batch_size=4, request_timeout=60.0)
    web, _ = gateway_factory(config)
    ARTIFACTS.mkdir(exist_ok=True)
    victim = start_worker_process(config, ARTIFACTS / "worker-victim.log")
    heir = start_worker_process(config, ARTIFACTS / "worker-heir.log")
    try:
        queue = protocol.JobQueue(redis_client, classifier.spec.name, config.key_prefix)
        workers = wait_for(lambda: len(queue.live_workers(5)) == 2 and queue.live_workers(5), 180, 0.2,
                           "two worker processes")
        victim_id = next(w for w in workers if queue.worker_info(w)["pid"] == str(victim.pid))
        images = variants(40)
        expected = [expected_top(classifier, data) for data in images]
        with ThreadPoolExecutor(40) as pool:
            futures = [pool.submit(post_bytes, web.url, data) for data in images]
            wait_for(lambda: redis_client.llen(queue.keys.processing(victim_id)) > 0, 60, 0.005,
                     "the victim to hold a claimed batch")
            os.kill(victim.pid, signal.SIGKILL)
            responses = [future.result() for future in futures]
        assert [r.status_code for r in responses] == [200] * 40, [r.text for r in responses if r.status_code != 200]
        for response, (class_id, _) in zip(responses, expected, strict=True):
            assert response.json()["predictions"][0]["class_id"] == class_id
        assert queue.stats()["requeued"] >= 1               # the victim's batch was recovered
        assert not redis_client.exists(queue.keys.processing(victim_id))
    finally:
        for process in (victim, heir):
            process.kill()
            process.wait()


def test_sigterm_finishes_the_batch_returns_the_rest_and_exits(redis_url, redis_client, classifier):
    config = make_config(redis_url, batch_size=2)
    queue = protocol.JobQueue(redis_client, classifier.spec.name, config.key_prefix)
    ARTIFACTS.mkdir(exist_ok=True)
    worker = start_worker_process(config, ARTIFACTS / "worker-sigterm.log")
    try:
        worker_id = wait_for(lambda: queue.live_workers(5), 120, 0.2, "the worker process")[0]
        for data in variants(12):
            array = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((224, 224)))
            queue.enqueue(protocol.Job(id=protocol.new_job_id(), model=queue.model,
                                       deadline=time.time() + 60, array=array), limit=100)
        wait_for(lambda: redis_client.llen(queue.keys.processing(worker_id)) > 0, 30, 0.005, "a claimed batch")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    finally:
        worker.kill()
    assert not redis_client.exists(queue.keys.processing(worker_id))   # nothing left claimed
    assert worker_id not in queue.live_workers(5)                      # it left the worker set
    answered = len(redis_client.keys(queue.keys.result("*")))
    assert answered + queue.depth() == 12      # each job was finished, or is back in the queue


def test_expired_jobs_are_dropped_not_predicted(redis_url, redis_client, classifier, gateway_factory):
    config = make_config(redis_url, request_timeout=1.0)
    web, _ = gateway_factory(config)
    assert post_bytes(web.url, jpeg()).status_code == 504      # nobody was serving
    counting = CountingClassifier(classifier)
    worker = WorkerThread(config, counting)
    queue = protocol.JobQueue(redis_client, classifier.spec.name, config.key_prefix)
    try:
        wait_for(lambda: queue.stats().get("expired") == 1, 10, message="the expired job to be dropped")
        assert counting.rows == 0 and queue.depth() == 0
    finally:
        worker.stop()


# ------------------------------------------------------------------------------ Redis outages
def test_redis_restart_under_load_gives_503_then_recovers(classifier):
    server = RedisServer().start()
    config = make_config(server.url, request_timeout=5.0)
    web = ServerThread(create_app(config), config)
    worker = WorkerThread(config, classifier)
    statuses: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def load():
        data = (DATA / "cat.jpg").read_bytes()
        while not stop.is_set():
            response = post_bytes(web.url, data, timeout=30)
            statuses.append((response.status_code, (response.json().get("error") or {}).get("code")))

    try:
        wait_for(lambda: post_bytes(web.url, jpeg()).status_code == 200, 30, message="a first answer")
        senders = [threading.Thread(target=load) for _ in range(4)]
        [t.start() for t in senders]
        time.sleep(1.0)
        server.stop()
        time.sleep(2.0)
        down = post_bytes(web.url, jpeg(), timeout=30)
        assert down.status_code == 503 and down.json()["error"]["code"] == "QUEUE_UNAVAILABLE"
        assert down.headers["Retry-After"]
        server.start()
        wait_for(lambda: post_bytes(web.url, jpeg((70, 50)), timeout=30).status_code == 200, 30,
                 message="service to resume after the restart")
        stop.set()
        [t.join(30) for t in senders]
        assert worker.thread.is_alive()
        assert {status for status, _ in statuses} <= {200, 503}
        assert {code for status, code in statuses if status == 503} <= {"QUEUE_UNAVAILABLE"}
        assert statuses[-1][0] == 200
    finally:
        stop.set()
        worker.stop()
        web.stop()
        server.close()


def test_password_protected_redis_through_redis_url(classifier):
    with RedisServer(extra_args=("--requirepass", "s3cret-pw")) as server:
        url = f"redis://:s3cret-pw@127.0.0.1:{server.port}/0"
        config = make_config(url)
        web = ServerThread(create_app(config), config)
        worker = WorkerThread(config, classifier)
        try:
            response = post_bytes(web.url, (DATA / "cat.jpg").read_bytes())
            assert response.status_code == 200
            with pytest.raises(redis.AuthenticationError):
                redis.Redis(port=server.port).ping()
        finally:
            worker.stop()
            web.stop()


# ----------------------------------------------------------------------------- backpressure
def test_flood_past_the_queue_limit_is_refused_at_once(redis_url, redis_client, gateway_factory):
    config = make_config(redis_url, queue_limit=5, request_timeout=3.0)
    web, _ = gateway_factory(config)                   # no worker: the queue only fills
    depths, stop = [], threading.Event()
    queue_key = protocol.Keys(config.key_prefix, "efficientnet_lite0").queue

    def watch():
        while not stop.is_set():
            depths.append(redis_client.llen(queue_key))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    images = [jpeg((40 + i, 40)) for i in range(25)]
    with ThreadPoolExecutor(25) as pool:
        futures = [pool.submit(lambda d: (time.monotonic(), post_bytes(web.url, d), time.monotonic()), d)
                   for d in images]
        results = [f.result() for f in futures]
    stop.set()
    watcher.join()
    busy = [(r, end - start) for start, r, end in results if r.status_code == 503]
    assert len(busy) == 20
    assert all(r.json()["error"]["code"] == "SERVER_BUSY" and r.headers["Retry-After"] == "1" for r, _ in busy)
    assert max(seconds for _, seconds in busy) < 2.0   # refused without waiting for the 3 s timeout
    assert sum(1 for _, r, _ in results if r.status_code == 504) == 5
    assert max(depths) <= 5


# ------------------------------------------------------------------------------- bad input
def png_bomb() -> bytes:
    """A valid PNG header claiming 30000 x 30000 pixels."""
    buffer = io.BytesIO()
    Image.new("1", (30000, 30000)).save(buffer, "PNG")
    return buffer.getvalue()


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


BAD_MULTIPART = [
    ("empty file", b"", 400, "EMPTY_IMAGE"),
    ("text", b"hello, I am not an image", 400, "IMAGE_UNREADABLE"),
    ("random bytes", os.urandom(4096), 400, "IMAGE_UNREADABLE"),
    ("truncated jpeg", truncated((DATA / "cat.jpg").read_bytes()), 400, "IMAGE_UNREADABLE"),
    ("decompression bomb", png_bomb(), 413, "IMAGE_TOO_LARGE"),
    ("photoshop", b"8BPS\x00\x01" + b"\x00" * 64, 415, "UNSUPPORTED_FORMAT"),
]


@pytest.mark.parametrize("name,data,status,code", BAD_MULTIPART, ids=[case[0] for case in BAD_MULTIPART])
def test_bad_uploads_get_their_code_and_the_server_keeps_serving(name, data, status, code, redis_url,
                                                                 classifier, gateway_factory):
    web, _ = gateway_factory(make_config(redis_url), classifier)
    response = post_bytes(web.url, data)
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)
    assert response.json()["success"] is False and response.json()["id"]
    assert "Traceback" not in response.text and "/work" not in response.text
    assert post_bytes(web.url, (DATA / "cat.jpg").read_bytes()).status_code == 200


def test_malformed_requests_get_their_code(redis_url, gateway_factory):
    web, _ = gateway_factory(make_config(redis_url, max_upload_bytes=200_000, api_key=None))
    url = f"{web.url}/predict"
    cases = [
        (requests.post(url, files={"photo": ("x.jpg", jpeg())}), 400, "MISSING_IMAGE"),
        (requests.post(url, data=b"raw", headers={"Content-Type": "image/jpeg"}), 415, "UNSUPPORTED_MEDIA_TYPE"),
        (requests.post(url, data=b"{not json", headers={"Content-Type": "application/json"}), 400, "INVALID_JSON"),
        (requests.post(url, json=["image"]), 400, "INVALID_JSON"),
        (requests.post(url, json={"img": "x"}), 400, "MISSING_IMAGE"),
        (requests.post(url, json={"image": "***not base64***"}), 400, "INVALID_BASE64"),
        (requests.post(url, json={"image": 42}), 400, "INVALID_JSON"),
        (requests.post(url, json={"image": base64.b64encode(jpeg()).decode(), "top_k": 0}), 400, "INVALID_PARAMETER"),
        (requests.post(url, files={"image": ("big.jpg", os.urandom(300_000))}), 413, "PAYLOAD_TOO_LARGE"),
        (requests.get(url), 405, "METHOD_NOT_ALLOWED"),
        (requests.get(f"{web.url}/nope"), 404, "NOT_FOUND"),
    ]
    for response, status, code in cases:
        assert (response.status_code, response.json()["error"]["code"]) == (status, code), response.text


def test_one_keep_alive_connection_outlives_refused_requests(redis_url, classifier, gateway_factory):
    """A refusal whose body the app never read must not poison the next request on the connection."""
    web, _ = gateway_factory(make_config(redis_url, max_upload_bytes=1_000_000), classifier)
    url = f"{web.url}/predict"
    with requests.Session() as session:
        unread = session.post(url, data=b"x" * 500_000, headers={"Content-Type": "text/plain"}, timeout=30)
        assert unread.json()["error"]["code"] == "UNSUPPORTED_MEDIA_TYPE"
        assert session.post(url, files={"image": jpeg()}, timeout=30).status_code == 200
        too_large = session.post(url, files={"image": ("big.jpg", os.urandom(3_000_000))}, timeout=30)
        assert too_large.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
        assert session.post(url, files={"image": jpeg()}, timeout=30).status_code == 200


def test_api_key_is_required_when_set(redis_url, classifier, gateway_factory):
    web, _ = gateway_factory(make_config(redis_url, api_key="k3y"), classifier)
    refused = post_bytes(web.url, jpeg())
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "UNAUTHORIZED"
    assert post_bytes(web.url, jpeg(), headers={"X-API-Key": "wrong"}).status_code == 401
    assert post_bytes(web.url, jpeg(), headers={"X-API-Key": "k3y"}).status_code == 200


# ------------------------------------------------------------------------------ Redis memory
def key_memory(client) -> int:
    return sum(client.memory_usage(key) or 0 for key in client.keys("*"))


def test_redis_memory_returns_to_baseline_after_a_load_run(redis_url, redis_client, classifier, gateway_factory):
    config = make_config(redis_url, cache_ttl=600)
    web, [worker] = gateway_factory(config, classifier)
    post_bytes(web.url, jpeg((33, 33)))                 # warm: worker keys exist from here on
    redis_client.flushall()
    wait_for(lambda: worker.worker.queue.live_workers(5), 5, message="a heartbeat after the flush")
    baseline_keys = set(redis_client.keys("*"))
    baseline_data = key_memory(redis_client)

    def load_run() -> int:
        """48 distinct requests; then drop the result cache (it expires by itself); memory after."""
        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(lambda d: post_bytes(web.url, d).status_code, variants(48)))
        assert statuses == [200] * 48
        leftover = set(redis_client.keys("*")) - baseline_keys
        assert all(b":cache:" in key for key in leftover), leftover       # only the result cache remains
        assert all(0 < redis_client.ttl(key) <= 600 for key in leftover)  # and it expires
        redis_client.delete(*leftover)
        # Idle clients' query buffers (which held the uploads) shrink within a few seconds.
        time.sleep(3)
        return redis_client.info("memory")["used_memory"]

    after_first, after_second = load_run(), load_run()
    # What the keys hold (MEMORY USAGE of each). Redis 7's used_memory_dataset also counts ~150 KB of
    # bookkeeping that stays after a run of 150 KB messages, with the keys the same bytes as before.
    assert key_memory(redis_client) < baseline_data + 64_000
    assert after_second < after_first + 100_000         # a second run does not grow memory


def test_identical_images_are_answered_from_the_cache(redis_url, classifier, gateway_factory):
    counting = CountingClassifier(classifier)
    web, _ = gateway_factory(make_config(redis_url, cache_ttl=60), counting)
    data = (DATA / "coffee.jpg").read_bytes()
    first, second = post_bytes(web.url, data).json(), post_bytes(web.url, data).json()
    assert first["predictions"] == second["predictions"] and counting.rows == 1
    assert first["id"] != second["id"]                  # a cached answer is still its own request
    assert post_bytes(web.url, data, data={"top_k": "2"}).json()["predictions"] == first["predictions"][:2]
    assert counting.rows == 2                           # another top_k is another answer


def test_one_worker_process_runs_a_worker_per_thread_on_one_model(redis_url, redis_client, classifier, gateway_factory):
    config = make_config(redis_url, worker_threads=2)
    web, _ = gateway_factory(config)
    process = start_worker_process(config)
    queue = protocol.JobQueue(redis_client, classifier.spec.name, config.key_prefix)
    try:
        workers = wait_for(lambda: len(queue.live_workers(5)) == 2 and queue.live_workers(5), 120, 0.2,
                           "two workers in one process")
        assert {queue.worker_info(w)["pid"] for w in workers} == {str(process.pid)}
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda d: post_bytes(web.url, d).status_code, variants(16)))
        assert statuses == [200] * 16
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        assert queue.live_workers(5) == []
    finally:
        process.kill()
