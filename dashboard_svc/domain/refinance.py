"""Refinancing offers (pure: no I/O, no gRPC, no SQL): which catalogue products can refinance which
loans, one by one or consolidated, each priced to the cent, kept when material, and ranked.
`dashboard_svc.domain` gathers the facts (outstanding estimates, payments seen) in its one analysis pass
and calls the rules below; each rule is a small function whose docstring states it. An offer is compared
with the current loans over the same remaining term
(`dashboard_svc.domain.loan_math.remaining_schedule`), by TOTAL remaining cost (interest plus
commission), never by monthly payment alone: a longer term lowers the payment and raises the cost. The
financing-need signal lives in `dashboard_svc.domain.financing`, the OptimizeLoans answer in
`dashboard_svc.domain.optimize_loans`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import TypeVar

from dashboard_svc.domain.loan_math import ZERO, Schedule, amortise, annuity_payment, half_up, loan_kind
from dashboard_svc.model import ProductView

MATERIALITY_SHARE = Decimal("0.01")  # an offer must save at least 1 % of the amount refinanced
MAX_OFFERS = 5


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
