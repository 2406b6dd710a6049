"""consent_svc's Prometheus metrics: its payments.

- `finpulse_consent_payments_total` {bank, status}: payments that reached a status (INITIATING when the
  intent is recorded, then AWAITING_AUTHORIZATION, PENDING, COMPLETED or FAILED), counted once the
  change is committed (`PaymentStorage.insert` and `.update`).
- `finpulse_consent_payments_open` {bank, status} and `finpulse_consent_payments_oldest_open_age_seconds`
  {bank, status}: the payments not final yet and the age of the oldest, read from the payments table
  every few seconds by each replica (`watch_open_payments`; every replica reports the same table, so
  queries take `max`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

from prometheus_client import Counter, Gauge

#: Every status of a payment (consent_svc.payment_storage.StoredPayment.status); the last two are final.
STATUSES = ("INITIATING", "AWAITING_AUTHORIZATION", "PENDING", "COMPLETED", "FAILED")
OPEN_STATUSES = STATUSES[:3]

PAYMENTS = Counter(
    "finpulse_consent_payments_total",
    "Payments that reached a status, by debtor bank and status (COMPLETED and FAILED are the outcomes).",
    ["bank", "status"],
)
PAYMENTS_OPEN = Gauge(
    "finpulse_consent_payments_open",
    "Payments not final yet, by debtor bank and status (read from the payments table).",
    ["bank", "status"],
)
PAYMENTS_OLDEST_OPEN = Gauge(
    "finpulse_consent_payments_oldest_open_age_seconds",
    "Age of the oldest payment not final yet, by debtor bank and status (0: none).",
    ["bank", "status"],
)

#: How often each replica reads the open payments.
OPEN_PAYMENTS_INTERVAL = 10.0


def init(banks: Iterable[str]) -> None:
    """Every (bank, status) series from the start, at 0: a rate over them needs a first sample."""
    for bank in banks:
        for status in STATUSES:
            PAYMENTS.labels(bank, status)


def payment_reached(bank: str, status: str) -> None:
    """A payment's new status was committed."""
    PAYMENTS.labels(bank, status).inc()


def set_open_payments(banks: Iterable[str], rows: Iterable[tuple[str, str, int, float]]) -> None:
    """(bank, status, payments, age of the oldest in seconds) of the open payments; every other (bank, open
    status) of `banks` has none."""
    found = {(bank, status): (count, age) for bank, status, count, age in rows}
    keys = {(bank, status) for bank in banks for status in OPEN_STATUSES} | set(found)
    for key in keys:
        count, age = found.get(key, (0, 0.0))
        PAYMENTS_OPEN.labels(*key).set(count)
        PAYMENTS_OLDEST_OPEN.labels(*key).set(age)


async def watch_open_payments(
    banks: list[str], read: Callable[[], Awaitable[list[tuple[str, str, int, float]]]]
) -> None:
    """One pass of the open-payments loop (svclib.resilience.run_forever repeats it): read, export, wait."""
    set_open_payments(banks, await read())
    await asyncio.sleep(OPEN_PAYMENTS_INTERVAL)
