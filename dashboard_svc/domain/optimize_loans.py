"""The OptimizeLoans answer (pure: no I/O, no gRPC, no SQL): each refinancing offer as a RefinanceOffer
(JSON numbers from the rounded Decimals, exact decimal strings in `detail`, a one-line explanation in
the caller's language) and the OptimizeLoansResponse that joins the ranked offers
(`dashboard_svc.domain.refinance`) with the triggers and urgency (`dashboard_svc.domain.financing`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from dashboard_svc.domain import texts
from dashboard_svc.domain.financing import overall_urgency
from dashboard_svc.domain.loan_math import half_up, rate_number
from dashboard_svc.domain.refinance import Offer


def money_text(value: Decimal) -> str:
    return f"{half_up(value):f}"


def offer_explanation(offer: Offer, bank: str, lang: str) -> str:
    """One line with the offer's figures, in `lang`."""

    def m(value: Decimal) -> str:
        return texts.fmt_money(value, offer.currency, lang)

    commission = texts.text(lang, "offer.commission", commission=m(offer.commission)) if offer.commission > 0 else ""
    common = dict(
        bank=bank,
        rate=texts.fmt_percent(offer.rate, lang),
        term=texts.fmt_months(offer.term_months, lang),
        payment=m(offer.monthly_payment),
        current_payment=m(offer.current_monthly_payment),
        new_interest=m(offer.new_interest),
        commission=commission,
        current_interest=m(offer.current_interest),
        savings=m(offer.savings),
    )
    if offer.strategy == "consolidation":
        return texts.text(
            lang,
            "offer.consolidation",
            count=texts.fmt_loans(len(offer.loans), lang),
            loans=", ".join(
                f"«{loan.name}»" if texts.language(lang) == "ru" else f'"{loan.name}"' for loan in offer.loans
            ),
            **common,
        )
    return texts.text(lang, "offer.refinance_one", loan=offer.loans[0].name, **common)


def offer_dict(offer: Offer, bank: str, lang: str) -> dict[str, Any]:
    """A RefinanceOffer: JSON numbers from the rounded Decimals, exact strings in `detail`."""
    return {
        "id": offer.id,
        "bank": bank,
        "strategy": offer.strategy,
        "rate": rate_number(offer.rate),
        "monthly_payment": float(offer.monthly_payment),
        "savings": float(offer.savings),
        "loan_amount": float(offer.loan_amount),
        "commission": float(offer.commission),
        "term_months": offer.term_months,
        "breakeven_months": offer.breakeven_months,
        "bank_id": offer.bank_id,
        "product_id": offer.product_id,
        "product_name": offer.product_name,
        "loan_ids": offer.loan_ids,
        "monthly_saving": float(offer.monthly_saving),
        "detail": {
            "rate": f"{offer.rate:f}",
            "monthly_payment": money_text(offer.monthly_payment),
            "savings": money_text(offer.savings),
            "monthly_saving": money_text(offer.monthly_saving),
            "loan_amount": money_text(offer.loan_amount),
            "commission": money_text(offer.commission),
            "current_interest": money_text(offer.current_interest),
            "new_interest": money_text(offer.new_interest),
            "current_monthly_payment": money_text(offer.current_monthly_payment),
            "currency": offer.currency,
        },
        "explanation": offer_explanation(offer, bank, lang),
    }


def optimize_response(
    offers: Sequence[Offer],
    triggers: Sequence[dict[str, Any]],
    strategy: str,
    bank_name: Callable[[str], str],
    lang: str,
) -> dict[str, Any]:
    """The OptimizeLoansResponse: ranked offers, urgency, financing_needed = urgency ≠ NONE, `triggers`
    (the descriptions, always present) and `trigger_details`, the user's strategy."""
    urgency = overall_urgency(triggers)
    return {
        "status": "ok",
        "offers": [offer_dict(o, bank_name(o.bank_id), lang) for o in offers],
        "financing_needed": urgency != "NONE",
        "urgency": urgency,
        "triggers": [t["description"] for t in triggers],
        "trigger_details": list(triggers),
        "strategy": strategy,
    }
