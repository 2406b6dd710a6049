"""Income detection from history (monthly, biweekly, irregular) and the user's salary inputs (pure)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Iterable, Sequence
from decimal import Decimal

from dashboard_svc.domain import texts
from dashboard_svc.domain.common import roll_forward_monthly
from dashboard_svc.model import DayAmount, FinancialInputs
from finance.dates import add_months, month_day
from finance.money import ZERO, round_money

INCOME_HISTORY_DAYS = 180
DAY_TOLERANCE = 3  # "a similar day of month": within ±3 days (weekends and holidays shift pay days)
AMOUNT_TOLERANCE = Decimal("0.20")  # ±20 % of the anchor credit
MONTHLY_WINDOWS = 4  # the last 4 month-long windows ending today…
MONTHLY_MIN_HITS = 3  # …of which at least 3 hold a matching credit
BIWEEKLY_MIN_OCCURRENCES = 5  # 4 gaps of 13–15 days (about 8 weeks)
BIWEEKLY_GAP = (13, 15)
BIWEEKLY_MAX_AGE_DAYS = 15  # the latest occurrence must be recent, or the series has stopped
MIN_SALARY_SHARE = Decimal("0.40")  # a salary-like series carries ≥ 40 % of the income of its period


@dataclasses.dataclass(frozen=True)
class IncomeStream:
    """A recurring income: `monthly` on `day` of the month, or `biweekly` every 14 days; `first` is the
    next occurrence (after today)."""

    kind: str  # monthly | biweekly
    amount: Decimal
    day: int
    first: dt.date

    def occurrences(self, start: dt.date, end: dt.date) -> list[dt.date]:
        """Occurrences in [start, end], from `first` on."""
        found: list[dt.date] = []
        k = 0
        while True:
            when = (
                self.first + dt.timedelta(days=14 * k)
                if self.kind == "biweekly"
                else self.first
                if k == 0
                else add_months(self.first, k, self.day)
            )
            if when > end:
                return found
            if when >= start:
                found.append(when)
            k += 1


@dataclasses.dataclass(frozen=True)
class IncomePlan:
    """What income is expected: `source` is user_input | monthly | biweekly | irregular | none.
    With streams, the next income date is the soonest stream occurrence; without, the date is unknown and
    `amount_without_date` is the income expected over the default horizon."""

    source: str
    streams: tuple[IncomeStream, ...] = ()
    amount_without_date: Decimal = ZERO
    average_monthly: Decimal = ZERO
    note: str = ""

    def next_after(self, day: dt.date) -> dt.date | None:
        dates = [s.occurrences(day + dt.timedelta(days=1), day + dt.timedelta(days=62))[:1] for s in self.streams]
        flat = [d[0] for d in dates if d]
        return min(flat) if flat else None

    def amount_on(self, day: dt.date) -> Decimal:
        return sum((s.amount for s in self.streams if day in s.occurrences(day, day)), ZERO)

    @property
    def next_date(self) -> dt.date | None:
        return min((s.first for s in self.streams), default=None)

    @property
    def monthly_equivalent(self) -> Decimal:
        """The streams' income per month (biweekly × 26 / 12)."""
        return sum((s.amount * 26 / 12 if s.kind == "biweekly" else s.amount for s in self.streams), ZERO)


def base_income_days(days: Iterable[DayAmount], base: str, today: dt.date) -> list[DayAmount]:
    """Income days in the base currency over the last 180 days (up to today), positive totals, by date."""
    since = today - dt.timedelta(days=INCOME_HISTORY_DAYS)
    return sorted(
        (d for d in days if d.currency == base and since < d.day <= today and d.total > 0), key=lambda d: d.day
    )


def within_amount(value: Decimal, anchor: Decimal) -> bool:
    return abs(value - anchor) <= anchor * AMOUNT_TOLERANCE


def month_windows(today: dt.date) -> list[tuple[dt.date, dt.date]]:
    """The last 4 month-long windows ending today: window k = (today − k months, today − (k−1) months].
    A monthly income falls once in each of them, whatever its day of month."""
    return [(add_months(today, -k), add_months(today, -(k - 1))) for k in range(1, MONTHLY_WINDOWS + 1)]


def next_monthly_date(day: int, seen: Sequence[dt.date], today: dt.date) -> dt.date:
    """The next occurrence of `day` (clamped to the month's length) after today, skipping an occurrence
    already received early or late (a seen credit within ±3 days of it)."""
    k = 0
    while True:
        candidate = month_day(today.year, today.month + k, day)
        if candidate > today and not any(abs((candidate - s).days) <= DAY_TOLERANCE for s in seen):
            return candidate
        k += 1


def detect_monthly(days: Sequence[DayAmount], today: dt.date) -> list[IncomeStream]:
    """Monthly salary-like streams.

    Rule: take income days of the last 4 month-long windows ending today, largest first, each as an
    anchor. A window matches when it holds a credit on a similar day of month (±3 days) with an amount
    within ±20 % of the anchor's. A stream needs matches in ≥ 3 of the 4 windows, and must carry at least
    40 % of the income of the windows it matched in (refinement: a salary is a dominant income; this keeps
    several random credits a month, as the banks' data has, from passing for a salary: without it 9 in 10
    of bank_sandbox's customers got a false monthly salary, with it none of 450). The stream's day
    is the median day of month of its matches, its amount their average. Matched credits are not reused,
    so an advance and a salary (e.g. the 10th and the 25th) are two streams."""
    windows = month_windows(today)

    def window_of(day: dt.date) -> int | None:
        return next((i for i, (lo, hi) in enumerate(windows) if lo < day <= hi), None)

    candidates = [(d, window_of(d.day)) for d in days]
    candidates = [(d, w) for d, w in candidates if w is not None]
    used: set[int] = set()
    streams = []
    for anchor, _ in sorted(candidates, key=lambda c: (-c[0].total, -c[0].day.toordinal())):
        if id(anchor) in used:
            continue
        matches: list[DayAmount] = []
        for w in range(len(windows)):
            options = [
                d
                for d, dw in candidates
                if dw == w
                and id(d) not in used
                and abs(d.day.day - anchor.day.day) <= DAY_TOLERANCE
                and within_amount(d.total, anchor.total)
            ]
            if options:
                matches.append(
                    min(options, key=lambda d: (abs(d.total - anchor.total), abs(d.day.day - anchor.day.day)))
                )
        if len(matches) < MONTHLY_MIN_HITS:
            continue
        matched_windows = {window_of(m.day) for m in matches}
        period_income = sum((d.total for d, w in candidates if w in matched_windows), ZERO)
        share = sum((m.total for m in matches), ZERO) / period_income
        if share < MIN_SALARY_SHARE:
            continue
        used.update(id(m) for m in matches)
        day = sorted(m.day.day for m in matches)[(len(matches) - 1) // 2]
        amount = round_money(sum((m.total for m in matches), ZERO) / len(matches))
        streams.append(IncomeStream("monthly", amount, day, next_monthly_date(day, [m.day for m in matches], today)))
    return sorted(streams, key=lambda s: s.first)


def detect_biweekly(days: Sequence[DayAmount], today: dt.date) -> IncomeStream | None:
    """A biweekly stream: a chain of ≥ 5 credits (4 gaps), each gap 13–15 days, amounts within ±20 % of
    the latest, the latest no older than 15 days, carrying ≥ 40 % of the income over the chain's span.
    (13–15, not 12–16: a semi-monthly pay, e.g. the 1st and the 15th, has 16–17-day gaps and is found as
    two monthly streams instead.) Next date: the latest + 14 days, repeated until after today."""
    recent = sorted(
        (d for d in days if 0 <= (today - d.day).days <= BIWEEKLY_MAX_AGE_DAYS),
        key=lambda d: (-d.day.toordinal(), -d.total),
    )
    for latest in recent:
        chain = [latest]
        while True:
            current = chain[-1]
            options = [
                d
                for d in days
                if BIWEEKLY_GAP[0] <= (current.day - d.day).days <= BIWEEKLY_GAP[1]
                and within_amount(d.total, latest.total)
            ]
            if not options:
                break
            chain.append(
                min(options, key=lambda d: (abs((current.day - d.day).days - 14), abs(d.total - latest.total)))
            )
        if len(chain) < BIWEEKLY_MIN_OCCURRENCES:
            continue
        span_income = sum((d.total for d in days if chain[-1].day <= d.day <= latest.day), ZERO)
        if sum((d.total for d in chain), ZERO) / span_income < MIN_SALARY_SHARE:
            continue
        first = latest.day + dt.timedelta(days=14)
        while first <= today:
            first += dt.timedelta(days=14)
        amount = round_money(sum((d.total for d in chain), ZERO) / len(chain))
        return IncomeStream("biweekly", amount, first.day, first)
    return None


def average_monthly_income(days: Sequence[DayAmount], today: dt.date) -> Decimal:
    """Irregular income per month: the total of the base-currency income days ÷ the 30-day periods from
    the first of them to today (rounded up, 1 to 6)."""
    if not days:
        return ZERO
    periods = min(6, max(1, math.ceil(((today - days[0].day).days + 1) / 30)))
    return round_money(sum((d.total for d in days), ZERO) / periods)


def detect_income(
    days: Sequence[DayAmount], today: dt.date, horizon_days: int, lang: str = "ru", currency: str = "RUB"
) -> IncomePlan:
    """Income from history (base currency, last 180 days): biweekly first (a biweekly series would also
    look monthly), then monthly streams; otherwise irregular (income seen, no reliable date: the expected
    income over the default horizon is the average monthly income × horizon ÷ 30); otherwise none.
    The plan's note is written in `lang`."""

    def m(value: Decimal) -> str:
        return texts.fmt_money(value, currency, lang)

    average = average_monthly_income(days, today)
    biweekly = detect_biweekly(days, today)
    if biweekly is not None:
        return IncomePlan(
            "biweekly",
            (biweekly,),
            average_monthly=average,
            note=texts.text(lang, "income.biweekly", amount=m(biweekly.amount)),
        )
    monthly = detect_monthly(days, today)
    if monthly:
        described = ", ".join(texts.text(lang, "income.monthly_stream", amount=m(s.amount), day=s.day) for s in monthly)
        return IncomePlan(
            "monthly",
            tuple(monthly),
            average_monthly=average,
            note=texts.text(lang, "income.monthly", streams=described),
        )
    if days:
        return IncomePlan(
            "irregular",
            amount_without_date=round_money(average * horizon_days / 30),
            average_monthly=average,
            note=texts.text(lang, "income.irregular", amount=m(average)),
        )
    return IncomePlan("none", note=texts.text(lang, "income.none"))


def apply_salary_inputs(
    detected: IncomePlan,
    inputs: FinancialInputs,
    today: dt.date,
    horizon_days: int,
    lang: str = "ru",
    currency: str = "RUB",
) -> IncomePlan:
    """The user's salary inputs win over detection (income_source "user_input").

    - A date (rolled forward by whole months when not after today — refinement: the inputs describe a
      monthly salary, so a past date still gives its day of month) makes a monthly stream from that date,
      with the stated amount, else the detected next amount (else the detected monthly average).
    - An amount without a date keeps the detected schedule, scaled so it adds up to the stated monthly
      amount (biweekly pays count 26/12 a month); with no schedule the amount is expected over the
      default horizon, date unknown."""

    def m(value: Decimal) -> str:
        return texts.fmt_money(round_money(value), currency, lang)

    amount, date = inputs.salary_amount, inputs.next_salary_date
    if date is not None:
        first = roll_forward_monthly(date, today, include_today=False)
        if amount is None:
            amount = detected.amount_on(detected.next_date) if detected.next_date else detected.average_monthly
        return IncomePlan(
            "user_input",
            (IncomeStream("monthly", round_money(amount), date.day, first),),
            average_monthly=detected.average_monthly,
            note=texts.text(lang, "income.user_dated", amount=m(amount), date=texts.fmt_date(first, lang)),
        )
    if amount is None:
        return detected
    if detected.streams:
        factor = amount / detected.monthly_equivalent
        streams = tuple(dataclasses.replace(s, amount=round_money(s.amount * factor)) for s in detected.streams)
        return IncomePlan(
            "user_input",
            streams,
            average_monthly=detected.average_monthly,
            note=texts.text(
                lang, "income.user_scaled", amount=m(amount), schedule=texts.text(lang, f"schedule.{detected.source}")
            ),
        )
    return IncomePlan(
        "user_input",
        amount_without_date=round_money(amount * horizon_days / 30),
        average_monthly=detected.average_monthly,
        note=texts.text(lang, "income.user_undated", amount=m(amount)),
    )
