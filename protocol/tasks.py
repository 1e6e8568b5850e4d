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

STATES = ("PENDING", "RUNNING", "DONE", "CANCELLED", "EXPIRED")
EXPIRED_VISIBLE_S = 3600   # after TASK_TTL a task answers EXPIRED for this long, then TASK_NOT_FOUND

# Take the next unit and record it as in flight for this feeder.
#   KEYS[1] units (list)   KEYS[2] in flight (hash unit -> feeder)   ARGV[1] feeder id
TAKE_UNIT = """
local unit = redis.call('LPOP', KEYS[1])
if unit then redis.call('HSET', KEYS[2], unit, ARGV[1]) end
return unit
"""

# Hold the lease (take it when free, renew it when ours); when newly taken, units in flight under
# another (dead) feeder go back to the head of the units list. Returns 0 (not ours), 1 (renewed), 2 (taken).
#   KEYS[1] lease   KEYS[2] units   KEYS[3] in flight   ARGV[1] feeder id   ARGV[2] lease ms
LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
if holder then return 1 end
local flight = redis.call('HGETALL', KEYS[3])
for i = 1, #flight, 2 do
  if flight[i + 1] ~= ARGV[1] then
    redis.call('LPUSH', KEYS[2], flight[i])
    redis.call('HDEL', KEYS[3], flight[i])
  end
end
return 2
"""

# Store a unit's result unless the task was cancelled; count it; finish the task after its last unit.
# Returns 0 (not stored), 1 (stored), 2 (stored, and the task is DONE: the caller drops it from the
# active set, which lives in another cluster slot).
#   KEYS[1] meta   KEYS[2] results   KEYS[3] in flight   KEYS[4] images
#   ARGV[1] unit   ARGV[2] result JSON   ARGV[3] 1 if it failed
FINISH = """
if redis.call('HGET', KEYS[1], 'state') ~= 'RUNNING' then return 0 end
if redis.call('HDEL', KEYS[3], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local done = redis.call('HINCRBY', KEYS[1], 'done', 1)
if ARGV[3] == '1' then redis.call('HINCRBY', KEYS[1], 'failed', 1) end
if done >= tonumber(redis.call('HGET', KEYS[1], 'total')) then
  redis.call('HSET', KEYS[1], 'state', 'DONE')
  redis.call('DEL', KEYS[4])
  return 2
end
return 1
"""


class TaskKeys:
    def __init__(self, prefix: str, task_id: str):
        base = f"{prefix}:{{task:{task_id}}}"
        self.meta, self.images, self.results = f"{base}:meta", f"{base}:images", f"{base}:results"
        self.units, self.in_flight, self.lease = f"{base}:units", f"{base}:inflight", f"{base}:lease"


class TaskStore:
    def __init__(self, client: redis.Redis, prefix: str):
        self.client = client
        self.prefix = prefix
        self.active_key = f"{prefix}:tasks:active"
        self._take = client.register_script(TAKE_UNIT)
        self._lease = client.register_script(LEASE)
        self._finish = client.register_script(FINISH)

    def keys(self, task_id: str) -> TaskKeys:
        return TaskKeys(self.prefix, task_id)

    def create(self, task_id: str, images: list[bytes], filenames: list[str], targets: list[str],
               options: dict, ttl_s: int) -> int:
        """Store the images and their units; the task is RUNNING and active. Its unit count."""
        keys = self.keys(task_id)
        units = [f"{index}/{target}" for index in range(len(images)) for target in targets]
        meta = {"state": "RUNNING", "total": len(units), "done": 0, "failed": 0, "created": time.time(),
                "expires_at": time.time() + ttl_s, "images": len(images), "filenames": json.dumps(filenames),
                "options": json.dumps(options)}
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(keys.meta, mapping=meta)
        pipe.hset(keys.images, mapping=dict(enumerate(images)))
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
