"""Request-rate caps shared by every replica through Redis (GCRA), with a local fallback.

`RateLimiter.acquire(key)` takes the next request slot under `key` (`rate` per second, with a small
burst) and waits until it comes. The state lives in Redis, keyed by `key`, and time comes from the Redis server, so all
replicas share one budget without trusting their own clocks. When Redis is unreachable the limiter
keeps the same cap per process (a degraded but still bounded mode) and logs it once in a while.
"""
from __future__ import annotations

import asyncio
import logging
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("svclib.ratelimit")

# GCRA with reservation: the "theoretical arrival time" of the next request is kept per key; each
# call takes the next slot and returns the milliseconds to wait for it (0: go now). One round trip
# per request, however many requests are waiting.
_GCRA = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
redis.call('SET', KEYS[1], tat + interval, 'PX', math.ceil(tat + interval - now) + 1000)
return math.max(0, tat - burst - now)
"""


class RateLimiter:
    def __init__(self, redis: aioredis.Redis | None, rate: float, *, burst: int = 1, prefix: str = "finpulse:rl:"):
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.redis = redis
        self.interval_ms = 1000.0 / rate
        self.burst_ms = self.interval_ms * max(burst - 1, 0)
        self.prefix = prefix
        self._script = redis.register_script(_GCRA) if redis is not None else None
        self._local: dict[str, float] = {}
        self._last_warning = 0.0

    async def acquire(self, key: str) -> None:
        """Take the next slot under `key` and wait until it comes."""
        wait_ms = await self._reserve(key)
        if wait_ms > 0:
            await asyncio.sleep(wait_ms / 1000.0)

    async def _reserve(self, key: str) -> float:
        if self._script is not None:
            try:
                return float(await self._script(keys=[self.prefix + key],
                                                args=[self.interval_ms, self.burst_ms]))
            except (RedisError, OSError) as exc:
                now = time.monotonic()
                if now - self._last_warning > 10:
                    self._last_warning = now
                    log.warning("redis unavailable: rate cap enforced per process", extra={"error": repr(exc)})
        return self._reserve_local(key)

    def _reserve_local(self, key: str) -> float:
        now = time.monotonic() * 1000.0
        tat = max(self._local.get(key, now), now)
        self._local[key] = tat + self.interval_ms
        return max(0.0, tat - self.burst_ms - now)
