"""Tasks: an image set uploaded once, results fetched later; priority, crashes, restarts, memory.

Real redis-server, real worker threads and processes with the real model, real web servers.
"""
from __future__ import annotations

import base64
import io
import json
import os
import signal
import statistics
import threading
import time

import pytest
import requests
from PIL import Image
from test_gateway import variants

from conftest import ARTIFACTS, DATA, ServerThread, make_config, start_worker_process, wait_for
from image_gateway import processes


def submit(url: str, images: list[bytes], timeout: float = 120, **fields) -> requests.Response:
    files = [("image", (f"photo-{i}.jpg", data)) for i, data in enumerate(images)]
    return requests.post(url + "/v1/tasks", files=files, data=fields, timeout=timeout)


def report(url: str, task_id: str, **params) -> dict:
    return requests.get(f"{url}/v1/tasks/{task_id}", params=params, timeout=30).json()


def wait_done(url: str, task_id: str, timeout_s: float) -> dict:
    wait_for(lambda: report(url, task_id, limit=0)["state"] == "DONE", timeout_s, 0.2, message=f"task {task_id}")
    return report(url, task_id)


def same_answer(mine: list[dict], theirs: list[dict]) -> bool:
    """The same classes in the same order; probabilities equal up to batching's float noise (a batch
    of 8 and a batch of 1 round differently in the 6th decimal)."""
    return [p["class_id"] for p in mine] == [p["class_id"] for p in theirs] and \
        all(abs(a["probability"] - b["probability"]) < 1e-4 for a, b in zip(mine, theirs, strict=True))


def tiny_jpegs(count: int, side: int = 64) -> list[bytes]:
    out = []
    for i in range(count):
        buffer = io.BytesIO()
        Image.new("RGB", (side, side), (i % 256, (i * 7) % 256, (i * 13) % 256)).save(buffer, "JPEG")
        out.append(buffer.getvalue())
    return out


def test_a_12_photo_task_answers_each_photo_as_predict_does(redis_url, classifier, gateway_factory):
    web, _ = gateway_factory(make_config(redis_url), classifier, workers=2)
    photos = variants(12)
    created = submit(web.url, photos)
    assert created.status_code == 202
    body = created.json()
    assert body["success"] and body["images"] == 12 and body["status_url"] == f"/v1/tasks/{body['task_id']}"
    assert created.headers["Location"] == body["status_url"]
    done = wait_done(web.url, body["task_id"], 120)
    assert (done["total"], done["done"], done["failed"]) == (12, 12, 0)
    assert [r["index"] for r in done["results"]] == list(range(12))
    for result, photo in zip(done["results"], photos, strict=True):
        direct = requests.post(web.url + "/predict", files={"image": photo}, timeout=60).json()
        assert result["filename"] == f"photo-{result['index']}.jpg" and result["model"] == "efficientnet_lite0"
        assert result["success"] and same_answer(result["predictions"], direct["predictions"])
    page = report(web.url, body["task_id"], offset=10, limit=5)
    assert [r["index"] for r in page["results"]] == [10, 11] and page["next_offset"] is None
    first = report(web.url, body["task_id"], offset=0, limit=4)
    assert [r["index"] for r in first["results"]] == [0, 1, 2, 3] and first["next_offset"] == 4


def test_task_errors_limits_cancel_and_json_bodies(redis_url, classifier, gateway_factory):
    web, _ = gateway_factory(make_config(redis_url, max_task_images=5), classifier)
    too_many = submit(web.url, tiny_jpegs(6))
    assert too_many.status_code == 413 and too_many.json()["error"]["code"] == "TASK_TOO_LARGE"
    unknown = requests.get(web.url + "/v1/tasks/nope", timeout=10)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "TASK_NOT_FOUND"
    missing_model = submit(web.url, tiny_jpegs(1), model="nope")
    assert missing_model.status_code == 404 and missing_model.json()["error"]["code"] == "MODEL_NOT_FOUND"

    images = [base64.b64encode(data).decode() for data in tiny_jpegs(2)] + ["%%%not-base64"]
    bad = requests.post(web.url + "/v1/tasks", json={"images": images}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "INVALID_BASE64"
    good = requests.post(web.url + "/v1/tasks", json={"images": images[:2] + [base64.b64encode(b"junk").decode()]},
                         timeout=30).json()
    done = wait_done(web.url, good["task_id"], 60)
    assert (done["done"], done["failed"]) == (3, 1)
    assert done["results"][2]["error"]["code"] == "IMAGE_UNREADABLE" and done["results"][0]["success"]

    workers_off = gateway_factory(make_config(redis_url))[0]       # a web tier with no worker: nothing finishes
    task_id = submit(workers_off.url, tiny_jpegs(4)).json()["task_id"]
    cancelled = requests.delete(f"{workers_off.url}/v1/tasks/{task_id}", timeout=10).json()
    assert cancelled["state"] == "CANCELLED" and report(web.url, task_id)["state"] == "CANCELLED"


def test_a_task_through_two_models(redis_url, classifier, gateway_factory, tmp_path):
    from test_many_models import publish_version
    publish_version(tmp_path, "toy", 1, 0)
    config = make_config(redis_url, model_repository=str(tmp_path), repository_poll_s=0.2)
    from test_many_models import Gateway
    gateway = Gateway(config)
    try:
        task_id = submit(gateway.url, variants(3), models="efficientnet_lite0,toy").json()["task_id"]
        done = wait_done(gateway.url, task_id, 120)
        assert done["total"] == 6 and done["images"] == 3
        assert [(r["index"], r["model"]) for r in done["results"]] == \
            [(i, m) for i in range(3) for m in ("efficientnet_lite0", "toy")]
        assert {r["predictions"][0]["label"] for r in done["results"] if r["model"] == "toy"} == {"alpha"}
    finally:
        gateway.stop()


def test_interactive_requests_keep_their_latency_while_a_600_image_task_runs(redis_url, classifier, gateway_factory):
    web, _ = gateway_factory(make_config(redis_url, batch_size=8), classifier, workers=2)
    probe = (DATA / "cat.jpg").read_bytes()

    def latencies(count: int) -> list[float]:
        out = []
        for _ in range(count):
            started = time.perf_counter()
            assert requests.post(web.url + "/predict", files={"image": probe}, timeout=60).status_code == 200
            out.append(time.perf_counter() - started)
        return out

    latencies(3)                                                   # warm
    idle = statistics.median(latencies(20))
    task_id = submit(web.url, tiny_jpegs(600, side=96)).json()["task_id"]
    time.sleep(0.5)
    busy = statistics.median(latencies(20))
    progressed = report(web.url, task_id, limit=0)["done"]
    figures = {"idle_median_ms": round(idle * 1000, 1), "busy_median_ms": round(busy * 1000, 1),
               "task_done_during_probe": progressed}
    (ARTIFACTS / "task_priority.json").write_text(json.dumps(figures))
    assert busy - idle <= 0.250, figures
    assert progressed > 0, figures                                 # the task still moved
    assert wait_done(web.url, task_id, 300)["done"] == 600


def test_a_task_survives_a_worker_kill_and_a_web_server_restart(redis_url, gateway_factory):
    from image_gateway.web.app import create_app
    config = make_config(redis_url, heartbeat_ttl=1.0, task_lease_s=1.0)
    web = ServerThread(create_app(config), config)
    worker = start_worker_process(config, ARTIFACTS / "task-worker-1.log")
    try:
        task_id = submit(web.url, tiny_jpegs(120)).json()["task_id"]
        wait_for(lambda: report(web.url, task_id, limit=0)["done"] >= 10, 120, 0.1, message="the task started")
        os.kill(worker.pid, signal.SIGKILL)                       # worker dies mid-task
        worker.wait(10)
        web.stop()                                                # and the web server that took the task
        worker = start_worker_process(config, ARTIFACTS / "task-worker-2.log")
        web = ServerThread(create_app(config), config)            # a new one picks the task up
        done = wait_done(web.url, task_id, 240)
        assert (done["done"], done["failed"]) == (120, 0)
        assert sorted(r["index"] for r in done["results"]) == list(range(120))
    finally:
        web.stop()
        processes.stop(worker, 20)


def test_a_1000_image_task_keeps_redis_memory_bounded_by_the_window(redis_url, redis_client, classifier,
                                                                   gateway_factory):
    web, _ = gateway_factory(make_config(redis_url, task_window=8), classifier, workers=2)
    images = tiny_jpegs(1000, side=128)
    baseline = redis_client.info("memory")["used_memory"]
    peak = [baseline]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak.append(redis_client.info("memory")["used_memory"])
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        task_id = submit(web.url, images).json()["task_id"]
        wait_done(web.url, task_id, 600)
    finally:
        stop.set()
        sampler.join()
    raw = sum(map(len, images))
    decoded_all = 1000 * 224 * 224 * 3
    figures = {"baseline": baseline, "peak": max(peak), "peak_over_baseline": max(peak) - baseline,
               "raw_upload_bytes": raw, "all_decoded_bytes": decoded_all}
    (ARTIFACTS / "task_memory.json").write_text(json.dumps(figures))
    # The uploads wait compressed; at most TASK_WINDOW decoded arrays (150 KB each) are queued at once.
    assert max(peak) - baseline < raw * 3 + 8 * 224 * 224 * 3 * 4 + 8_000_000, figures
    assert max(peak) - baseline < decoded_all / 5, figures


@pytest.mark.parametrize("fields", [{"pipeline": "nope"}])
def test_an_unknown_pipeline_is_refused_at_once(fields, redis_url, gateway_factory):
    web, _ = gateway_factory(make_config(redis_url))
    answer = submit(web.url, tiny_jpegs(1), **fields)
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "PIPELINE_NOT_FOUND"
