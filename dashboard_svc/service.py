"""Dashboard domain logic (no gRPC): financial inputs, and the dashboard behind a two-level cache.

Cache: Redis first, the `dashboard_cache` table second. An entry serves while it is younger than
15 minutes AND was computed from the user's current data version (bumped by every sync that changed
stored data); entries expire after 30 minutes; `force_refresh` recomputes; changed inputs or goals
drop both levels at once. One computation per user at a time, across replicas (an advisory lock):
concurrent requests wait for it and take its result. When Redis is down the table still serves.
Every answer counts as a hit of the level it came from or a miss (`dashboard_svc.metrics`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from dashboard_svc import calc, metrics
from dashboard_svc.model import DashboardConfig, DashboardData, FinancialInputs, Goals
from dashboard_svc.storage import CacheRow, DashboardStorage
from svclib import i18n
from svclib.cache import Cache
from svclib.errors import InvalidArgument, require
from svclib.validation import parse_amount, parse_date

log = logging.getLogger("dashboard_svc")

FRESH_FOR = dt.timedelta(minutes=15)
EXPIRES_AFTER = dt.timedelta(minutes=30)
#: Shape of a cached payload: {"v": PAYLOAD_VERSION, "<language>": {<part>: <dict>}}; entries of an
#: older shape are stale (recomputed on their next request).
PAYLOAD_VERSION = 2
#: The parts of one computation (calc.compute_all): the dashboard and the routes that show its figures.
PARTS = ("dashboard", "loans", "deposits", "refinance")
#: Longest a dashboard request waits for a user's first sync in flight (within its deadline).
FIRST_SYNC_WAIT = 10.0


def parse_inputs(
    salary_amount: str | None,
    next_salary_date: str | None,
    credit_payment_amount: str | None,
    credit_payment_date: str | None,
) -> FinancialInputs:
    """Validate raw inputs; a date without its amount (or the reverse) is allowed, blanks are unset."""

    def blank(value: str | None) -> bool:
        return value is None or value.strip() == ""

    return FinancialInputs(
        salary_amount=None if blank(salary_amount) else parse_amount(salary_amount, "inputs.salary_amount"),
        next_salary_date=None if blank(next_salary_date) else parse_date(next_salary_date, "inputs.next_salary_date"),
        credit_payment_amount=None
        if blank(credit_payment_amount)
        else parse_amount(credit_payment_amount, "inputs.credit_payment_amount"),
        credit_payment_date=None
        if blank(credit_payment_date)
        else parse_date(credit_payment_date, "inputs.credit_payment_date"),
    )


class BankData(Protocol):
    """What the dashboard reads from sync_svc (and onboarding_svc for goals)."""

    def data_version(self, user_id: str) -> Awaitable[int]: ...

    def gather(self, user_id: str, now: dt.datetime) -> Awaitable[Gathered]: ...

    def goals(self, user_id: str) -> Awaitable[Goals]: ...

    def wait_for_first_sync(self, user_id: str, timeout: float) -> Awaitable[None]:
        """Return once the user has data, or no sync is in flight, or `timeout` seconds passed."""


@dataclasses.dataclass(frozen=True)
class Gathered:
    """The stored bank data of a user, as DashboardData needs it (everything but inputs and goals)."""

    fields: dict  # DashboardData field name -> value
    data_version: int
    synced_at: dt.datetime | None


@dataclasses.dataclass(frozen=True)
class Answer:
    payload: dict  # {"v": 2, language: calc.compute_all's output} (responses without cache_info and ages)
    calculated_at: dt.datetime
    data_version: int
    is_cached: bool

    def part(self, name: str, language: str | None = None) -> dict:
        """One part (PARTS) of the computation, with texts in `language` (the current one by default)."""
        return self.payload[language or i18n.current_language()][name]


def _entry_json(entry: CacheRow) -> dict:
    return {
        "payload": entry.payload,
        "calculated_at": entry.calculated_at.isoformat(),
        "data_version": entry.data_version,
    }


def _entry_from_json(raw: dict) -> CacheRow:
    return CacheRow(raw["payload"], dt.datetime.fromisoformat(raw["calculated_at"]), int(raw["data_version"]))


def unchanged_until(answer: Answer, shown_times: list[dt.datetime], now: dt.datetime) -> dt.datetime | None:
    """Until when asking again gets this very answer, if nothing is announced meanwhile: None for a
    fresh computation (the next request is answered from the cache, differently); for a cached one,
    the first of the end of its freshness and the next minute boundary of any age it shows (the
    ages in minutes of the computation and of each bank's data, `shown_times`)."""
    if not answer.is_cached:
        return None
    limits = [answer.calculated_at + FRESH_FOR]
    for shown in (answer.calculated_at, *shown_times):
        minutes = max(0, int((now - shown).total_seconds() // 60))
        limits.append(shown + dt.timedelta(minutes=minutes + 1))
    return min(limits)


class DashboardService:
    def __init__(
        self,
        storage: DashboardStorage,
        cache: Cache,
        data: BankData | None = None,
        config: DashboardConfig = DashboardConfig(),
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ):
        self.storage = storage
        self.cache = cache
        self.data = data
        self.config = config
        self.clock = clock
        self._local_locks: dict[str, asyncio.Lock] = {}

    # ------------------------------------------------------------------------------------ inputs

    async def get_inputs(self, user_id: str) -> tuple[FinancialInputs, dt.datetime | None]:
        return await self.storage.get_inputs(require(user_id, "user_id"))

    async def put_inputs(self, user_id: str, inputs: FinancialInputs | None) -> tuple[FinancialInputs, dt.datetime]:
        user_id = require(user_id, "user_id")
        if inputs is None:
            raise InvalidArgument("inputs is required", "inputs", reason="FIELD_REQUIRED")
        stored, updated_at = await self.storage.put_inputs(user_id, inputs)
        await self.invalidate(user_id)  # changed inputs change the dashboard at once
        return stored, updated_at

    # ------------------------------------------------------------------------------------ dashboard

    def _key(self, user_id: str) -> str:
        return self.cache.key("dashboard", user_id)

    async def invalidate(self, user_id: str) -> None:
        user_id = require(user_id, "user_id")
        await self.cache.delete(self._key(user_id))
        await self.storage.drop_cached_dashboard(user_id)
        await self.cache.announce_change(user_id)

    def _fresh(
        self, entry: CacheRow | None, version: int, now: dt.datetime, not_before: dt.datetime | None = None
    ) -> bool:
        return (
            entry is not None
            and entry.payload.get("v") == PAYLOAD_VERSION
            and entry.data_version == version
            and now - entry.calculated_at < FRESH_FOR
            and (not_before is None or entry.calculated_at > not_before)
        )

    async def _cached(
        self, user_id: str, version: int, now: dt.datetime, not_before: dt.datetime | None = None
    ) -> tuple[CacheRow | None, str]:
        """A fresh cached entry and the level it came from ("redis", "table"), or (None, "")."""
        raw = await self.cache.get_json(self._key(user_id))
        entry = _entry_from_json(raw) if raw else None
        if self._fresh(entry, version, now, not_before):
            return entry, "redis"
        entry = await self.storage.cached(user_id)
        if self._fresh(entry, version, now, not_before):
            await self.cache.set_json(self._key(user_id), _entry_json(entry), int(EXPIRES_AFTER.total_seconds()))
            return entry, "table"
        return None, ""

    async def dashboard(self, user_id: str, force_refresh: bool, wait_first_sync: float = 0.0) -> Answer:
        """The user's dashboard computation (every part of it), from the cache when fresh.

        A user with no data yet whose first sync is in flight (a bank was just connected during
        onboarding) is answered once that sync has committed, waiting at most `wait_first_sync` seconds
        (the caller's deadline allowing), so the goals step sees the loans; after that the answer says
        why it is empty (bank statuses, safe-to-spend reason)."""
        user_id = require(user_id, "user_id")
        asked_at = self.clock()
        version = await self.data.data_version(user_id)
        if version == 0 and wait_first_sync > 0:
            await self.data.wait_for_first_sync(user_id, min(wait_first_sync, FIRST_SYNC_WAIT))
            version = await self.data.data_version(user_id)
        if not force_refresh:
            entry, level = await self._cached(user_id, version, asked_at)
            if entry is not None:
                metrics.DASHBOARD_CACHE_HITS.labels(level).inc()
                return Answer(entry.payload, entry.calculated_at, entry.data_version, True)
        local = self._local_locks.setdefault(user_id, asyncio.Lock())
        async with local, self.storage.compute_lock(user_id):
            # Someone may have computed it while we waited: a forced refresh takes only a result
            # computed after it was asked for, a plain request any fresh one.
            entry, level = await self._cached(user_id, version, self.clock(), asked_at if force_refresh else None)
            if entry is not None:
                metrics.DASHBOARD_CACHE_HITS.labels(level).inc()
                return Answer(entry.payload, entry.calculated_at, entry.data_version, True)
            entry = await self._compute(user_id)
            metrics.DASHBOARD_CACHE_MISSES.labels("force_refresh" if force_refresh else "stale").inc()
        if not local.locked():
            self._local_locks.pop(user_id, None)
        return Answer(entry.payload, entry.calculated_at, entry.data_version, False)

    async def _compute(self, user_id: str) -> CacheRow:
        now = self.clock()
        gathered, goals, (inputs, _) = await asyncio.gather(
            self.data.gather(user_id, now), self.data.goals(user_id), self.storage.get_inputs(user_id)
        )
        data = DashboardData(
            user_id=user_id, now=now, inputs=inputs, goals=goals, config=self.config, **gathered.fields
        )
        # Every language at once: the texts are cheap next to gathering the data, and one entry then
        # serves whoever asks, in their language.
        payload = {"v": PAYLOAD_VERSION, **{language: calc.compute_all(data, language) for language in i18n.LANGUAGES}}
        entry = CacheRow(payload, now, gathered.data_version)
        await self.storage.store_cached(user_id, entry, gathered.synced_at, EXPIRES_AFTER)
        await self.cache.set_json(self._key(user_id), _entry_json(entry), int(EXPIRES_AFTER.total_seconds()))
        await self.cache.announce_change(user_id)  # the entry others may still serve was replaced
        log.info("dashboard computed", extra={"data_version": gathered.data_version})
        return entry
