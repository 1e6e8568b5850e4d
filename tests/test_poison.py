"""A job that crashes its worker process costs only itself (real worker processes, real model)."""
from __future__ import annotations

import io
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import requests
from PIL import Image
from poison_worker import POISON_VALUE
from test_gateway import variants

from conftest import ARTIFACTS, ROOT, config_env, make_config, wait_for
from image_gateway import processes


def png(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (224, 224), color).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_poison_job_is_dead_lettered_and_its_batch_mates_are_answered(redis_url, redis_client, gateway_factory):
    config = make_config(redis_url, batch_size=8, heartbeat_ttl=1.0, heartbeat_interval=0.2, max_attempts=3,
                         request_timeout=120.0)
    web, _ = gateway_factory(config)
    env = {**config_env(config), "PYTHONPATH": str(ROOT)}      # the script runs from tests/
    started = []

    def supervise():
        """Keep one worker process alive, as systemd's Restart=always does."""
        if not started or started[-1].poll() is not None:
            log = ARTIFACTS / f"poison-worker-{len(started)}.log"
            started.append(processes.start([sys.executable, str(ROOT / "tests" / "poison_worker.py")],
                                           log_path=log, env=env, cwd=ROOT, die_with_parent=True))
        return False

    try:
        supervise()
        wait_for(lambda: requests.get(web.url + "/readyz", timeout=5).status_code == 200, 120, 0.2,
                 message="the first worker")
        innocents = variants(7)
        with ThreadPoolExecutor(8) as pool:
            poison = pool.submit(requests.post, web.url + "/predict", files={"image": png((POISON_VALUE,) * 3)},
                                 timeout=150)
            time.sleep(0.05)                          # the poison first: it heads the batch
            answers = [pool.submit(requests.post, web.url + "/predict", files={"image": data}, timeout=150)
                       for data in innocents]
            deadline = time.monotonic() + 140
            while not (poison.done() and all(a.done() for a in answers)) and time.monotonic() < deadline:
                supervise()
                time.sleep(0.2)
        assert [a.result().status_code for a in answers] == [200] * 7
        assert all(a.result().json()["predictions"] for a in answers)
        refused = poison.result()
        assert refused.status_code == 500 and refused.json()["error"]["code"] == "INFERENCE_FAILED"
        assert len(started) - 1 == 3                  # it killed MAX_ATTEMPTS workers, no more
        queue_keys = [k for k in redis_client.keys("gw:*:dead")]
        assert queue_keys and redis_client.llen(queue_keys[0]) == 1
    finally:
        for child in started:
            processes.stop(child, 10)
