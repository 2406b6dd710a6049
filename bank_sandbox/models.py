"""What one bank holds for its customers, and the JSON shapes the bank gives it (see bank-api.md).

Money is `Decimal` throughout and leaves as a two-decimal string, except in product agreements,
where the real bank sends JSON numbers. Times are aware UTC datetimes, sent with a `Z`, except the
few fields the real bank sends without an offset (`iso_naive`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

UTC = UTC
CENT = Decimal("0.01")
CURRENCY = "RUB"


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso_z(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def iso_naive(moment: datetime) -> str:
    """UTC without an offset: how the banks write `created_at` and agreement dates."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


def money(amount: Decimal) -> str:
    return str(amount.quantize(CENT))


def money_json(amount: Decimal) -> dict[str, str]:
    return {"amount": money(amount), "currency": CURRENCY}


@dataclass(frozen=True)
class Merchant:
    merchant_id: str
    name: str
    mcc: str
    category: str
    city: str

    def to_json(self) -> dict[str, Any]:
        return {
            "merchantId": self.merchant_id,
            "name": self.name,
            "mccCode": self.mcc,
            "category": self.category,
            "city": self.city,
            "country": "RUS",
        }


@dataclass(frozen=True)
class Card:
    card_id: str
    last4: str
    card_type: str = "debit"

    def to_json(self) -> dict[str, Any]:
        return {"cardId": self.card_id, "cardNumber": f"****{self.last4}", "cardType": self.card_type}


@dataclass(frozen=True)
class Draft:
    """A movement to book on an account; the account gives it its id."""

    booked: datetime
    indicator: str  # Credit | Debit
    amount: Decimal
    information: str
    code: str = "02"  # 01 card purchase, 02 transfers, income, interest, repayments
    merchant: Merchant | None = None
    card: Card | None = None


@dataclass(frozen=True)
class Transaction:
    transaction_id: str
    account_id: str
    draft: Draft

    def to_json(self) -> dict[str, Any]:
        d = self.draft
        return {
            "accountId": self.account_id,
            "transactionId": self.transaction_id,
            "amount": money_json(d.amount),
            "creditDebitIndicator": d.indicator,
            "status": "completed",
            "bookingDateTime": iso_z(d.booked),
            "valueDateTime": iso_z(d.booked),
            "transactionInformation": d.information,
            "bankTransactionCode": {"code": d.code},
            "merchant": d.merchant.to_json() if d.merchant else None,
            "card": d.card.to_json() if d.card else None,
            "counterparty": None,
        }


@dataclass
class Account:
    account_id: str  # the same at every bank for one customer
    subtype: str  # Checking | Savings | Loan
    number: str  # 19 digits, unique across banks
    opening_date: date
    balance: Decimal
    tx_prefix: str  # transaction ids are <tx_prefix><4-digit sequence>
    card: Card | None = None  # debit card used for the account's purchases
    transactions: list[Transaction] = field(default_factory=list)  # oldest first

    def book(self, draft: Draft) -> Transaction:
        """Append a movement and apply it to the balance (callers check that debits are covered)."""
        transaction = Transaction(f"{self.tx_prefix}{len(self.transactions) + 1:04d}", self.account_id, draft)
        self.transactions.append(transaction)
        self.balance += draft.amount if draft.indicator == "Credit" else -draft.amount
        return transaction

    def to_json(self, owner: str | None = None) -> dict[str, Any]:
        """The list form carries the identification block (pass `owner`); the single-account form does not."""
        entry: dict[str, Any] = {
            "accountId": self.account_id,
            "status": "Enabled",
            "currency": CURRENCY,
            "accountType": "Personal",
            "accountSubType": self.subtype,
            "nickname": f"{self.subtype} счет",
            "openingDate": self.opening_date.isoformat(),
        }
        if owner is None:
            entry["description"] = f"{self.subtype.lower()} account"
        else:
            entry["account"] = [{"schemeName": "RU.CBR.PAN", "identification": self.number, "name": owner}]
        return entry

    def balances_json(self, now: datetime) -> list[dict[str, Any]]:
        return [
            {
                "accountId": self.account_id,
                "type": kind,
                "dateTime": iso_z(now),
                "amount": money_json(self.balance),
                "creditDebitIndicator": "Credit",
            }
            for kind in ("InterimAvailable", "InterimBooked")
        ]


@dataclass(frozen=True)
class Product:
    product_id: str
    product_type: str  # loan | deposit | card
    name: str
    interest_rate: Decimal
    min_amount: Decimal
    max_amount: Decimal | None
    term_months: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "productId": self.product_id,
            "productType": self.product_type,
            "productName": self.name,
            "interestRate": money(self.interest_rate),
            "minAmount": money(self.min_amount),
            "maxAmount": None if self.max_amount is None else money(self.max_amount),
            "termMonths": self.term_months,
        }


@dataclass
class Agreement:
    agreement_id: str
    product: Product
    amount: Decimal  # principal (loan), deposited sum (deposit), limit (credit card), 0 (debit card)
    start: datetime
    account: Account  # the linked account
    end: datetime | None = None  # set for closed agreements

    def to_json(self, detailed: bool = False) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "agreement_id": self.agreement_id,
            "product_id": self.product.product_id,
            "product_name": self.product.name,
            "product_type": self.product.product_type,
            "amount": float(self.amount),
            "status": "closed" if self.end else "active",
            "start_date": iso_naive(self.start),
            "end_date": iso_naive(self.end) if self.end else None,
            "account_number": self.account.number,
        }
        if detailed:
            entry["interest_rate"] = float(self.product.interest_rate)
            entry["account_balance"] = float(self.account.balance)
        return entry


@dataclass
class Customer:
    client_id: str
    index: int
    name: str
    city: str
    accounts: list[Account]
    agreements: list[Agreement]

    def account(self, account_id: str) -> Account | None:
        return next((a for a in self.accounts if a.account_id == account_id), None)

    def account_by_number(self, number: str) -> Account | None:
        return next((a for a in self.accounts if a.number == number), None)


@dataclass(frozen=True)
class Payment:
    payment_id: str
    client_id: str
    amount: Decimal
    created: datetime
    status: str = "AcceptedSettlementCompleted"

    def to_json(self) -> dict[str, Any]:
        return {
            "data": {
                "paymentId": self.payment_id,
                "status": self.status,
                "creationDateTime": iso_z(self.created),
                "statusUpdateDateTime": iso_z(self.created),
                "amount": money(self.amount),
                "currency": CURRENCY,
            },
            "links": {"self": f"/payments/{self.payment_id}"},
            "meta": {},
        }
