"""Loan arithmetic (pure: no I/O, no gRPC, no SQL): cents, a loan's kind from its product name, and what
is left of a loan at its current payment. The banks publish no schedule, term or outstanding debt: the
remaining term and interest of a loan are simulated from its outstanding estimate, its rate and the
payment seen in history (`remaining_schedule`); `annuity_payment` and `amortise` price a new loan the
same way (`dashboard_svc.domain.refinance`). All money is `Decimal`, rounded ROUND_HALF_UP to cents where
shown; JSON numbers are floats made at the edge from rounded Decimals. Texts come from
`dashboard_svc.domain.texts` in the caller's language.
"""

from __future__ import annotations

import dataclasses
import math
from decimal import ROUND_HALF_UP, ROUND_UP, Decimal

from dashboard_svc.domain import texts

CENT = Decimal("0.01")
ZERO = Decimal("0")
MAX_MONTHS = 600  # a simulation longer than 50 years says "never at this payment": unknown
KINDS = ("consumer", "mortgage", "auto", "other")


def half_up(value: Decimal) -> Decimal:
    """ROUND_HALF_UP to cents, never "-0.00"."""
    result = Decimal(value).quantize(CENT, rounding=ROUND_HALF_UP)
    return result if result != 0 else Decimal("0.00")


def rate_number(rate: Decimal) -> float:
    """A rate as the app prints it: a JSON number with at most two decimals."""
    return float(Decimal(rate).quantize(CENT, rounding=ROUND_HALF_UP))


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
