"""sync_svc's Prometheus metrics, per bank.

`finpulse_sync_bank_calls_total` {bank, operation} (every HTTP exchange, retries included),
`finpulse_sync_bank_call_failures_total` {bank, operation, reason} (no 2xx answer; reason is the HTTP
status or `transport`), `finpulse_sync_bank_rate_limited_total` {bank} (429s, failures too),
`finpulse_sync_bank_call_retries_total` {bank} (exchanges that retried the same request: attempt 2 and later),
`finpulse_sync_bank_call_duration_seconds` {bank}, `finpulse_sync_rows_written_total`
{bank, table, change} (rows a committed sync inserted, updated or deleted) and
`finpulse_sync_jobs_total` {bank, outcome} (succeeded, retry, failed, needs_reconsent); the backlog, read
from the job table every few seconds by each replica (`watch_backlog`; every replica reports the same
table, so queries take `max`): `finpulse_sync_jobs_active` {bank, state: queued, running} and
`finpulse_sync_oldest_queued_job_age_seconds` {bank} (how long the oldest due queued job has waited for a
worker; 0 when none waits).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

from prometheus_client import Counter, Gauge, Histogram

from svclib.metrics import LATENCY_BUCKETS

BANK_CALLS = Counter(
    "finpulse_sync_bank_calls_total",
    "HTTP exchanges of sync_svc with a bank (each retry counts), by bank and client operation.",
    ["bank", "operation"],
)
BANK_CALL_FAILURES = Counter(
    "finpulse_sync_bank_call_failures_total",
    "Bank exchanges of sync_svc without a 2xx answer; reason is the HTTP "
    "status or 'transport' (connection error, timeout).",
    ["bank", "operation", "reason"],
)
BANK_RATE_LIMITED = Counter(
    "finpulse_sync_bank_rate_limited_total", "Bank exchanges of sync_svc answered 429 Too Many Requests.", ["bank"]
)
BANK_CALL_RETRIES = Counter(
    "finpulse_sync_bank_call_retries_total",
    "Bank exchanges of sync_svc that retried the same request (its attempt 2 and later), by bank.",
    ["bank"],
)
BANK_CALL_LATENCY = Histogram(
    "finpulse_sync_bank_call_duration_seconds",
    "Latency of sync_svc's bank exchanges, by bank.",
    ["bank"],
    buckets=LATENCY_BUCKETS,
)
SYNC_ROWS_WRITTEN = Counter(
    "finpulse_sync_rows_written_total",
    "Rows a committed sync changed, by bank, table and change (inserted, updated, deleted).",
    ["bank", "table", "change"],
)
SYNC_JOBS = Counter(
    "finpulse_sync_jobs_total",
    "Sync job runs by bank and outcome (succeeded, retry, failed, needs_reconsent).",
    ["bank", "outcome"],
)

SYNC_JOBS_ACTIVE = Gauge(
    "finpulse_sync_jobs_active",
    "Sync jobs queued or running now, by bank and state (read from the job table).",
    ["bank", "state"],
)
SYNC_OLDEST_QUEUED = Gauge(
    "finpulse_sync_oldest_queued_job_age_seconds",
    "How long the oldest due queued sync job of a bank has waited for a worker (0: none waits).",
    ["bank"],
)

#: The outcomes of a sync job run (`finpulse_sync_jobs_total`).
JOB_OUTCOMES = ("succeeded", "retry", "failed", "needs_reconsent")


def init(banks: Iterable[str]) -> None:
    """Every bank's series of the counters without a free-form label, at 0 from the start: a rate over
    them needs a first sample."""
    for bank in banks:
        BANK_RATE_LIMITED.labels(bank)
        BANK_CALL_RETRIES.labels(bank)
        for outcome in JOB_OUTCOMES:
            SYNC_JOBS.labels(bank, outcome)


#: How often each replica reads the backlog from the job table.
BACKLOG_INTERVAL = 5.0


def set_backlog(banks: Iterable[str], rows: Iterable[tuple[str, str, int, float]]) -> None:
    """The backlog read from the job table: (bank, state, jobs, seconds waited); every bank of `banks`
    not in `rows` has none."""
    counts = {(bank, state): 0 for bank in banks for state in ("queued", "running")}
    waited = dict.fromkeys(banks, 0.0)
    for bank, state, jobs, seconds in rows:
        counts[(bank, state)] = jobs
        if state == "queued":
            waited[bank] = seconds
    for (bank, state), jobs in counts.items():
        SYNC_JOBS_ACTIVE.labels(bank, state).set(jobs)
    for bank, seconds in waited.items():
        SYNC_OLDEST_QUEUED.labels(bank).set(seconds)


async def watch_backlog(banks: list[str], read: Callable[[], Awaitable[list[tuple[str, str, int, float]]]]) -> None:
    """One pass of the backlog loop (svclib.resilience.run_forever repeats it): read, export, wait."""
    set_backlog(banks, await read())
    await asyncio.sleep(BACKLOG_INTERVAL)


def observe_bank_call(bank: str, operation: str, http_status: int | None, seconds: float, attempt: int = 1) -> None:
    """One HTTP exchange of sync_svc with a bank; `http_status` None: no answer (transport error); `attempt`
    1 for the first try of a request, 2.. for its retries."""
    BANK_CALLS.labels(bank, operation).inc()
    if attempt > 1:
        BANK_CALL_RETRIES.labels(bank).inc()
    BANK_CALL_LATENCY.labels(bank).observe(seconds)
    if http_status is None or http_status >= 300:
        BANK_CALL_FAILURES.labels(bank, operation, "transport" if http_status is None else str(http_status)).inc()
    if http_status == 429:
        BANK_RATE_LIMITED.labels(bank).inc()
