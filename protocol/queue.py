"""JobQueue: every Redis operation of the web tier and the workers on one model's queue."""
from __future__ import annotations

import json
import time

import redis

from errors import INFERENCE_FAILED
from protocol import scripts
from protocol.keys import Keys
from protocol.messages import Job, Result, peek_id


def connect(redis_url: str, request_timeout_s: float) -> redis.Redis:
    """A client for REDIS_URL (redis://, rediss://, user:password@) whose socket timeout outlasts
    the longest blocking call either tier makes (BLPOP/BLMOVE for up to the request timeout)."""
    return redis.Redis.from_url(redis_url, socket_connect_timeout=2.0,
                                socket_timeout=request_timeout_s + 5, health_check_interval=15)


class JobQueue:
    """The reliable queue of one model: every Redis operation of the web tier and the workers."""

    def __init__(self, client: redis.Redis, model: str, prefix: str = "gw", version: str = "1"):
        self.client = client
        self.model = model
        self.version = version
        self.keys = Keys(prefix, model, version)
        self._enqueue = client.register_script(scripts.ENQUEUE)
        self._claim = client.register_script(scripts.CLAIM)
        self._heartbeat = client.register_script(scripts.HEARTBEAT)
        self._workers_by_age = client.register_script(scripts.WORKERS_BY_AGE)
        self._requeue_dead = client.register_script(scripts.REQUEUE_DEAD)
        self._release = client.register_script(scripts.RELEASE)

    # -- web tier
    def enqueue(self, job: Job, limit: int, bulk: bool = False) -> bool:
        """Append the job unless `limit` jobs are already waiting; False means the queue is full.

        `bulk` jobs (of tasks) wait in their own list, claimed only after the interactive queue."""
        queue = self.keys.bulk if bulk else self.keys.queue
        return bool(self._enqueue(keys=[queue], args=[job.encode(), limit]))

    def wait_result(self, job_id: str, timeout_s: float) -> Result | None:
        """Block until the job's result is published or `timeout_s` passes (None)."""
        if timeout_s <= 0:
            return None
        popped = self.client.blpop([self.keys.result(job_id)], timeout=timeout_s)
        return Result.decode(popped[1]) if popped else None

    def cached(self, digest: str) -> Result | None:
        """The result stored for identical image bytes, if any."""
        raw = self.client.get(self.keys.cache(digest))
        return Result.decode(raw) if raw else None

    def depth(self) -> int:
        """Interactive jobs waiting (the queue QUEUE_LIMIT bounds)."""
        return self.client.llen(self.keys.queue)

    def live_workers(self, ttl_s: float) -> list[str]:
        return [w.decode() for w in self._workers_by_age(keys=[self.keys.workers], args=[ttl_s, 1])]

    def worker_info(self, worker_id: str) -> dict:
        return {k.decode(): v.decode() for k, v in self.client.hgetall(self.keys.worker_info(worker_id)).items()}

    # -- worker
    def claim(self, worker_id: str, count: int, block_s: float = 0.0) -> list[bytes]:
        """Move up to `count` messages to this worker's processing list atomically.

        When the queue is empty and `block_s` > 0, block on Redis (BLMOVE) for the first message
        instead of sleeping, and return it alone so that it starts without another round trip.
        """
        processing = self.keys.processing(worker_id)
        batch = self._claim(keys=[self.keys.queue, processing, self.keys.retry, self.keys.bulk], args=[count])
        if batch or block_s <= 0:
            return batch
        first = self.client.blmove(self.keys.queue, processing, block_s, "LEFT", "RIGHT")
        return [first] if first is not None else []   # at once: whatever follows is claimed next

    def publish(self, results: list[Result], ttl_s: int, cache: dict[str, tuple[Result, int]] | None = None,
                ack: tuple[str, int] | None = None) -> None:
        """Hand each result to its waiting handler (LPUSH with TTL), store cacheable ones and, with
        `ack=(worker_id, count)`, forget the worker's oldest `count` claimed messages: one round trip.

        The trim comes after the results in the pipeline, so a crash between them can only make a
        job run twice (at least once), never lose it.
        """
        pipe = self.client.pipeline(transaction=False)
        for result in results:
            key = self.keys.result(result.id)
            pipe.lpush(key, result.encode())
            pipe.expire(key, ttl_s)
        for digest, (result, cache_ttl) in (cache or {}).items():
            pipe.set(self.keys.cache(digest), result.encode(), ex=cache_ttl)
        if ack:
            worker_id, count = ack
            pipe.ltrim(self.keys.processing(worker_id), count, -1)
        pipe.execute()

    def reject(self, worker_id: str, raw: bytes, result: Result, ttl_s: int) -> None:
        """Answer a claimed message that cannot be run (it does not decode) and drop it."""
        pipe = self.client.pipeline(transaction=False)
        if result.id:
            pipe.lpush(self.keys.result(result.id), result.encode())
            pipe.expire(self.keys.result(result.id), ttl_s)
        pipe.lrem(self.keys.processing(worker_id), 1, raw)
        pipe.execute()

    def fail_all(self, code: str, message: str, ttl_s: int) -> int:
        """Answer every queued job with an error (a version nobody will serve any more); how many."""
        failed = 0
        while batch := self.claim("retired", 64):
            ids = [job_id for job_id in map(peek_id, batch) if job_id]
            self.publish([Result.failed(job_id, code, message) for job_id in ids], ttl_s, ack=("retired", len(batch)))
            failed += len(ids)
        return failed

    def heartbeat(self, worker_id: str, info: dict, ttl_s: float) -> None:
        flat = [str(item) for pair in info.items() for item in pair]
        self._heartbeat(keys=[self.keys.workers, self.keys.worker_info(worker_id)],
                        args=[worker_id, json.dumps(flat), max(1, int(ttl_s * 3))])

    def requeue_dead(self, ttl_s: float, max_attempts: int, result_ttl_s: int,
                     failure: Result | None = None) -> tuple[int, int, int]:
        """Return the jobs of workers silent for `ttl_s` to the queue: (requeued, dead-lettered, expired).

        `failure` is the answer for a job dead-lettered after `max_attempts` claims (its id is filled in).
        """
        failure = failure or Result.failed("", INFERENCE_FAILED.code,
                                           f"the job failed {max_attempts} times (workers died)")
        totals = [0, 0, 0]
        for worker in self._workers_by_age(keys=[self.keys.workers], args=[ttl_s, 0]):
            worker_id = worker.decode()
            counts = self._requeue_dead(
                keys=[self.keys.workers, self.keys.retry, self.keys.dead_letter, self.keys.processing(worker_id)],
                args=[worker_id, ttl_s, max_attempts, time.time(), result_ttl_s, failure.encode(),
                      self.keys.result("")])
            totals = [total + int(count) for total, count in zip(totals, counts, strict=True)]
        return tuple(totals)

    def release(self, worker_id: str) -> int:
        """Give back everything this worker holds (graceful stop) and leave the worker set."""
        return self._release(keys=[self.keys.processing(worker_id), self.keys.queue, self.keys.workers],
                             args=[worker_id])

    def count(self, name: str, amount: int = 1) -> None:
        self.client.hincrby(self.keys.stats, name, amount)

    def stats(self) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in self.client.hgetall(self.keys.stats).items()}
