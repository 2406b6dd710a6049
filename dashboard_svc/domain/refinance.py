"""Loan arithmetic, refinancing offers and the financing-need signal (pure: no I/O, no gRPC, no SQL).

`dashboard_svc.domain` gathers the facts (outstanding estimates, payments seen, safe-to-spend, income) in
its one analysis pass and calls the rules below; each rule is a small function whose docstring states
it. All money is `Decimal`, rounded ROUND_HALF_UP to cents where shown; JSON numbers are floats made at
the edge from rounded Decimals. Texts come from `dashboard_svc.domain.texts` in the caller's language.

The banks publish no schedule, term or outstanding debt: the remaining term and interest of a loan are
simulated from its outstanding estimate, its rate and the payment seen in history (`remaining_schedule`).
An offer is compared with the current loans over the same remaining term, by TOTAL remaining cost
(interest plus commission), never by monthly payment alone: a longer term lowers the payment and raises
the cost.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import math
from collections.abc import Callable, Iterable, Sequence
from decimal import ROUND_HALF_UP, ROUND_UP, Decimal
from typing import Any, TypeVar

from dashboard_svc.domain import texts
from dashboard_svc.model import ProductView

CENT = Decimal("0.01")
ZERO = Decimal("0")
MAX_MONTHS = 600  # a simulation longer than 50 years says "never at this payment": unknown
MATERIALITY_SHARE = Decimal("0.01")  # an offer must save at least 1 % of the amount refinanced
MAX_OFFERS = 5
DTI_LIMIT = Decimal("0.5")
KINDS = ("consumer", "mortgage", "auto", "other")


def half_up(value: Decimal) -> Decimal:
    """ROUND_HALF_UP to cents, never "-0.00"."""
    result = Decimal(value).quantize(CENT, rounding=ROUND_HALF_UP)
    return result if result != 0 else Decimal("0.00")


def rate_number(rate: Decimal) -> float:
    """A rate as the app prints it: a JSON number with at most two decimals."""
    return float(Decimal(rate).quantize(CENT, rounding=ROUND_HALF_UP))


def money_text(value: Decimal) -> str:
    return f"{half_up(value):f}"


# ================================================================================================ kinds

KIND_MARKERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("mortgage", ("ипотек", "mortgage")),
    ("auto", ("авто", "auto", "car ")),
    ("consumer", ("потреб", "consumer", "наличн", "cash")),
)


def loan_kind(product_name: str) -> str:
    """The loan's kind from its product name, case-insensitive, first match wins: "ипотек"/"mortgage" ->
    mortgage; "авто"/"auto"/"car " -> auto; "потреб"/"consumer"/"наличн"/"cash" -> consumer; else other.
    The same rule reads a catalogue product's kind."""
    name = (product_name or "").lower()
    for kind, markers in KIND_MARKERS:
        if any(marker in name for marker in markers):
            return kind
    return "other"


def loan_type_label(kind: str, lang: str) -> str:
    """The kind for people: ru Ипотека / Автокредит / Потребительский кредит / Кредит; en Mortgage /
    Car loan / Consumer loan / Loan."""
    return texts.text(lang, f"loan.type.{kind if kind in KINDS else 'other'}")


# ================================================================================================ schedule


@dataclasses.dataclass(frozen=True)
class Schedule:
    """What is left of a loan at its current payment: `months` of payments and the `interest` they carry
    (None when unknown). `note`: "" (simulated), "paid" (nothing owed), "no_payment" (no payment seen),
    "not_amortising" (the payment does not cover the interest), "over_cap" (more than 600 months),
    "rate_unknown" (no rate: counted at 0 %)."""

    months: int | None
    interest: Decimal | None
    rate_known: bool
    note: str = ""


def amortise(
    balance: Decimal, rate: Decimal, payment: Decimal, settle_at: int | None = None
) -> tuple[int, Decimal] | None:
    """Month-by-month repayment of `balance` at `rate` % a year (i = rate ÷ 1200) with `payment` a month:
    interest_k = round_half_up(balance × i, cents); balance = balance + interest_k − payment; the last
    month (the first whose balance + interest ≤ payment, or month `settle_at` when given) pays
    balance + interest exactly. Returns (months, Σ interest_k), or None when not repaid within 600 months."""
    i = Decimal(rate) / 1200
    months, total = 0, ZERO
    while months < MAX_MONTHS:
        months += 1
        interest = half_up(balance * i)
        total += interest
        if balance + interest <= payment or months == settle_at:
            return months, total
        balance = balance + interest - payment
    return None


def remaining_schedule(balance: Decimal, rate: Decimal | None, payment: Decimal | None) -> Schedule:
    """Remaining months and interest of an active loan with outstanding B at its payment M (the average
    repayment seen):
    - B ≤ 0: nothing left (0 months, 0 interest);
    - no payment seen (None or ≤ 0): unknown;
    - no rate: counted at 0 % (months = ceil(B ÷ M), interest 0) and marked rate unknown;
    - M ≤ round_half_up(B × i): the payment never amortises the loan: unknown;
    - else the month-by-month simulation of `amortise`, unknown beyond 600 months."""
    rate_known = rate is not None
    if balance <= 0:
        return Schedule(0, Decimal("0.00"), rate_known, "paid")
    if payment is None or payment <= 0:
        return Schedule(None, None, rate_known, "no_payment")
    if rate is None:
        return Schedule(math.ceil(balance / payment), Decimal("0.00"), False, "rate_unknown")
    if payment <= half_up(balance * Decimal(rate) / 1200):
        return Schedule(None, None, True, "not_amortising")
    result = amortise(balance, Decimal(rate), payment)
    if result is None:
        return Schedule(None, None, True, "over_cap")
    return Schedule(result[0], result[1], True, "")


def annuity_payment(amount: Decimal, rate: Decimal, months: int) -> Decimal:
    """The annuity payment of `amount` over `months` at `rate` % a year: A·i ÷ (1 − (1 + i)^−n) with
    i = rate ÷ 1200, ROUND_HALF_UP to cents; at 0 %: A ÷ n rounded UP to cents (so n payments repay it)."""
    i = Decimal(rate) / 1200
    if i == 0:
        return (amount / months).quantize(CENT, rounding=ROUND_UP)
    return half_up(amount * i / (1 - (1 + i) ** -months))


# ================================================================================================ offers


@dataclasses.dataclass(frozen=True)
class LoanTerms:
    """One active loan as refinancing sees it: outstanding `balance`, `rate` (None: unknown), `payment`
    seen (None: none), its `schedule` at that payment."""

    bank_id: str
    agreement_id: str
    name: str
    kind: str
    currency: str
    balance: Decimal
    rate: Decimal | None
    payment: Decimal | None
    schedule: Schedule

    @property
    def key(self) -> tuple[str, str]:
        return self.bank_id, self.agreement_id


@dataclasses.dataclass(frozen=True)
class Offer:
    """A priced offer: the current loans' remaining interest against the new loan's interest plus
    commission over `term_months`."""

    id: str
    strategy: str  # refinance_one | consolidation
    bank_id: str
    product_id: str
    product_name: str
    rate: Decimal
    term_months: int
    loans: tuple[LoanTerms, ...]
    loan_amount: Decimal
    monthly_payment: Decimal
    current_monthly_payment: Decimal
    current_interest: Decimal
    new_interest: Decimal  # interest + commission
    commission: Decimal
    savings: Decimal
    monthly_saving: Decimal
    breakeven_months: int
    currency: str

    @property
    def loan_ids(self) -> list[str]:
        return [loan.agreement_id for loan in self.loans]


def offer_id(bank_id: str, product_id: str, loan_ids: Iterable[str]) -> str:
    """Stable across calls: "ofr-" + the first 16 hex digits of sha256("bank_id|product_id|" + the loan
    ids sorted and joined by ",")."""
    key = f"{bank_id}|{product_id}|" + ",".join(sorted(loan_ids))
    return "ofr-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def loan_catalogue(products: Iterable[ProductView]) -> list[ProductView]:
    """The refinancing catalogue: every configured bank's products of type "loan" (the loan's own bank
    included) with a known rate."""
    return [p for p in products if p.product_type.strip().lower() == "loan" and p.interest_rate is not None]


def within_limits(product: ProductView, amount: Decimal) -> bool:
    """min_amount ≤ amount ≤ max_amount; no minimum: 0; no maximum: no limit."""
    low = product.min_amount if product.min_amount is not None else ZERO
    return low <= amount and (product.max_amount is None or amount <= product.max_amount)


def refinanceable(loan: LoanTerms, base: str) -> bool:
    """A loan refinancing can price: base currency, outstanding > 0, a known rate (an offer must be
    cheaper than it) and a known remaining term at its payment (rule of `remaining_schedule`)."""
    return (
        loan.currency == base
        and loan.balance > 0
        and loan.rate is not None
        and loan.payment is not None
        and loan.schedule.months is not None
        and loan.schedule.interest is not None
        and loan.schedule.rate_known
    )


_T = TypeVar("_T")


def known(value: _T | None, what: str) -> _T:
    """A value that `refinanceable` (a loan's rate, payment and remaining schedule) or `loan_catalogue` (a
    product's rate) made sure is known; ValueError when a caller skipped that check."""
    if value is None:
        raise ValueError(f"{what} is unknown: only refinanceable loans and catalogue products are priced")
    return value


def new_term(remaining: int, product: ProductView) -> int:
    """n' = min(n, the product's term); a product without a (positive) term: n."""
    if product.term_months is None or product.term_months <= 0:
        return remaining
    return min(remaining, product.term_months)


def breakeven_months(commission: Decimal, monthly_saving: Decimal) -> int:
    """Months until the monthly saving pays the commission back: ceil(commission ÷ monthly saving) when
    both are positive, else 0."""
    if commission > 0 and monthly_saving > 0:
        return math.ceil(commission / monthly_saving)
    return 0


def price(strategy: str, product: ProductView, loans: Sequence[LoanTerms], term: int, currency: str) -> Offer:
    """The offer of `product` for `loans` over `term` months:
    amount A = Σ outstanding; new payment M' = `annuity_payment`(A, rate, term);
    new interest = Σ interest of `amortise`(A, rate, M', settle_at=term) (the last month settles exactly)
    + commission (0 when None);
    current interest = Σ remaining interest of the loans; current payment = Σ their payments;
    savings = current interest − new interest; monthly saving = current payment − M';
    breakeven = `breakeven_months`(commission, monthly saving)."""
    rate = Decimal(known(product.interest_rate, "the product's rate"))
    amount = sum((loan.balance for loan in loans), ZERO)
    payment = annuity_payment(amount, rate, term)
    simulated = amortise(amount, rate, payment, settle_at=term)
    assert simulated is not None  # settles by `term` ≤ 600 at the latest
    commission = (
        half_up(product.commission) if product.commission is not None and product.commission > 0 else Decimal("0.00")
    )
    new_interest = simulated[1] + commission
    current_interest = sum((known(loan.schedule.interest, "the remaining interest") for loan in loans), ZERO)
    current_payment = sum((known(loan.payment, "the loan's payment") for loan in loans), ZERO)
    monthly_saving = current_payment - payment
    return Offer(
        id=offer_id(product.bank_id, product.product_id, (loan.agreement_id for loan in loans)),
        strategy=strategy,
        bank_id=product.bank_id,
        product_id=product.product_id,
        product_name=product.product_name,
        rate=rate,
        term_months=term,
        loans=tuple(loans),
        loan_amount=half_up(amount),
        monthly_payment=payment,
        current_monthly_payment=half_up(current_payment),
        current_interest=half_up(current_interest),
        new_interest=half_up(new_interest),
        commission=commission,
        savings=half_up(current_interest - new_interest),
        monthly_saving=half_up(monthly_saving),
        breakeven_months=breakeven_months(commission, monthly_saving),
        currency=currency,
    )


def material(offer: Offer) -> bool:
    """Materiality: an offer counts only when its total saving is at least 1 % of the amount refinanced
    (a few roubles over years are not worth a new loan agreement). This also defines a loan's
    is_refi_candidate: a loan with at least one such single-loan offer."""
    return offer.savings >= offer.loan_amount * MATERIALITY_SHARE


def refinance_one_offers(loans: Iterable[LoanTerms], products: Iterable[ProductView], base: str) -> list[Offer]:
    """For each refinanceable loan (`refinanceable`) with outstanding B and remaining term n, every
    catalogue product (`loan_catalogue`) of the same kind (read from its name by `loan_kind`; "other"
    matches only "other"), with B within its limits (`within_limits`) and a rate strictly below the
    loan's, priced over n' = `new_term`(n, product) by `price`; kept when `material`."""
    catalogue = loan_catalogue(products)
    found = []
    for loan in loans:
        if not refinanceable(loan, base):
            continue
        for product in catalogue:
            if (
                loan_kind(product.product_name) != loan.kind
                or not within_limits(product, loan.balance)
                or known(product.interest_rate, "the product's rate") >= known(loan.rate, "the loan's rate")
            ):
                continue
            remaining = known(loan.schedule.months, "the remaining term")
            offer = price("refinance_one", product, [loan], new_term(remaining, product), base)
            if material(offer):
                found.append(offer)
    return found


def weighted_rate(loans: Sequence[LoanTerms]) -> Decimal:
    """The balance-weighted average rate: Σ(B × rate) ÷ Σ B."""
    total = sum((loan.balance for loan in loans), ZERO)
    return sum((loan.balance * known(loan.rate, "the loan's rate") for loan in loans), ZERO) / total


def consolidation_offers(loans: Iterable[LoanTerms], products: Iterable[ProductView], base: str) -> list[Offer]:
    """Consolidation, when at least 2 loans are refinanceable (`refinanceable`, whatever their kinds): all
    of them into one loan, from catalogue products of kind "consumer" whose limits cover Σ B and whose
    rate is below the balance-weighted average rate (`weighted_rate`); term n' = min(the longest remaining
    term, the product's term); current interest = Σ each loan's remaining interest, current payment =
    Σ payments; priced by `price`, kept when `material` (1 % of Σ B)."""
    group = [loan for loan in loans if refinanceable(loan, base)]
    if len(group) < 2:
        return []
    group.sort(key=lambda loan: (loan.bank_id, loan.agreement_id))
    amount = sum((loan.balance for loan in group), ZERO)
    average = weighted_rate(group)
    longest = max(known(loan.schedule.months, "the remaining term") for loan in group)
    found = []
    for product in loan_catalogue(products):
        if (
            loan_kind(product.product_name) != "consumer"
            or not within_limits(product, amount)
            or known(product.interest_rate, "the product's rate") >= average
        ):
            continue
        offer = price("consolidation", product, group, new_term(longest, product), base)
        if material(offer):
            found.append(offer)
    return found


def rank_offers(offers: Iterable[Offer]) -> list[Offer]:
    """Largest total saving first, then bank id, product id (and offer id); at most 5."""
    return sorted(offers, key=lambda o: (-o.savings, o.bank_id, o.product_id, o.id))[:MAX_OFFERS]


def best_offer_by_loan(offers: Iterable[Offer]) -> dict[tuple[str, str], Offer]:
    """Each loan's best single-loan offer (largest saving, then the ranking's tie-breaks)."""
    best: dict[tuple[str, str], Offer] = {}
    for offer in sorted(offers, key=lambda o: (-o.savings, o.bank_id, o.product_id, o.id)):
        if offer.strategy == "refinance_one":
            best.setdefault(offer.loans[0].key, offer)
    return best


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


# ================================================================================================ signal

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
