"""Per-stage CPU costs: each step the gateway runs for an image, timed alone in this process.

decode and resize, multipart parsing, the queue message, batch stacking, postprocessing, the Redis
round trips (against a private redis-server) and one HTTP request to the running gateway.
See bench/README.md, "Where the CPU goes".
"""
from __future__ import annotations

import http.client
import time
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

import numpy as np

from bench import loadgen
from bench.system import cpu_delta, tree_cpu
from image_gateway import imaging, models, protocol
from image_gateway import settings as settings_module
from image_gateway.redis_server import RedisServer


def per_image_cpu_ms(work: Callable, items: Sequence) -> float:
    """CPU ms of this process per item for work(item), after one untimed call."""
    work(items[0])
    started = time.process_time()
    for item in items:
        work(item)
    return 1000 * (time.process_time() - started) / len(items)


def stage_costs(jpegs: list[bytes], spec: models.ModelSpec, config: settings_module.Settings) -> tuple[dict, dict]:
    """CPU ms per image of each stage the gateway runs, timed alone in this process:
    ({stage: ms}, {details})."""
    def prepare(jpeg: bytes) -> np.ndarray:
        return imaging.prepare_image(jpeg, spec, max_pixels=config.max_image_pixels)

    costs = {"decode_resize": per_image_cpu_ms(prepare, jpegs), "multipart_parse": _multipart_cost(jpegs)}
    details = {"images": len(jpegs), "mean_jpeg_kib": round(float(np.mean([len(j) for j in jpegs])) / 1024, 1)}
    arrays = [prepare(jpeg) for jpeg in jpegs]
    for dtype in protocol.WIRE_DTYPES:
        costs.update(_message_costs(arrays, spec, config.batch_size, dtype, details))
    costs["serialise"] = costs[f"serialise_{config.wire_dtype}"]
    costs["batch_stack"] = costs[f"batch_stack_{config.wire_dtype}"]
    costs["postprocess"] = _postprocess_cost(len(arrays), spec, config.top_k)
    costs["redis"], redis_details = redis_costs(arrays, spec, config)
    details.update(redis_details)
    return {k: round(v, 3) for k, v in costs.items()}, details


def _multipart_cost(jpegs: list[bytes]) -> float:
    """The gateway's parser (web/multipart.py) on each multipart upload, to its `image` field's bytes."""
    from image_gateway.web import multipart

    bodies = [loadgen.multipart_body(jpeg) for jpeg in jpegs]
    return per_image_cpu_ms(lambda body: multipart.parse(body, loadgen.CONTENT_TYPE).files["image"], bodies)


def _message_costs(arrays: list[np.ndarray], spec: models.ModelSpec, batch_size: int, dtype: str,
                   details: dict) -> dict[str, float]:
    """serialise_<dtype> (Job encode + decode) and batch_stack_<dtype> per image; the message size into details."""
    def encode(array: np.ndarray) -> bytes:
        return protocol.Job(id=protocol.new_job_id(), model=spec.name, deadline=time.time() + 10,
                            array=protocol.to_wire(array, dtype), trace_id="t" * 32).encode()

    messages = [encode(array) for array in arrays]
    details[f"message_kib_{dtype}"] = round(len(messages[0]) / 1024, 1)
    stacked = [protocol.Job.decode(m).array for m in messages[:batch_size]]
    return {f"serialise_{dtype}": per_image_cpu_ms(encode, arrays) + per_image_cpu_ms(protocol.Job.decode, messages),
            f"batch_stack_{dtype}": per_image_cpu_ms(lambda _: np.stack(stacked), [0] * 20) / len(stacked)}


def _postprocess_cost(images: int, spec: models.ModelSpec, top_k: int) -> float:
    """Top-k of one probability row and the encoded result message, per image."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(images, len(spec.labels))).astype(np.float32)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return per_image_cpu_ms(
        lambda row: protocol.Result.ok("x" * 36, predictions=models.top_predictions(row, spec.labels, top_k)).encode(),
        list(probabilities))


def redis_costs(arrays: list[np.ndarray], spec: models.ModelSpec, config: settings_module.Settings,
                min_seconds: float = 1.0) -> tuple[float, dict]:
    """CPU ms per image (this client + redis-server) of the job's Redis round trips: cache lookup,
    enqueue, claim, publish with ack, BLPOP; claims and publishes batched at BATCH_SIZE as the worker
    does."""
    import redis

    messages = []
    for array in arrays:
        job = protocol.Job(id=protocol.new_job_id(), model=spec.name, deadline=time.time() + 600,
                           array=np.ascontiguousarray(array, dtype=config.wire_dtype), trace_id="t" * 32)
        messages.append((job.id, job))
    predictions = models.top_predictions(np.linspace(0, 1, len(spec.labels)), spec.labels, config.top_k)
    batch = max(1, min(config.batch_size, len(messages)))
    groups = [messages[i:i + batch] for i in range(0, len(messages) - batch + 1, batch)] or [messages]
    with RedisServer(config.redis_server_bin) as server:
        client = redis.Redis.from_url(server.url)
        queue = protocol.JobQueue(client, spec.name, "bench")

        def round_trip(group: list) -> None:
            for job_id, message in group:
                assert queue.cached_and_depth(job_id)[0] is None   # the handler's cache lookup + depth, a miss
                queue.enqueue(message, 10_000)
            claimed = queue.claim_jobs("bench-worker", len(group))
            assert len(claimed) == len(group) and all(pixels for _, pixels in claimed)
            queue.publish([protocol.Result.ok(job_id, predictions=predictions) for job_id, _ in group], 60,
                          ack=("bench-worker", len(group)), forget=[job_id for job_id, _ in group])
            for job_id, _ in group:
                assert queue.wait_result(job_id, 5.0) is not None

        results = {name: _time_round_trips(round_trip, work, server.process.pid, min_seconds)
                   for name, work in (("batched", groups), ("single", [[m] for m in messages]))}
        client.close()
    details = {f"redis_{name}_{k}": round(v, 3) for name, row in results.items() for k, v in row.items()}
    details["redis_batch_size"] = batch
    return results["batched"]["cpu_ms"], details


def _time_round_trips(round_trip: Callable[[list], None], work: list[list], server_pid: int,
                      min_seconds: float) -> dict[str, float]:
    """Per image: CPU ms of this process + the redis-server, the server's alone, and wall ms."""
    round_trip(work[0])
    server_before, own_before, wall_before = tree_cpu(server_pid), time.process_time(), time.perf_counter()
    images = 0
    while images == 0 or time.perf_counter() - wall_before < min_seconds:   # /proc counts in 10 ms ticks
        for group in work:
            round_trip(group)
            images += len(group)
    server_s = sum(cpu_delta(server_before, tree_cpu(server_pid)).values())
    return {"cpu_ms": 1000 * (time.process_time() - own_before + server_s) / images,
            "server_cpu_ms": 1000 * server_s / images,
            "wall_ms": 1000 * (time.perf_counter() - wall_before) / images}


def http_costs(url: str, root_pid: int | None, min_seconds: float) -> dict:
    """Per GET /healthz on the running gateway, over one keep-alive connection: the client's wall ms
    and the gateway's CPU ms (its idle CPU subtracted)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=10)
    path = parts.path.rstrip("/") + "/healthz"

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
