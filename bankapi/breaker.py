"""A circuit breaker per bank, shared by every replica: a failing bank gets a bounded number of calls.

Every HTTP exchange with a bank passes `Breaker.before_call()` first and reports its outcome after
(`succeeded` / `failed`). A failure is a transport error, a timeout or a 5xx (a 429 is the bank asking
us to slow down, handled by the rate cap, and a 4xx is an answer). The rules:

- **closed** (normal): calls go through; `threshold` (5) failed calls in a row open the breaker.
- **open**: every call is refused at once, without touching the network, with `CircuitOpen` saying
  since when the bank fails and when it will be tried again; for `cooldown` seconds (10 s at first).
- **half-open** (the cooldown is over): exactly one call across all replicas goes through as a trial.
  It succeeding closes the breaker; it failing opens it again for twice the cooldown (at most
  `max_cooldown`, 120 s).

So a bank that fails completely costs at most `threshold` calls, then one call per cooldown: over two
minutes 5 + 3 = 8 calls (trials at +10 s, +30 s, +70 s), whatever the number of jobs, users and
replicas, instead of every job's every retry. The state lives in Redis (one hash per bank, changed by
Lua scripts so replicas agree); while Redis is unreachable each process keeps its own (the same rules,
per replica).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger("bankapi.breaker")

THRESHOLD = 5
COOLDOWN = 10.0
MAX_COOLDOWN = 120.0
TRIAL_TIMEOUT = 30.0  # a trial whose outcome is never reported frees the slot after this long
STATE_TTL = 24 * 3600


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Whether a call may go out; when not, since when the bank fails and when it is tried next."""

    allowed: bool
    failing_since: float | None = None  # Unix seconds
    next_try_at: float | None = None


class BreakerStore(Protocol):
    async def before_call(self, bank_id: str, now: float) -> Verdict: ...

    async def succeeded(self, bank_id: str) -> None: ...

    async def failed(self, bank_id: str, now: float) -> Verdict: ...


class MemoryBreakerStore:
    """The breaker's state in this process (tests, and the fallback while Redis is down)."""

    def __init__(
        self,
        threshold: int = THRESHOLD,
        cooldown: float = COOLDOWN,
        max_cooldown: float = MAX_COOLDOWN,
        trial_timeout: float = TRIAL_TIMEOUT,
    ):
        self.threshold, self.cooldown, self.max_cooldown = threshold, cooldown, max_cooldown
        self.trial_timeout = trial_timeout
        self._state: dict[str, dict[str, float]] = {}

    async def before_call(self, bank_id: str, now: float) -> Verdict:
        state = self._state.get(bank_id)
        if not state or not state["open_until"]:
            return Verdict(True)
        if now < state["open_until"]:
            return Verdict(False, state["failing_since"], state["open_until"])
        if state["trial_until"] > now:  # another caller is trying the bank right now
            return Verdict(False, state["failing_since"], state["trial_until"])
        state["trial_until"] = now + self.trial_timeout
        return Verdict(True, state["failing_since"])

    async def succeeded(self, bank_id: str) -> None:
        self._state.pop(bank_id, None)

    async def failed(self, bank_id: str, now: float) -> Verdict:
        state = self._state.setdefault(
            bank_id, {"failures": 0, "failing_since": now, "open_until": 0.0, "cooldown": 0.0, "trial_until": 0.0}
        )
        state["failures"] += 1
        if state["open_until"]:  # a trial failed: open again, longer
            state["cooldown"] = min(state["cooldown"] * 2, self.max_cooldown)
            state["open_until"], state["trial_until"] = now + state["cooldown"], 0.0
        elif state["failures"] >= self.threshold:
            state["cooldown"] = self.cooldown
            state["open_until"] = now + state["cooldown"]
        if state["open_until"]:
            return Verdict(False, state["failing_since"], state["open_until"])
        return Verdict(True, state["failing_since"])


_BEFORE = """
local s = redis.call('HMGET', KEYS[1], 'failing_since', 'open_until', 'trial_until')
local open_until = tonumber(s[2] or '0')
if open_until == 0 then return {1, s[1] or '', ''} end
local now = tonumber(ARGV[1])
if now < open_until then return {0, s[1], s[2]} end
local trial_until = tonumber(s[3] or '0')
if trial_until > now then return {0, s[1], s[3]} end
redis.call('HSET', KEYS[1], 'trial_until', tostring(now + tonumber(ARGV[2])))
return {1, s[1], ''}
"""

_FAILED = """
local now = tonumber(ARGV[1])
local threshold, cooldown, max_cooldown = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local s = redis.call('HMGET', KEYS[1], 'failures', 'failing_since', 'open_until', 'cooldown')
local failures = tonumber(s[1] or '0') + 1
local failing_since = s[2] or tostring(now)
local open_until = tonumber(s[3] or '0')
local current = tonumber(s[4] or '0')
if open_until > 0 then
  current = math.min(current * 2, max_cooldown)
  open_until = now + current
elseif failures >= threshold then
  current = cooldown
  open_until = now + current
end
redis.call('HSET', KEYS[1], 'failures', failures, 'failing_since', failing_since, 'open_until',
           tostring(open_until), 'cooldown', tostring(current), 'trial_until', '0')
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
return {failing_since, tostring(open_until)}
"""


class RedisBreakerStore:
    """The breaker's state in Redis, shared by every replica; falls back to this process's own state
    (MemoryBreakerStore) while Redis cannot be reached."""

    def __init__(
        self,
        redis: Any,
        prefix: str,
        threshold: int = THRESHOLD,
        cooldown: float = COOLDOWN,
        max_cooldown: float = MAX_COOLDOWN,
        trial_timeout: float = TRIAL_TIMEOUT,
    ):
        self.redis = redis
        self.prefix = prefix
        self.threshold, self.cooldown, self.max_cooldown = threshold, cooldown, max_cooldown
        self.trial_timeout = trial_timeout
        self.local = MemoryBreakerStore(threshold, cooldown, max_cooldown, trial_timeout)
        self._last_warning = 0.0

    def _degraded(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_warning > 10:
            self._last_warning = now
            log.warning("redis unavailable: each process keeps its own bank breakers", extra={"error": repr(exc)})

    async def before_call(self, bank_id: str, now: float) -> Verdict:
        try:
            allowed, since, until = await self.redis.eval(_BEFORE, 1, self.prefix + bank_id, now, self.trial_timeout)
        except Exception as exc:  # noqa: BLE001 - Redis down: the local breaker decides
            self._degraded(exc)
            return await self.local.before_call(bank_id, now)
        return Verdict(bool(int(allowed)), _number(since), _number(until))

    async def succeeded(self, bank_id: str) -> None:
        await self.local.succeeded(bank_id)
        try:
            await self.redis.delete(self.prefix + bank_id)
        except Exception as exc:  # noqa: BLE001
            self._degraded(exc)

    async def failed(self, bank_id: str, now: float) -> Verdict:
        try:
            since, until = await self.redis.eval(
                _FAILED, 1, self.prefix + bank_id, now, self.threshold, self.cooldown, self.max_cooldown, STATE_TTL
            )
        except Exception as exc:  # noqa: BLE001
            self._degraded(exc)
            return await self.local.failed(bank_id, now)
        until = _number(until) or 0.0
        return Verdict(not until, _number(since), until or None)


def _number(value: Any) -> float | None:
    if value in (None, b"", ""):
        return None
    try:
        return float(value.decode() if isinstance(value, bytes) else value)
    except (TypeError, ValueError):
        return None


class Breaker:
    """One bank's breaker, as a `BankClient` uses it."""

    def __init__(self, bank_id: str, store: BreakerStore, clock: Callable[[], float] = time.time):
        self.bank_id = bank_id
        self.store = store
        self.clock = clock

    async def before_call(self) -> Verdict:
        return await self.store.before_call(self.bank_id, self.clock())

    async def succeeded(self) -> None:
        await self.store.succeeded(self.bank_id)

    async def failed(self) -> Verdict:
        verdict = await self.store.failed(self.bank_id, self.clock())
        if not verdict.allowed:
            log.warning(
                "bank breaker open",
                extra={
                    "bank_id": self.bank_id,
                    "failing_since": verdict.failing_since,
                    "next_try_at": verdict.next_try_at,
                },
            )
        return verdict
