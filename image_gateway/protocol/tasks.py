"""Tasks in Redis: an image set submitted once, fed to the model queues a window at a time.

A task is a list of units ("<index>/<target>", target a model or "pipeline:<name>"). Any web process
may feed it while it holds the task's lease; a unit taken is recorded as in flight under the feeder's
id, so a feeder that dies is replaced and its units are fed again (at least once). Keys share the hash
tag ``{task:<id>}`` and expire with TASK_TTL; the set of active task ids is one more key.
"""
from __future__ import annotations

import json
import time

import redis

from image_gateway.protocol.keys import TaskKeys, active_tasks_key
from image_gateway.protocol.scripts import FINISH_UNIT, LEASE, TAKE_UNIT

STATES = ("PENDING", "RUNNING", "DONE", "CANCELLED", "EXPIRED")
EXPIRED_VISIBLE_S = 3600   # after TASK_TTL a task answers EXPIRED for this long, then TASK_NOT_FOUND

class TaskStore:
    def __init__(self, client: redis.Redis, prefix: str):
        self.client = client
        self.prefix = prefix
        self.active_key = active_tasks_key(prefix)
        self._take = client.register_script(TAKE_UNIT)
        self._lease = client.register_script(LEASE)
        self._finish = client.register_script(FINISH_UNIT)

    def keys(self, task_id: str) -> TaskKeys:
        return TaskKeys(self.prefix, task_id)

    def create(self, task_id: str, images: list[bytes | None], filenames: list[str], targets: list[str],
               options: dict, ttl_s: int, urls: dict[int, str] | None = None, body_bytes: int = 0,
               owner: str = "") -> int:
        """Store the images and their units; the task is RUNNING and active. Its unit count. An image
        given by URL (`urls`: index -> URL, its `images` entry None) is fetched by the feeder when its
        unit runs; `fetched` counts the bytes fetched, on top of the request's `body_bytes`. `owner`: the
        client that created it (only it may read or cancel the task)."""
        keys = self.keys(task_id)
        units = [f"{index}/{target}" for index in range(len(images)) for target in targets]
        meta = {"state": "RUNNING", "total": len(units), "done": 0, "failed": 0, "created": time.time(),
                "expires_at": time.time() + ttl_s, "images": len(images), "filenames": json.dumps(filenames),
                "options": json.dumps(options), "urls": json.dumps(urls or {}), "bytes": body_bytes,
                "client": owner}
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(keys.meta, mapping=meta)
        stored = {index: data for index, data in enumerate(images) if data is not None}
        if stored:
            pipe.hset(keys.images, mapping=stored)
        pipe.rpush(keys.units, *units)
        for key in (keys.meta, keys.images, keys.units):
            pipe.expire(key, ttl_s + EXPIRED_VISIBLE_S)
        pipe.execute()
        self.client.sadd(self.active_key, task_id)
        return len(units)

    def meta(self, task_id: str) -> dict | None:
        raw = self.client.hgetall(self.keys(task_id).meta)
        return {k.decode(): v.decode() for k, v in raw.items()} or None

    def results(self, task_id: str) -> dict[str, dict]:
        return {unit.decode(): json.loads(raw) for unit, raw in self.client.hgetall(self.keys(task_id).results).items()}

    def active(self) -> list[str]:
        return [task_id.decode() for task_id in self.client.smembers(self.active_key)]

    def hold_lease(self, task_id: str, feeder_id: str, lease_ms: int) -> int:
        keys = self.keys(task_id)
        return int(self._lease(keys=[keys.lease, keys.units, keys.in_flight], args=[feeder_id, lease_ms]))

    def take(self, task_id: str, feeder_id: str) -> str | None:
        keys = self.keys(task_id)
        unit = self._take(keys=[keys.units, keys.in_flight], args=[feeder_id])
        self.client.expire(keys.in_flight, self._ttl(task_id))
        return unit.decode() if unit else None

    def count_bytes(self, task_id: str, amount: int) -> int:
        """Add fetched bytes to the task's total (MAX_TASK_BYTES counts them); the new total."""
        return int(self.client.hincrby(self.keys(task_id).meta, "bytes", amount))

    def image(self, task_id: str, index: int) -> bytes | None:
        return self.client.hget(self.keys(task_id).images, index)

    def finish(self, task_id: str, unit: str, result: dict) -> bool:
        keys = self.keys(task_id)
        stored = int(self._finish(keys=[keys.meta, keys.results, keys.in_flight, keys.images],
                                  args=[unit, json.dumps(result), 0 if result.get("success") else 1]))
        self.client.expire(keys.results, self._ttl(task_id))
        if stored == 2:
            self.client.srem(self.active_key, task_id)
        return bool(stored)

    def _ttl(self, task_id: str) -> int:
        """Keys added later expire with the task's meta."""
        return max(1, self.client.ttl(self.keys(task_id).meta))

    def retire(self, task_id: str, state: str) -> None:
        """CANCELLED or EXPIRED: nothing more is fed; the results so far are kept."""
        keys = self.keys(task_id)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(keys.meta, "state", state)
        pipe.delete(keys.units, keys.images, keys.in_flight)
        pipe.execute()
        self.client.srem(self.active_key, task_id)
