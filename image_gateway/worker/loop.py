"""The model worker: claim a batch, predict it in one call, publish each result, heartbeat.

`Worker` serves one model version's queue; a `WorkerGroup` runs one per CPU core on one loaded
model; `model_host.ModelHost` keeps a group per served version; `classify_worker.py` is the process.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from itertools import islice

import numpy as np
import redis

from image_gateway import metrics, protocol
from image_gateway.errors import INFERENCE_FAILED
from image_gateway.models.postprocess import answer_fields
from image_gateway.settings import Settings
from image_gateway.worker.threads import predict_threads

log = logging.getLogger("gateway.worker")


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def lower_priority(nice: int, thread_ids: tuple[int, ...] = ()) -> None:
    """This thread (and threads it starts later) and `thread_ids` (a runtime's own threads) at `nice` more
    than the process: where the web tier shares the cores, a request's own steps (refusals, decoding,
    answers) then come before a model's next batch."""
    if nice <= 0:
        return
    target = os.getpriority(os.PRIO_PROCESS, 0) + nice
    for thread_id in (threading.get_native_id(), *thread_ids):
        with contextlib.suppress(ProcessLookupError):     # a runtime's thread that has ended
            os.setpriority(os.PRIO_PROCESS, thread_id, target)


class Claimed:
    """Jobs claimed from Redis and decoded for the model, oldest first.

    The claim thread claims when the model asks (`take` waits with nothing, or for a fuller batch), so one
    CLAIM script and one MGET bring every job that queued while the model was busy, instead of a BLMOVE,
    an MGET and an empty CLAIM for each job as it arrives. After a full batch it claims the next one at
    once, while the model runs: the queue is deep then, so one claim brings a whole batch, and a model
    with large batches (a GPU) does not wait for it. It holds at most one batch, so a worker never hoards
    jobs that another worker could serve, and below a full batch a busy worker holds none.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.items: list[protocol.Job] = []
        self.wanted = False                     # the model waits for jobs, or its last batch was full
        self.changed = threading.Condition()

    def room(self, timeout_s: float) -> int:
        """Wait until the model wants jobs; how many fit (0 when it did not want any within `timeout_s`)."""
        with self.changed:
            if not self.changed.wait_for(lambda: self.wanted and len(self.items) < self.capacity, timeout_s):
                return 0
            return self.capacity - len(self.items)

    def add(self, items: list[protocol.Job]) -> None:
        if not items:
            return
        with self.changed:
            self.items += items
            self.wanted = False
            self.changed.notify_all()

    def take(self, count: int, timeout_s: float, more_within_s: float = 0.0) -> list[protocol.Job]:
        """Up to `count` oldest items; waits `timeout_s` for the first, `more_within_s` for the rest."""
        with self.changed:
            self._want(lambda: self.items, timeout_s)
            if self.items and more_within_s > 0:
                self._want(lambda: len(self.items) >= count, more_within_s)
            taken, self.items = self.items[:count], self.items[count:]
            self.wanted = len(taken) >= count           # a full batch: the next one is likely waiting
            self.changed.notify_all()
            return taken

    def _want(self, done, timeout_s: float) -> None:
        """Wait (holding the condition) until `done()` or `timeout_s`, asking the claim thread for jobs."""
        deadline = time.monotonic() + timeout_s
        while not done() and (remaining := deadline - time.monotonic()) > 0:
            self.wanted = True
            self.changed.notify_all()
            self.changed.wait(remaining)


class Worker:
    """Claims batches of one model's queue and answers them; `run()` until `stop()`."""

    def __init__(self, config: Settings, client: redis.Redis, classifier, worker_id: str | None = None,
                 version: str = "1"):
        self.config = config
        self.classifier = classifier
        # CPU a runtime's own threads (LiteRT's pool) spent on this thread's last predict call
        self.helper_cpu_s = getattr(classifier, "helper_cpu_s", lambda: 0.0)
        self.version = version
        self.queue = protocol.JobQueue(client, classifier.spec.name, config.key_prefix, version,
                                       cache_max_bytes=int(config.cache_max_mb * 2**20))
        self.worker_id = worker_id or new_worker_id()
        self.claimed = Claimed(config.batch_size)
        self.stopping = threading.Event()
        self.batches = 0
        self.jobs = 0
        self.started_at = time.time()
        self.batch_sizes: deque[int] = deque(maxlen=1000)   # recent batch sizes (tests read them)
        self.last_inference_s = 0.0
        self.warmed = threading.Event()                      # set once the compiled predict is traced

    # ------------------------------------------------------------------------------ main loop
    def run(self) -> None:
        """Predict batches until stopped; claiming and heartbeats run in their own threads."""
        self._warm_up()
        self.warmed.set()
        threads = [threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True),
                   threading.Thread(target=self._claim_loop, name="claim", daemon=True)]
        [thread.start() for thread in threads]
        log.info("worker started", extra={"worker": self.worker_id, "model": self.queue.model})
        # the model's threads only (its runtime's pool too): heartbeats and claims keep their priority
        lower_priority(self.config.worker_nice, getattr(self.classifier, "helper_threads", ()))
        self._retrying(self._predict_once)
        threads[1].join()
        self._release()
        log.info("worker stopped", extra={"worker": self.worker_id})

    def _warm_up(self) -> None:
        """Trace the compiled predict once before the first heartbeat: ready means fast."""
        if hasattr(self.classifier, "warm_up"):
            self.classifier.warm_up()
            return
        size = self.classifier.spec.input_size
        dtype = np.uint8 if self.config.wire_dtype == "uint8" else np.float32
        self.classifier.predict(np.zeros((1, size, size, 3), dtype))

    def stop(self) -> None:
        """Stop claiming; the batch in hand is finished, anything else claimed goes back."""
        self.stopping.set()

    def _retrying(self, step) -> None:
        """Run `step` until stopped, backing off while Redis is unreachable."""
        backoff = 0.1
        while not self.stopping.is_set():
            try:
                step()
                backoff = 0.1
            except Exception as exc:   # a bug must not leave a heartbeating worker that serves nothing
                if isinstance(exc, redis.RedisError):
                    log.warning("redis unavailable, retrying in %.1fs: %s", backoff, exc)
                else:
                    log.exception("worker step failed, retrying in %.1fs", backoff)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 1.0)   # 1 s: a Redis failover is over within seconds

    def _claim_loop(self) -> None:
        def claim_once():
            room = self.claimed.room(timeout_s=0.5)
            if room:
                claimed = self.queue.claim_jobs(self.worker_id, room, 0.5)
                self.claimed.add([job for job in (self._decode(*pair) for pair in claimed) if job is not None])
        self._retrying(claim_once)

    def _predict_once(self) -> None:
        wait_s = self.config.batch_wait_ms / 1000 if self._under_load() else 0.0
        batch = self.claimed.take(self.config.batch_size, timeout_s=0.5, more_within_s=wait_s)
        if batch:
            self.process(batch)

    def _under_load(self) -> bool:
        """Waiting for a fuller batch pays only when recent batches were not single jobs."""
        recent = list(islice(reversed(self.batch_sizes), 4))
        return self.config.batch_wait_ms > 0 and bool(recent) and max(recent) > 1

    # ---------------------------------------------------------------------------- one batch
    def process(self, batch: list[protocol.Job]) -> None:
        """Predict the live jobs of a claimed batch in one call, publish every answer, ack the batch."""
        started = time.perf_counter()
        now = time.time()
        expired = [protocol.is_expired(job, now) for job in batch]
        jobs = [job for job, late in zip(batch, expired, strict=True) if not late]
        self._dropped_expired([job for job, late in zip(batch, expired, strict=True) if late])
        answered = self._predict(jobs) if jobs else []
        cache = {job.cache_key: (result, self.config.cache_ttl) for job, result in zip(jobs, answered, strict=True)
                 if job.cache_key and result.success and self.config.cache_ttl > 0}
        self.queue.publish(answered, self.config.result_ttl, cache, ack=(self.worker_id, len(batch)),
                           forget=[job.id for job in batch])
        self.batches += 1
        self.jobs += len(jobs)
        self.batch_sizes.append(len(jobs))
        if jobs:
            metrics.BATCH_SIZE.labels(self.queue.model, self.version).observe(len(jobs))
        log.info("batch done", extra={
            "worker": self.worker_id, "batch_size": len(jobs), "claimed": len(batch),
            "wait_ms": round((now - min((job.enqueued_at for job in jobs), default=now)) * 1000, 1),
            "inference_ms": round(self.last_inference_s * 1000, 1),
            "total_ms": round((time.perf_counter() - started) * 1000, 1),
            "trace_ids": [job.trace_id for job in jobs]})

    def _decode(self, raw: bytes, pixels: bytes | None = None) -> protocol.Job | None:
        """The Job of a message and its pixels; one that does not decode is answered with an error and dropped."""
        try:
            return protocol.Job.decode(raw, pixels)
        except (ValueError, KeyError, TypeError) as exc:
            job_id = protocol.peek_id(raw)
            log.error("undecodable message %s: %s", job_id, exc)
            failure = protocol.Result.failed(job_id or "", INFERENCE_FAILED.code, "the queued message was malformed")
            self.queue.reject(self.worker_id, raw, failure, self.config.result_ttl)
            return None

    def _dropped_expired(self, expired: list[protocol.Job]) -> None:
        """Nobody waits for these any more: count and log them instead of spending the model."""
        if not expired:
            return
        self.queue.count("expired", len(expired))
        metrics.EXPIRED.labels(self.queue.model, self.version).inc(len(expired))
        for job in expired:
            log.info("dropped expired job", extra={"trace_id": job.trace_id, "job": job.id})

    def _predict(self, jobs: list[protocol.Job]) -> list[protocol.Result]:
        """One batched call of the model; on any failure every job gets an explicit error, never silence."""
        try:
            started, cpu_started = time.perf_counter(), time.thread_time()
            outputs = answer_fields(self.classifier, jobs)
            self.last_inference_s = time.perf_counter() - started
            metrics.INFERENCE.labels(self.queue.model, self.version).observe(self.last_inference_s)
            cpu_s = time.thread_time() - cpu_started + self.helper_cpu_s()
            metrics.MODEL_CPU.labels(self.queue.model, self.version).inc(cpu_s)
        except Exception:
            log.exception("inference failed for a batch of %d", len(jobs))
            return [protocol.Result.failed(job.id, INFERENCE_FAILED.code, "the model failed on this batch")
                    for job in jobs]
        return [protocol.Result.ok(job.id, **output) for job, output in zip(jobs, outputs, strict=True)]

    # --------------------------------------------------------------------- liveness, shutdown
    def _heartbeat_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self.queue.heartbeat(self.worker_id, self.info(), self.config.heartbeat_ttl)
                requeued, lettered, expired = self.queue.requeue_dead(
                    self.config.heartbeat_ttl, self.config.max_attempts, self.config.result_ttl)
                if requeued or lettered or expired:
                    for name, amount in (("requeued", requeued), ("dead_lettered", lettered), ("expired", expired)):
                        self.queue.count(name, amount)
                    log.warning("recovered jobs of dead workers",
                                extra={"requeued": requeued, "dead_lettered": lettered, "expired": expired})
            except redis.RedisError as exc:
                log.warning("heartbeat failed: %s", exc)
            self.stopping.wait(self.config.heartbeat_interval)

    def info(self) -> dict:
        return {"model": self.queue.model, "version": self.version, "host": socket.gethostname(), "pid": os.getpid(),
                "batches": self.batches, "jobs": self.jobs, "started_at": round(self.started_at, 3)}

    def _release(self) -> None:
        try:
            returned = self.queue.release(self.worker_id)
            if returned:
                log.info("returned %d claimed jobs to the queue", returned)
        except redis.RedisError as exc:
            log.warning("could not return claimed jobs (another worker will recover them): %s", exc)


class WorkerGroup:
    """The workers of one process: WORKER_THREADS of them share one loaded model and one Redis pool."""

    def __init__(self, config: Settings, client: redis.Redis, classifier, version: str = "1"):
        self.workers = [Worker(config, client, classifier, version=version) for _ in range(predict_threads(config))]
        self.threads = [threading.Thread(target=worker.run, name=f"worker-{i}", daemon=True)
                        for i, worker in enumerate(self.workers)]

    def start(self) -> WorkerGroup:
        [thread.start() for thread in self.threads]
        return self

    def wait_warm(self, timeout_s: float) -> bool:
        """Whether every worker traced its predict (and so heartbeats) within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        return all(worker.warmed.wait(max(0.0, deadline - time.monotonic())) for worker in self.workers)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Each worker finishes its batch and returns what else it claimed."""
        [worker.stop() for worker in self.workers]
        deadline = time.monotonic() + timeout_s
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
