"""A generic Redis wrapper: JSON values with TTLs, degrading to misses when Redis is down.

Redis holds only what can be rebuilt (caches, bank tokens, locks, rate-limit buckets). Every method
here swallows Redis failures, logs them (at most one warning per interval), and answers as a miss,
so callers fall back to Postgres and keep working, slower.

This module names no key of any service: each owner builds its keys under the suite's prefix
(`Cache.key`): the dashboard its cached dashboards (dashboard_svc.service), sync its data caches
(sync_svc.worker), bank tokens, breakers and rate limits their callers' wiring; the one key two
services share, a user's data version, is named in `finance.dataversion`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("svclib.cache")

_FAILURES = (RedisError, OSError, ConnectionError, TimeoutError)

_RAISE_TO = """
local current = tonumber(redis.call('GET', KEYS[1]) or '-1')
if current < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) end
return 0
"""


class Cache:
    def __init__(self, url: str, *, prefix: str = "finpulse:", socket_timeout: float = 0.5):
        self.prefix = prefix
        self.redis = aioredis.from_url(
            url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout, decode_responses=True
        )
        self._last_warning = 0.0

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def _degraded(self, op: str, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_warning > 10:
            self._last_warning = now
            log.warning("redis unavailable, continuing without cache", extra={"op": op, "error": repr(exc)})

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except _FAILURES as exc:
            self._degraded("ping", exc)
            return False

    async def get_json(self, key: str) -> Any | None:
        try:
            raw = await self.redis.get(key)
        except _FAILURES as exc:
            self._degraded("get", exc)
            return None
        return None if raw is None else json.loads(raw)

    async def set_json(self, key: str, value: Any, ttl_seconds: int) -> None:
        try:
            await self.redis.set(key, json.dumps(value, default=str), ex=ttl_seconds)
        except _FAILURES as exc:
            self._degraded("set", exc)

    async def get(self, key: str) -> str | None:
        try:
            return await self.redis.get(key)
        except _FAILURES as exc:
            self._degraded("get", exc)
            return None

    async def set(self, key: str, value: str, ttl_seconds: int, *, only_if_missing: bool = False) -> None:
        try:
            await self.redis.set(key, value, ex=ttl_seconds, nx=only_if_missing)
        except _FAILURES as exc:
            self._degraded("set", exc)

    async def raise_to(self, key: str, value: int, ttl_seconds: int) -> None:
        """Set an integer key to `value` unless it already holds a larger one (publishers racing
        each other can then never move it backwards)."""
        try:
            await self.redis.eval(_RAISE_TO, 1, key, value, ttl_seconds)
        except _FAILURES as exc:
            self._degraded("raise_to", exc)

    async def announce_change(self, user_id: str) -> None:
        """Tell every listener (`ChangeFeed`) that what the suite answers for `user_id` may have changed:
        new synced data, new inputs or goals, a recomputed dashboard. Best effort: a listener that
        misses it (Redis down) has dropped everything it kept anyway."""
        try:
            await self.redis.publish(self.key("changes"), user_id)
        except _FAILURES as exc:
            self._degraded("publish", exc)

    async def delete(self, *keys: str) -> None:
        if not keys:
            return
        try:
            await self.redis.delete(*keys)
        except _FAILURES as exc:
            self._degraded("delete", exc)

    async def delete_prefix(self, prefix: str) -> None:
        """Drop every key starting with `prefix` (SCAN, never KEYS)."""
        try:
            batch = []
            async for key in self.redis.scan_iter(match=prefix + "*", count=500):
                batch.append(key)
                if len(batch) >= 500:
                    await self.redis.delete(*batch)
                    batch.clear()
            if batch:
                await self.redis.delete(*batch)
        except _FAILURES as exc:
            self._degraded("delete_prefix", exc)

    async def close(self) -> None:
        try:
            await self.redis.aclose()
        except _FAILURES:
            pass


#: gRPC trailing metadata of a reply that the same caller, asking the same, will get unchanged until
#: the given time (Unix milliseconds) unless `Cache.announce_change` is sent for the user first. The
#: gateway keeps such replies (gateway/respcache.py).
CACHE_UNTIL_METADATA = "finpulse-cache-until"


class ChangeFeed:
    """Listens to `Cache.announce_change` and keeps its owner's derived state honest.

    `on_change(user_id)` runs for every announcement. `on_state(True)` runs once the subscription is
    live and `on_state(False)` whenever it is lost (Redis down, connection dropped): announcements
    made meanwhile are lost, so the owner must drop whatever it kept and stop keeping until the next
    `on_state(True)`. Reconnects with capped backoff until `run()` is cancelled.
    """

    def __init__(
        self,
        url: str,
        prefix: str,
        on_change: Callable[[str], None],
        on_state: Callable[[bool], None],
        *,
        health_check_interval: float = 5.0,
    ):
        self.channel = prefix + "changes"
        self.on_change = on_change
        self.on_state = on_state
        # No socket timeout: a subscriber waits for messages; dead connections show up on the PINGs
        # redis-py sends every `health_check_interval` seconds while we poll.
        self.redis = aioredis.from_url(
            url, socket_connect_timeout=1.0, health_check_interval=health_check_interval, decode_responses=True
        )

    async def run(self) -> None:
        delay = 0.1
        try:
            while True:
                pubsub = self.redis.pubsub()
                try:
                    await pubsub.subscribe(self.channel)
                    await pubsub.get_message(timeout=1.0)  # the subscribe confirmation
                    self.on_state(True)
                    delay = 0.1
                    while True:
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                        if message is not None and message.get("type") == "message":
                            self.on_change(message["data"])
                except _FAILURES as exc:
                    self.on_state(False)
                    log.warning("change feed lost, retrying", extra={"error": repr(exc), "retry_in_s": delay})
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                finally:
                    try:
                        await pubsub.aclose()
                    except _FAILURES:
                        pass
        finally:
            self.on_state(False)

    async def close(self) -> None:
        try:
            await self.redis.aclose()
        except _FAILURES:
            pass
