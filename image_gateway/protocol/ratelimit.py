"""Per-client request quotas shared by every web server: GCRA in one Lua script (scripts.GCRA).

Each client with a `rate` has one Redis key (keys.rate_key); the script reads and moves it at Redis'
own clock in one step, so any number of web processes behind nginx enforce one limit per client, with
no clock skew between machines and nothing to clean up (the key expires when the bucket is full again).
"""
from __future__ import annotations

from dataclasses import dataclass

import redis

from image_gateway.protocol.keys import rate_key
from image_gateway.protocol.scripts import GCRA


@dataclass(frozen=True)
class Decision:
    allowed: bool
    remaining: int          # requests that would be allowed at once now
    retry_after_s: float    # until the next request is allowed (0 when this one was)
    full_after_s: float     # until the whole burst is available again


class RateLimiter:
    def __init__(self, client: redis.Redis, prefix: str):
        self.client = client
        self.prefix = prefix
        self._gcra = client.register_script(GCRA)

    def take(self, name: str, rate: float, burst: int, cost: int = 1) -> Decision:
        """Spend `cost` requests of client `name` (limited to `rate` per second, `burst` at once); cost 0 looks."""
        allowed, remaining, retry_ms, full_ms = self._gcra(keys=[rate_key(self.prefix, name)],
                                                           args=[1000.0 / rate, burst, cost])
        return Decision(bool(allowed), int(remaining), int(retry_ms) / 1000, int(full_ms) / 1000)
