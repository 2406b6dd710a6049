"""Sync domain logic (no gRPC): bank list, job requests and status, bootstrap, reads of stored data."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from decimal import Decimal

from finance.dataversion import DATA_VERSION_TTL, data_version_key
from svclib.cache import Cache
from svclib.config import BankConfig
from svclib.errors import InvalidArgument, NotFound, require
from svclib.logging import current_request_id
from svclib.tracing import current_traceparent
from sync_svc.bank_storage import (
    BankDataStorage,
    CategorySpending,
    DayIncome,
    LoanRepayments,
    MonthlyCashFlow,
    StoredAccount,
    StoredBalance,
    StoredCredit,
    StoredTransaction,
    SyncState,
    TransactionCursor,
)
from sync_svc.storage import Job, JobRef, JobStorage
from sync_svc.worker import data_cache_prefix

log = logging.getLogger("sync_svc")

# user id -> ids of the banks where the user has an approved account consent (asked of consent_svc).
ConnectedBanks = Callable[[str], Awaitable[set[str]]]

ACTIVE = ("queued", "running")
REASON_MAX = 64


def waits_to_retry(job: Job) -> bool:
    """Queued again after a failed attempt (not yet running its next one)."""
    return job.state == "queued" and job.attempts > 0


DEFAULT_PAGE, MAX_PAGE = 100, 500
READ_CACHE_TTL = 300
WATCH_INTERVAL = 0.3
WATCH_LIMIT = dt.timedelta(minutes=10)


@dataclasses.dataclass(frozen=True)
class BankListing:
    bank: BankConfig
    connected: bool
    status: BankStatus | None


@dataclasses.dataclass(frozen=True)
class BankStatus:
    """A bank's sync state for the user: its newest job and the stored sync state."""

    bank_id: str
    job: Job | None
    state: SyncState | None

    @property
    def needs_reconsent(self) -> bool:
        return self.job is not None and self.job.state == "needs_reconsent"


@dataclasses.dataclass(frozen=True)
class SyncOverview:
    running: bool
    sync_id: str | None
    synced_at: dt.datetime | None
    banks: list[BankStatus]


@dataclasses.dataclass(frozen=True)
class SyncEvent:
    bank_id: str
    job: Job


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """What is stored for one bank of the user (the bootstrap answer)."""

    bank: BankConfig
    accounts: list[StoredAccount]
    balances: list[StoredBalance]
    credits: list[StoredCredit]
    transactions: list[StoredTransaction]
    next_page_token: str
    status: BankStatus
    from_cache: bool


@dataclasses.dataclass(frozen=True)
class Aggregates:
    cash_flow: list[MonthlyCashFlow]
    spending: list[CategorySpending]
    loans: list[LoanRepayments]
    data_version: int
    income_days: list[DayIncome]
    spent_today: list[CategorySpending]


def page_size(value: int) -> int:
    if value < 0 or value > MAX_PAGE:
        raise InvalidArgument(
            f"page_size must be between 1 and {MAX_PAGE}",
            "page_size",
            reason="OUT_OF_RANGE",
            metadata={"limit": MAX_PAGE},
        )
    return value or DEFAULT_PAGE


def cursor(token: str) -> TransactionCursor | None:
    if not token:
        return None
    try:
        return TransactionCursor.from_token(token)
    except ValueError:
        raise InvalidArgument(
            "page_token is not a token this service gave out", "page_token", reason="INVALID_PAGE_TOKEN"
        ) from None


class SyncService:
    def __init__(
        self,
        jobs: JobStorage,
        data: BankDataStorage,
        cache: Cache,
        banks: Iterable[BankConfig],
        connected_banks: ConnectedBanks,
        *,
        bootstrap_wait: float = 10.0,
    ):
        self.jobs = jobs
        self.data = data
        self.cache = cache
        self.banks = tuple(banks)
        self.connected_banks = connected_banks
        self.bootstrap_wait = bootstrap_wait

    def _bank(self, bank_id: str) -> BankConfig:
        for bank in self.banks:
            if bank.id == bank_id:
                return bank
        raise NotFound(f"Bank '{bank_id}' is not supported.", reason="BANK_NOT_FOUND", metadata={"bank_id": bank_id})

    # ------------------------------------------------------------------------------------ bank list

    async def list_banks(self, user_id: str | None) -> list[BankListing]:
        if user_id is None or not user_id.strip():
            return [BankListing(bank, False, None) for bank in self.banks]
        user_id = require(user_id, "user_id")
        connected, statuses = await asyncio.gather(self.connected_banks(user_id), self._statuses(user_id))
        return [BankListing(bank, bank.id in connected, statuses[bank.id]) for bank in self.banks]

    async def _statuses(self, user_id: str) -> dict[str, BankStatus]:
        jobs, states = await asyncio.gather(self.jobs.latest_per_bank(user_id), self.data.sync_states(user_id))
        by_job = {j.bank_id: j for j in jobs}
        by_state = {s.bank_id: s for s in states}
        return {b.id: BankStatus(b.id, by_job.get(b.id), by_state.get(b.id)) for b in self.banks}

    # ------------------------------------------------------------------------------------ jobs

    async def start_sync(
        self,
        user_id: str,
        bank_ids: list[str],
        reason: str,
        force: bool = False,
        after_change: bool = False,
        skip_synced: bool = False,
    ) -> list[JobRef]:
        """Queue (or join) a job per bank. With `skip_synced`, banks whose data is stored already or
        being synced are answered with their latest job instead of a new one."""
        user_id = require(user_id, "user_id")
        if reason and (len(reason) > REASON_MAX or not reason.replace("_", "").isalnum()):
            raise InvalidArgument(
                f"reason: at most {REASON_MAX} letters, digits or '_'",
                "reason",
                reason="INVALID_FORMAT",
                metadata={"limit": REASON_MAX},
            )
        if len(set(bank_ids)) != len(bank_ids):
            raise InvalidArgument("bank_ids: a bank is named twice", "bank_ids", reason="DUPLICATE_VALUE")
        for bank_id in bank_ids:
            self._bank(bank_id)
        connected = await self.connected_banks(user_id)
        targets = bank_ids or [bank.id for bank in self.banks if bank.id in connected]
        not_connected = [b for b in targets if b not in connected]
        if not_connected:
            raise InvalidArgument(
                f"bank_ids: no approved account consent at {', '.join(not_connected)} for this user",
                "bank_ids",
                reason="BANK_NOT_CONNECTED",
                metadata={"bank_id": not_connected[0]},
            )
        if not targets:
            raise InvalidArgument(
                "the user has no connected bank: approve an account consent first",
                "user_id",
                reason="NO_CONNECTED_BANK",
            )
        request_id = current_request_id()
        settled: dict[str, JobRef] = {}
        if skip_synced:
            for bank_id, status in (await self._statuses(user_id)).items():
                job = status.job
                synced = status.state is not None and status.state.last_success_at is not None
                if bank_id in targets and job is not None and (synced or job.state in ACTIVE):
                    settled[bank_id] = JobRef(job.job_id, bank_id, job.state, job.created_at, True)
        jobs = [
            settled.get(bank_id)
            or await self.jobs.enqueue(
                user_id, bank_id, reason or "refresh", force, request_id, after_change, current_traceparent()
            )
            for bank_id in targets
        ]
        log.info("sync requested", extra={"banks": targets, "joined": [j.bank_id for j in jobs if j.joined]})
        return jobs

    async def overview(self, user_id: str) -> SyncOverview:
        user_id = require(user_id, "user_id")
        statuses = list((await self._statuses(user_id)).values())
        # A job waiting to retry after a failed attempt is not "running" for the app, which polls until
        # `completed` (and gives up after 60 s): its bank's entry tells the failure and the next try.
        active = [s.job for s in statuses if s.job is not None and s.job.state in ACTIVE and not waits_to_retry(s.job)]
        successes = [s.state.last_success_at for s in statuses if s.state and s.state.last_success_at]
        newest = max(active, key=lambda j: j.created_at) if active else None
        return SyncOverview(
            running=bool(active),
            sync_id=newest.job_id if newest else None,
            synced_at=max(successes) if successes else None,
            banks=statuses,
        )

    async def watch(self, user_id: str, bank_id: str | None) -> AsyncIterator[SyncEvent]:
        """Progress events of the user's newest jobs (one bank's, when given) until none is active.
        Jobs live in Postgres, so this works whichever replica runs them."""
        user_id = require(user_id, "user_id")
        if bank_id:
            self._bank(bank_id)
        seen: dict[str, tuple] = {}
        deadline = dt.datetime.now(dt.UTC) + WATCH_LIMIT
        while dt.datetime.now(dt.UTC) < deadline:
            jobs = [j for j in await self.jobs.latest_per_bank(user_id) if not bank_id or j.bank_id == bank_id]
            for job in jobs:
                key = (job.job_id, job.state, tuple(sorted(job.progress.items())), job.attempts)
                if seen.get(job.bank_id) != key:
                    seen[job.bank_id] = key
                    yield SyncEvent(job.bank_id, job)
            if not any(j.state in ACTIVE for j in jobs):
                return
            await asyncio.sleep(WATCH_INTERVAL)

    # ------------------------------------------------------------------------------------ bootstrap

    async def bootstrap(self, user_id: str, bank_id: str, size: int, token: str, skip_sync: bool) -> Snapshot:
        """Sync the bank now (joining a sync in flight) and answer with what is stored."""
        user_id = require(user_id, "user_id")
        bank = self._bank(require(bank_id, "bank_id"))
        size, after = page_size(size), cursor(token)
        if not skip_sync and after is None:
            job = (await self.start_sync(user_id, [bank.id], "bootstrap"))[0]
            await self._wait_for(job.job_id)
        status = (await self._statuses(user_id))[bank.id]
        accounts, balances, credits = await self._cached_bank_data(user_id, bank.id)
        transactions, next_cursor = await self.data.transactions(user_id, bank_id=bank.id, limit=size, after=after)
        stale = status.job is None or status.job.state != "succeeded"
        return Snapshot(
            bank,
            accounts,
            balances,
            credits,
            transactions,
            next_cursor.token() if next_cursor else "",
            status,
            from_cache=stale and not skip_sync,
        )

    async def _wait_for(self, job_id: str) -> Job | None:
        """The job once it has ended, or as it is when waiting longer cannot help: the deadline passed,
        or it waits to retry (after a failed attempt) until after the deadline, so the stored data is
        answered at once rather than after the whole wait."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.bootstrap_wait
        while True:
            job = await self.jobs.get(job_id)
            if job is None or job.state not in ACTIVE or loop.time() > deadline:
                return job
            if waits_to_retry(job):
                due_in = (job.run_after - dt.datetime.now(dt.UTC)).total_seconds()
                if loop.time() + due_in > deadline:
                    return job
            await asyncio.sleep(0.2)

    async def _cached_bank_data(self, user_id: str, bank_id: str):
        """Accounts, latest balances and credits of one bank, through the Redis read cache (dropped by
        every sync commit of this user and bank)."""
        key = data_cache_prefix(self.cache, user_id, bank_id) + "snapshot"
        cached = await self.cache.get_json(key)
        if cached is not None:
            return (
                _rebuild(StoredAccount, cached["accounts"]),
                _rebuild(StoredBalance, cached["balances"]),
                _rebuild(StoredCredit, cached["credits"]),
            )
        accounts, balances, credits = await asyncio.gather(
            self.data.accounts(user_id, bank_id),
            self.data.latest_balances(user_id, bank_id),
            self.data.credits(user_id, bank_id),
        )
        await self.cache.set_json(
            key,
            {
                "accounts": [_dump(a) for a in accounts],
                "balances": [_dump(b) for b in balances],
                "credits": [_dump(c) for c in credits],
            },
            READ_CACHE_TTL,
        )
        return accounts, balances, credits

    # ------------------------------------------------------------------------------------ reads

    async def accounts(self, user_id: str, bank_id: str | None) -> list[StoredAccount]:
        return await self.data.accounts(require(user_id, "user_id"), bank_id or None)

    async def balances(self, user_id: str, bank_id: str | None) -> list[StoredBalance]:
        return await self.data.latest_balances(require(user_id, "user_id"), bank_id or None)

    async def credits(self, user_id: str, bank_id: str | None) -> list[StoredCredit]:
        return await self.data.credits(require(user_id, "user_id"), bank_id or None)

    async def transactions(
        self,
        user_id: str,
        bank_id: str | None,
        account_id: str | None,
        since: dt.datetime | None,
        until: dt.datetime | None,
        size: int,
        token: str,
    ) -> tuple[list[StoredTransaction], str]:
        rows, next_cursor = await self.data.transactions(
            require(user_id, "user_id"),
            bank_id=bank_id or None,
            account_id=account_id or None,
            since=since,
            until=until,
            limit=page_size(size),
            after=cursor(token),
        )
        return rows, next_cursor.token() if next_cursor else ""

    async def aggregates(
        self,
        user_id: str,
        months: int,
        spending_since: dt.datetime | None,
        income_days: int = 0,
        today_since: dt.datetime | None = None,
    ) -> Aggregates:
        user_id = require(user_id, "user_id")
        if not 0 <= months <= 120:
            raise InvalidArgument("months must be between 1 and 120", "months", reason="OUT_OF_RANGE")
        if not 0 <= income_days <= 3660:
            raise InvalidArgument("income_days must be between 1 and 3660", "income_days", reason="OUT_OF_RANGE")
        now = dt.datetime.now(dt.UTC)
        since = spending_since or now - dt.timedelta(days=30)
        today = today_since or now.replace(hour=0, minute=0, second=0, microsecond=0)
        cash_flow, spending, loans, version, income, spent_today = await asyncio.gather(
            self.data.monthly_cash_flow(user_id, months or 12),
            self.data.spending_by_category(user_id, since),
            self.data.loan_repayments(user_id),
            self.data.data_version(user_id),
            self.data.income_by_day(user_id, now - dt.timedelta(days=income_days or 180)),
            self.data.spending_by_category(user_id, today),
        )
        return Aggregates(cash_flow, spending, loans, version, income, spent_today)

    async def data_version(self, user_id: str) -> int:
        user_id = require(user_id, "user_id")
        version = await self.data.data_version(user_id)
        # Only if missing: a worker that committed meanwhile has published a newer version.
        await self.cache.set(
            data_version_key(self.cache.prefix, user_id), str(version), DATA_VERSION_TTL, only_if_missing=True
        )
        return version


def _dump(row) -> dict:
    return {
        k: (
            v.isoformat()
            if isinstance(v, (dt.datetime, dt.date))
            else str(v)
            if v is not None and not isinstance(v, (str, int, bool))
            else v
        )
        for k, v in dataclasses.asdict(row).items()
    }


_PARSERS = {Decimal: Decimal, dt.datetime: dt.datetime.fromisoformat, dt.date: dt.date.fromisoformat}


def _rebuild(cls, items: list[dict]):
    """Cached JSON back into the storage's dataclasses (Decimal money, aware datetimes)."""
    parsers = {}
    for name, hint in typing.get_type_hints(cls).items():
        kinds = typing.get_args(hint) or (hint,)  # `X | None` -> (X, NoneType)
        parsers[name] = next((_PARSERS[k] for k in kinds if k in _PARSERS), None)
    return [
        cls(
            **{
                name: value if value is None or parsers[name] is None else parsers[name](value)
                for name, value in item.items()
            }
        )
        for item in items
    ]
