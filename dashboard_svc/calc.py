"""The dashboard calculation: one user's `DashboardData` -> the `GetDashboardResponse` dict, and the loans,
deposits and refinancing answers computed in the same pass.

Pure: no I/O, no gRPC, no SQL. `compute(data, lang)` returns a JSON-able dict in the proto's field names
that `json_format.ParseDict(result, dashboard_pb2.GetDashboardResponse())` accepts. `compute_all(data,
lang)` returns {"dashboard", "loans", "deposits", "refinance"}: the GetDashboardResponse,
GetLoansResponse, GetDepositsResponse and OptimizeLoansResponse dicts, all from ONE analysis pass (so
the loans route's totals are the dashboard's loan_summary figures and the deposits route's are its
savings_summary). The service adds `cache_info` and `data_freshness[].age_minutes` when it answers.

Language: every text for people comes from `dashboard_svc.texts` in `lang` ("ru", the default and the
app's language, or "en"); codes (OK/DANGER, income_source, statuses, kinds, trigger types) are
language-neutral. Loan arithmetic and refinancing rules live in `dashboard_svc.refinance`.

Conventions
- All arithmetic is in `Decimal`. Money shown is rounded ROUND_HALF_UP to cents; the per-day
  safe-to-spend is rounded ROUND_DOWN so it is never overstated. Exact amounts are decimal strings with
  two places; the seed's legacy `double` fields are floats made from those rounded Decimals, at the edge.
- "today" is the UTC date of `data.now`. Dates are "YYYY-MM-DD", datetimes ISO-8601 UTC with "Z".
- The base currency (`config.base_currency`) is the currency of safe-to-spend and of every legacy
  number. Nothing is ever converted: balances, loans and deposits in other currencies are shown in
  their own currency (`totals_by_currency`, `excluded_balances`, `loans[]`…) and left out of the
  base-currency figures.

Each rule lives in a small function below whose docstring states it; `compute` only assembles them.

Refinements of the plain rules (each explained where it is applied):
- a monthly or biweekly income must carry ≥ 40 % of the income of its period (`detect_monthly`);
- several monthly streams (an advance and a salary) are kept apart; biweekly gaps are 13–15 days;
- a loan due today and not yet paid is still due; one already paid this month is not (`next_due_date`);
- user dates in the past are rolled forward by whole months; the user's credit payment also drives the
  events, the loan summary and the debt load (`apply_salary_inputs`, `apply_credit_inputs`);
- repayments of an agreement we do not know (no product consent) still count as payments
  (`orphan_obligations`);
- savings daily payment is 0 once the target is reached (`savings_summary`);
- on-time repayments count the calendar months that had a repayment (`months_paid`);
- a savings goal without a date but with a horizon of N months is due N × 30 days from today
  (`savings_summary`);
- `totals_by_currency` leaves out Loan accounts (disbursed loan money is not the user's), and
  `data_freshness` leaves out banks never synced (`bank_statuses` still lists them).
"""
from __future__ import annotations

import calendar
import dataclasses
import datetime as dt
import math
from decimal import ROUND_DOWN, ROUND_HALF_UP, ROUND_UP, Decimal
from typing import Any, Callable, Iterable, Sequence

from dashboard_svc import refinance, texts
from dashboard_svc.model import (
    AccountView,
    CreditView,
    DashboardData,
    DayAmount,
    FinancialInputs,
    Goals,
    MonthFlow,
    ProductView,
    Repayments,
)
from dashboard_svc.refinance import LoanTerms, Offer, Schedule

CENT = Decimal("0.01")
TENTH = Decimal("0.1")
ZERO = Decimal("0")
HUNDRED = Decimal("100")

# Income detection
INCOME_HISTORY_DAYS = 180
DAY_TOLERANCE = 3  # "a similar day of month": within ±3 days (weekends and holidays shift pay days)
AMOUNT_TOLERANCE = Decimal("0.20")  # ±20 % of the anchor credit
MONTHLY_WINDOWS = 4  # the last 4 month-long windows ending today…
MONTHLY_MIN_HITS = 3  # …of which at least 3 hold a matching credit
BIWEEKLY_MIN_OCCURRENCES = 5  # 4 gaps of 13–15 days (about 8 weeks)
BIWEEKLY_GAP = (13, 15)
BIWEEKLY_MAX_AGE_DAYS = 15  # the latest occurrence must be recent, or the series has stopped
MIN_SALARY_SHARE = Decimal("0.40")  # a salary-like series carries ≥ 40 % of the income of its period

# Loans
ORPHAN_REPAYMENT_MAX_AGE_DAYS = 62  # repayments of an agreement we do not know: still running if this recent
SPEED_SHARES = {"conservative": Decimal("0.05"), "optimal": Decimal("0.20"), "fast": Decimal("0.40")}
DEFAULT_SPEED = "optimal"
STRATEGIES = ("avalanche", "snowball")
DEFAULT_STRATEGY = "avalanche"
DAYS_PER_MONTH = Decimal(30)

# Events
EVENTS_DAYS = 30
EVENTS_MAX = 20

# Health
HEALTH_MONTHS = 3
ON_TIME_MAX_MONTHS = 6


# ================================================================================================ helpers

def round_money(value: Decimal) -> Decimal:
    """Money shown: ROUND_HALF_UP to cents, never "-0.00"."""
    result = Decimal(value).quantize(CENT, rounding=ROUND_HALF_UP)
    return result if result != 0 else Decimal("0.00")


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
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def today_of(now: dt.datetime) -> dt.date:
    if now.tzinfo is None:
        return now.date()
    return now.astimezone(dt.timezone.utc).date()


def month_day(year: int, month: int, day: int) -> dt.date:
    """`day` of the given month (months past 12 or below 1 roll over), clamped to the month's length."""
    year, month = year + (month - 1) // 12, (month - 1) % 12 + 1
    return dt.date(year, month, min(max(day, 1), calendar.monthrange(year, month)[1]))


def add_months(value: dt.date, months: int, day: int | None = None) -> dt.date:
    """`value` moved by whole months, on `day` (default `value.day`), clamped to the month's length."""
    return month_day(value.year, value.month + months, value.day if day is None else day)


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
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
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


# ================================================================================================ income

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
        found, k = [], 0
        while True:
            when = (self.first + dt.timedelta(days=14 * k) if self.kind == "biweekly"
                    else self.first if k == 0 else add_months(self.first, k, self.day))
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
    return sorted((d for d in days if d.currency == base and since < d.day <= today and d.total > 0),
                  key=lambda d: d.day)


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
            options = [d for d, dw in candidates if dw == w and id(d) not in used
                       and abs(d.day.day - anchor.day.day) <= DAY_TOLERANCE and within_amount(d.total, anchor.total)]
            if options:
                matches.append(min(options, key=lambda d: (abs(d.total - anchor.total),
                                                           abs(d.day.day - anchor.day.day))))
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
    recent = sorted((d for d in days if 0 <= (today - d.day).days <= BIWEEKLY_MAX_AGE_DAYS),
                    key=lambda d: (-d.day.toordinal(), -d.total))
    for latest in recent:
        chain = [latest]
        while True:
            current = chain[-1]
            options = [d for d in days if BIWEEKLY_GAP[0] <= (current.day - d.day).days <= BIWEEKLY_GAP[1]
                       and within_amount(d.total, latest.total)]
            if not options:
                break
            chain.append(min(options, key=lambda d: (abs((current.day - d.day).days - 14),
                                                     abs(d.total - latest.total))))
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


def detect_income(days: Sequence[DayAmount], today: dt.date, horizon_days: int, lang: str = "ru",
                  currency: str = "RUB") -> IncomePlan:
    """Income from history (base currency, last 180 days): biweekly first (a biweekly series would also
    look monthly), then monthly streams; otherwise irregular (income seen, no reliable date: the expected
    income over the default horizon is the average monthly income × horizon ÷ 30); otherwise none.
    The plan's note is written in `lang`."""
    def m(value: Decimal) -> str:
        return texts.fmt_money(value, currency, lang)

    average = average_monthly_income(days, today)
    biweekly = detect_biweekly(days, today)
    if biweekly is not None:
        return IncomePlan("biweekly", (biweekly,), average_monthly=average,
                          note=texts.text(lang, "income.biweekly", amount=m(biweekly.amount)))
    monthly = detect_monthly(days, today)
    if monthly:
        described = ", ".join(texts.text(lang, "income.monthly_stream", amount=m(s.amount), day=s.day)
                              for s in monthly)
        return IncomePlan("monthly", tuple(monthly), average_monthly=average,
                          note=texts.text(lang, "income.monthly", streams=described))
    if days:
        return IncomePlan("irregular", amount_without_date=round_money(average * horizon_days / 30),
                          average_monthly=average, note=texts.text(lang, "income.irregular", amount=m(average)))
    return IncomePlan("none", note=texts.text(lang, "income.none"))


def apply_salary_inputs(detected: IncomePlan, inputs: FinancialInputs, today: dt.date,
                        horizon_days: int, lang: str = "ru", currency: str = "RUB") -> IncomePlan:
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
    if amount is None and date is None:
        return detected
    if date is not None:
        first = roll_forward_monthly(date, today, include_today=False)
        if amount is None:
            amount = (detected.amount_on(detected.next_date) if detected.next_date else detected.average_monthly)
        return IncomePlan("user_input", (IncomeStream("monthly", round_money(amount), date.day, first),),
                          average_monthly=detected.average_monthly,
                          note=texts.text(lang, "income.user_dated", amount=m(amount),
                                          date=texts.fmt_date(first, lang)))
    if detected.streams:
        factor = amount / detected.monthly_equivalent
        streams = tuple(dataclasses.replace(s, amount=round_money(s.amount * factor)) for s in detected.streams)
        return IncomePlan("user_input", streams, average_monthly=detected.average_monthly,
                          note=texts.text(lang, "income.user_scaled", amount=m(amount),
                                          schedule=texts.text(lang, f"schedule.{detected.source}")))
    return IncomePlan("user_input", amount_without_date=round_money(amount * horizon_days / 30),
                      average_monthly=detected.average_monthly,
                      note=texts.text(lang, "income.user_undated", amount=m(amount)))


# ================================================================================================ loans

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
        found, k = [], 0
        while True:
            when = self.first if k == 0 else add_months(self.first, k, self.day)
            if when > end:
                return found
            if when >= start:
                found.append(when)
            k += 1


@dataclasses.dataclass(frozen=True)
class LoanAnalysis:
    credit: CreditView
    repayments: Repayments | None
    outstanding: Decimal
    obligation: Obligation | None

    @property
    def active(self) -> bool:
        return self.credit.status.strip().lower() == "active"


def next_due_date(typical_day: int, last_paid_at: dt.datetime, today: dt.date) -> dt.date:
    """The loan's next due date: its typical day of this month (clamped to the month's length) when that is
    today or later and nothing was repaid yet this month, else the typical day of next month.
    (Refinement of "after today": a payment due today and not yet booked is still due; one already
    booked early this month is not counted twice.)"""
    paid = today_of(last_paid_at)
    this_month = month_day(today.year, today.month, typical_day)
    paid_this_month = (paid.year, paid.month) == (today.year, today.month)
    if this_month >= today and not paid_this_month:
        return this_month
    return month_day(today.year, today.month + 1, typical_day)


def outstanding_estimate(principal: Decimal, rate: Decimal | None, payment: Decimal | None, count: int,
                         total_repaid: Decimal) -> Decimal:
    """The banks publish no outstanding debt. With a rate and repayments: annuity amortisation
    B = P(1+i)^n − M((1+i)^n − 1)/i, i = rate/12/100, n = payments seen, M = the average payment
    (B = P − M·n at a zero rate). Otherwise P − total repaid. Clamped to [0, P], rounded to cents."""
    if rate is not None and payment is not None and count > 0:
        i = Decimal(rate) / 1200
        if i == 0:
            balance = principal - payment * count
        else:
            growth = (1 + i) ** count
            balance = principal * growth - payment * (growth - 1) / i
    else:
        balance = principal - total_repaid
    return round_money(min(max(balance, ZERO), principal))


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
    return Obligation(round_money(repayments.average), repayments.currency, repayments.typical_day,
                      next_due_date(repayments.typical_day, repayments.last_paid_at, today),
                      repayments.bank_id, repayments.agreement_id)


def analyse_loans(credits: Iterable[CreditView], repayments: dict[tuple[str, str], Repayments],
                  today: dt.date) -> list[LoanAnalysis]:
    """Every loan agreement, active or closed. Closed loans are listed with outstanding 0 and no payment
    due; active loans get the amortisation estimate and, when repayments are seen, an obligation."""
    result = []
    for credit in credits:
        if credit.product_type.strip().lower() != "loan":
            continue
        series = repayments.get((credit.bank_id, credit.agreement_id))
        active = credit.status.strip().lower() == "active"
        if not active:
            result.append(LoanAnalysis(credit, series, ZERO, None))
            continue
        outstanding = outstanding_estimate(credit.amount, credit.interest_rate,
                                           series.average if series else None, series.count if series else 0,
                                           series.total if series else ZERO)
        result.append(LoanAnalysis(credit, series, outstanding, obligation_of(series, today) if series else None))
    return result


def orphan_obligations(credits: Iterable[CreditView], repayments: dict[tuple[str, str], Repayments],
                       today: dt.date) -> list[Obligation]:
    """Repayments naming an agreement we do not have (no product consent at that bank) still leave the
    account every month: counted while the last one is at most 62 days old (refinement)."""
    known = {(c.bank_id, c.agreement_id) for c in credits}
    return [obligation_of(r, today) for key, r in repayments.items()
            if key not in known and (today - today_of(r.last_paid_at)).days <= ORPHAN_REPAYMENT_MAX_AGE_DAYS]


def apply_credit_inputs(detected: list[Obligation], inputs: FinancialInputs, base: str, today: dt.date,
                        horizon_end: dt.date, lang: str = "ru") -> tuple[list[Obligation], str]:
    """The user's credit payment inputs REPLACE the detected base-currency loan payments (in the forecast,
    the events, the loan summary and the debt load); loans in other currencies stay.

    - amount and date: one monthly payment on that date (rolled forward by whole months when past);
    - amount only: due on the earliest detected due date, else at the horizon (assumed due before it);
    - date only: the detected monthly total on that date; with nothing detected the input is ignored.
    It enters safe-to-spend only when its date falls within the horizon, like any payment."""
    amount, date = inputs.credit_payment_amount, inputs.credit_payment_date
    if amount is None and date is None:
        return detected, ""
    in_base = [o for o in detected if o.currency == base]
    others = [o for o in detected if o.currency != base]
    if amount is None:
        amount = sum((o.amount for o in in_base), ZERO)
        if amount == 0:
            return detected, texts.text(lang, "credit.ignored")
    if date is not None:
        first = roll_forward_monthly(date, today, include_today=True)
    else:
        first = min((o.first for o in in_base), default=horizon_end)
    user = Obligation(round_money(amount), base, (date or first).day, first)
    return [user, *others], texts.text(lang, "credit.replaces")


# ================================================================================================ loan facts

@dataclasses.dataclass(frozen=True)
class LoanFacts:
    """What the loans screen, the dashboard's loans[] and refinancing know of one loan agreement."""
    loan: LoanAnalysis
    kind: str  # consumer | mortgage | auto | other
    terms: LoanTerms
    schedule: Schedule | None  # None for a closed loan
    maturity: dt.date | None
    maturity_source: str  # agreement | estimated | ""
    priority: int = 0  # 1… for active loans, 0 for closed ones
    refi_candidate: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return self.loan.credit.bank_id, self.loan.credit.agreement_id


def loan_payment(loan: LoanAnalysis) -> Decimal | None:
    """The loan's monthly payment M: its average repayment seen, rounded half-up to cents (the same amount
    as its obligation); None when none was seen."""
    return round_money(loan.repayments.average) if loan.repayments is not None else None


def maturity(credit: CreditView, schedule: Schedule | None,
             obligation: Obligation | None) -> tuple[dt.date | None, str]:
    """When the loan ends: the agreement's end_date when present (source "agreement"); else the next due
    date + (remaining months − 1) months on the loan's typical day (source "estimated"); else unknown
    (None, "")."""
    if credit.end_date is not None:
        return credit.end_date, "agreement"
    if schedule is not None and schedule.months and obligation is not None:
        return add_months(obligation.first, schedule.months - 1, obligation.day), "estimated"
    return None, ""


def loan_facts(loans: Iterable[LoanAnalysis]) -> list[LoanFacts]:
    """Kind (`refinance.loan_kind` of the product name), remaining schedule of active loans
    (`refinance.remaining_schedule` of the outstanding estimate, the rate and the payment seen), maturity
    (`maturity`); priority and refinancing come later."""
    found = []
    for loan in loans:
        c = loan.credit
        kind = refinance.loan_kind(c.product_name)
        payment = loan_payment(loan)
        schedule = refinance.remaining_schedule(loan.outstanding, c.interest_rate, payment) if loan.active else None
        terms = LoanTerms(c.bank_id, c.agreement_id, c.product_name, kind, c.currency, loan.outstanding,
                          None if c.interest_rate is None else Decimal(c.interest_rate), payment,
                          schedule or Schedule(None, None, c.interest_rate is not None, "closed"))
        when, source = maturity(c, schedule, loan.obligation)
        found.append(LoanFacts(loan, kind, terms, schedule, when, source))
    return found


def repayment_order(facts: Iterable[LoanFacts], strategy: str) -> dict[tuple[str, str], int]:
    """Priority 1, 2, … of the active loans (closed ones: 0, not listed here), by the user's strategy:
    avalanche = rate descending (unknown rate last), ties smaller outstanding first;
    snowball = outstanding ascending, ties higher rate first (unknown rate last);
    final tie-break bank id, then agreement id."""
    active = [f for f in facts if f.loan.active]

    def rate_desc(f: LoanFacts) -> tuple[int, Decimal]:
        rate = f.loan.credit.interest_rate
        return (1, ZERO) if rate is None else (0, -Decimal(rate))

    if strategy == "snowball":
        key = lambda f: (f.loan.outstanding, *rate_desc(f), *f.key)  # noqa: E731
    else:
        key = lambda f: (*rate_desc(f), f.loan.outstanding, *f.key)  # noqa: E731
    return {f.key: position for position, f in enumerate(sorted(active, key=key), start=1)}


def missed_previous_month(loan: LoanAnalysis, today: dt.date) -> dt.date | None:
    """The first day of the previous complete calendar month when an active loan with debt left had no
    repayment in it though it started before that month (months from `months_paid`: the months the
    repayments were booked in when known); else None. A loan without a start date is not judged. (The
    bank API shows no overdue amount: this replaces the old "overdue".)"""
    if not loan.active or loan.outstanding <= 0 or loan.credit.start_date is None:
        return None
    previous = month_day(today.year, today.month - 1, 1)
    if loan.credit.start_date >= previous:
        return None
    index = month_index(previous)
    return previous if months_paid(loan.repayments, range(index, index + 1)) == 0 else None


# ================================================================================================ events

def event(when: dt.date, kind: str, amount: Decimal, currency: str, *, bank_id: str | None = None,
          agreement_id: str | None = None, lang: str = "ru") -> dict[str, Any]:
    """An Event as the seed shapes it (`amount` a number) plus the exact amount and its currency; the
    description in `lang` (ru "Получение зарплаты" / "Платеж по кредиту")."""
    entry: dict[str, Any] = {
        "date": when.isoformat(), "type": kind, "amount": legacy(amount),
        "description": texts.text(lang, "event.salary" if kind == "salary" else "event.loan_payment"),
        "amount_exact": money(amount), "currency": currency,
    }
    if agreement_id is not None:
        entry["agreement_id"] = agreement_id
    if bank_id is not None:
        entry["bank_id"] = bank_id
    return entry


def obligation_events(obligations: Iterable[Obligation], start: dt.date, end: dt.date,
                      currency: str | None = None, lang: str = "ru") -> list[dict[str, Any]]:
    """Loan payments due in [start, end] (only `currency` when given), by date."""
    items = [event(when, "loan_payment", o.amount, o.currency, bank_id=o.bank_id, agreement_id=o.agreement_id,
                   lang=lang)
             for o in obligations if currency is None or o.currency == currency
             for when in o.occurrences(start, end)]
    return sorted(items, key=lambda e: (e["date"], e.get("bank_id") or "", e.get("agreement_id") or ""))


def events_next_30d(plan: IncomePlan, obligations: Iterable[Obligation], base: str,
                    today: dt.date, lang: str = "ru") -> list[dict[str, Any]]:
    """Expected income dates (type "salary", with the expected amount) and loan due dates in
    [today, today + 30], sorted by date (income first on a tie), at most 20. Irregular income has no
    date and gives no event."""
    end = today + dt.timedelta(days=EVENTS_DAYS)
    incomes = [event(when, "salary", s.amount, base, lang=lang)
               for s in plan.streams for when in s.occurrences(today, end)]
    items = incomes + obligation_events(obligations, today, end, lang=lang)
    items.sort(key=lambda e: (e["date"], e["type"] != "salary"))
    return items[:EVENTS_MAX]


# ================================================================================================ STS

def per_day(available: Decimal, days: int) -> Decimal:
    """max(0, available ÷ days), ROUND_DOWN to cents: never overstated."""
    return max(ZERO, available / max(days, 1)).quantize(CENT, rounding=ROUND_DOWN)


def spendable_balance(accounts: Iterable[AccountView], base: str) -> Decimal:
    """Σ available of the spendable accounts (see `is_spendable_account`)."""
    return sum((a.available for a in accounts if is_spendable_account(a, base)), ZERO)


def excluded_balances(accounts: Iterable[AccountView], base: str) -> list[dict[str, str]]:
    """Non-loan balances in other currencies: shown per currency, not converted, not in safe-to-spend."""
    return sum_by_currency(((a.currency, a.available) for a in accounts
                            if not is_loan_account(a) and a.currency != base and a.available is not None), base)


def safe_to_spend(data: DashboardData, plan: IncomePlan, obligations: list[Obligation], credit_note: str,
                  today: dt.date, lang: str = "ru") -> dict[str, Any]:
    """Safe-to-spend per day until the next income.

    horizon = the next income date, or today + config.horizon_days_without_income when it is unknown;
    days_left = days from today (exclusive) to the horizon (inclusive), at least 1;
    mandatory = base-currency loan payments due in [today, horizon];
    per day = max(0, (spendable − mandatory − buffer) ÷ days_left), ROUND_DOWN.
    Status DANGER when spendable < mandatory + buffer (the shortfall is named), when no income is
    expected, or when there is no bank data at all; else OK.
    Tomorrow: the same figure, unless income is expected tomorrow; then (spendable − mandatory + that
    income − payments of the next cycle − buffer) ÷ the next cycle's days (tomorrow to the following
    income), impact "После завтрашнего дохода" (else "Стабильный прогноз"). Texts in `lang`."""
    config = data.config
    base = config.base_currency
    spendable = spendable_balance(data.accounts, base)
    buffer = config.safety_buffer
    next_date = plan.next_date
    horizon = next_date or today + dt.timedelta(days=config.horizon_days_without_income)
    days_left = max(1, (horizon - today).days)
    items = obligation_events(obligations, today, horizon, base, lang=lang)
    mandatory = sum((Decimal(i["amount_exact"]) for i in items), ZERO)
    left = spendable - mandatory - buffer
    amount = per_day(left, days_left)
    expected_income = plan.amount_on(next_date) if next_date else plan.amount_without_date
    spent = sum((c.total for c in data.spent_today if c.currency == base), ZERO)

    def m(value: Decimal) -> str:
        return texts.fmt_money(round_money(value), base, lang)

    reasons = []
    until = (texts.text(lang, "sts.until_income", date=texts.fmt_date(next_date, lang)) if next_date
             else texts.text(lang, "sts.until_default"))
    working = texts.text(lang, "sts.working", spendable=m(spendable), mandatory=m(mandatory), buffer=m(buffer),
                         left=m(left), days=texts.fmt_days(days_left, lang), until=until, amount=m(amount))
    if not data.accounts:
        status, reasons = "DANGER", [texts.text(lang, "sts.no_data")]
    else:
        if left < 0:
            reasons.append(texts.text(lang, "sts.shortfall", shortfall=m(-left), spendable=m(spendable),
                                      mandatory=m(mandatory), buffer=m(buffer)))
        if plan.source == "none":
            reasons.append(texts.text(lang, "sts.no_income", days=texts.fmt_days(days_left, lang)))
        status = "DANGER" if reasons else "OK"
        reasons.append(working)
        reasons.append(texts.text(lang, "sts.income", note=plan.note))
        if credit_note:
            reasons.append(credit_note)

    tomorrow = today + dt.timedelta(days=1)
    tomorrow_amount, impact = amount, texts.text(lang, "impact.stable")
    if next_date == tomorrow and data.accounts:
        following = plan.next_after(tomorrow) or tomorrow + dt.timedelta(days=config.horizon_days_without_income)
        next_cycle = sum((o.amount for o in obligations if o.currency == base
                          for _ in o.occurrences(tomorrow + dt.timedelta(days=1), following)), ZERO)
        tomorrow_amount = per_day(spendable - mandatory + expected_income - next_cycle - buffer,
                                  (following - tomorrow).days)
        impact = texts.text(lang, "impact.income_tomorrow")

    detail: dict[str, Any] = {
        "amount_per_day": money(amount), "currency": base, "spendable_balance": money(spendable),
        "expected_income": money(expected_income), "income_source": plan.source,
        "mandatory_payments": money(mandatory), "mandatory_items": items, "safety_buffer": money(buffer),
        "days_left": days_left, "status": status, "reason": "; ".join(reasons), "spent_today": money(spent),
        "excluded_balances": excluded_balances(data.accounts, base),
    }
    if next_date:
        detail["next_income_date"] = next_date.isoformat()
    return {"amount": legacy(amount), "spent": legacy(spent),
            "tomorrow": {"amount": legacy(tomorrow_amount), "impact": impact}, "detail": detail}


# ================================================================================================ summaries

def loans_speed(goals: Goals) -> str:
    """The user's loans speed: conservative | optimal | fast (any case); missing or unknown: optimal."""
    speed = (goals.loans_speed or "").strip().lower()
    return speed if speed in SPEED_SHARES else DEFAULT_SPEED


def loan_strategy(goals: Goals) -> str:
    """The user's repayment strategy: avalanche | snowball (any case); missing or unknown: avalanche."""
    strategy = (goals.loan_strategy or "").strip().lower()
    return strategy if strategy in STRATEGIES else DEFAULT_STRATEGY


@dataclasses.dataclass(frozen=True)
class LoanFigures:
    """The loan summary's exact figures (base currency)."""
    outstanding: Decimal
    monthly: Decimal
    mdp: Decimal
    adp: Decimal
    adp_uncapped: Decimal  # MDP × share, before the safe-to-spend cap
    capped: bool  # the safe-to-spend cap applied
    sts_per_day: Decimal
    speed: str
    share: Decimal
    strategy: str
    currency: str


def additional_daily_payment(mdp: Decimal, share: Decimal, sts_per_day: Decimal) -> tuple[Decimal, Decimal, bool]:
    """ADP = MDP × the speed's share (conservative 0.05, optimal 0.20, fast 0.40: the app's "+5 / +20 /
    +40 % on top of mandatory payments"), ROUND_HALF_UP to cents, never more than today's safe-to-spend
    per day (the money that can be spared); 0 when there is no mandatory payment.
    Returns (ADP, MDP × share, whether the cap applied)."""
    if mdp <= 0:
        return Decimal("0.00"), Decimal("0.00"), False
    wanted = round_money(mdp * share)
    if wanted > sts_per_day:
        return round_money(max(sts_per_day, ZERO)), wanted, True
    return wanted, wanted, False


def loan_figures(loans: list[LoanAnalysis], obligations: list[Obligation], base: str, goals: Goals,
                 sts_per_day: Decimal) -> LoanFigures:
    """Loan numbers (base currency):
    total_outstanding = Σ outstanding estimates of active loans; monthly = Σ monthly payments (the
    obligations: detected average repayments, or the user's credit payment);
    MDP = monthly ÷ 30 (cents, half-up); ADP by `additional_daily_payment` with the user's speed."""
    outstanding = sum((l.outstanding for l in loans if l.active and l.credit.currency == base), ZERO)
    monthly = sum((o.amount for o in obligations if o.currency == base), ZERO)
    mdp = round_money(monthly / DAYS_PER_MONTH)
    speed = loans_speed(goals)
    share = SPEED_SHARES[speed]
    adp, uncapped, capped = additional_daily_payment(mdp, share, sts_per_day)
    return LoanFigures(round_money(outstanding), round_money(monthly), mdp, adp, uncapped, capped, sts_per_day,
                       speed, share, loan_strategy(goals), base)


def adp_explanation(f: LoanFigures, lang: str) -> str:
    """How the additional payment was chosen, in `lang`: the speed and its share, MDP × share, whether the
    safe-to-spend cap applied, and where the strategy sends the extra money."""
    if f.mdp <= 0:
        return texts.text(lang, "adp.none")

    def m(value: Decimal) -> str:
        return texts.fmt_money(value, f.currency, lang)

    params = dict(speed=texts.text(lang, f"speed.{f.speed}"), percent=texts.fmt_percent(f.share * 100, lang),
                  mdp=m(f.mdp), share=texts.fmt_number(f.share, lang, 2), adp=m(f.adp),
                  strategy=texts.text(lang, f"strategy.{f.strategy}"))
    if f.capped:
        return texts.text(lang, "adp.capped", raw=m(f.adp_uncapped), sts=m(f.sts_per_day), **params)
    return texts.text(lang, "adp.share", **params)


def loan_summary_detail(f: LoanFigures, lang: str) -> dict[str, str]:
    """The LoanSummaryDetail: exact strings, speed, share ("0.05" / "0.20" / "0.40"), strategy, explanation."""
    return {"total_outstanding": money(f.outstanding), "monthly_payments": money(f.monthly),
            "mandatory_daily_payment": money(f.mdp), "additional_daily_payment": money(f.adp),
            "speed": f.speed, "additional_share": f"{f.share:f}", "strategy": f.strategy,
            "explanation": adp_explanation(f, lang), "currency": f.currency}


def loan_summary(f: LoanFigures, lang: str = "ru") -> dict[str, Any]:
    """Legacy loan numbers plus the detail. total_monthly_payment = MDP × 30 as the seed defines it (so it
    can differ from the exact monthly sum, `detail.monthly_payments`, by a few cents)."""
    return {"total_outstanding": legacy(f.outstanding), "mandatory_daily_payment": legacy(f.mdp),
            "additional_daily_payment": legacy(f.adp), "total_monthly_payment": legacy(f.mdp * DAYS_PER_MONTH),
            "detail": loan_summary_detail(f, lang)}


def deposits_total(credits: Iterable[CreditView], base: str) -> Decimal:
    """Active deposits in the base currency: their amount counts as savings."""
    return sum((c.amount for c in credits if c.product_type.strip().lower() == "deposit"
                and c.status.strip().lower() == "active" and c.currency == base), ZERO)


def savings_summary(data: DashboardData, today: dt.date) -> dict[str, float]:
    """total_saved = active deposits + Savings-account balances (base currency);
    target = the goal's target amount when positive, else config.default_savings_target;
    daily_payment = (target − saved) ÷ days to the goal's date when both are known and positive (rounded
    up to cents, so the target is reached); 0 when the target is already reached (refinement); else
    config.default_savings_daily. A goal without a date but with `horizon_months` is due
    horizon_months × 30 days from today (the app's 12- or 24-month horizon, counted in 30-day months);
    target stays > 0 always;
    progress_percent = saved ÷ target × 100, one decimal, within [0, 100]."""
    base = data.config.base_currency
    saved = deposits_total(data.credits, base) + sum(
        (a.available for a in data.accounts
         if a.sub_type.strip().lower() == "savings" and a.currency == base and a.available is not None), ZERO)
    goal = data.goals.target_amount
    target = goal if goal is not None and goal > 0 else data.config.default_savings_target
    remaining = target - saved
    if data.goals.target_date:
        days = (data.goals.target_date - today).days
    elif data.goals.horizon_months and data.goals.horizon_months > 0:
        days = data.goals.horizon_months * 30
    else:
        days = 0
    if remaining <= 0:
        daily = ZERO
    elif goal is not None and goal > 0 and days > 0:
        daily = (remaining / days).quantize(CENT, rounding=ROUND_UP)
    else:
        daily = data.config.default_savings_daily
    progress = min(HUNDRED, max(ZERO, saved / target * HUNDRED)) if target > 0 else HUNDRED
    return {"total_saved": legacy(saved), "daily_payment": legacy(daily), "target": legacy(target),
            "progress_percent": float(one_decimal(progress))}


def debit_cards_balance(accounts: Iterable[AccountView], base: str) -> Decimal:
    """Σ available of current accounts ("Checking", also "Current") in the base currency: the accounts
    the debit cards draw on."""
    return sum((a.available for a in accounts if a.sub_type.strip().lower() in ("checking", "current")
                and a.currency == base and a.available is not None), ZERO)


def balances(accounts: Iterable[AccountView], base: str) -> list[dict[str, Any]]:
    """Every account with its balance; `spendable` tells whether it is in safe-to-spend."""
    rows = []
    for a in accounts:
        row: dict[str, Any] = {"bank_id": a.bank_id, "bank_name": a.bank_name, "account_id": a.account_id,
                               "account_type": a.sub_type, "nickname": a.nickname, "currency": a.currency,
                               "spendable": is_spendable_account(a, base)}
        if a.available is not None:
            row["available"] = money(a.available)
        rows.append(row)
    return rows


def loan_rows(facts: list[LoanFacts], bank_name: Callable[[str], str], lang: str = "ru") -> list[dict[str, Any]]:
    """Every loan agreement (active and closed, in the banks' order) with the repayments seen, its bank's
    name, kind and type (in `lang`), maturity, priority, refinancing flag, remaining months and status."""
    rows = []
    for f in facts:
        loan = f.loan
        c, r = loan.credit, loan.repayments
        row: dict[str, Any] = {"bank_id": c.bank_id, "agreement_id": c.agreement_id, "name": c.product_name,
                               "principal": money(c.amount), "outstanding_estimate": money(loan.outstanding),
                               "payments_seen": r.count if r else 0, "currency": c.currency,
                               "bank_name": bank_name(c.bank_id), "kind": f.kind,
                               "type": refinance.loan_type_label(f.kind, lang),
                               "maturity_source": f.maturity_source, "priority": f.priority,
                               "is_refi_candidate": f.refi_candidate, "status": c.status}
        if c.interest_rate is not None:
            row["interest_rate"] = f"{Decimal(c.interest_rate):f}"
        if r is not None:
            row["monthly_payment"] = money(r.average)
        if loan.obligation is not None:
            row["next_due_date"] = loan.obligation.first.isoformat()
        if f.maturity is not None:
            row["maturity_date"] = f.maturity.isoformat()
        if f.schedule is not None and f.schedule.months is not None:
            row["remaining_months"] = f.schedule.months
        rows.append(row)
    return rows


def is_deposit(credit: CreditView) -> bool:
    return credit.product_type.strip().lower() == "deposit"


def catalogue_product(credit: CreditView, products: Iterable[ProductView]) -> ProductView | None:
    """The catalogue product with the agreement's bank_id and product_id (None without a product id)."""
    if not credit.product_id:
        return None
    return next((p for p in products if p.bank_id == credit.bank_id and p.product_id == credit.product_id), None)


def deposit_term(credit: CreditView, products: Iterable[ProductView]) -> int | None:
    """A deposit's term in months: its catalogue product's term_months (`catalogue_product`), else unknown."""
    product = catalogue_product(credit, products)
    if product is None or product.term_months is None or product.term_months <= 0:
        return None
    return product.term_months


def deposit_maturity(credit: CreditView, term: int | None) -> dt.date | None:
    """When a deposit ends: the agreement's end_date, else start_date + term months, else unknown."""
    if credit.end_date is not None:
        return credit.end_date
    if credit.start_date is not None and term is not None:
        return add_months(credit.start_date, term)
    return None


def deposit_rows(credits: Iterable[CreditView], products: Sequence[ProductView] = (),
                 bank_name: Callable[[str], str] = lambda bank_id: bank_id) -> list[dict[str, Any]]:
    """Every deposit agreement with its bank's name, term (catalogue), maturity and status."""
    rows = []
    for c in credits:
        if not is_deposit(c):
            continue
        row: dict[str, Any] = {"bank_id": c.bank_id, "agreement_id": c.agreement_id, "name": c.product_name,
                               "amount": money(c.amount), "currency": c.currency, "bank_name": bank_name(c.bank_id),
                               "status": c.status}
        if c.interest_rate is not None:
            row["interest_rate"] = f"{Decimal(c.interest_rate):f}"
        term = deposit_term(c, products)
        if term is not None:
            row["term_months"] = term
        ends = deposit_maturity(c, term)
        if ends is not None:
            row["maturity_date"] = ends.isoformat()
        rows.append(row)
    return rows


def card_rows(credits: Iterable[CreditView]) -> list[dict[str, Any]]:
    """Cards: `amount` is the limit (0 for a debit card), never debt (the API has no card debt)."""
    rows = []
    for c in credits:
        if c.product_type.strip().lower() != "card":
            continue
        row: dict[str, Any] = {"bank_id": c.bank_id, "agreement_id": c.agreement_id, "name": c.product_name,
                               "limit": money(c.amount), "currency": c.currency}
        if c.account_balance is not None:
            row["linked_balance"] = money(c.account_balance)
        rows.append(row)
    return rows


def last_transactions(data: DashboardData) -> list[dict[str, Any]]:
    rows = []
    for t in data.recent_transactions[:10]:
        row: dict[str, Any] = {"bank_id": t.bank_id, "account_id": t.account_id, "transaction_id": t.transaction_id,
                               "booking_time": iso_datetime(t.booking_time), "amount": money(t.signed_amount),
                               "currency": t.currency, "description": t.description}
        if t.category is not None:
            row["category"] = t.category
        rows.append(row)
    return rows


def spending_by_category(data: DashboardData) -> list[dict[str, Any]]:
    """The last 30 days' debits per category and currency, largest total first."""
    ordered = sorted(data.spending_30d, key=lambda c: (-c.total, c.category, c.currency))
    return [{"category": c.category, "total": money(c.total), "currency": c.currency, "count": c.count}
            for c in ordered]


def bank_statuses(data: DashboardData) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per bank (every bank in data.banks): status, last successful sync, last error; and its freshness,
    only for banks with a last successful sync (a never-synced bank has no age: leaving it out keeps
    `age_minutes`, added by the service at answer time, always a number; bank_statuses says why)."""
    statuses, freshness = [], []
    for b in data.banks:
        status: dict[str, Any] = {"bank_id": b.bank_id, "bank_name": b.bank_name, "status": b.status}
        if b.last_success_at is not None:
            status["fetched_at"] = iso_datetime(b.last_success_at)
            freshness.append({"bank_id": b.bank_id, "fetched_at": status["fetched_at"]})
        if b.last_error:
            status["error"] = b.last_error
        statuses.append(status)
    return statuses, freshness


def bank_data_notes(data: DashboardData, lang: str = "ru") -> list[str]:
    """One line per connected bank whose data is missing or stale, saying why (for people): a bank whose
    last sync failed (`error`: the bank fails or refuses, with its message and the last data's time) or
    whose consent needs renewing (`needs_reconsent`). The figures then come from the other banks (and
    the failing bank's last stored data), so the answer says so instead of a silent 0."""
    notes = []
    for b in data.banks:
        if b.status not in ("error", "needs_reconsent"):
            continue
        since = (texts.text(lang, "bank.last_data", when=texts.fmt_datetime(b.last_success_at, lang))
                 if b.last_success_at else texts.text(lang, "bank.no_data_yet"))
        key = "bank.reconsent" if b.status == "needs_reconsent" else "bank.failing"
        notes.append(texts.text(lang, key, bank=b.bank_name or b.bank_id, error=(b.last_error or "")[:300],
                                since=since))
    return notes


def totals_by_currency(accounts: Iterable[AccountView], base: str) -> list[dict[str, str]]:
    """Totals per currency of the account balances, Loan accounts left out (their balance is disbursed
    loan money, not the user's: counting it doubled a user's total)."""
    return sum_by_currency(((a.currency, a.available) for a in accounts
                            if a.available is not None and not is_loan_account(a)), base)


def bank_name_of(data: DashboardData) -> Callable[[str], str]:
    """Bank id -> display name: data.bank_names, else the name in data.banks, else in the accounts, else
    the id."""
    names: dict[str, str] = {}
    for a in data.accounts:
        if a.bank_name:
            names.setdefault(a.bank_id, a.bank_name)
    for b in data.banks:
        if b.bank_name:
            names[b.bank_id] = b.bank_name
    for bank_id, name in data.bank_names.items():
        if name:
            names[bank_id] = name
    return lambda bank_id: names.get(bank_id) or bank_id


def user_mode(loans: list[LoanAnalysis]) -> str:
    """"loans" when any active loan's outstanding estimate is above 0, else "deposits"."""
    return "loans" if any(l.active and l.outstanding > 0 for l in loans) else "deposits"


# ================================================================================================ health

@dataclasses.dataclass(frozen=True)
class MonthlyAverages:
    months: int
    income: Decimal
    spending: Decimal


def complete_month_averages(cash_flow: Iterable[MonthFlow], base: str, today: dt.date) -> MonthlyAverages:
    """Average income and spending (base currency) over the last 3 complete calendar months that have
    data (the current month is incomplete and left out). Gross flows as aggregated by sync: all credits,
    all debits."""
    current = month_index(today)
    months: dict[int, tuple[Decimal, Decimal]] = {}
    for row in cash_flow:
        m = month_index(row.month)
        if row.currency == base and current - HEALTH_MONTHS <= m < current:
            income, spending = months.get(m, (ZERO, ZERO))
            months[m] = (income + row.income, spending + abs(row.spending))
    if not months:
        return MonthlyAverages(0, ZERO, ZERO)
    n = len(months)
    return MonthlyAverages(n, sum((v[0] for v in months.values()), ZERO) / n,
                           sum((v[1] for v in months.values()), ZERO) / n)


def component(name: str, score: Decimal | None, inputs: dict[str, str], explanation: str,
              missing: list[str]) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "inputs": inputs, "explanation": explanation}
    if score is not None:
        entry["score"] = float(one_decimal(score))
    return {"entry": entry, "missing": missing, "score": None if score is None else one_decimal(score)}


def score_spend_vs_income(flow: MonthlyAverages, lang: str = "ru") -> dict[str, Any]:
    """Spending ÷ income over the last 3 complete months: ≤ 70 % → 100, ≥ 120 % → 0, linear between."""
    inputs = {"months": str(flow.months), "income_monthly_avg": money(flow.income),
              "spending_monthly_avg": money(flow.spending)}
    if flow.months == 0 or flow.income <= 0:
        missing = ["monthly_income"] + (["monthly_spending"] if flow.months == 0 else [])
        return component("spend_vs_income", None, inputs, texts.text(lang, "health.spend.none"), missing)
    ratio = flow.spending / flow.income
    inputs["spending_to_income"] = ratio_text(ratio)
    score = interpolate(ratio, [(Decimal("0.7"), HUNDRED), (Decimal("1.2"), ZERO)])
    return component("spend_vs_income", score, inputs,
                     texts.text(lang, "health.spend", ratio=texts.fmt_percent(one_decimal(ratio * 100), lang, 1)), [])


def score_liquid_savings(has_accounts: bool, liquid: Decimal, spendable: Decimal, deposits: Decimal,
                         flow: MonthlyAverages, lang: str = "ru") -> dict[str, Any]:
    """(spendable + deposits) ÷ average monthly spending, in months: 0 → 0, 1 → 40, 3 → 75, ≥ 6 → 100,
    linear between."""
    inputs = {"spendable_balance": money(spendable), "deposits": money(deposits), "liquid_total": money(liquid),
              "spending_monthly_avg": money(flow.spending)}
    missing = (([] if has_accounts else ["balances"])
               + ([] if flow.months and flow.spending > 0 else ["monthly_spending"]))
    if missing:
        return component("liquid_savings", None, inputs, texts.text(lang, "health.liquid.none"), missing)
    months = liquid / flow.spending
    inputs["months_of_spending"] = ratio_text(months)
    score = interpolate(months, [(ZERO, ZERO), (Decimal(1), Decimal(40)), (Decimal(3), Decimal(75)),
                                 (Decimal(6), HUNDRED)])
    return component("liquid_savings", score, inputs,
                     texts.text(lang, "health.liquid", months=texts.fmt_decimal(one_decimal(months), lang, 1)), [])


def score_debt_load(has_accounts: bool, loans: list[LoanAnalysis], monthly_payments: Decimal,
                    flow: MonthlyAverages, base: str, lang: str = "ru") -> dict[str, Any]:
    """Monthly loan payments ÷ monthly income: ≤ 10 % → 100, ≥ 50 % → 0, linear; no loans → 100."""
    inputs = {"loan_payments_monthly": money(monthly_payments), "income_monthly_avg": money(flow.income)}
    if not has_accounts:
        return component("debt_load", None, inputs, texts.text(lang, "health.no_bank_data"), ["bank_data"])
    has_debt = any(l.active and l.outstanding > 0 and l.credit.currency == base for l in loans)
    if monthly_payments <= 0:
        if has_debt:
            return component("debt_load", None, inputs, texts.text(lang, "health.debt.unseen"), ["loan_payments"])
        return component("debt_load", HUNDRED, inputs, texts.text(lang, "health.debt.none"), [])
    if flow.months == 0 or flow.income <= 0:
        return component("debt_load", None, inputs, texts.text(lang, "health.debt.no_income"), ["monthly_income"])
    ratio = monthly_payments / flow.income
    inputs["debt_to_income"] = ratio_text(ratio)
    score = interpolate(ratio, [(Decimal("0.1"), HUNDRED), (Decimal("0.5"), ZERO)])
    return component("debt_load", score, inputs,
                     texts.text(lang, "health.debt", ratio=texts.fmt_percent(one_decimal(ratio * 100), lang, 1)), [])


def months_paid(repayments: Repayments | None, window: range) -> int:
    """Months of `window` (month indexes) with a repayment, from the months the repayments were booked
    in. When those are not known (only the count and the last payment), the repayments are assumed to
    be on consecutive months ending with the last payment's month: a loan whose payments stopped
    loses the recent months, but a month missed in the middle goes unseen."""
    if repayments is None or repayments.count <= 0:
        return 0
    if repayments.months:
        return len({month_index(m) for m in repayments.months} & set(window))
    last = month_index(today_of(repayments.last_paid_at))
    paid = range(last - repayments.count + 1, last + 1)
    return len(set(paid) & set(window))


def score_on_time(has_accounts: bool, loans: list[LoanAnalysis], today: dt.date, lang: str = "ru") -> dict[str, Any]:
    """For each active loan: of the last min(6, complete months since its start) complete months, the
    share with a repayment (see `months_paid`); pooled over loans × 100. No loans (or none due yet) → 100."""
    if not has_accounts:
        return component("on_time_repayments", None, {}, texts.text(lang, "health.no_bank_data"), ["bank_data"])
    current = month_index(today)
    expected = paid = 0
    inputs: dict[str, str] = {}
    for loan in loans:
        if not loan.active:
            continue
        since = month_index(loan.credit.start_date) if loan.credit.start_date else current - ON_TIME_MAX_MONTHS - 1
        months = min(ON_TIME_MAX_MONTHS, max(0, current - since - 1))
        if months == 0:
            continue
        got = months_paid(loan.repayments, range(current - months, current))
        inputs[loan.credit.agreement_id] = f"{got}/{months}"
        expected, paid = expected + months, paid + got
    inputs["months_expected"], inputs["months_paid"] = str(expected), str(paid)
    if expected == 0:
        return component("on_time_repayments", HUNDRED, inputs, texts.text(lang, "health.on_time.none_due"), [])
    share = Decimal(paid) / Decimal(expected)
    return component("on_time_repayments", share * HUNDRED, inputs,
                     texts.text(lang, "health.on_time", paid=paid, expected=expected), [])


def health_status(value: Decimal) -> str:
    """excellent ≥ 80, good ≥ 60, fair ≥ 40, else poor."""
    if value >= 80:
        return "excellent"
    if value >= 60:
        return "good"
    if value >= 40:
        return "fair"
    return "poor"


def health_score(parts: list[dict[str, Any]], lang: str = "ru") -> dict[str, Any]:
    """The mean of the available sub-scores (as shown, one decimal), one decimal; 0 and "poor" when none
    is available. `reasons` (in `lang`): one line per weak sub-score (< 60), or what is missing when
    nothing is available; `missing_inputs`: the missing inputs' names (codes), once each."""
    scores = [p["score"] for p in parts if p["score"] is not None]
    value = one_decimal(sum(scores, ZERO) / len(scores)) if scores else Decimal("0.0")
    missing: list[str] = []
    for p in parts:
        missing += [m for m in p["missing"] if m not in missing]
    reasons = [texts.text(lang, "health.reason", label=texts.text(lang, f"health.label.{p['entry']['name']}"),
                          score=texts.fmt_number(p["score"], lang, 1),
                          weak=texts.text(lang, f"health.weak.{p['entry']['name']}"),
                          explanation=p["entry"]["explanation"])
               for p in parts if p["score"] is not None and p["score"] < 60]
    if not scores:
        reasons.append(texts.text(lang, "health.not_enough",
                                  missing=", ".join(texts.text(lang, f"health.missing.{m}") for m in missing)))
    return {"value": float(value), "status": health_status(value), "reasons": reasons,
            "components": [p["entry"] for p in parts], "missing_inputs": missing}


# ================================================================================================ compute


def financing_triggers(facts: Sequence[LoanFacts], single_offers: Sequence[Offer], sts: dict[str, Any],
                       has_accounts: bool, flow: MonthlyAverages, monthly_payments: Decimal, base: str,
                       today: dt.date, bank_name: Callable[[str], str], lang: str) -> list[dict[str, Any]]:
    """The financing-need triggers, in this order (none at all without an active loan with debt):
    - missed_payment (high), per loan in priority order: `missed_previous_month`;
    - gap_risk (high): safe-to-spend has a shortfall (spendable < mandatory payments + safety buffer),
      with bank data only;
    - high_dti (medium): DTI = the obligations' monthly sum (base currency) ÷ the health score's average
      monthly income of the last 3 complete months > 0.5 (not computed without income: no trigger);
    - refi_opportunity (watch), per candidate loan in priority order with its best single-loan offer's
      total saving, only when no payment was missed (a lender will not refinance a loan in arrears)."""
    active = sorted((f for f in facts if f.loan.active and f.loan.outstanding > 0), key=lambda f: f.priority)
    if not active:
        return []
    found = []
    missed = [(f, month) for f in active if (month := missed_previous_month(f.loan, today)) is not None]
    for f, month in missed:
        found.append(refinance.missed_payment_trigger(f.terms, month, bank_name(f.terms.bank_id), lang))
    detail = sts["detail"]
    spendable, mandatory, buffer = (Decimal(detail["spendable_balance"]), Decimal(detail["mandatory_payments"]),
                                    Decimal(detail["safety_buffer"]))
    if has_accounts and spendable < mandatory + buffer:
        until = (dt.date.fromisoformat(detail["next_income_date"]) if "next_income_date" in detail
                 else today + dt.timedelta(days=detail["days_left"]))
        ids = sorted({i["agreement_id"] for i in detail["mandatory_items"] if i.get("agreement_id")})
        found.append(refinance.gap_risk_trigger(spendable, mandatory, buffer, until, base, ids, lang))
    ratio = refinance.debt_to_income(monthly_payments, flow.income if flow.months else None)
    if ratio is not None and ratio > refinance.DTI_LIMIT:
        ids = [f.terms.agreement_id for f in active if f.terms.currency == base]
        found.append(refinance.high_dti_trigger(round_money(monthly_payments), round_money(flow.income), ratio, base,
                                                ids, lang))
    if not missed:
        best = refinance.best_offer_by_loan(single_offers)
        for f in active:
            if f.key in best:
                offer = best[f.key]
                found.append(refinance.refi_trigger(f.terms, offer, bank_name(f.terms.bank_id),
                                                    bank_name(offer.bank_id), lang))
    return found


def loan_item(f: LoanFacts, bank_name: Callable[[str], str], lang: str) -> dict[str, Any]:
    """A LoanItem of the loans route: numbers from the rounded Decimals (rate ≤ 2 decimals, 0 when unknown;
    monthly payment 0 when none was seen), exact strings beside them."""
    loan, c = f.loan, f.loan.credit
    payment = loan_payment(loan)
    item: dict[str, Any] = {
        "id": c.agreement_id, "bank": bank_name(c.bank_id), "type": refinance.loan_type_label(f.kind, lang),
        "balance": legacy(loan.outstanding),
        "rate": refinance.rate_number(c.interest_rate) if c.interest_rate is not None else 0.0,
        "monthly_payment": legacy(payment) if payment is not None else 0.0, "priority": f.priority,
        "is_refi_candidate": f.refi_candidate, "bank_id": c.bank_id, "currency": c.currency,
        "balance_exact": money(loan.outstanding), "kind": f.kind, "maturity_source": f.maturity_source,
    }
    if f.maturity is not None:
        item["maturity_date"] = f.maturity.isoformat()
    if c.interest_rate is not None:
        item["rate_exact"] = f"{Decimal(c.interest_rate):f}"
    if payment is not None:
        item["monthly_payment_exact"] = money(payment)
    if loan.obligation is not None:
        item["next_due_date"] = loan.obligation.first.isoformat()
    if f.schedule is not None and f.schedule.months is not None:
        item["remaining_months"] = f.schedule.months
    return item


def loans_response(facts: Sequence[LoanFacts], figures: LoanFigures, summary: dict[str, Any],
                   bank_name: Callable[[str], str], lang: str) -> dict[str, Any]:
    """GetLoansResponse: status "ok", the active loans in priority order (closed ones left out), and the
    dashboard's own loan_summary numbers (total_outstanding, mdp, adp, detail) and strategy."""
    active = sorted((f for f in facts if f.loan.active), key=lambda f: f.priority)
    return {"status": "ok", "loans": [loan_item(f, bank_name, lang) for f in active],
            "total_outstanding": summary["total_outstanding"], "mdp": summary["mandatory_daily_payment"],
            "adp": summary["additional_daily_payment"], "strategy": figures.strategy, "detail": summary["detail"]}


def deposits_response(credits: Iterable[CreditView], products: Sequence[ProductView], savings: dict[str, float],
                      bank_name: Callable[[str], str]) -> dict[str, Any]:
    """GetDepositsResponse: status "ok", the active deposits (type = the product's name, rate ≤ 2 decimals
    or 0, term from the catalogue or 0, maturity by `deposit_maturity`), and the dashboard's
    savings_summary figures (total_saved, sdp, target, progress_percent)."""
    items = []
    for c in credits:
        if not is_deposit(c) or c.status.strip().lower() != "active":
            continue
        term = deposit_term(c, products)
        item: dict[str, Any] = {
            "id": c.agreement_id, "bank": bank_name(c.bank_id), "type": c.product_name, "balance": legacy(c.amount),
            "rate": refinance.rate_number(c.interest_rate) if c.interest_rate is not None else 0.0,
            "term_months": term or 0, "bank_id": c.bank_id, "currency": c.currency, "balance_exact": money(c.amount),
        }
        ends = deposit_maturity(c, term)
        if ends is not None:
            item["maturity_date"] = ends.isoformat()
        items.append(item)
    return {"status": "ok", "deposits": items, "total_saved": savings["total_saved"], "sdp": savings["daily_payment"],
            "target": savings["target"], "progress_percent": savings["progress_percent"]}


def compute_all(data: DashboardData, lang: str = "ru") -> dict[str, dict[str, Any]]:
    """One analysis pass over `data`, four answers: {"dashboard": GetDashboardResponse, "loans":
    GetLoansResponse, "deposits": GetDepositsResponse, "refinance": OptimizeLoansResponse} as dicts, texts
    in `lang` (see `texts.language`)."""
    lang = texts.language(lang)
    today = today_of(data.now)
    config = data.config
    base = config.base_currency
    bank_name = bank_name_of(data)

    days = base_income_days(data.income_days, base, today)
    plan = apply_salary_inputs(detect_income(days, today, config.horizon_days_without_income, lang, base),
                               data.inputs, today, config.horizon_days_without_income, lang, base)
    horizon_end = plan.next_date or today + dt.timedelta(days=config.horizon_days_without_income)

    series = repayments_by_key(data.repayments)
    loans = analyse_loans(data.credits, series, today)
    detected = ([l.obligation for l in loans if l.obligation is not None]
                + orphan_obligations(data.credits, series, today))
    obligations, credit_note = apply_credit_inputs(detected, data.inputs, base, today, horizon_end, lang)

    sts = safe_to_spend(data, plan, obligations, credit_note, today, lang)
    figures = loan_figures(loans, obligations, base, data.goals, Decimal(sts["detail"]["amount_per_day"]))
    summary = loan_summary(figures, lang)

    facts = loan_facts(loans)
    order = repayment_order(facts, figures.strategy)
    facts = [dataclasses.replace(f, priority=order.get(f.key, 0)) for f in facts]
    active_terms = [f.terms for f in facts if f.loan.active]
    single = refinance.refinance_one_offers(active_terms, data.products, base)
    candidates = {o.loans[0].key for o in single}
    facts = [dataclasses.replace(f, refi_candidate=f.key in candidates) for f in facts]
    offers = refinance.rank_offers(single + refinance.consolidation_offers(active_terms, data.products, base))

    flow = complete_month_averages(data.cash_flow, base, today)
    spendable = spendable_balance(data.accounts, base)
    deposits = deposits_total(data.credits, base)
    has_accounts = bool(data.accounts)
    health = health_score([
        score_spend_vs_income(flow, lang),
        score_liquid_savings(has_accounts, spendable + deposits, spendable, deposits, flow, lang),
        score_debt_load(has_accounts, loans, figures.monthly, flow, base, lang),
        score_on_time(has_accounts, loans, today, lang),
    ], lang)
    notes = bank_data_notes(data, lang)
    if notes:  # which bank's data is missing or stale, and why: first, where the app shows two reasons
        health["reasons"] = notes + health["reasons"]
        sts["detail"]["reason"] = "; ".join(notes + [sts["detail"]["reason"]])
    savings = savings_summary(data, today)
    statuses, freshness = bank_statuses(data)

    dashboard = {
        "user_id": data.user_id,
        "calculated_at": iso_datetime(data.now),
        "sts_today": sts,
        "loan_summary": summary,
        "savings_summary": savings,
        "total_debit_cards_balance": legacy(debit_cards_balance(data.accounts, base)),
        "events_next_30d": events_next_30d(plan, obligations, base, today, lang),
        "health_score": health,
        "bank_statuses": statuses,
        "user_mode": user_mode(loans),
        "data_freshness": freshness,
        "totals_by_currency": totals_by_currency(data.accounts, base),
        "balances": balances(data.accounts, base),
        "loans": loan_rows(facts, bank_name, lang),
        "deposits": deposit_rows(data.credits, data.products, bank_name),
        "cards": card_rows(data.credits),
        "last_transactions": last_transactions(data),
        "spending_by_category_30d": spending_by_category(data),
    }
    triggers = financing_triggers(facts, single, sts, has_accounts, flow, figures.monthly, base, today, bank_name,
                                  lang)
    return {
        "dashboard": dashboard,
        "loans": loans_response(facts, figures, summary, bank_name, lang),
        "deposits": deposits_response(data.credits, data.products, savings, bank_name),
        "refinance": refinance.optimize_response(offers, triggers, figures.strategy, bank_name, lang),
    }


def compute(data: DashboardData, lang: str = "ru") -> dict[str, Any]:
    """The dashboard for `data` (see the module docstring and each function's rule), texts in `lang`:
    `compute_all(data, lang)["dashboard"]`."""
    return compute_all(data, lang)["dashboard"]
