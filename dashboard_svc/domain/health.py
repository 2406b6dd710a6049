"""The financial health score (pure): spending vs income, liquid savings, debt load and on-time repayments,
each a 0–100 component with its inputs and explanation; the score is their mean."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from dashboard_svc.domain import texts
from dashboard_svc.domain.common import HUNDRED, interpolate, money, month_index, one_decimal, ratio_text
from dashboard_svc.domain.loans import LoanAnalysis, months_paid
from dashboard_svc.model import MonthFlow
from finance.money import ZERO

HEALTH_MONTHS = 3
ON_TIME_MAX_MONTHS = 6


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
    return MonthlyAverages(
        n, sum((v[0] for v in months.values()), ZERO) / n, sum((v[1] for v in months.values()), ZERO) / n
    )


def component(
    name: str, score: Decimal | None, inputs: dict[str, str], explanation: str, missing: list[str]
) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "inputs": inputs, "explanation": explanation}
    if score is not None:
        entry["score"] = float(one_decimal(score))
    return {"entry": entry, "missing": missing, "score": None if score is None else one_decimal(score)}


def score_spend_vs_income(flow: MonthlyAverages, lang: str = "ru") -> dict[str, Any]:
    """Spending ÷ income over the last 3 complete months: ≤ 70 % → 100, ≥ 120 % → 0, linear between."""
    inputs = {
        "months": str(flow.months),
        "income_monthly_avg": money(flow.income),
        "spending_monthly_avg": money(flow.spending),
    }
    if flow.months == 0 or flow.income <= 0:
        missing = ["monthly_income"] + (["monthly_spending"] if flow.months == 0 else [])
        return component("spend_vs_income", None, inputs, texts.text(lang, "health.spend.none"), missing)
    ratio = flow.spending / flow.income
    inputs["spending_to_income"] = ratio_text(ratio)
    score = interpolate(ratio, [(Decimal("0.7"), HUNDRED), (Decimal("1.2"), ZERO)])
    return component(
        "spend_vs_income",
        score,
        inputs,
        texts.text(lang, "health.spend", ratio=texts.fmt_percent(one_decimal(ratio * 100), lang, 1)),
        [],
    )


def score_liquid_savings(
    has_accounts: bool, liquid: Decimal, spendable: Decimal, deposits: Decimal, flow: MonthlyAverages, lang: str = "ru"
) -> dict[str, Any]:
    """(spendable + deposits) ÷ average monthly spending, in months: 0 → 0, 1 → 40, 3 → 75, ≥ 6 → 100,
    linear between."""
    inputs = {
        "spendable_balance": money(spendable),
        "deposits": money(deposits),
        "liquid_total": money(liquid),
        "spending_monthly_avg": money(flow.spending),
    }
    missing = ([] if has_accounts else ["balances"]) + (
        [] if flow.months and flow.spending > 0 else ["monthly_spending"]
    )
    if missing:
        return component("liquid_savings", None, inputs, texts.text(lang, "health.liquid.none"), missing)
    months = liquid / flow.spending
    inputs["months_of_spending"] = ratio_text(months)
    score = interpolate(
        months, [(ZERO, ZERO), (Decimal(1), Decimal(40)), (Decimal(3), Decimal(75)), (Decimal(6), HUNDRED)]
    )
    return component(
        "liquid_savings",
        score,
        inputs,
        texts.text(lang, "health.liquid", months=texts.fmt_decimal(one_decimal(months), lang, 1)),
        [],
    )


def score_debt_load(
    has_accounts: bool,
    loans: list[LoanAnalysis],
    monthly_payments: Decimal,
    flow: MonthlyAverages,
    base: str,
    lang: str = "ru",
) -> dict[str, Any]:
    """Monthly loan payments ÷ monthly income: ≤ 10 % → 100, ≥ 50 % → 0, linear; no loans → 100."""
    inputs = {"loan_payments_monthly": money(monthly_payments), "income_monthly_avg": money(flow.income)}
    if not has_accounts:
        return component("debt_load", None, inputs, texts.text(lang, "health.no_bank_data"), ["bank_data"])
    has_debt = any(loan.active and loan.outstanding > 0 and loan.credit.currency == base for loan in loans)
    if monthly_payments <= 0:
        if has_debt:
            return component("debt_load", None, inputs, texts.text(lang, "health.debt.unseen"), ["loan_payments"])
        return component("debt_load", HUNDRED, inputs, texts.text(lang, "health.debt.none"), [])
    if flow.months == 0 or flow.income <= 0:
        return component("debt_load", None, inputs, texts.text(lang, "health.debt.no_income"), ["monthly_income"])
    ratio = monthly_payments / flow.income
    inputs["debt_to_income"] = ratio_text(ratio)
    score = interpolate(ratio, [(Decimal("0.1"), HUNDRED), (Decimal("0.5"), ZERO)])
    return component(
        "debt_load",
        score,
        inputs,
        texts.text(lang, "health.debt", ratio=texts.fmt_percent(one_decimal(ratio * 100), lang, 1)),
        [],
    )


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
    return component(
        "on_time_repayments",
        share * HUNDRED,
        inputs,
        texts.text(lang, "health.on_time", paid=paid, expected=expected),
        [],
    )


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
    reasons = [
        texts.text(
            lang,
            "health.reason",
            label=texts.text(lang, f"health.label.{p['entry']['name']}"),
            score=texts.fmt_number(p["score"], lang, 1),
            weak=texts.text(lang, f"health.weak.{p['entry']['name']}"),
            explanation=p["entry"]["explanation"],
        )
        for p in parts
        if p["score"] is not None and p["score"] < 60
    ]
    if not scores:
        reasons.append(
            texts.text(
                lang, "health.not_enough", missing=", ".join(texts.text(lang, f"health.missing.{m}") for m in missing)
            )
        )
    return {
        "value": float(value),
        "status": health_status(value),
        "reasons": reasons,
        "components": [p["entry"] for p in parts],
        "missing_inputs": missing,
    }
