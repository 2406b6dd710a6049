"""Request-rate caps shared by every replica through Redis (GCRA), with a local fallback.

`RateLimiter.acquire(key)` takes the next request slot under `key` (`rate` per second, with a small
burst) and waits until it comes; `RateLimiter.admit(key)` answers at once, refusing a request over the
cap with the seconds until one would pass (for a 429 with Retry-After). The state lives in Redis, keyed
by `key`, and time comes from the Redis server, so all replicas share one budget without trusting their
own clocks. When Redis is unreachable the limiter keeps the same cap per process (a degraded but still
bounded mode) and logs it once in a while.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("svclib.ratelimit")

# GCRA with reservation: the "theoretical arrival time" of the next request is kept per key; each
# call takes the next ARGV[3] slots and returns the milliseconds to wait for the first of them (0 or
# less: go now); slot i comes i intervals later. The requests of one process waiting on a key at once
# share one round trip.
_GCRA = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
redis.call('SET', KEYS[1], tat + n * interval, 'PX', math.ceil(tat + n * interval - now) + 1000)
return tat - burst - now
"""


# GCRA admission in batches: up to ARGV[3] request slots are granted at once if the bucket has them
# now; a request over the limit is refused (nothing is reserved for it). Returns {granted, wait_ms}:
# the slots granted, or 0 and the milliseconds until one would be.
_GCRA_GRANT = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local available = math.floor((now + burst - tat) / interval) + 1
if available < 1 then return {0, math.ceil(tat - burst - now)} end
local granted = math.min(available, want)
tat = tat + granted * interval
redis.call('SET', KEYS[1], tat, 'PX', math.ceil(tat - now) + 1000)
return {granted, 0}
"""

#: How long slots granted in a batch stay usable by the process that took them.
LEASE_SECONDS = 1.0
#: Past this many keys, the admission state of keys idle for a while is swept.
_SWEEP_AT = 10_000


class RateLimiter:
    def __init__(
        self,
        redis: aioredis.Redis | None,
        rate: float,
        *,
        burst: int = 1,
        prefix: str = "finpulse:rl:",
        lease: int = 1,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ):
        """`sleep`: how `acquire` waits for its slot (a test passes one that records the wait)."""
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.redis = redis
        self.interval_ms = 1000.0 / rate
        self.burst_ms = self.interval_ms * max(burst - 1, 0)
        self.prefix = prefix
        self.lease = max(1, lease)
        self._sleep = sleep
        self._script = redis.register_script(_GCRA) if redis is not None else None
        self._grant_script = redis.register_script(_GCRA_GRANT) if redis is not None else None
        self._local: dict[str, float] = {}
        # key -> [slots left, usable until, refused until] (time.monotonic seconds)
        self._admission: dict[str, list[float]] = {}
        self._pending: dict[str, asyncio.Future] = {}
        self._queued: dict[str, list[asyncio.Future[float]]] = {}  # acquire: waiters for the next reservation
        self._reserving: set[asyncio.Task[None]] = set()
        self._last_warning = 0.0

    async def acquire(self, key: str) -> None:
        """Take the next slot under `key` and wait until it comes.

        Requests that ask while a reservation for `key` is on its way to Redis are queued and reserved
        together by the next one (one round trip for all of them, each its own slot): a busy key
        costs a Redis call per batch, not per request."""
        waiter: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        queue = self._queued.get(key)
        if queue is None:
            queue = self._queued[key] = []
            task = asyncio.create_task(self._reserve_queued(key))
            self._reserving.add(task)
            task.add_done_callback(self._reserving.discard)
        queue.append(waiter)
        wait_ms = await waiter
        if wait_ms > 0:
            await self._sleep(wait_ms / 1000.0)

    async def _reserve_queued(self, key: str) -> None:
        """Reserve slots for the waiters queued under `key`, batch after batch, until none is left."""
        await asyncio.sleep(0)  # let the requests of this loop iteration join the first batch
        while batch := self._queued.get(key):
            self._queued[key] = []
            try:
                first_ms = await self._reserve(key, len(batch))
            except BaseException as exc:  # never leave a waiter hanging (cancellation included)
                for waiter in batch + self._queued.pop(key, []):
                    if not waiter.done():
                        waiter.set_exception(exc if isinstance(exc, Exception) else RuntimeError("limiter stopped"))
                raise
            for i, waiter in enumerate(batch):
                if not waiter.done():  # a cancelled request's slot goes unused: the cap is only under-used
                    waiter.set_result(max(0.0, first_ms + i * self.interval_ms))
        self._queued.pop(key, None)

    def admit_now(self, key: str) -> float | None:
        """`admit` as far as it can go without Redis: 0.0 (a leased slot is spent), the seconds to wait
        (a refusal remembered), or None (`admit` must ask Redis)."""
        state = self._admission.get(key)
        if state is not None:
            now = time.monotonic()
            if state[0] > 0 and now < state[1]:
                state[0] -= 1
                return 0.0
            if now < state[2]:
                return state[2] - now
        return None

    async def admit(self, key: str) -> float:
        """Admit a request under `key` now (0.0), or refuse it: the seconds until one would be admitted.

        Slots are taken from the shared bucket `lease` at a time and spent here for up to
        LEASE_SECONDS, so a busy key costs one Redis call per `lease` requests (concurrent requests
        wait for the one call in flight); slots left unused expire (the cap is never exceeded, only
        under-used). A refusal is remembered until its wait is over, so a client hammering past its
        cap costs no Redis calls either.
        """
        while True:
            known = self.admit_now(key)
            if known is not None:
                return known
            pending = self._pending.get(key)
            if pending is None:
                break
            await asyncio.shield(pending)  # someone is asking Redis for this key: share their answer
        pending = self._pending[key] = asyncio.get_running_loop().create_future()
        try:
            granted, wait_ms = await self._grant(key, self.lease)
        finally:
            del self._pending[key]
            pending.set_result(None)
        now = time.monotonic()
        if len(self._admission) >= _SWEEP_AT:
            self._admission = {k: v for k, v in self._admission.items() if max(v[1], v[2]) > now}
        if granted > 0:
            self._admission[key] = [granted - 1, now + LEASE_SECONDS, 0.0]
            return 0.0
        self._admission[key] = [0, 0.0, now + wait_ms / 1000.0]
        return wait_ms / 1000.0

    async def _grant(self, key: str, want: int) -> tuple[int, float]:
        if self._grant_script is not None:
            try:
                granted, wait_ms = await self._grant_script(
                    keys=[self.prefix + key], args=[self.interval_ms, self.burst_ms, want]
                )
                return int(granted), float(wait_ms)
            except (RedisError, OSError) as exc:
                self._warn(exc)
        now = time.monotonic() * 1000.0
        if len(self._local) >= _SWEEP_AT:
            self._local = {k: tat for k, tat in self._local.items() if tat > now}
        tat = max(self._local.get(key, now), now)
        available = int((now + self.burst_ms - tat) // self.interval_ms) + 1
        if available < 1:
            return 0, tat - self.burst_ms - now
        granted = min(available, want)
        self._local[key] = tat + granted * self.interval_ms
        return granted, 0.0

    def _warn(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_warning > 10:
            self._last_warning = now
            log.warning("redis unavailable: rate cap enforced per process", extra={"error": repr(exc)})

    async def _reserve(self, key: str, n: int) -> float:
        """Take the next `n` slots under `key`: the milliseconds until the first (≤ 0: now)."""
        if self._script is not None:
            try:
                return float(await self._script(keys=[self.prefix + key], args=[self.interval_ms, self.burst_ms, n]))
            except (RedisError, OSError) as exc:
                self._warn(exc)
        return self._reserve_local(key, n)

    def _reserve_local(self, key: str, n: int) -> float:
        now = time.monotonic() * 1000.0
        tat = max(self._local.get(key, now), now)
        self._local[key] = tat + n * self.interval_ms
        return tat - self.burst_ms - now
