"""Bank-token storage shared between processes, and the per-bank token cache of a client.

A bank token lives 24 h and every bank has its own. `TokenCache` (one per `BankClient`) keeps an
in-process copy, falls back to a shared `TokenStore` (Redis in the suite) so that the processes of the
suite reuse one token per bank, and fetches a new token only when both miss. It refreshes a token a
margin before `expires_in` (10 % of the lifetime, at most 5 minutes), and concurrent callers wait on
one asyncio.Lock so that they cause a single token request.

Stored value: JSON `{"access_token": "...", "refresh_at": <epoch seconds>}` with the store's TTL set
to expire at `refresh_at`. A plain token string is accepted too (kept in-process for 5 minutes).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("bankapi")

MAX_REFRESH_MARGIN = 300.0  # seconds before expiry at which a token is renewed (at most)
PLAIN_TOKEN_LIFETIME = 300.0  # how long to trust a stored token whose expiry is unknown


@runtime_checkable
class TokenStore(Protocol):
    """Shared key/value storage for tokens with a time to live."""

    async def get(self, key: str) -> str | None: ...

    async def set(self, key: str, value: str, ttl_seconds: int) -> None: ...


class MemoryTokenStore:
    """A `TokenStore` in a dict (tests, single-process tools); `clock`: epoch seconds (a test passes its own)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._items: dict[str, tuple[str, float]] = {}
        self._clock = clock

    async def get(self, key: str) -> str | None:
        item = self._items.get(key)
        if item is None or item[1] <= self._clock():
            return None
        return item[0]

    async def set(self, key: str, value: str, ttl_seconds: int) -> None:
        self._items[key] = (value, self._clock() + max(1, ttl_seconds))


class RedisTokenStore:
    """A `TokenStore` on `redis.asyncio.Redis`. When Redis is unreachable or slower than `op_timeout`
    seconds it logs a warning and behaves as a miss / no-op: the client then works with its in-process
    copy alone (a bank call never waits on the Redis client's own reconnect/retry policy)."""

    def __init__(self, redis: Redis, prefix: str = "finpulse:banktoken:", op_timeout: float = 1.0):
        self._redis = redis
        self.prefix = prefix
        self.op_timeout = op_timeout

    async def get(self, key: str) -> str | None:
        try:
            value = await asyncio.wait_for(self._redis.get(self.prefix + key), self.op_timeout)
        except Exception as exc:  # noqa: BLE001 - RedisError, OSError, timeouts: the store degrades, never fails a call
            log.warning("bank token store unavailable (get %s): %r", key, exc)
            return None
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
        return value if isinstance(value, str) else None

    async def set(self, key: str, value: str, ttl_seconds: int) -> None:
        try:
            await asyncio.wait_for(
                self._redis.set(self.prefix + key, value, ex=max(1, int(ttl_seconds))), self.op_timeout
            )
        except Exception as exc:  # noqa: BLE001 - as in get()
            log.warning("bank token store unavailable (set %s): %r", key, exc)


@dataclass(frozen=True)
class Token:
    access_token: str
    refresh_at: float  # epoch seconds after which the token is renewed

    @property
    def fresh(self) -> bool:
        return self.fresh_at(time.time())

    def fresh_at(self, now: float) -> bool:
        return now < self.refresh_at

    def dump(self) -> str:
        return json.dumps({"access_token": self.access_token, "refresh_at": self.refresh_at})

    @classmethod
    def load(cls, value: str, now: float | None = None) -> Token | None:
        now = time.time() if now is None else now
        try:
            data = json.loads(value)
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("access_token"), str):
            return cls(data["access_token"], float(data.get("refresh_at") or now + PLAIN_TOKEN_LIFETIME))
        value = value.strip()
        return cls(value, now + PLAIN_TOKEN_LIFETIME) if value else None

    @classmethod
    def issued(cls, access_token: str, expires_in: float, now: float | None = None) -> Token:
        """A token just received (at `now`, epoch seconds): renew it 10 % of its lifetime (at most 5 min)
        before it expires."""
        margin = min(MAX_REFRESH_MARGIN, 0.1 * expires_in)
        return cls(access_token, (time.time() if now is None else now) + expires_in - margin)


class TokenCache:
    """One bank's token: in-process copy → shared store → `fetch()`, single-flight under a lock. `clock`:
    epoch seconds, against which tokens are fresh (a test passes its own)."""

    def __init__(
        self,
        key: str,
        fetch: Callable[[], Awaitable[Token]],
        store: TokenStore | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.key = key
        self._clock = clock
        self._fetch = fetch
        self._store = store
        self._token: Token | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> str:
        """A fresh token, fetching one only if neither this process nor the store has one."""
        token = self._token
        if token is not None and token.fresh_at(self._clock()):
            return token.access_token
        async with self._lock:
            if self._token is not None and self._token.fresh_at(self._clock()):
                return self._token.access_token
            stored = await self._load()
            if stored is not None:
                self._token = stored
                return stored.access_token
            return await self._renew()

    async def refresh(self, rejected: str) -> str:
        """The bank rejected `rejected` (401): get a different token. Concurrent callers that saw the same
        rejected token share one renewal; a newer token already in the store is taken as is."""
        async with self._lock:
            if self._token is not None and self._token.access_token != rejected and self._token.fresh_at(self._clock()):
                return self._token.access_token
            stored = await self._load()
            if stored is not None and stored.access_token != rejected:
                self._token = stored
                return stored.access_token
            return await self._renew()

    def forget(self) -> None:
        self._token = None

    async def _load(self) -> Token | None:
        if self._store is None:
            return None
        value = await self._store.get(self.key)
        now = self._clock()
        token = Token.load(value, now) if value else None
        return token if token is not None and token.fresh_at(now) else None

    async def _renew(self) -> str:
        self._token = None
        token = await self._fetch()
        self._token = token
        if self._store is not None:
            await self._store.set(self.key, token.dump(), max(1, int(token.refresh_at - self._clock())))
        return token.access_token
