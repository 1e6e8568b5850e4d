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

    @property
    def queue(self) -> str:
        return f"{self.base}:queue"

    @property
    def retry(self) -> str:
        """Jobs recovered from a dead worker: each is claimed alone, so it can only blame itself."""
        return f"{self.base}:retry"

    @property
    def bulk(self) -> str:
        """Jobs of tasks: claimed only after the interactive queue, so /predict keeps priority."""
        return f"{self.base}:bulk"

    @property
    def workers(self) -> str:
        """Sorted set: worker id -> Redis time of its last heartbeat."""
        return f"{self.base}:workers"

    @property
    def dead_letter(self) -> str:
        return f"{self.base}:dead"

    def processing(self, worker_id: str) -> str:
        return f"{self.base}:processing:{worker_id}"

    def worker_info(self, worker_id: str) -> str:
        return f"{self.base}:worker:{worker_id}"

    def result(self, job_id: str) -> str:
        return f"{self.base}:result:{job_id}"

    def cache(self, digest: str) -> str:
        return f"{self.base}:cache:{digest}"

    @property
    def stats(self) -> str:
        """Hash of counters shared by all processes (expired, requeued, dead-lettered ...)."""
        return f"{self.base}:stats"




def catalog_key(prefix: str) -> str:
    """Hash: "<model>/<version>" -> JSON entry (kind, input size, state, reason) that workers announce."""
    return f"{prefix}:catalog"
