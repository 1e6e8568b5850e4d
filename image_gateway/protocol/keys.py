"""Every Redis key the gateway writes.

The keys of one model version share the hash tag ``{model:version}`` (``{model}`` without a
version), so they live in one Redis Cluster slot and models spread over the shards; an operator
finds a model's keys by scanning for its name.
"""
from __future__ import annotations


class Keys:
    """The names of every key for one model version; `prefix` comes from KEY_PREFIX."""

    def __init__(self, prefix: str, model: str, version: str | None = None):
        tag = model if version is None else f"{model}:{version}"
        self.base = f"{prefix}:{{{tag}}}"
        self.queue = f"{self.base}:queue"            # list: interactive jobs, oldest first
        self.retry = f"{self.base}:retry"            # list: jobs recovered from dead workers, each claimed alone
        self.bulk = f"{self.base}:bulk"              # list: task jobs, claimed after the interactive queue
        self.workers = f"{self.base}:workers"        # zset: worker id -> Redis time of its last heartbeat
        self.dead_letter = f"{self.base}:dead"       # list: jobs that killed MAX_ATTEMPTS workers (last 1000)
        self.stats = f"{self.base}:stats"            # hash: counters of all processes (expired, requeued ...)
        # The result cache's bookkeeping (CACHE_MAX_MB), among its entries: a digest always holds a ":".
        self.cache_index = f"{self.base}:cache:index"   # zset: cached digest -> unix s its entry expires
        self.cache_sizes = f"{self.base}:cache:sizes"   # hash: cached digest -> bytes counted; "" -> their total

    def processing(self, worker_id: str) -> str:
        """List: what one worker has claimed and not yet acknowledged."""
        return f"{self.base}:processing:{worker_id}"

    def worker_info(self, worker_id: str) -> str:
        return f"{self.base}:worker:{worker_id}"

    def pixels(self, job_id: str) -> str:
        """String: a queued job's pixels (its message in the queue is the header alone); gone once it is
        answered, or after its deadline."""
        return f"{self.base}:pixels:{job_id}"

    def result(self, job_id: str) -> str:
        return f"{self.base}:result:{job_id}"

    def cache(self, digest: str) -> str:
        return f"{self.base}:cache:{digest}"


class TaskKeys:
    """The keys of one task (hash tag ``{task:<id>}``); they expire with TASK_TTL."""

    def __init__(self, prefix: str, task_id: str):
        base = f"{prefix}:{{task:{task_id}}}"
        self.meta, self.images, self.results = f"{base}:meta", f"{base}:images", f"{base}:results"
        self.units, self.in_flight, self.lease = f"{base}:units", f"{base}:inflight", f"{base}:lease"


def catalog_key(prefix: str) -> str:
    """Hash: "<model>/<version>" -> JSON entry (kind, input size, state, reason) that workers announce."""
    return f"{prefix}:catalog"


def active_tasks_key(prefix: str) -> str:
    """Set: the ids of tasks not yet ended, which the feeders of every web process scan."""
    return f"{prefix}:tasks:active"


def rate_key(prefix: str, client: str) -> str:
    """String: a client's theoretical arrival time (GCRA, ms; protocol/ratelimit.py), hash tag ``{client:<name>}``:
    one key per client, shared by every web server; it expires when the client's bucket is full again."""
    return f"{prefix}:{{client:{client}}}:rate"
