"""Loans (pure): each agreement's analysis (outstanding estimate, the obligation its repayments show, the
user's credit payment), its facts (kind, remaining schedule, maturity, priority, a missed month), the
loan figures and summary (MDP, ADP by the user's speed), and the rows and items the answers show.

The obligation of a loan (`finance.loans.obligation_of`) is the shared rule consent_svc pays by."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from typing import Any

from dashboard_svc.domain import loan_math, texts
from dashboard_svc.domain.common import legacy, money, month_index, roll_forward_monthly
from dashboard_svc.domain.loan_math import Schedule
from dashboard_svc.domain.refinance import LoanTerms
from dashboard_svc.model import CreditView, FinancialInputs, Goals
from finance.dates import add_months, month_day, today_of
from finance.loans import Obligation, Repayments, obligation_of
from finance.money import ZERO, round_money

ORPHAN_REPAYMENT_MAX_AGE_DAYS = 62  # repayments of an agreement we do not know: still running if this recent
SPEED_SHARES = {"conservative": Decimal("0.05"), "optimal": Decimal("0.20"), "fast": Decimal("0.40")}
DEFAULT_SPEED = "optimal"
STRATEGIES = ("avalanche", "snowball")
DEFAULT_STRATEGY = "avalanche"
DAYS_PER_MONTH = Decimal(30)


# ================================================================================================ analysis


@dataclasses.dataclass(frozen=True)
class LoanAnalysis:
    credit: CreditView
    repayments: Repayments | None
    outstanding: Decimal
    obligation: Obligation | None

    @property
    def active(self) -> bool:
        return self.credit.status.strip().lower() == "active"


def outstanding_estimate(
    principal: Decimal, rate: Decimal | None, payment: Decimal | None, count: int, total_repaid: Decimal
) -> Decimal:
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


def analyse_loans(
    credits: Iterable[CreditView], repayments: dict[tuple[str, str], Repayments], today: dt.date
) -> list[LoanAnalysis]:
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
        outstanding = outstanding_estimate(
            credit.amount,
            credit.interest_rate,
            series.average if series else None,
            series.count if series else 0,
            series.total if series else ZERO,
        )
        result.append(LoanAnalysis(credit, series, outstanding, obligation_of(series, today) if series else None))
    return result


def orphan_obligations(
    credits: Iterable[CreditView], repayments: dict[tuple[str, str], Repayments], today: dt.date
) -> list[Obligation]:
    """Repayments naming an agreement we do not have (no product consent at that bank) still leave the
    account every month: counted while the last one is at most 62 days old (refinement); a series whose
    last repayment is unknown is not counted."""
    known = {(c.bank_id, c.agreement_id) for c in credits}
    return [
        obligation_of(r, today)
        for key, r in repayments.items()
        if key not in known
        and r.last_paid_at is not None
        and (today - today_of(r.last_paid_at)).days <= ORPHAN_REPAYMENT_MAX_AGE_DAYS
    ]


def apply_credit_inputs(
    detected: list[Obligation],
    inputs: FinancialInputs,
    base: str,
    today: dt.date,
    horizon_end: dt.date,
    lang: str = "ru",
) -> tuple[list[Obligation], str]:
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


# ================================================================================================ facts


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


def maturity(
    credit: CreditView, schedule: Schedule | None, obligation: Obligation | None
) -> tuple[dt.date | None, str]:
    """When the loan ends: the agreement's end_date when present (source "agreement"); else the next due
    date + (remaining months − 1) months on the loan's typical day (source "estimated"); else unknown
    (None, "")."""
    if credit.end_date is not None:
        return credit.end_date, "agreement"
    if schedule is not None and schedule.months and obligation is not None:
        return add_months(obligation.first, schedule.months - 1, obligation.day), "estimated"
    return None, ""


def loan_facts(loans: Iterable[LoanAnalysis]) -> list[LoanFacts]:
    """Kind (`loan_math.loan_kind` of the product name), remaining schedule of active loans
    (`loan_math.remaining_schedule` of the outstanding estimate, the rate and the payment seen), maturity
    (`maturity`); priority and refinancing come later."""
    found = []
    for loan in loans:
        c = loan.credit
        kind = loan_math.loan_kind(c.product_name)
        payment = loan_payment(loan)
        schedule = loan_math.remaining_schedule(loan.outstanding, c.interest_rate, payment) if loan.active else None
        terms = LoanTerms(
            c.bank_id,
            c.agreement_id,
            c.product_name,
            kind,
            c.currency,
            loan.outstanding,
            None if c.interest_rate is None else Decimal(c.interest_rate),
            payment,
            schedule or Schedule(None, None, c.interest_rate is not None, "closed"),
        )
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


def months_paid(repayments: Repayments | None, window: range) -> int:
    """Months of `window` (month indexes) with a repayment, from the months the repayments were booked
    in. When those are not known (only the count and the last payment), the repayments are assumed to
    be on consecutive months ending with the last payment's month: a loan whose payments stopped
    loses the recent months, but a month missed in the middle goes unseen. Neither known: none."""
    if repayments is None or repayments.count <= 0:
        return 0
    if repayments.months:
        return len({month_index(m) for m in repayments.months} & set(window))
    if repayments.last_paid_at is None:
        return 0
    last = month_index(today_of(repayments.last_paid_at))
    paid = range(last - repayments.count + 1, last + 1)
    return len(set(paid) & set(window))


# ================================================================================================ figures and summary


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


def loan_figures(
    loans: list[LoanAnalysis], obligations: list[Obligation], base: str, goals: Goals, sts_per_day: Decimal
) -> LoanFigures:
    """Loan numbers (base currency):
    total_outstanding = Σ outstanding estimates of active loans; monthly = Σ monthly payments (the
    obligations: detected average repayments, or the user's credit payment);
    MDP = monthly ÷ 30 (cents, half-up); ADP by `additional_daily_payment` with the user's speed."""
    outstanding = sum((loan.outstanding for loan in loans if loan.active and loan.credit.currency == base), ZERO)
    monthly = sum((o.amount for o in obligations if o.currency == base), ZERO)
    mdp = round_money(monthly / DAYS_PER_MONTH)
    speed = loans_speed(goals)
    share = SPEED_SHARES[speed]
    adp, uncapped, capped = additional_daily_payment(mdp, share, sts_per_day)
    return LoanFigures(
        round_money(outstanding),
        round_money(monthly),
        mdp,
        adp,
        uncapped,
        capped,
        sts_per_day,
        speed,
        share,
        loan_strategy(goals),
        base,
    )


def adp_explanation(f: LoanFigures, lang: str) -> str:
    """How the additional payment was chosen, in `lang`: the speed and its share, MDP × share, whether the
    safe-to-spend cap applied, and where the strategy sends the extra money."""
    if f.mdp <= 0:
        return texts.text(lang, "adp.none")

    def m(value: Decimal) -> str:
        return texts.fmt_money(value, f.currency, lang)

    params = dict(
        speed=texts.text(lang, f"speed.{f.speed}"),
        percent=texts.fmt_percent(f.share * 100, lang),
        mdp=m(f.mdp),
        share=texts.fmt_number(f.share, lang, 2),
        adp=m(f.adp),
        strategy=texts.text(lang, f"strategy.{f.strategy}"),
    )
    if f.capped:
        return texts.text(lang, "adp.capped", raw=m(f.adp_uncapped), sts=m(f.sts_per_day), **params)
    return texts.text(lang, "adp.share", **params)


def loan_summary_detail(f: LoanFigures, lang: str) -> dict[str, str]:
    """The LoanSummaryDetail: exact strings, speed, share ("0.05" / "0.20" / "0.40"), strategy, explanation."""
    return {
        "total_outstanding": money(f.outstanding),
        "monthly_payments": money(f.monthly),
        "mandatory_daily_payment": money(f.mdp),
        "additional_daily_payment": money(f.adp),
        "speed": f.speed,
        "additional_share": f"{f.share:f}",
        "strategy": f.strategy,
        "explanation": adp_explanation(f, lang),
        "currency": f.currency,
    }


def loan_summary(f: LoanFigures, lang: str = "ru") -> dict[str, Any]:
    """Legacy loan numbers plus the detail. total_monthly_payment = MDP × 30 as the seed defines it (so it
    can differ from the exact monthly sum, `detail.monthly_payments`, by a few cents)."""
    return {
        "total_outstanding": legacy(f.outstanding),
        "mandatory_daily_payment": legacy(f.mdp),
        "additional_daily_payment": legacy(f.adp),
        "total_monthly_payment": legacy(f.mdp * DAYS_PER_MONTH),
        "detail": loan_summary_detail(f, lang),
    }


# ================================================================================================ rows


def loan_rows(facts: list[LoanFacts], bank_name: Callable[[str], str], lang: str = "ru") -> list[dict[str, Any]]:
    """Every loan agreement (active and closed, in the banks' order) with the repayments seen, its bank's
    name, kind and type (in `lang`), maturity, priority, refinancing flag, remaining months and status."""
    rows = []
    for f in facts:
        loan = f.loan
        c, r = loan.credit, loan.repayments
        row: dict[str, Any] = {
            "bank_id": c.bank_id,
            "agreement_id": c.agreement_id,
            "name": c.product_name,
            "principal": money(c.amount),
            "outstanding_estimate": money(loan.outstanding),
            "payments_seen": r.count if r else 0,
            "currency": c.currency,
            "bank_name": bank_name(c.bank_id),
            "kind": f.kind,
            "type": loan_math.loan_type_label(f.kind, lang),
            "maturity_source": f.maturity_source,
            "priority": f.priority,
            "is_refi_candidate": f.refi_candidate,
            "status": c.status,
        }
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


def loan_item(f: LoanFacts, bank_name: Callable[[str], str], lang: str) -> dict[str, Any]:
    """A LoanItem of the loans route: numbers from the rounded Decimals (rate ≤ 2 decimals, 0 when unknown;
    monthly payment 0 when none was seen), exact strings beside them."""
    loan, c = f.loan, f.loan.credit
    payment = loan_payment(loan)
    item: dict[str, Any] = {
        "id": c.agreement_id,
        "bank": bank_name(c.bank_id),
        "type": loan_math.loan_type_label(f.kind, lang),
        "balance": legacy(loan.outstanding),
        "rate": loan_math.rate_number(c.interest_rate) if c.interest_rate is not None else 0.0,
        "monthly_payment": legacy(payment) if payment is not None else 0.0,
        "priority": f.priority,
        "is_refi_candidate": f.refi_candidate,
        "bank_id": c.bank_id,
        "currency": c.currency,
        "balance_exact": money(loan.outstanding),
        "kind": f.kind,
        "maturity_source": f.maturity_source,
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


def loans_response(
    facts: Sequence[LoanFacts],
    figures: LoanFigures,
    summary: dict[str, Any],
    bank_name: Callable[[str], str],
    lang: str,
) -> dict[str, Any]:
    """GetLoansResponse: status "ok", the active loans in priority order (closed ones left out), and the
    dashboard's own loan_summary numbers (total_outstanding, mdp, adp, detail) and strategy."""
    active = sorted((f for f in facts if f.loan.active), key=lambda f: f.priority)
    return {
        "status": "ok",
        "loans": [loan_item(f, bank_name, lang) for f in active],
        "total_outstanding": summary["total_outstanding"],
        "mdp": summary["mandatory_daily_payment"],
        "adp": summary["additional_daily_payment"],
        "strategy": figures.strategy,
        "detail": summary["detail"],
    }


def user_mode(loans: list[LoanAnalysis]) -> str:
    """ "loans" when any active loan's outstanding estimate is above 0, else "deposits"."""
    return "loans" if any(loan.active and loan.outstanding > 0 for loan in loans) else "deposits"
