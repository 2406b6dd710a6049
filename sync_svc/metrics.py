"""sync_svc's Prometheus metrics, per bank.

`finpulse_sync_bank_calls_total` {bank, operation} (every HTTP exchange, retries included),
`finpulse_sync_bank_call_failures_total` {bank, operation, reason} (no 2xx answer; reason is the HTTP
status or `transport`), `finpulse_sync_bank_rate_limited_total` {bank} (429s, failures too),
`finpulse_sync_bank_call_duration_seconds` {bank}, `finpulse_sync_rows_written_total`
{bank, table, change} (rows a committed sync inserted, updated or deleted) and
`finpulse_sync_jobs_total` {bank, outcome} (succeeded, retry, failed, needs_reconsent).
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

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


def observe_bank_call(bank: str, operation: str, http_status: int | None, seconds: float) -> None:
    """One HTTP exchange of sync_svc with a bank; `http_status` None: no answer (transport error)."""
    BANK_CALLS.labels(bank, operation).inc()
    BANK_CALL_LATENCY.labels(bank).observe(seconds)
    if http_status is None or http_status >= 300:
        BANK_CALL_FAILURES.labels(bank, operation, "transport" if http_status is None else str(http_status)).inc()
    if http_status == 429:
        BANK_RATE_LIMITED.labels(bank).inc()
