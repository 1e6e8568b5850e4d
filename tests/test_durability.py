"""Accepted work survives restarts: DATA_DIR (the embedded Redis' append-only file), its lock, Redis
killed under load, and the result cache's cap (CACHE_MAX_MB).

Real `python run_server.py` processes killed with SIGKILL (the whole process group: the gateway and its
redis-server), real redis-server processes, the real default model.
"""
from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import redis
import requests
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from conftest import DATA, ROOT, ServerThread, WorkerThread, config_env, make_config, wait_for
from image_gateway import protocol
from image_gateway.protocol.queue import CACHE_ENTRY_OVERHEAD, JobQueue
from image_gateway.redis_server import RedisServer, free_port, private_rules
from image_gateway.web.app import create_app

PHOTOS = sorted(DATA.glob("*.jpg"))


def photo_set(count: int) -> list[bytes]:
    """`count` distinct JPEGs from the test photos: each its own crop and size, so each answers differently."""
    out = []
    for i in range(count):
        image = Image.open(PHOTOS[i % len(PHOTOS)]).convert("RGB")
        k = i // len(PHOTOS)
        width, height = image.size
        image = image.crop(((k * 3) % 60, (k * 5) % 45, width - (k % 7) * 4, height - (k % 5) * 4))
        side = 160 + k * 3
        image = image.resize((side, max(32, side * image.height // image.width)))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=85)
        out.append(buffer.getvalue())
    return out


def same_answer(mine: list[dict], theirs: list[dict]) -> bool:
    """The same classes in the same order; probabilities equal up to batching's float noise."""
    return [p["class_id"] for p in mine] == [p["class_id"] for p in theirs] and \
        all(abs(a["probability"] - b["probability"]) < 1e-4 for a, b in zip(mine, theirs, strict=True))


class Gateway:
    """`python run_server.py` in a session of its own, so that SIGKILL of its process group is kill -9 of the
    gateway and its embedded redis-server at once, as a crash of the machine's service would be."""

    def __init__(self, env: dict[str, str], log_path: Path, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, str(ROOT / "run_server.py"), "--port", str(self.port),
                                             *args], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.url + path, timeout=30, **kwargs)

    def wait_ready(self, path: str = "/readyz", timeout_s: float = 180) -> float:
        started = time.monotonic()

        def ready():
            assert self.process.poll() is None, f"the gateway exited:\n{self.log()}"
            try:
                return self.get(path).status_code == 200
            except requests.ConnectionError:
                return False
        wait_for(ready, timeout_s, 0.05, f"{path} of the gateway on port {self.port}")
        return time.monotonic() - started

    def kill_group(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(30)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        finally:
            self.kill_group()              # whatever is left of the group (nothing, after a clean stop)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def gateway_env(data_dir: Path, **overrides) -> dict[str, str]:
    config = make_config(None, cache_ttl=0, task_lease_s=2.0, **overrides)
    env = {**config_env(config), "DATA_DIR": str(data_dir)}
    env.pop("REDIS_URL", None)
    return env


def task_state(gateway: Gateway, task_id: str, **params) -> dict:
    response = gateway.get(f"/v1/tasks/{task_id}", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_task_carries_on_after_kill_9_of_the_whole_gateway(tmp_path):
    """kill -9 of the gateway and its Redis mid-task; `python run_server.py` again on the same DATA_DIR: the
    task is there at once, and completes with one result per image, each what /predict answers for it."""
    data_dir, photos = tmp_path / "data", photo_set(300)
    env = gateway_env(data_dir)
    first = Gateway(env, tmp_path / "first.log")
    try:
        first.wait_ready()
        files = [("image", (f"photo-{i}.jpg", data)) for i, data in enumerate(photos)]
        created = requests.post(first.url + "/v1/tasks", files=files, timeout=120)
        assert created.status_code == 202, created.text
        task_id = created.json()["task_id"]
        before = wait_for(lambda: (state := task_state(first, task_id, limit=0))["done"] >= 40 and state, 120, 0.02,
                          "40 of the 300 images done")
    finally:
        first.kill_group()
    assert before["done"] < 300, "the task finished before the kill: nothing was tested"

    second = Gateway(env, tmp_path / "second.log")
    try:
        up_s = second.wait_ready("/healthz")
        after = task_state(second, task_id, limit=0)        # readable at once: before any worker is ready
        assert after["total"] == 300 and after["state"] in ("RUNNING", "PENDING", "DONE")
        # Everything Redis acknowledged reached the kernel before its reply: a process crash loses none of it.
        assert after["done"] >= before["done"], (before, after)
        started = time.monotonic()
        wait_for(lambda: task_state(second, task_id, limit=0)["state"] == "DONE", 300, 0.2, "the task to finish")
        finish_s = time.monotonic() - started
        done = task_state(second, task_id)
        assert (done["total"], done["done"], done["failed"]) == (300, 300, 0)
        assert [result["index"] for result in done["results"]] == list(range(300))     # each once, none twice
        with ThreadPoolExecutor(4) as pool:
            direct = list(pool.map(lambda data: requests.post(second.url + "/predict", files={"image": data},
                                                              timeout=60).json(), photos))
        for result, answer in zip(done["results"], direct, strict=True):
            assert result["success"] and answer["success"], (result, answer)
            assert same_answer(result["predictions"], answer["predictions"]), (result["index"], result, answer)
        distinct = {tuple((p["class_id"], round(p["probability"], 5)) for p in result["predictions"])
                    for result in done["results"]}
        assert len(distinct) >= 290                          # the images really differ, so a mix-up would show
        print(f"\nkilled at {before['done']}/300 done; restarted: /healthz in {up_s:.1f} s, {after['done']}/300 "
              f"done then; the rest took {finish_s:.1f} s")
        assert second.stop() == 0
    finally:
        second.kill_group()
    assert (data_dir / "appendonlydir").is_dir() or (data_dir / "appendonly.aof").is_file()   # kept on exit


def test_a_second_gateway_on_the_same_data_dir_is_refused_naming_it(tmp_path):
    data_dir = tmp_path / "shared-data"
    env = gateway_env(data_dir)
    first = Gateway(env, tmp_path / "first.log", "--no-worker")
    try:
        first.wait_ready("/healthz")
        second = Gateway(env, tmp_path / "second.log", "--no-worker")
        try:
            code = second.process.wait(60)
        finally:
            second.kill_group()
        output = second.log()
        assert code != 0 and str(data_dir) in output and "in use by another gateway" in output, output
        assert "Traceback" not in output
        assert first.get("/healthz").status_code == 200       # the first one carries on
        assert first.stop() == 0
    finally:
        first.kill_group()


def test_redis_killed_under_predict_load_and_restarted_gives_only_right_answers_or_coded_errors(
        tmp_path, classifier):
    """kill -9 of Redis alone (on DATA_DIR, private as the embedded one) while clients send /predict, then
    the same Redis again: each answer is the right one or a 503/504 with its code; service resumes."""
    server = RedisServer(data_dir=str(tmp_path / "data"), acl=private_rules("gw")).start()
    config = make_config(server.url, request_timeout=3.0)
    web = ServerThread(create_app(config), config)
    worker = WorkerThread(config, classifier)
    photos = photo_set(10)
    outcomes: list[tuple[int, int, dict]] = []
    stop = threading.Event()

    def load(offset: int):
        for n in range(offset, 10**6):
            if stop.is_set():
                return
            try:
                response = requests.post(web.url + "/predict", files={"image": photos[n % 10]}, timeout=30)
                outcomes.append((n % 10, response.status_code, response.json()))
            except requests.RequestException as exc:        # a dropped connection would be a failure too
                outcomes.append((n % 10, 0, {"error": {"code": repr(exc)}}))

    try:
        wait_for(lambda: requests.get(web.url + "/readyz", timeout=5).status_code == 200, 30, message="a worker")
        expected = [requests.post(web.url + "/predict", files={"image": p}, timeout=30).json() for p in photos]
        senders = [threading.Thread(target=load, args=(i,)) for i in range(4)]
        [sender.start() for sender in senders]
        time.sleep(1.5)
        server.process.kill()                                # kill -9
        server.process.wait()
        time.sleep(1.5)
        server.start()
        count = len(outcomes)
        wait_for(lambda: any(status == 200 for _, status, _ in outcomes[count:]), 60, message="answers again")
        time.sleep(1.0)
        stop.set()
        [sender.join(60) for sender in senders]
    finally:
        stop.set()
        worker.stop()
        web.stop()
        server.close()
    codes = {(status, body.get("error", {}).get("code")) for _, status, body in outcomes if status != 200}
    print(f"\n{len(outcomes)} requests: {sum(status == 200 for _, status, _ in outcomes)} right answers, "
          f"{sorted(codes)} for the others")
    assert codes <= {(503, "QUEUE_UNAVAILABLE"), (503, "SERVER_BUSY"), (504, "TIMEOUT")}, codes
    for index, status, body in outcomes:
        if status == 200:
            assert same_answer(body["predictions"], expected[index]["predictions"]), (index, body)
    assert sum(status == 200 for _, status, _ in outcomes) > 10 and codes, "no load, or the kill went unnoticed"


def cache_bytes(client: redis.Redis, queue: JobQueue) -> int:
    """What Redis says the cache of `queue` takes: its entries, its index and its sizes hash."""
    keys = set(client.scan_iter(match=queue.keys.cache("*"), count=1000))    # the index and sizes among them
    assert {queue.keys.cache_index.encode(), queue.keys.cache_sizes.encode()} <= keys
    return sum(client.memory_usage(key, samples=0) or 0 for key in keys)


def test_the_result_cache_stays_within_its_cap_and_keeps_the_newest(redis_client):
    cap = 256 * 1024
    queue = JobQueue(redis_client, "efficientnet_lite0", cache_max_bytes=cap)
    predictions = [{"label": "Egyptian_cat", "class_id": 285, "probability": 0.8128}] * 5
    digests = [f"{uuid.uuid4().hex}:5" for _ in range(4000)]          # ~2.4 MB of results: ten times the cap
    started = time.perf_counter()
    for first in range(0, len(digests), 8):                           # as a worker does: a batch at a time
        batch = digests[first:first + 8]
        queue.store_cached({digest: (protocol.Result.ok(digest, predictions=predictions), 3600) for digest in batch})
    per_batch_ms = (time.perf_counter() - started) / (len(digests) / 8) * 1000
    counted = int(redis_client.hget(queue.keys.cache_sizes, ""))
    used = cache_bytes(redis_client, queue)
    print(f"\ncache: counted {counted} B, MEMORY USAGE {used} B, cap {cap} B; {per_batch_ms:.2f} ms per batch of 8")
    assert counted <= cap and used <= cap * 1.1, (counted, used)
    assert redis_client.exists(queue.keys.cache(digests[-1]))           # the newest are kept,
    assert not redis_client.exists(queue.keys.cache(digests[0]))        # the oldest made room
    assert redis_client.ttl(queue.keys.cache_index) > 0 and redis_client.ttl(queue.keys.cache_sizes) > 0
    huge = protocol.Result.ok("huge", predictions=predictions * 1000)   # bigger than the cap: not stored
    assert queue.store_cached({"huge:5": (huge, 3600)}) == 0 and not redis_client.exists(queue.keys.cache("huge:5"))
    assert JobQueue(redis_client, "m", cache_max_bytes=0).store_cached({"x:5": (huge, 60)}) == 0


def test_expired_cache_entries_are_forgotten_by_the_count(redis_client):
    queue = JobQueue(redis_client, "efficientnet_lite0", cache_max_bytes=10**6)
    result = protocol.Result.ok("r", predictions=[{"label": "a", "class_id": 1, "probability": 0.5}])
    queue.store_cached({f"old-{i}:5": (result, 1) for i in range(20)})
    time.sleep(2.1)
    queue.store_cached({"new:5": (result, 60)})
    size = len(result.encode()) + len(queue.keys.cache("new:5")) + CACHE_ENTRY_OVERHEAD
    assert int(redis_client.hget(queue.keys.cache_sizes, "")) == size
    assert redis_client.zcard(queue.keys.cache_index) == 1


def test_predict_through_a_tiny_cache_keeps_redis_cache_memory_bounded(redis_url, redis_client, classifier,
                                                                       gateway_factory):
    """Many distinct images through /predict with a tiny cache: its memory stays under the cap, and the
    newest answer is still served from it. /status and /metrics show Redis memory against its limit."""
    cap = 8 * 1024
    config = make_config(redis_url, cache_ttl=3600, cache_max_mb=cap / 2**20)
    web, [worker] = gateway_factory(config, classifier)
    worker.worker.queue.cache_max_bytes = cap   # what the worker's JobQueue gets from CACHE_MAX_MB
    photos = photo_set(40)
    for photo in photos:
        assert requests.post(web.url + "/predict", files={"image": photo}, timeout=30).status_code == 200
    queue = worker.worker.queue
    wait_for(lambda: redis_client.exists(queue.keys.cache_sizes), 5, message="the cache")
    used = cache_bytes(redis_client, queue)
    assert used <= cap * 1.1 and int(redis_client.hget(queue.keys.cache_sizes, "")) <= cap, used
    entries = len(list(redis_client.scan_iter(match=queue.keys.cache("*:5"))))
    assert 0 < entries < len(photos)
    hits_before = metric(web.url, "gateway_cache_hits_total")
    again = requests.post(web.url + "/predict", files={"image": photos[-1]}, timeout=30)
    assert again.status_code == 200 and metric(web.url, "gateway_cache_hits_total") == hits_before + 1
    status = requests.get(web.url + "/status", timeout=10).json()
    [(shard, memory)] = status["redis_memory"].items()
    assert memory["used_memory"] > 0 and memory["maxmemory"] == 0 and memory["maxmemory_policy"] == "noeviction"
    assert metric(web.url, "gateway_redis_used_memory_bytes") > 0
    assert metric(web.url, "gateway_redis_maxmemory_bytes") == 0


def metric(url: str, name: str) -> float:
    text = requests.get(url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    return 0.0


def test_publish_caches_before_it_answers_even_after_redis_forgot_its_scripts(redis_client):
    """The cache entry is written in the same round trip as the answer, before it, so a client asking
    again at once finds it; a Redis that lost its scripts (a restart) still gets the answer and the entry."""
    queue = JobQueue(redis_client, "efficientnet_lite0")
    result = protocol.Result.ok("job-1", predictions=[{"label": "a", "class_id": 1, "probability": 0.5}])
    for attempt in range(3):
        job_id, digest = f"job-{attempt}", f"digest-{attempt}:5"
        answer = protocol.Result.ok(job_id, **result.output)
        queue.publish([answer], 60, {digest: (answer, 60)})
        assert redis_client.lpop(queue.keys.result(job_id)) and redis_client.exists(queue.keys.cache(digest))
        redis_client.script_flush()
    assert redis_client.zcard(queue.keys.cache_index) == 3


def test_a_full_redis_refuses_new_work_with_a_coded_503(tmp_path):
    """noeviction at maxmemory: Redis refuses the enqueue (OOM) and /predict answers 503 at once; nothing
    already queued is evicted to make room."""
    with RedisServer(data_dir=str(tmp_path / "data"), extra_args=("--maxmemory", "3mb")) as server:
        config = make_config(server.url, request_timeout=0.3)
        web = ServerThread(create_app(config), config)               # no worker: jobs stay queued
        client = redis.Redis.from_url(server.url)
        try:
            statuses = []
            for photo in photo_set(40):
                response = requests.post(web.url + "/predict", files={"image": photo}, timeout=30)
                statuses.append((response.status_code, response.json()["error"]["code"]))
                if statuses[-1][0] == 503:
                    break
            queued = client.llen(JobQueue(client, "efficientnet_lite0").keys.queue)
        finally:
            web.stop()
            client.close()
    assert statuses[-1] == (503, "QUEUE_UNAVAILABLE"), statuses
    assert set(statuses[:-1]) == {(504, "TIMEOUT")} and queued == len(statuses) - 1, (statuses, queued)


def test_an_evicting_maxmemory_policy_is_named_in_a_warning_and_a_refused_check_is_skipped(tmp_path, caplog):
    from image_gateway.protocol import memory
    with RedisServer(extra_args=("--maxmemory-policy", "volatile-lru")) as evicting:
        client = redis.Redis.from_url(evicting.url)
        assert memory.warn_if_evicting(client) == {evicting.address: "volatile-lru"}
        client.close()
    assert any(r.levelname == "WARNING" and "volatile-lru" in r.getMessage() for r in caplog.records)
    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="gateway.redis")
    blind = ["resetkeys", "~gw:*", "+@all", "-info", "-config"]         # a managed Redis: INFO and CONFIG refused
    with RedisServer(acl=blind, extra_args=("--maxmemory-policy", "allkeys-lru")) as managed:
        client = redis.Redis.from_url(managed.url)
        assert memory.warn_if_evicting(client) == {}
        client.close()
    assert "not checked" in caplog.text and not [r for r in caplog.records if r.levelname == "WARNING"]
