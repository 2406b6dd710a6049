"""The assembly of the dashboard calculation (pure): `compute_all` runs the one analysis pass over a user's
`DashboardData` and builds the four answers; `compute` is its dashboard; the financing triggers join the
loans, safe-to-spend, health and refinancing figures."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from dashboard_svc.domain import financing, optimize_loans, refinance, texts
from dashboard_svc.domain.accounts import (
    balances,
    bank_data_notes,
    bank_name_of,
    bank_statuses,
    card_rows,
    debit_cards_balance,
    deposit_rows,
    deposits_response,
    deposits_total,
    last_transactions,
    savings_summary,
    spending_by_category,
    totals_by_currency,
)
from dashboard_svc.domain.common import iso_datetime, legacy
from dashboard_svc.domain.health import (
    MonthlyAverages,
    complete_month_averages,
    health_score,
    score_debt_load,
    score_liquid_savings,
    score_on_time,
    score_spend_vs_income,
)
from dashboard_svc.domain.income import apply_salary_inputs, base_income_days, detect_income
from dashboard_svc.domain.loans import (
    LoanFacts,
    analyse_loans,
    apply_credit_inputs,
    loan_facts,
    loan_figures,
    loan_rows,
    loan_summary,
    loans_response,
    missed_previous_month,
    orphan_obligations,
    repayment_order,
    user_mode,
)
from dashboard_svc.domain.refinance import Offer
from dashboard_svc.domain.sts import events_next_30d, safe_to_spend, spendable_balance
from dashboard_svc.model import DashboardData
from finance.dates import today_of
from finance.loans import repayments_by_key
from finance.money import round_money


def financing_triggers(
    facts: Sequence[LoanFacts],
    single_offers: Sequence[Offer],
    sts: dict[str, Any],
    has_accounts: bool,
    flow: MonthlyAverages,
    monthly_payments: Decimal,
    base: str,
    today: dt.date,
    bank_name: Callable[[str], str],
    lang: str,
) -> list[dict[str, Any]]:
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
        found.append(financing.missed_payment_trigger(f.terms, month, bank_name(f.terms.bank_id), lang))
    detail = sts["detail"]
    spendable, mandatory, buffer = (
        Decimal(detail["spendable_balance"]),
        Decimal(detail["mandatory_payments"]),
        Decimal(detail["safety_buffer"]),
    )
    if has_accounts and spendable < mandatory + buffer:
        until = (
            dt.date.fromisoformat(detail["next_income_date"])
            if "next_income_date" in detail
            else today + dt.timedelta(days=detail["days_left"])
        )
        ids = sorted({i["agreement_id"] for i in detail["mandatory_items"] if i.get("agreement_id")})
        found.append(financing.gap_risk_trigger(spendable, mandatory, buffer, until, base, ids, lang))
    ratio = financing.debt_to_income(monthly_payments, flow.income if flow.months else None)
    if ratio is not None and ratio > financing.DTI_LIMIT:
        ids = [f.terms.agreement_id for f in active if f.terms.currency == base]
        found.append(
            financing.high_dti_trigger(round_money(monthly_payments), round_money(flow.income), ratio, base, ids, lang)
        )
    if not missed:
        best = refinance.best_offer_by_loan(single_offers)
        for f in active:
            if f.key in best:
                offer = best[f.key]
                found.append(
                    financing.refi_trigger(f.terms, offer, bank_name(f.terms.bank_id), bank_name(offer.bank_id), lang)
                )
    return found


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
    plan = apply_salary_inputs(
        detect_income(days, today, config.horizon_days_without_income, lang, base),
        data.inputs,
        today,
        config.horizon_days_without_income,
        lang,
        base,
    )
    horizon_end = plan.next_date or today + dt.timedelta(days=config.horizon_days_without_income)

    series = repayments_by_key(data.repayments)
    loans = analyse_loans(data.credits, series, today)
    detected = [loan.obligation for loan in loans if loan.obligation is not None] + orphan_obligations(
        data.credits, series, today
    )
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
    health = health_score(
        [
            score_spend_vs_income(flow, lang),
            score_liquid_savings(has_accounts, spendable + deposits, spendable, deposits, flow, lang),
            score_debt_load(has_accounts, loans, figures.monthly, flow, base, lang),
            score_on_time(has_accounts, loans, today, lang),
        ],
        lang,
    )
    notes = bank_data_notes(data, lang)
    if notes:  # which bank's data is missing or stale, and why: first, where the app shows two reasons
        health["reasons"] = notes + health["reasons"]
        sts["detail"]["reason"] = "; ".join([*notes, sts["detail"]["reason"]])
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
    triggers = financing_triggers(facts, single, sts, has_accounts, flow, figures.monthly, base, today, bank_name, lang)
    return {
        "dashboard": dashboard,
        "loans": loans_response(facts, figures, summary, bank_name, lang),
        "deposits": deposits_response(data.credits, data.products, savings, bank_name),
        "refinance": optimize_loans.optimize_response(offers, triggers, figures.strategy, bank_name, lang),
    }


def compute(data: DashboardData, lang: str = "ru") -> dict[str, Any]:
    """The dashboard for `data` (see the module docstring and each function's rule), texts in `lang`:
    `compute_all(data, lang)["dashboard"]`."""
    return compute_all(data, lang)["dashboard"]
