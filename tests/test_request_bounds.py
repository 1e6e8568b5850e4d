"""Every request's cost is bounded before work starts (issue 28, findings 1, 3 and 5), against a real
gateway: real redis-server, the real app over HTTP, and for memory a real web process whose RSS
high-water mark (VmHWM) is read from /proc, with limits derived from the settings."""
from __future__ import annotations

import base64
import io
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from PIL import Image

from bench.hostile import serve_images
from conftest import DATA, ROOT, config_env, make_config, wait_for
from image_gateway import processes
from image_gateway.redis_server import free_port

GIF_1X1 = base64.b64encode(bytes.fromhex("47494638396101000100800000000000ffffff21f90401000000002c000000000100010000"
                                         "02024401003b")).decode()


def v2_body(count: int) -> dict:
    return {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [count], "data": [GIF_1X1] * count}]}


def test_v2_refuses_more_than_max_batch_images_before_decoding(redis_url, redis_client, gateway_factory):
    web, _ = gateway_factory(make_config(redis_url, max_batch_images=8))
    refused = requests.post(web.url + "/v2/models/efficientnet_lite0/infer", json=v2_body(2000), timeout=30)
    assert refused.status_code == 413 and "MAX_BATCH_IMAGES" in refused.json()["error"]
    assert redis_client.dbsize() == 0 or not any(b":queue" in key for key in redis_client.keys("*"))


def test_v2_needs_room_for_every_image_and_withdraws_what_it_queued(redis_url, redis_client, gateway_factory):
    web, _ = gateway_factory(make_config(redis_url, queue_limit=4, max_batch_images=64, request_timeout=1.0))
    full = requests.post(web.url + "/v2/models/efficientnet_lite0/infer", json=v2_body(5), timeout=30)
    assert full.status_code == 503                                   # 5 images, room for 4: none decoded
    assert not [key for key in redis_client.keys("*") if key.endswith(b":queue") and redis_client.llen(key)]
    timed_out = requests.post(web.url + "/v2/models/efficientnet_lite0/infer", json=v2_body(3), timeout=30)
    assert timed_out.status_code == 504                              # no worker: the first wait times out
    queues = [key for key in redis_client.keys("*") if key.endswith(b":queue")]
    assert sum(redis_client.llen(key) for key in queues) == 0        # the other two were taken back


def test_task_targets_are_deduplicated_and_count_with_the_images(redis_url, gateway_factory):
    web, _ = gateway_factory(make_config(redis_url, max_task_images=10, models="efficientnet_lite1"))
    cat = (DATA / "cat.jpg").read_bytes()
    repeated = requests.post(web.url + "/v1/tasks", files=[("image", ("cat.jpg", cat))],
                             data={"models": ",".join(["efficientnet_lite0"] * 5000)}, timeout=30)
    assert repeated.status_code == 202
    report = requests.get(web.url + repeated.json()["status_url"], timeout=10).json()
    assert report["total"] == 1
    six = [("image", (f"{i}.jpg", cat)) for i in range(6)]
    too_many = requests.post(web.url + "/v1/tasks", files=six, timeout=30,
                             data={"models": "efficientnet_lite0,efficientnet_lite1"})
    assert too_many.status_code == 413 and too_many.json()["error"]["code"] == "TASK_TOO_LARGE"


def test_task_urls_are_fetched_by_the_feeder_and_count_against_max_task_bytes(redis_url, classifier,
                                                                            gateway_factory):
    server = serve_images((DATA / "cat.jpg").read_bytes(), delay_s=0.5)
    cat_size = (DATA / "cat.jpg").stat().st_size
    config = make_config(redis_url, url_allowlist="127.0.0.1", max_task_bytes=3 * cat_size + 2000, task_window=2)
    web, _ = gateway_factory(config, classifier)
    urls = [f"http://127.0.0.1:{server.server_port}/cat{i}.jpg" for i in range(6)]
    started = time.monotonic()
    created = requests.post(web.url + "/v1/tasks", json={"urls": urls}, timeout=30)
    assert created.status_code == 202 and time.monotonic() - started < 0.5 * len(urls)   # not fetched inside
    status_url = web.url + created.json()["status_url"]
    report = wait_for(lambda: (r := requests.get(status_url, timeout=10).json())["state"] == "DONE" and r, 120, 0.2,
                      "the URL task to finish")
    codes = sorted(r.get("error", {}).get("code", "OK") for r in report["results"])
    assert codes.count("OK") >= 2 and "PAYLOAD_TOO_LARGE" in codes    # the body + 3 images fit, not 6
    assert server.fetches == len(urls)
    server.shutdown()


def rgba_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (width, height), (10, 20, 30, 128)).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def vm_hwm_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


@pytest.mark.parametrize("budget_mp", [20])
def test_concurrent_decodes_stay_within_the_pixel_budget(redis_url, tmp_path, budget_mp):
    """16 concurrent 3300x3000 RGBA PNGs (finding 5): the web process' peak RSS grows by at most the
    budget at 8 bytes per pixel, plus 150 MiB for threads and buffers."""
    port = free_port()
    env = {**config_env(make_config(redis_url, decode_budget_mp=budget_mp, request_timeout=5.0)), "PORT": str(port)}
    web = processes.start([sys.executable, str(ROOT / "run_server.py"), "--no-worker"], env=env, cwd=ROOT,
                          log_path=tmp_path / "web.log", die_with_parent=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: processes.http_get(url + "/healthz", 2)[0] == 200, 60, 0.2, "the web process")
        png = rgba_png(3300, 3000)
        requests.post(url + "/predict", files={"image": ("warm.png", rgba_png(64, 64))}, timeout=30)
        baseline = vm_hwm_kib(web.pid)
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda _: requests.post(url + "/predict", files={"image": ("big.png", png)},
                                                            timeout=120).status_code, range(16)))
        growth_mib = (vm_hwm_kib(web.pid) - baseline) / 1024
        (tmp_path / "hwm.json").write_text(json.dumps({"growth_mib": growth_mib, "answers": answers}))
        assert all(code in (503, 504) for code in answers)             # decoded, queued, no worker: 504
        assert growth_mib <= budget_mp * 8 + 150, growth_mib
    finally:
        processes.stop(web, 30)
