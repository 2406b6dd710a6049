"""Loan repayments seen in history and the monthly obligation they show (pure).

One rule for both services: the dashboard's loan payments (safe-to-spend, events, loan summary) and
consent_svc's "next instalment" of a loan repayment are `obligation_of` the loan's `Repayments`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable
from decimal import Decimal

from finance.dates import add_months, month_day, today_of
from finance.money import round_money


@dataclasses.dataclass(frozen=True)
class Repayments:
    """Repayments of one loan found in history ("Платеж по кредиту №<agreement_id>")."""

    bank_id: str
    agreement_id: str
    count: int
    total: Decimal
    average: Decimal
    currency: str
    last_paid_at: dt.datetime | None  # the latest repayment's booking time; None when unknown
    typical_day: int  # most common day of month
    months: tuple[dt.date, ...] = ()  # first day of every month with a repayment (empty: unknown)


@dataclasses.dataclass(frozen=True)
class Obligation:
    """A monthly payment: `amount` due on `day` of the month, next on `first` (today or later)."""

    amount: Decimal
    currency: str
    day: int
    first: dt.date
    bank_id: str | None = None
    agreement_id: str | None = None

    def occurrences(self, start: dt.date, end: dt.date) -> list[dt.date]:
        found: list[dt.date] = []
        k = 0
        while True:
            when = self.first if k == 0 else add_months(self.first, k, self.day)
            if when > end:
                return found
            if when >= start:
                found.append(when)
            k += 1


def next_due_date(typical_day: int, last_paid_at: dt.datetime | None, today: dt.date) -> dt.date:
    """The loan's next due date: its typical day of this month (clamped to the month's length) when that is
    today or later and nothing was repaid yet this month, else the typical day of next month.
    (Refinement of "after today": a payment due today and not yet booked is still due; one already
    booked early this month is not counted twice.) An unknown last repayment is not this month's."""
    this_month = month_day(today.year, today.month, typical_day)
    paid = today_of(last_paid_at) if last_paid_at is not None else None
    paid_this_month = paid is not None and (paid.year, paid.month) == (today.year, today.month)
    if this_month >= today and not paid_this_month:
        return this_month
    return month_day(today.year, today.month + 1, typical_day)


def repayments_by_key(repayments: Iterable[Repayments]) -> dict[tuple[str, str], Repayments]:
    """One series per (bank, agreement): the one with the most repayments when currencies differ."""
    found: dict[tuple[str, str], Repayments] = {}
    for r in repayments:
        key = (r.bank_id, r.agreement_id)
        if key not in found or r.count > found[key].count:
            found[key] = r
    return found


def obligation_of(repayments: Repayments, today: dt.date) -> Obligation:
    """A loan's monthly payment as seen in history: its average repayment, due on its typical day."""
    return Obligation(
        round_money(repayments.average),
        repayments.currency,
        repayments.typical_day,
        next_due_date(repayments.typical_day, repayments.last_paid_at, today),
        repayments.bank_id,
        repayments.agreement_id,
    )
