"""Sync job workers (no gRPC): claim durable jobs, fetch a bank, write it in one transaction.

The write transaction is opened when the fetch starts (`BankDataStorage.bank_write`, which takes the
(user, bank) lock) and every transaction page is COPYed into it as it arrives, so Postgres works
while the bank is being waited on; accounts, balances, agreements, the sync state and the data
version follow at the end, and everything commits at once (or nothing does). Each streaming job
holds a pooled connection for its whole fetch, so at most half the pool streams at once; a job that
finds no streaming slot free fetches first and writes after.

Workers inside every sync_svc replica claim jobs with FOR UPDATE SKIP LOCKED and hold them with a
lease they extend while working; a job whose worker died is claimed again once its lease expires.
Outcomes: success; transient failure (bank 5xx/timeouts/429 beyond the per-call retries, a backing
service down) → queued again with exponential backoff and jitter, up to `max_attempts`; the bank
refusing our consent → `needs_reconsent`, no retry. A failure at one bank never touches another
bank's job.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import datetime as dt
import functools
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from bankapi import errors as bank_errors
from bankapi.client import BankClients, CallRecord
from finance.dataversion import DATA_VERSION_TTL, data_version_key
from svclib import tracing
from svclib.cache import Cache
from svclib.logging import new_request_id, request_id_var
from svclib.resilience import LoopHealth, is_unavailable, run_forever
from sync_svc import metrics
from sync_svc.bank_storage import BankCall, BankDataStorage, BankWrite, WriteStats
from sync_svc.fetcher import BankFetcher, Fetched, OnTransactions, Progress
from sync_svc.storage import Job, JobStorage

log = logging.getLogger("sync_svc.worker")

_calls: contextvars.ContextVar[list[CallRecord] | None] = contextvars.ContextVar("sync_calls", default=None)
_progress: contextvars.ContextVar[Progress | None] = contextvars.ContextVar("sync_progress", default=None)


def record_call(record: CallRecord) -> None:
    """`on_call` hook of the bank clients: count every call in the metrics, collect the calls of the
    job running in this context, and note a failed one on its progress at once (the next heartbeat
    shows it in the sync status while the job still runs)."""
    metrics.observe_bank_call(
        record.bank_id, record.operation, record.http_status, record.latency_ms / 1000, record.attempt
    )
    calls = _calls.get()
    if calls is not None:
        calls.append(record)
    progress = _progress.get()
    if progress is not None and record.outcome != "ok":
        what = record.message or (f"HTTP {record.http_status}" if record.http_status else "no answer")
        progress.last_problem = f"{record.bank_id} {record.operation}: {what[:200]} (attempt {record.attempt})"


@dataclasses.dataclass(frozen=True)
class JobConsents:
    account_consent: str | None
    product_consent: str | None


class Consents(Protocol):
    """What a sync job needs of consent_svc: the approved consents of (user, bank)."""

    def for_bank(self, user_id: str, bank_id: str) -> Awaitable[JobConsents]: ...


class NeedsReconsent(Exception):
    pass


T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class WorkerConfig:
    workers: int = 4
    concurrency: int = 8
    lease_seconds: float = 30.0
    max_attempts: int = 8
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    idle_poll: float = 1.0
    # A job's outcome (done, retry later, given up) that cannot be written because the database is
    # unavailable is tried again for this long, so a restart does not leave the job `running` until its
    # lease runs out (then it is left to the lease).
    outcome_patience: float = 30.0
    # An attempt cut short by the database being unavailable is not counted against `max_attempts`
    # (a few restarts must not fail a job), while the job is younger than this.
    refund_window: float = 15 * 60.0


def _retrieve(task: asyncio.Task) -> None:
    """Done callback: mark a side task's exception as seen (whoever needs it gets it another way)."""
    if not task.cancelled():
        task.exception()


def data_cache_prefix(cache: Cache, user_id: str, bank_id: str) -> str:
    return cache.key("data", user_id, bank_id, "")


class SyncWorkers:
    def __init__(
        self,
        jobs: JobStorage,
        data: BankDataStorage,
        banks: BankClients,
        consents: Consents,
        cache: Cache,
        config: WorkerConfig,
    ):
        self.jobs = jobs
        self.data = data
        self.banks = banks
        self.consents = consents
        self.cache = cache
        self.config = config
        self.worker_id = f"sync-{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()
        self.health: LoopHealth | None = None
        self._current_loop: contextvars.ContextVar[str | None] = contextvars.ContextVar("sync_loop", default=None)
        self._random = random.Random()
        # A streaming job holds a pooled connection from its first bank request to its commit.
        self._stream_slots = asyncio.Semaphore(max(1, data.pool.get_max_size() // 2))

    def wake(self, *_args) -> None:
        self._wake.set()

    async def run(self, health: LoopHealth | None = None) -> None:
        """Run `config.workers` claim loops until cancelled. Each loop outlives any failure (a database
        restart, a bug in one job): it logs it and claims again (svclib.resilience.run_forever), and
        beats `health` on every pass and while its job runs, so a loop that stops shows as NOT_SERVING."""
        self.health = health
        silence = max(60.0, self.config.lease_seconds * 4)
        await asyncio.gather(
            *(
                run_forever(f"sync-worker-{i}", functools.partial(self._claim_once, i), health, allowed_silence=silence)
                for i in range(self.config.workers)
            )
        )

    async def _claim_once(self, index: int) -> None:
        """One pass of a worker loop: claim a job and run it, or wait for work (a wake-up or the poll)."""
        job = await self.jobs.claim(self.worker_id, self.config.lease_seconds)
        if job is None:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.config.idle_poll)
            except TimeoutError:
                pass
            return
        await self.process(job, loop_name=f"sync-worker-{index}")

    async def process(self, job: Job, loop_name: str | None = None) -> None:
        progress = Progress()
        self._current_loop.set(loop_name)
        calls: list[CallRecord] = []
        token = _calls.set(calls)
        progress_token = _progress.set(progress)
        # The job's log lines, its calls to consent_svc and its bank calls carry the id of the request
        # that queued it (set before the heartbeat task copies this context).
        request_token = request_id_var.set(job.request_id or new_request_id())
        heartbeat = asyncio.create_task(self._heartbeat(job, progress))  # outside the job's trace: not its work
        try:
            with tracing.job_span(
                "sync job",
                job.traceparent,
                {"finpulse.job.id": job.job_id, "finpulse.bank.id": job.bank_id, "finpulse.job.attempt": job.attempts},
            ):
                await self._run_traced(job, progress)
        finally:
            heartbeat.cancel()
            _calls.reset(token)
            _progress.reset(progress_token)
            await self._log_calls(job, calls)
            request_id_var.reset(request_token)

    async def _run_traced(self, job: Job, progress: Progress) -> None:
        """The job and its outcome, in the job's span (svclib.tracing.job_span) when tracing is on."""
        log.info("sync job started", extra={"job_id": job.job_id, "bank_id": job.bank_id, "attempt": job.attempts})
        try:
            await self._run_job(job, progress)
        except asyncio.CancelledError:
            # Shutting down: hand the job back at once (if this fails, the lease runs out instead).
            await asyncio.shield(self._hand_back(job))
            raise
        except NeedsReconsent as exc:
            await self._give_up(job, progress, "needs_reconsent", str(exc))
        except bank_errors.ConsentRequired as exc:
            await self._give_up(job, progress, "needs_reconsent", f"the bank refused the consent: {exc.message}")
        except (
            bank_errors.BadRequest,
            bank_errors.NotFound,
            bank_errors.AuthFailed,
            bank_errors.Forbidden,
            bank_errors.UnknownBank,
        ) as exc:
            await self._give_up(job, progress, "failed", str(exc))
        except Exception as exc:  # noqa: BLE001 - transient (bank down, 429s, a service restarting)
            await self._retry(job, progress, exc)

    async def _run_job(self, job: Job, progress: Progress) -> None:
        consents = await self.consents.for_bank(job.user_id, job.bank_id)
        if not consents.account_consent:
            raise NeedsReconsent("no approved account consent at this bank")
        started = time.perf_counter()
        # The bank token (the first request of the chain) needs nothing from the database: ask for it
        # while the write opens. The fetch's first call waits for this same request (the client
        # fetches one token at a time) and raises its error, if any, in the job's usual way.
        warm = asyncio.create_task(self.banks.get(job.bank_id).get_token())
        warm.add_done_callback(_retrieve)
        try:
            if self._stream_slots.locked():  # the pool is taken by streaming jobs: fetch, then write
                fetched = await self._fetch(job, progress, consents, None)
                fetched_at = time.perf_counter()
                async with self.data.bank_write(job.user_id, job.bank_id) as write:
                    stats = await self._commit(write, fetched)
            else:
                async with self._stream_slots, self.data.bank_write(job.user_id, job.bank_id) as write:
                    fetched = await self._fetch(job, progress, consents, write.add_transactions)
                    fetched_at = time.perf_counter()
                    stats = await self._commit(write, fetched)
        finally:
            warm.cancel()
        committed_at = time.perf_counter()
        progress.rows_written = stats.inserted + stats.updated + stats.deleted
        for table in ("accounts", "balances", "transactions", "credits"):
            table_stats = getattr(stats, table)
            for change in ("inserted", "updated", "deleted"):
                metrics.SYNC_ROWS_WRITTEN.labels(job.bank_id, table, change).inc(getattr(table_stats, change))
        metrics.SYNC_JOBS.labels(job.bank_id, "succeeded").inc()
        tracing.note({"finpulse.job.outcome": "succeeded", "finpulse.job.rows_written": progress.rows_written})
        # Committed: whatever was cached for this user and bank is stale now. Published before the job
        # shows as finished, so whoever waits for it sees answers computed from the new data.
        await self.cache.delete_prefix(data_cache_prefix(self.cache, job.user_id, job.bank_id))
        if stats.changed:  # the dashboard's cache key: its cached answers are stale from now on
            await self.cache.raise_to(
                data_version_key(self.cache.prefix, job.user_id), stats.data_version, DATA_VERSION_TTL
            )
            await self.cache.announce_change(job.user_id)
        if not await self._persist(
            job, lambda: self.jobs.finish(job.job_id, self.worker_id, "succeeded", progress.as_dict())
        ):
            log.warning("job was taken over before it finished", extra={"job_id": job.job_id})
        log.info(
            "sync job succeeded",
            extra={
                "job_id": job.job_id,
                "bank_id": job.bank_id,
                "inserted": stats.inserted,
                "updated": stats.updated,
                "deleted": stats.deleted,
                "pages": progress.pages_fetched,
                "data_version": stats.data_version,
                "fetch_ms": round((fetched_at - started) * 1000, 1),  # with the pages streamed into Postgres
                "commit_ms": round((committed_at - fetched_at) * 1000, 1),
            },
        )  # the rest of the write, after the fetch

    async def _fetch(
        self, job: Job, progress: Progress, consents: JobConsents, on_transactions: OnTransactions | None
    ) -> Fetched:
        # When streaming, the (user, bank) lock is held already: this is the last committed sync's state.
        state = await self.data.sync_state(job.user_id, job.bank_id)
        fetcher = BankFetcher(
            self.banks.get(job.bank_id),
            job.user_id,
            account_consent=consents.account_consent,
            product_consent=consents.product_consent,
            watermark=state.watermark if state else None,
            force=job.force,
            progress=progress,
            concurrency=self.config.concurrency,
            stored_ids=lambda account_id, ids: self.data.stored_transaction_ids(
                job.user_id, job.bank_id, account_id, ids
            ),
            on_transactions=on_transactions,
        )
        return await fetcher.fetch()

    @staticmethod
    async def _commit(write: BankWrite, fetched: Fetched) -> WriteStats:
        await write.add_transactions(fetched.transactions)  # none left when they were streamed
        return await write.commit(
            accounts=fetched.accounts,
            balances=fetched.balances,
            agreements=fetched.agreements,
            fetched_window=fetched.window,
            window_accounts=fetched.window_accounts,
        )

    async def _hand_back(self, job: Job) -> None:
        try:
            await self.jobs.retry_later(job.job_id, self.worker_id, 0, "the worker stopped; resumed by another")
        except Exception:  # noqa: BLE001
            log.warning("could not hand the job back; its lease will expire", extra={"job_id": job.job_id})

    async def _heartbeat(self, job: Job, progress: Progress) -> None:
        loop_name = self._current_loop.get()
        while True:
            await asyncio.sleep(min(0.5, self.config.lease_seconds / 3))
            try:
                await self.jobs.heartbeat(job.job_id, self.worker_id, self.config.lease_seconds, progress.as_dict())
                if self.health is not None and loop_name:
                    self.health.beat(loop_name)  # a long job keeps its loop alive
            except Exception:  # noqa: BLE001 - a missed beat is retried; the lease has slack
                log.warning("heartbeat failed", extra={"job_id": job.job_id})

    async def _note_failure(self, job: Job, message: str) -> None:
        """Store the failure on the bank's sync state; its first since the last success changes the
        dashboard (which names the failing bank): publish the new version and announce the change."""
        version = await self.data.record_failure(job.user_id, job.bank_id, message)
        if version is not None:
            await self.cache.raise_to(data_version_key(self.cache.prefix, job.user_id), version, DATA_VERSION_TTL)
            await self.cache.announce_change(job.user_id)

    async def _give_up(self, job: Job, progress: Progress, state: str, message: str) -> None:
        metrics.SYNC_JOBS.labels(job.bank_id, state).inc()
        tracing.note({"finpulse.job.outcome": state})
        log.warning(
            "sync job stopped", extra={"job_id": job.job_id, "bank_id": job.bank_id, "state": state, "error": message}
        )
        await self._persist(
            job, lambda: self.jobs.finish(job.job_id, self.worker_id, state, progress.as_dict(), message)
        )
        await self._persist(job, lambda: self._note_failure(job, message))

    def _database_unavailable(self, job: Job, exc: Exception) -> bool:
        """The attempt failed because the suite's database was unavailable (not the bank, not another
        service), and the job is young enough for that not to count as an attempt."""
        if isinstance(exc, bank_errors.BankError) or not is_unavailable(exc):
            return False
        age = (dt.datetime.now(dt.UTC) - job.created_at).total_seconds()
        return age < self.config.refund_window

    async def _retry(self, job: Job, progress: Progress, exc: Exception) -> None:
        message = str(exc) or type(exc).__name__
        tracing.note({"finpulse.job.outcome": "retry", "finpulse.job.error": type(exc).__name__})
        database = self._database_unavailable(job, exc)
        if database:
            # Not the job's fault: run it again as soon as the database is back, without counting this
            # attempt, and without recording a failure at the bank.
            log.warning(
                "sync job interrupted: the database is unavailable; it runs again",
                extra={"job_id": job.job_id, "bank_id": job.bank_id, "error": repr(exc)},
            )
            delay = self.config.backoff_base * self._random.uniform(0.5, 1.0)
            metrics.SYNC_JOBS.labels(job.bank_id, "retry").inc()
            await self._persist(
                job, lambda: self.jobs.retry_later(job.job_id, self.worker_id, delay, message, refund_attempt=True)
            )
            return
        if not isinstance(exc, bank_errors.BankError):
            log.exception("sync job failed", extra={"job_id": job.job_id})
        if job.attempts >= self.config.max_attempts:
            await self._give_up(job, progress, "failed", f"gave up after {job.attempts} attempts: {message}")
            return
        delay = getattr(exc, "retry_after", None)
        if delay is None:
            cap = min(self.config.backoff_max, self.config.backoff_base * 2 ** (job.attempts - 1))
            delay = cap / 2 + self._random.uniform(0, cap / 2)
        metrics.SYNC_JOBS.labels(job.bank_id, "retry").inc()
        log.warning(
            "sync job will retry",
            extra={"job_id": job.job_id, "bank_id": job.bank_id, "delay_s": round(delay, 2), "error": message},
        )
        await self._persist(job, lambda: self.jobs.retry_later(job.job_id, self.worker_id, delay, message))
        await self._persist(job, lambda: self._note_failure(job, message))

    async def _persist(self, job: Job, write: Callable[[], Awaitable[T]]) -> T:
        """`write()` (a job's outcome), tried again while the database is unavailable, for up to
        `config.outcome_patience` seconds (the job's heartbeat keeps its lease meanwhile)."""
        deadline = time.monotonic() + self.config.outcome_patience
        delay = 0.1
        while True:
            try:
                return await write()
            except Exception as exc:  # only an unavailable database is waited out
                if not is_unavailable(exc) or time.monotonic() + delay > deadline:
                    raise
                log.info(
                    "database unavailable while recording a job's outcome; trying again",
                    extra={"job_id": job.job_id, "error": repr(exc), "retry_in_s": delay},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _log_calls(self, job: Job, calls: list[CallRecord]) -> None:
        if not calls:
            return
        rows = [
            BankCall(
                bank_id=c.bank_id,
                operation=c.operation,
                outcome=c.outcome,
                user_id=job.user_id,
                http_status=c.http_status,
                latency_ms=c.latency_ms,
                interaction_id=c.interaction_id,
                message=c.message,
            )
            for c in calls
        ]
        try:
            await self._persist(job, lambda: self.data.log_bank_calls(rows))
        except Exception as exc:  # the log must not fail the job
            if is_unavailable(exc):
                log.warning(
                    "writing bank_status_log failed: the database is unavailable",
                    extra={"job_id": job.job_id, "calls": len(rows), "error": repr(exc)},
                )
            else:
                log.exception("writing bank_status_log failed", extra={"job_id": job.job_id})
