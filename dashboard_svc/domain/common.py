"""Helpers of the dashboard calculation: money as shown (exact strings, the seed's legacy floats), dates,
and which accounts count as spendable (pure)."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterable, Sequence
from decimal import ROUND_HALF_UP, Decimal

from dashboard_svc.model import AccountView
from finance.dates import add_months
from finance.money import ZERO, round_money

TENTH = Decimal("0.1")
HUNDRED = Decimal("100")


def money(value: Decimal) -> str:
    """An exact amount as the proto's decimal string with two places."""
    return f"{round_money(value):f}"


def legacy(value: Decimal) -> float:
    """A seed `double` field: the float of the Decimal rounded to cents (the only place floats appear)."""
    return float(round_money(value))


def one_decimal(value: Decimal) -> Decimal:
    result = Decimal(value).quantize(TENTH, rounding=ROUND_HALF_UP)
    return result if result != 0 else Decimal("0.0")


def ratio_text(value: Decimal) -> str:
    return f"{Decimal(value).quantize(Decimal('0.0001'), rounding=ROUND_HALF_UP):f}"


def iso_datetime(value: dt.datetime) -> str:
    """ISO-8601 in UTC with "Z"; a naive datetime is taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def month_index(value: dt.date) -> int:
    return value.year * 12 + value.month - 1


def roll_forward_monthly(value: dt.date, today: dt.date, *, include_today: bool) -> dt.date:
    """A monthly date the user gave, moved by whole months (keeping its day) until it is not in the past:
    after today for a salary (`include_today=False`), today or later for a payment."""
    months = 0
    candidate = value
    while candidate < today or (candidate == today and not include_today):
        months += 1
        candidate = add_months(value, months)
    return candidate


def interpolate(x: Decimal, points: Sequence[tuple[Decimal, Decimal]]) -> Decimal:
    """Piecewise-linear through `points` (ascending x), flat beyond the ends."""
    if x <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[-1][1]


def is_loan_account(account: AccountView) -> bool:
    return account.sub_type.strip().lower() == "loan"


def is_spendable_account(account: AccountView, base: str) -> bool:
    """Spendable: any account but a Loan account (unknown sub-types count), in the base currency, with a
    stored balance. A Loan account holds disbursed loan money, not the user's spendable money."""
    return not is_loan_account(account) and account.currency == base and account.available is not None


def sum_by_currency(items: Iterable[tuple[str, Decimal]], base: str) -> list[dict[str, str]]:
    """Totals per currency, the base currency first, then alphabetical; never mixed."""
    totals: dict[str, Decimal] = {}
    for currency, amount in items:
        totals[currency] = totals.get(currency, ZERO) + amount
    order = sorted(totals, key=lambda c: (c != base, c))
    return [{"amount": money(totals[c]), "currency": c} for c in order]
