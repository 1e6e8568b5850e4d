"""JobQueue: every Redis operation of the web tier and the workers on one model's queue."""
from __future__ import annotations

import json
import logging
import time

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import ClusterError, RedisClusterException
from redis.retry import Retry

from image_gateway.errors import INFERENCE_FAILED
from image_gateway.protocol import scripts
from image_gateway.protocol.keys import Keys
from image_gateway.protocol.messages import Job, Result, peek_id
from image_gateway.redis_url import no_setinfo, redact

log = logging.getLogger("gateway.queue")

# What a shard that is failing over answers: lost connections, then CLUSTERDOWN / MOVED until its
# replica is promoted (seconds). On a cluster, calls that must not give up (a handler waiting for its
# result, a worker handing results over) try again until their deadline.
FAILOVER_ERRORS = (redis.ConnectionError, redis.TimeoutError, ClusterError)
RETRY_PAUSE_S = 0.2            # between those tries
WAIT_SLICE_S = 0.5             # longest single BLPOP on a cluster (why: see `wait_result`)
PUBLISH_PATIENCE_S = 15.0      # how long a worker keeps trying to hand results over through a failover
REPLICA_WAIT_MS = 100          # ENQUEUE_REPLICAS: most ms an enqueue waits for the replicas' ack
PIXELS_GRACE_S = 60.0         # a job's pixels outlive its deadline by this much (a worker past it drops the job)
CACHE_MAX_BYTES = 64 * 2**20   # CACHE_MAX_MB's default: bytes of cached results per model version
# Bytes Redis spends on a cache entry besides its value and key name: the key's dict entry, object and
# TTL, its digest in the index zset (skiplist node and dict entry) and in the sizes hash. MEMORY USAGE
# measured ~332 once the cache holds ~1,000 entries (tests/test_durability.py checks the cap holds).
CACHE_ENTRY_OVERHEAD = 340


class ClusterClient(RedisCluster):
    """redis-py's cluster client whose own failures (no reachable node, slot not covered) are
    redis.ConnectionError, as with one Redis: the web tier answers 503 and the worker loops back off."""

    def execute_command(self, *args, **kwargs):
        try:
            return super().execute_command(*args, **kwargs)
        except RedisClusterException as exc:
            raise redis.ConnectionError(f"redis cluster: {exc}") from exc


def connect(redis_url: str, request_timeout_s: float, cluster: bool = False) -> redis.Redis:
    """A client for REDIS_URL (redis://, rediss://, user:password@) whose socket timeout outlasts
    the longest blocking call either tier makes (BLPOP/BLMOVE for up to the request timeout).

    With `cluster` (REDIS_CLUSTER=1) REDIS_URL names any node of a Redis Cluster. After a lost
    connection or CLUSTERDOWN the client reads the slot map again and retries once, so a slot that moved
    is followed at once, while a shard that is still failing over fails fast (503, workers back off).
    """
    options = {"socket_connect_timeout": 2.0, "socket_timeout": request_timeout_s + 5, "health_check_interval": 15,
               **no_setinfo()}
    if not cluster:
        return redis.Redis.from_url(redis_url, **options)
    try:
        return ClusterClient.from_url(redis_url, retry=Retry(NoBackoff(), 1), **options)
    except RedisClusterException as exc:
        raise redis.ConnectionError(f"redis cluster at {redact(redis_url)}: {exc}") from exc


class JobQueue:
    """The reliable queue of one model: every Redis operation of the web tier and the workers."""

    def __init__(self, client: redis.Redis, model: str, prefix: str = "gw", version: str = "1",
                 cache_max_bytes: int = CACHE_MAX_BYTES):
        self.client = client
        self.cache_max_bytes = cache_max_bytes   # CACHE_MAX_MB: the cache of this model version stays within
        self.model = model
        self.version = version
        self.keys = Keys(prefix, model, version)
        self.clustered = isinstance(client, RedisCluster)
        self._enqueue = client.register_script(scripts.ENQUEUE)
        self._claim = client.register_script(scripts.CLAIM)
        self._heartbeat = client.register_script(scripts.HEARTBEAT)
        self._workers_by_age = client.register_script(scripts.WORKERS_BY_AGE)
        self._requeue_dead = client.register_script(scripts.REQUEUE_DEAD)
        self._release = client.register_script(scripts.RELEASE)
        self._cache_put = client.register_script(scripts.CACHE_PUT)
        self._cache_loaded = False             # CACHE_PUT known to this Redis (it forgets scripts on a restart)

    # -- web tier
    def enqueue(self, job: Job, limit: int, bulk: bool = False, replicas: int = 0) -> bool:
        """Append the job unless `limit` jobs are already waiting; False means the queue is full.

        The pixels are stored under their own key and the queue holds the header (Job.message), in one
        round trip. `bulk` jobs (of tasks) wait in their own list, claimed only after the interactive queue.
        `replicas` > 0 (ENQUEUE_REPLICAS): WAIT until that many replicas of the queue's master hold the
        job too (at most REPLICA_WAIT_MS), so a failover right after cannot lose it.
        """
        queue = self.keys.bulk if bulk else self.keys.queue
        if replicas <= 0:
            return self._push(self.client, queue, job, limit)
        if not self.clustered:
            return self._push(self.client, queue, job, limit, replicas)
        moved = (*FAILOVER_ERRORS, redis.exceptions.MovedError, RedisClusterException)
        try:
            return self._push(self._master_of(queue), queue, job, limit, replicas)
        except moved:
            self._reread_slots()          # the slot moved (failover): once more, on its new master
        try:
            return self._push(self._master_of(queue), queue, job, limit, replicas)
        except moved as exc:
            raise redis.ConnectionError(f"enqueue on {queue}: {exc}") from exc

    def _push(self, client, queue: str, job: Job, limit: int, replicas: int = 0) -> bool:
        """SET the pixels (until the job's deadline, and a minute more), the ENQUEUE script on the header and,
        for `replicas`, WAIT: one pipeline on one connection (WAIT counts the replicas that acknowledged this
        connection's writes). A refused job's pixels are deleted at once."""
        pixels_key = self.keys.pixels(job.id)
        ttl_ms = int(max(1.0, job.deadline - time.time() + PIXELS_GRACE_S) * 1000)

        def run() -> list:
            pipe = client.pipeline(transaction=False)
            pipe.set(pixels_key, job.pixels(), px=ttl_ms)
            pipe.evalsha(self._enqueue.sha, 2, queue, pixels_key, job.message(), limit)
            if replicas > 0:
                pipe.wait(replicas, REPLICA_WAIT_MS)
            return pipe.execute()
        try:
            replies = run()
        except redis.exceptions.NoScriptError:   # first use, or Redis restarted: load it, then once more
            client.script_load(scripts.ENQUEUE)
            replies = run()
        if replies[1] != 1:               # full (0); -1 cannot come back: the failed SET raised first
            client.delete(pixels_key)
            return False
        if replicas > 0 and replies[2] < replicas:
            self.count("unreplicated")    # on the master only: counted, not refused (see deploy/README.md)
        return True

    def withdraw(self, jobs: list[Job], bulk: bool = False) -> int:
        """Take queued jobs back (a request with several images failed part-way: nobody waits for them).
        A job a worker already claimed runs; its result expires unread. Returns how many were taken back."""
        queue = self.keys.bulk if bulk else self.keys.queue
        pipe = self.client.pipeline(transaction=False)
        for job in jobs:
            pipe.lrem(queue, 1, job.message())
        removed = pipe.execute()
        taken = [job for job, count in zip(jobs, removed, strict=True) if count]
        if taken:
            self.client.delete(*(self.keys.pixels(job.id) for job in taken))
        return len(taken)

    def _master_of(self, key: str) -> redis.Redis:
        """The plain client of the cluster master serving `key`'s slot, as this client knows it."""
        return self.client.get_redis_connection(self.client.get_node_from_key(key))

    def _reread_slots(self) -> None:
        try:
            self.client.nodes_manager.initialize()
        except (redis.RedisError, RedisClusterException):
            pass                          # still failing over: the retry fails as fast

    def wait_result(self, job_id: str, timeout_s: float) -> Result | None:
        """Block until the job's result is published or `timeout_s` passes (None).

        On a cluster the result's shard can fail over while we wait: the wait goes on, on whichever
        node serves the slot, until the deadline (a replica that was promoted holds the job, and the
        workers publish there). Each BLPOP lasts at most WAIT_SLICE_S, because redis-py re-sends a
        blocked call after a redirect with its original timeout. Still unreachable at the deadline:
        the error is raised (503 QUEUE_UNAVAILABLE), not a timeout.
        """
        deadline = time.monotonic() + timeout_s
        slice_s = WAIT_SLICE_S if self.clustered else timeout_s
        while (remaining := deadline - time.monotonic()) > 0:
            try:    # at least 10 ms: a BLPOP timeout that rounds to 0 ms would block forever
                popped = self.client.blpop([self.keys.result(job_id)], timeout=max(0.01, min(remaining, slice_s)))
            except FAILOVER_ERRORS:
                if not self.clustered or remaining <= RETRY_PAUSE_S:
                    raise
                time.sleep(RETRY_PAUSE_S)
                continue
            if popped:
                return Result.decode(popped[1])
        return None

    def cached_and_depth(self, digest: str | None) -> tuple[Result | None, int]:
        """The cached result for `digest` (if any) and the queue's depth, in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        if digest:
            pipe.get(self.keys.cache(digest))
        pipe.llen(self.keys.queue)
        *raw, depth = pipe.execute()
        return (Result.decode(raw[0]) if raw and raw[0] else None), depth

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

    def claim_jobs(self, worker_id: str, count: int, block_s: float = 0.0) -> list[tuple[bytes, bytes | None]]:
        """`claim`, then each message's pixels (None when gone: past the deadline, or a message that carries
        them itself) in one more round trip: [(message, pixels)]."""
        raws = self.claim(worker_id, count, block_s)
        if not raws:
            return []
        pixels = self.client.mget([self.keys.pixels(peek_id(raw) or "") for raw in raws])
        return list(zip(raws, pixels, strict=True))

    def publish(self, results: list[Result], ttl_s: int, cache: dict[str, tuple[Result, int]] | None = None,
                ack: tuple[str, int] | None = None, forget: list[str] = ()) -> None:
        """Store cacheable results (`cache`: digest -> (result, TTL)) within the cache's cap, hand each
        result to its waiting handler (LPUSH with TTL) and, with `ack=(worker_id, count)`, forget the
        worker's oldest `count` claimed messages, and delete the pixels of the jobs in `forget`: one round trip.

        The cache comes first, so a client that sends the same bytes again at once finds it; the trim
        comes after the results, so a crash between them can only make a job run twice (at least once),
        never lose it.
        """
        call = self._cache_call(cache)
        if call and not self._cache_loaded:    # first use: load the script (EVALSHA in a pipeline cannot)
            self.store_cached(cache)
            call = None

        def fill(pipe) -> None:
            if call:
                pipe.evalsha(self._cache_put.sha, len(call[0]), *call[0], *call[1])
            for result in results:
                key = self.keys.result(result.id)
                pipe.lpush(key, result.encode())
                pipe.expire(key, ttl_s)
            if ack:
                pipe.ltrim(self.keys.processing(ack[0]), ack[1], -1)
            for job_id in forget:         # one key a DEL: a cluster pipeline takes no multi-key DEL
                pipe.delete(self.keys.pixels(job_id))
        try:
            self._pipeline(fill, PUBLISH_PATIENCE_S)
        except redis.exceptions.NoScriptError:  # Redis restarted: the answers and the ack went through
            self._cache_loaded = False
            self.store_cached(cache)

    def _cache_call(self, cache: dict[str, tuple[Result, int]] | None) -> tuple[list, list] | None:
        """KEYS and ARGV of scripts.CACHE_PUT for these entries; None when there is nothing to cache."""
        if self.cache_max_bytes <= 0 or not cache:
            return None
        ttl_s = max(int(entry_ttl) for _, entry_ttl in cache.values())
        keys = [self.keys.cache_index, self.keys.cache_sizes, *(self.keys.cache(digest) for digest in cache)]
        entries = [item for digest, (result, _) in cache.items() for item in (digest, result.encode())]
        return keys, [ttl_s, int(self.cache_max_bytes), CACHE_ENTRY_OVERHEAD, self.keys.cache(""), *entries]

    def store_cached(self, cache: dict[str, tuple[Result, int]]) -> int:
        """Cache results for identical images (scripts.CACHE_PUT): the oldest entries make room, so the
        cache of this model version stays within `cache_max_bytes`. How many were stored; a Redis error
        costs only the cache entries (logged, not raised)."""
        call = self._cache_call(cache)
        if call is None:
            return 0
        try:
            stored = int(self._cache_put(keys=call[0], args=call[1]))
        except (redis.RedisError, RedisClusterException) as exc:
            log.warning("results not cached (%s): %s", self.model, exc)
            return 0
        self._cache_loaded = True
        return stored

    def _pipeline(self, fill, patience_s: float = 0.0) -> list:
        """Run what `fill(pipe)` queues as one pipeline (one slot on a cluster). On a cluster, keep
        trying through a failover for up to `patience_s`: the jobs stay claimed by this live worker, so
        results it failed to hand over would otherwise never reach their handlers."""
        give_up = time.monotonic() + patience_s
        while True:
            pipe = self.client.pipeline(transaction=False)
            fill(pipe)
            try:
                return pipe.execute()
            except (*FAILOVER_ERRORS, RedisClusterException) as exc:
                if not self.clustered or time.monotonic() + RETRY_PAUSE_S > give_up:
                    if isinstance(exc, RedisClusterException):
                        raise redis.ConnectionError(f"redis cluster: {exc}") from exc
                    raise
            time.sleep(RETRY_PAUSE_S)

    def reject(self, worker_id: str, raw: bytes, result: Result, ttl_s: int) -> None:
        """Answer a claimed message that cannot be run (it does not decode) and drop it."""
        def fill(pipe) -> None:
            if result.id:
                pipe.lpush(self.keys.result(result.id), result.encode())
                pipe.expire(self.keys.result(result.id), ttl_s)
                pipe.delete(self.keys.pixels(result.id))
            pipe.lrem(self.keys.processing(worker_id), 1, raw)
        self._pipeline(fill)

    def fail_all(self, code: str, message: str, ttl_s: int) -> int:
        """Answer every queued job with an error (a version nobody will serve any more); how many."""
        failed = 0
        while batch := self.claim("retired", 64):
            ids = [job_id for job_id in map(peek_id, batch) if job_id]
            self.publish([Result.failed(job_id, code, message) for job_id in ids], ttl_s, ack=("retired", len(batch)),
                         forget=ids)
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

    def shard(self) -> str:
        """host:port of the Redis holding this queue: on a cluster, the master serving its slot as this
        client last learned it ("" while that is unknown)."""
        if self.clustered:
            try:
                return self.client.get_node_from_key(self.keys.queue).name
            except RedisClusterException:
                return ""
        kwargs = self.client.connection_pool.connection_kwargs
        return kwargs.get("path") or f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"

    def stats(self) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in self.client.hgetall(self.keys.stats).items()}
