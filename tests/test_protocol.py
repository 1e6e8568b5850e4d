"""The queue guarantees, against a real redis-server: atomic claims, limits, recovery, round trips."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from image_gateway import protocol


def make_job(job_id: str, deadline_in_s: float = 30.0, dtype=np.uint8, attempts: int = 0) -> protocol.Job:
    array = (np.arange(8 * 8 * 3) % 251).astype(dtype).reshape(8, 8, 3)
    return protocol.Job(id=job_id, model="m", deadline=time.time() + deadline_in_s, array=array,
                        trace_id=f"trace-{job_id}", attempts=attempts)


@pytest.fixture
def queue(redis_client) -> protocol.JobQueue:
    return protocol.JobQueue(redis_client, "m", "test")


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_wire_dtypes_round_trip_exactly(queue, dtype):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (224, 224, 3)).astype(dtype)
    if dtype == np.float32:
        array += rng.random((224, 224, 3), dtype=np.float32)   # fractional values survive too
    job = protocol.Job(id="a", model="m", deadline=time.time() + 5, array=array, top_k=3)
    assert queue.enqueue(job, limit=10)
    [(raw, pixels)] = queue.claim_jobs("w1", 32)
    assert len(raw) < 1000 and len(pixels) == array.nbytes           # the queue holds the header alone
    decoded = protocol.Job.decode(raw, pixels)
    assert decoded.array.dtype == dtype and decoded.array.shape == (224, 224, 3)
    assert np.array_equal(decoded.array, array)
    assert (decoded.id, decoded.top_k, decoded.model) == ("a", 3, "m")


def test_decode_refuses_unknown_dtype():
    raw = make_job("x").encode().replace(b'"dtype": "uint8"', b'"dtype": "object"')
    with pytest.raises(ValueError):
        protocol.Job.decode(raw)


def test_enqueue_refuses_past_the_limit_even_under_concurrent_pushes(queue, redis_client):
    accepted = []

    def push(n):
        for i in range(20):
            accepted.append(queue.enqueue(make_job(f"{n}-{i}"), limit=50))

    threads = [threading.Thread(target=push, args=(n,)) for n in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sum(accepted) == 50
    assert queue.depth() == 50


def test_concurrent_claims_take_every_job_exactly_once(queue):
    ids = [f"job-{i}" for i in range(300)]
    for job_id in ids:
        queue.enqueue(make_job(job_id), limit=1000)
    claimed: dict[str, list[str]] = {}

    def claim(worker: str):
        claimed[worker] = []
        while True:
            batch = queue.claim(worker, 7)
            if not batch:
                return
            claimed[worker] += [protocol.peek_id(raw) for raw in batch]

    threads = [threading.Thread(target=claim, args=(f"w{n}",)) for n in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    everything = [job_id for jobs in claimed.values() for job_id in jobs]
    assert sorted(everything) == sorted(ids)          # nothing lost, nothing twice
    assert sum(1 for jobs in claimed.values() if jobs) > 1


def test_claim_blocks_when_idle_and_wakes_on_the_first_job(queue):
    def push_later():
        time.sleep(0.3)
        queue.enqueue(make_job("late"), limit=10)

    pusher = threading.Thread(target=push_later)
    pusher.start()
    started = time.monotonic()
    batch = queue.claim("w1", 32, block_s=5.0)
    waited = time.monotonic() - started
    pusher.join()                                     # its pipeline's reply is read before the fixture closes Redis
    assert [protocol.peek_id(raw) for raw in batch] == ["late"]
    assert 0.2 < waited < 4.0                         # it blocked, and woke long before its timeout


def test_claimed_jobs_stay_in_processing_until_acked(queue, redis_client):
    for i in range(5):
        queue.enqueue(make_job(f"j{i}"), limit=10)
    batch = queue.claim("w1", 3)
    assert len(batch) == 3
    assert redis_client.llen(queue.keys.processing("w1")) == 3
    queue.publish([], ttl_s=30, ack=("w1", 3))
    assert redis_client.llen(queue.keys.processing("w1")) == 0
    assert queue.depth() == 2


def test_result_hand_off_wakes_the_waiter_and_expires(queue, redis_client):
    def publish_later():
        time.sleep(0.2)
        queue.publish([protocol.Result.ok("r1", predictions=[{"label": "x", "class_id": 1, "probability": 0.5}])],
                      ttl_s=30)

    threading.Thread(target=publish_later).start()
    started = time.monotonic()
    result = queue.wait_result("r1", 5.0)
    assert result.success and result.output["predictions"][0]["label"] == "x"
    assert time.monotonic() - started < 2.0
    assert not redis_client.exists(queue.keys.result("r1"))    # consumed by the waiter
    queue.publish([protocol.Result.ok("r2", predictions=[])], ttl_s=30)
    assert 0 < redis_client.ttl(queue.keys.result("r2")) <= 30  # an unclaimed result expires
    assert queue.wait_result("nobody", 0.2) is None


def test_dead_workers_jobs_are_requeued_with_attempts_counted(queue, redis_client):
    for i in range(3):
        queue.enqueue(make_job(f"j{i}"), limit=10)
    queue.enqueue(make_job("old", deadline_in_s=0.3), limit=10)
    queue.heartbeat("dying", {"model": "m"}, ttl_s=1.0)
    assert len(queue.claim("dying", 10)) == 4
    assert queue.requeue_dead(ttl_s=1.0, max_attempts=3, result_ttl_s=30) == (0, 0, 0)  # still alive
    time.sleep(1.2)                                          # no heartbeat: dead, and "old" expired
    assert queue.requeue_dead(ttl_s=1.0, max_attempts=3, result_ttl_s=30) == (3, 0, 1)
    claims = [queue.claim_jobs("heir", 10) for _ in range(3)]
    assert [len(claim) for claim in claims] == [1, 1, 1]             # each recovered job is claimed alone
    requeued = [protocol.Job.decode(*claim[0]) for claim in claims]
    assert [job.id for job in requeued] == ["j0", "j1", "j2"]        # back in their order
    assert all(job.attempts == 1 for job in requeued)
    assert np.array_equal(requeued[0].array, make_job("j0").array)
    assert not redis_client.exists(queue.keys.processing("dying"))
    assert "dying" not in queue.live_workers(60)


def test_a_job_that_keeps_killing_workers_is_dead_lettered_with_an_error_result(queue, redis_client):
    queue.enqueue(make_job("poison", attempts=2), limit=10)
    queue.heartbeat("victim", {}, ttl_s=0.5)
    queue.claim("victim", 10)
    time.sleep(0.7)
    assert queue.requeue_dead(ttl_s=0.5, max_attempts=3, result_ttl_s=30) == (0, 1, 0)
    assert queue.depth() == 0
    assert redis_client.llen(queue.keys.dead_letter) == 1
    result = queue.wait_result("poison", 1.0)
    assert result.success is False and result.error["code"] == "INFERENCE_FAILED"


def test_release_returns_held_jobs_to_the_queue_head_in_order(queue):
    for i in range(4):
        queue.enqueue(make_job(f"j{i}"), limit=10)
    queue.claim("stopping", 3)
    assert queue.release("stopping") == 3
    assert [protocol.peek_id(raw) for raw in queue.claim("next", 10)] == ["j0", "j1", "j2", "j3"]


def test_heartbeats_make_workers_live_and_carry_their_info(queue):
    queue.heartbeat("w1", {"model": "m", "batches": 7}, ttl_s=1.0)
    assert queue.live_workers(1.0) == ["w1"]
    assert queue.worker_info("w1")["batches"] == "7"
    time.sleep(1.1)
    assert queue.live_workers(1.0) == []


def test_every_key_of_a_model_shares_one_cluster_hash_tag():
    keys = protocol.Keys("gw", "resnet50")
    names = [keys.queue, keys.workers, keys.dead_letter, keys.stats, keys.processing("w"),
             keys.result("id"), keys.cache("d"), keys.worker_info("w"), keys.pixels("id")]
    assert all("{resnet50}" in name for name in names)


def test_recovered_jobs_come_first_and_alone_then_interactive_then_bulk(queue, redis_client):
    queue.enqueue(make_job("bulk-0"), limit=10, bulk=True)
    queue.enqueue(make_job("bulk-1"), limit=10, bulk=True)
    queue.enqueue(make_job("interactive"), limit=10)
    redis_client.rpush(queue.keys.retry, make_job("recovered").encode())
    assert [protocol.peek_id(raw) for raw in queue.claim("w", 8)] == ["recovered"]
    assert [protocol.peek_id(raw) for raw in queue.claim("w", 2)] == ["interactive", "bulk-0"]
    assert [protocol.peek_id(raw) for raw in queue.claim("w", 8)] == ["bulk-1"]
    assert queue.depth() == 0 and redis_client.llen(queue.keys.processing("w")) == 4


def test_pixels_wait_apart_and_go_with_the_answer(queue, redis_client):
    """The queue holds headers; the pixels key lives until the job is answered (or withdrawn, or refused)."""
    kept, refused = make_job("kept"), make_job("refused")
    assert queue.enqueue(kept, limit=1) and not queue.enqueue(refused, limit=1)
    assert redis_client.exists(queue.keys.pixels("kept")) and not redis_client.exists(queue.keys.pixels("refused"))
    assert 0 < redis_client.pttl(queue.keys.pixels("kept")) <= (kept.deadline - time.time() + 61) * 1000
    [(raw, pixels)] = queue.claim_jobs("w", 4)
    assert raw == kept.message() and pixels == kept.pixels().tobytes()
    queue.publish([protocol.Result.ok("kept", predictions=[])], 30, ack=("w", 1), forget=["kept"])
    assert not redis_client.exists(queue.keys.pixels("kept"))
    withdrawn = make_job("withdrawn")
    queue.enqueue(withdrawn, limit=5)
    assert queue.withdraw([withdrawn]) == 1 and not redis_client.exists(queue.keys.pixels("withdrawn"))


def test_a_job_whose_pixels_are_gone_does_not_decode(queue, redis_client):
    queue.enqueue(make_job("lost"), limit=5)
    redis_client.delete(queue.keys.pixels("lost"))
    [(raw, pixels)] = queue.claim_jobs("w", 4)
    assert pixels is None
    with pytest.raises(ValueError, match="pixels are missing"):
        protocol.Job.decode(raw, pixels)
    assert protocol.Job.decode(make_job("inline").encode()).id == "inline"     # header and pixels in one message
