"""The financing-need signal (pure: no I/O, no gRPC, no SQL): the triggers (missed payment, gap risk,
high debt-to-income, a refinancing opportunity), each with its language-neutral type and urgency and its
texts for people, and the overall urgency they add up to (financing_needed = urgency ≠ NONE).
`dashboard_svc.domain.assemble` decides when each trigger fires from the facts of its one analysis pass;
the functions below only build them. Texts come from `dashboard_svc.domain.texts` in the caller's
language; money is `Decimal`, shown rounded ROUND_HALF_UP to cents.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

from dashboard_svc.domain import texts
from dashboard_svc.domain.loan_math import half_up
from dashboard_svc.domain.refinance import LoanTerms, Offer, known

DTI_LIMIT = Decimal("0.5")
URGENCY_OF = {"missed_payment": "high", "gap_risk": "high", "high_dti": "medium", "refi_opportunity": "watch"}


def debt_to_income(monthly_payments: Decimal, monthly_income: Decimal | None) -> Decimal | None:
    """DTI = monthly loan payments ÷ average monthly income; None (not computed) when the income is
    unknown or 0."""
    if monthly_income is None or monthly_income <= 0:
        return None
    return monthly_payments / monthly_income


def trigger(
    kind: str, lang: str, description: str, loan_ids: Iterable[str], savings: Decimal | None = None
) -> dict[str, Any]:
    """A Trigger: language-neutral `type` and `urgency` (high | medium | watch), localized title,
    description and action label."""
    entry: dict[str, Any] = {
        "type": kind,
        "urgency": URGENCY_OF[kind],
        "title": texts.text(lang, f"trigger.{kind}.title"),
        "description": description,
        "action_label": texts.text(lang, f"trigger.{kind}.action"),
        "loan_ids": list(loan_ids),
    }
    if savings is not None:
        entry["savings"] = float(half_up(savings))
    return entry


def missed_payment_trigger(loan: LoanTerms, month: dt.date, bank: str, lang: str) -> dict[str, Any]:
    """missed_payment (high): `loan` had no repayment in `month` (the previous complete calendar month)."""
    description = texts.text(
        lang,
        "trigger.missed_payment.description",
        loan=loan.name,
        bank=bank,
        month=texts.fmt_month(month, lang),
        balance=texts.fmt_money(loan.balance, loan.currency, lang),
    )
    if loan.payment is not None and loan.payment > 0:
        description += texts.text(
            lang, "trigger.missed_payment.usual", payment=texts.fmt_money(loan.payment, loan.currency, lang)
        )
    return trigger("missed_payment", lang, description, [loan.agreement_id])


def gap_risk_trigger(
    spendable: Decimal,
    mandatory: Decimal,
    buffer: Decimal,
    until: dt.date,
    currency: str,
    loan_ids: Iterable[str],
    lang: str,
) -> dict[str, Any]:
    """gap_risk (high): spendable < mandatory payments + safety buffer before the horizon `until`."""

    def m(value: Decimal) -> str:
        return texts.fmt_money(value, currency, lang)

    description = texts.text(
        lang,
        "trigger.gap_risk.description",
        until=texts.fmt_date(until, lang),
        shortfall=m(mandatory + buffer - spendable),
        spendable=m(spendable),
        mandatory=m(mandatory),
        buffer=m(buffer),
    )
    return trigger("gap_risk", lang, description, loan_ids)


def high_dti_trigger(
    payments: Decimal, income: Decimal, ratio: Decimal, currency: str, loan_ids: Iterable[str], lang: str
) -> dict[str, Any]:
    """high_dti (medium): DTI above 0.5."""
    description = texts.text(
        lang,
        "trigger.high_dti.description",
        payments=texts.fmt_money(payments, currency, lang),
        ratio=texts.fmt_percent(ratio * 100, lang, 1),
        income=texts.fmt_money(income, currency, lang),
    )
    return trigger("high_dti", lang, description, loan_ids)


def refi_trigger(loan: LoanTerms, offer: Offer, loan_bank: str, offer_bank: str, lang: str) -> dict[str, Any]:
    """refi_opportunity (watch): a candidate loan and its best offer's total saving."""
    description = texts.text(
        lang,
        "trigger.refi_opportunity.description",
        loan=loan.name,
        loan_bank=loan_bank,
        loan_rate=texts.fmt_percent(known(loan.rate, "the loan's rate"), lang),
        bank=offer_bank,
        rate=texts.fmt_percent(offer.rate, lang),
        term=texts.fmt_months(offer.term_months, lang),
        savings=texts.fmt_money(offer.savings, offer.currency, lang),
    )
    return trigger("refi_opportunity", lang, description, [loan.agreement_id], offer.savings)


def overall_urgency(triggers: Sequence[dict[str, Any]]) -> str:
    """HIGH with any high trigger (missed payment, gap risk); else MEDIUM with high_dti; else WATCH with a
    refinancing opportunity; else NONE."""
    urgencies = {t["urgency"] for t in triggers}
    if "high" in urgencies:
        return "HIGH"
    if "medium" in urgencies:
        return "MEDIUM"
    if "watch" in urgencies:
        return "WATCH"
    return "NONE"
