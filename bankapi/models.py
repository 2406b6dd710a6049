"""Typed results of the bank API: frozen dataclasses with `Decimal` money and aware-UTC datetimes.

Each model has a `from_api(...)` constructor that parses the bank's JSON tolerantly: camelCase or
snake_case keys, timestamps with or without `Z`/offset/fractional seconds (naive ones are taken as
UTC), missing optional fields (the parsers: bankapi/parsing.py). Transaction pages have a faster
path that decodes the bank's text straight into `Transaction`s (bankapi/wire.py). Money is parsed with `to_decimal`
(never through float arithmetic); the client decodes JSON with `parse_float=Decimal`, so even
numeric amounts arrive exact. Every model keeps the bank's original object in `raw`.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import msgspec

from bankapi.parsing import (
    _opt_decimal,
    _opt_str,
    _pick,
    _req,
    agreement_id_from_text,
    items_of,
    parse_date,
    parse_datetime,
    to_decimal,
)

__all__ = [
    "Account",
    "Balance",
    "ConsentKind",
    "ConsentResult",
    "ConsentStatus",
    "Payment",
    "PaymentStatus",
    "Product",
    "ProductAgreement",
    "Transaction",
    "TransactionPage",
    "agreement_id_from_text",
    "items_of",
    "normalize_payment_status",
    "normalize_status",
    "parse_date",
    "parse_datetime",
    "to_decimal",
]


# ---------------------------------------------------------------------------------------------- statuses


class ConsentKind(str, enum.Enum):
    ACCOUNTS = "accounts"
    PRODUCTS = "products"
    PAYMENTS = "payments"


class ConsentStatus(str, enum.Enum):
    """Our one normalised consent status (bank-api.md, "Our status vocabulary")."""

    PENDING = "PENDING"  # request being created / bank answered something we do not know
    AWAITING_USER = "AWAITING_USER"
    APPROVED = "APPROVED"
    REJECTED = "REJECTED"
    REVOKED = "REVOKED"
    EXPIRED = "EXPIRED"


def _status_key(raw: str) -> str:
    return re.sub(r"[^a-z]", "", raw.lower())


_CONSENT_STATUS = {
    **dict.fromkeys(("approved", "authorized", "authorised", "active", "valid"), ConsentStatus.APPROVED),
    **dict.fromkeys(
        ("pending", "awaitingauthorization", "awaitingauthorisation", "awaitinguser", "awaiting"),
        ConsentStatus.AWAITING_USER,
    ),
    **dict.fromkeys(("rejected", "declined", "denied"), ConsentStatus.REJECTED),
    **dict.fromkeys(("revoked", "cancelled", "canceled", "deleted"), ConsentStatus.REVOKED),
    # a single-use payment consent that was spent is as good as expired (403 INVALID_CONSENT)
    **dict.fromkeys(("expired", "used", "consumed"), ConsentStatus.EXPIRED),
}


def normalize_status(raw: str | None) -> ConsentStatus:
    """Map a bank's consent status (either vocabulary, any case/separators) to `ConsentStatus`.

    `approved`/`Authorized`/`active` → APPROVED; `pending`/`AwaitingAuthorization` → AWAITING_USER;
    `rejected` → REJECTED; `revoked` → REVOKED; `expired` → EXPIRED. Our own names map to themselves.
    Missing or unknown → PENDING: "not known to be usable yet", so nothing is ever read or paid on a
    status we do not understand, and a later poll can still move it on (the raw value is kept).
    """
    if not raw:
        return ConsentStatus.PENDING
    key = _status_key(str(raw))
    if key in _CONSENT_STATUS:
        return _CONSENT_STATUS[key]
    for status in ConsentStatus:
        if key == _status_key(status.value):
            return status
    return ConsentStatus.PENDING


class PaymentStatus(str, enum.Enum):
    PENDING = "pending"
    COMPLETED = "completed"
    FAILED = "failed"


_PAYMENT_STATUS = {
    **dict.fromkeys(
        (
            "completed",
            "acceptedsettlementcompleted",
            "acceptedcreditsettlementcompleted",
            "booked",
            "settled",
            "success",
            "succeeded",
        ),
        PaymentStatus.COMPLETED,
    ),
    **dict.fromkeys(("failed", "rejected", "cancelled", "canceled", "declined", "error"), PaymentStatus.FAILED),
}


def normalize_payment_status(raw: str | None) -> PaymentStatus:
    """`pending`/`completed`/`failed` or the OBIE `Accepted…`/`Rejected` names; unknown → PENDING
    (an unknown outcome must be reconciled, never assumed paid or failed)."""
    return _PAYMENT_STATUS.get(_status_key(raw or ""), PaymentStatus.PENDING)


def _raw() -> Any:
    return field(default_factory=dict, compare=False, repr=False, hash=False)


# ---------------------------------------------------------------------------------------------- consents

# States in which a bank has not issued a consent id (a revoked or expired consent had one).
_NEVER_ISSUED = frozenset({ConsentStatus.PENDING, ConsentStatus.AWAITING_USER, ConsentStatus.REJECTED})


@dataclass(frozen=True)
class ConsentResult:
    """A consent as seen in a creation answer or a GET. `consent_id` is None until the bank issued one."""

    kind: ConsentKind
    request_id: str | None
    consent_id: str | None
    status: ConsentStatus
    raw_status: str | None
    auto_approved: bool
    created_at: datetime | None
    expires_at: datetime | None
    permissions: tuple[str, ...] = ()
    message: str | None = None
    client_id: str | None = None  # the customer, when the bank's answer names them
    # Payment consents: how many payments were made with it (None when the bank does not say), and
    # the bank's ids of those payments when it names them.
    used_count: int | None = None
    payment_ids: tuple[str, ...] = ()
    # Payment consents: single_use, multi_use or vrp, when the answer says.
    consent_type: str | None = None
    raw: Mapping[str, Any] = _raw()

    @property
    def approved(self) -> bool:
        return self.status is ConsentStatus.APPROVED and self.consent_id is not None

    @property
    def used(self) -> bool:
        """A payment consent the bank reports as used: `Consumed`/`used` status, a use count above
        zero, or a payment made with it. For a single-use consent this means its payment happened."""
        return _status_key(self.raw_status or "") in _USED_STATUSES or bool(self.used_count) or bool(self.payment_ids)

    @classmethod
    def from_api(cls, kind: ConsentKind, body: Mapping[str, Any], *, queried_id: str | None = None) -> ConsentResult:
        """Parse a creation answer (flat, snake_case) or a GET answer (`{"data": {consentId, status, …}}`)."""
        inner = body.get("data")
        data: Mapping[str, Any] = inner if isinstance(inner, dict) else body
        raw_status = _opt_str(_pick(data, "status", "Status"))
        status = normalize_status(raw_status)
        consent_id = _opt_str(_pick(data, "consent_id", "consentId"))
        request_id = _opt_str(_pick(data, "request_id", "requestId"))
        if (
            consent_id is not None
            and consent_id == queried_id
            and request_id in (None, queried_id)
            and status in _NEVER_ISSUED
        ):
            consent_id = None  # a poll by request id echoes the request id: no consent id was issued (yet)
        if request_id is None and queried_id is not None and queried_id != consent_id:
            request_id = queried_id
        perms = _pick(data, "permissions", default=())
        return cls(
            used_count=_opt_int(_pick(data, "usedCount", "used_count")),
            payment_ids=_payment_ids(data),
            consent_type=_opt_str(_pick(data, "consent_type", "consentType")),
            kind=kind,
            request_id=request_id,
            consent_id=consent_id,
            status=status,
            raw_status=raw_status,
            auto_approved=bool(_pick(data, "auto_approved", "autoApproved", default=False)),
            created_at=parse_datetime(_pick(data, "created_at", "creationDateTime", "createdAt")),
            expires_at=parse_datetime(_pick(data, "expires_at", "expirationDateTime", "valid_until", "validUntil")),
            permissions=tuple(str(p) for p in perms) if isinstance(perms, (list, tuple)) else (),
            message=_opt_str(_pick(data, "message")),
            client_id=_opt_str(_pick(data, "client_id", "clientId")),
            raw=body,
        )


_USED_STATUSES = frozenset({"used", "consumed"})


def _payment_ids(data: Mapping[str, Any]) -> tuple[str, ...]:
    """Ids of the payments made with a consent: `paymentIds` / `payment_ids` (strings) or `payments`
    (objects with `paymentId`), when the bank names them."""
    ids = _pick(data, "paymentIds", "payment_ids")
    if isinstance(ids, (list, tuple)):
        return tuple(str(i) for i in ids if i)
    payments = data.get("payments")
    if isinstance(payments, list):
        return tuple(
            str(p.get("paymentId") or p.get("payment_id"))
            for p in payments
            if isinstance(p, Mapping) and (p.get("paymentId") or p.get("payment_id"))
        )
    return ()


# ---------------------------------------------------------------------------------------------- accounts


@dataclass(frozen=True)
class Account:
    account_id: str
    status: str | None
    currency: str | None
    account_type: str | None
    account_sub_type: str | None
    nickname: str | None
    opening_date: date | None
    account_number: str | None  # `identification` of the RU.CBR.PAN entry (or the first): use for payments
    owner_name: str | None
    raw: Mapping[str, Any] = _raw()

    @classmethod
    def from_api(cls, obj: Mapping[str, Any]) -> Account:
        ids = [a for a in (obj.get("account") or ()) if isinstance(a, dict)]
        ident = next((a for a in ids if a.get("schemeName") == "RU.CBR.PAN"), ids[0] if ids else {})
        return cls(
            account_id=_req(obj, "accountId", "account_id"),
            status=_opt_str(obj.get("status")),
            currency=_opt_str(obj.get("currency")),
            account_type=_opt_str(_pick(obj, "accountType", "account_type")),
            account_sub_type=_opt_str(_pick(obj, "accountSubType", "account_sub_type")),
            nickname=_opt_str(obj.get("nickname")),
            opening_date=parse_date(_pick(obj, "openingDate", "opening_date")),
            account_number=_opt_str(_pick(ident, "identification", default=_pick(obj, "account_number"))),
            owner_name=_opt_str(ident.get("name")),
            raw=obj,
        )


def _amount_and_currency(obj: Mapping[str, Any]) -> tuple[Decimal, str | None]:
    """`{"amount": {"amount": "1.00", "currency": "RUB"}}` or a flat `amount` + `currency`."""
    amount = obj.get("amount")
    if isinstance(amount, dict):
        return to_decimal(amount.get("amount")), _opt_str(amount.get("currency") or obj.get("currency"))
    return to_decimal(amount), _opt_str(obj.get("currency"))


@dataclass(frozen=True)
class Balance:
    account_id: str
    type: str | None  # InterimAvailable, InterimBooked, …
    amount: Decimal
    currency: str | None
    credit_debit_indicator: str | None
    as_of: datetime | None
    raw: Mapping[str, Any] = _raw()

    @property
    def signed_amount(self) -> Decimal:
        return -self.amount if (self.credit_debit_indicator or "").lower() == "debit" else self.amount

    @classmethod
    def from_api(cls, obj: Mapping[str, Any], *, account_id: str | None = None) -> Balance:
        amount, currency = _amount_and_currency(obj)
        return cls(
            account_id=_req(obj, "accountId", "account_id", default=account_id),
            type=_opt_str(obj.get("type")),
            amount=amount,
            currency=currency,
            credit_debit_indicator=_opt_str(_pick(obj, "creditDebitIndicator", "credit_debit_indicator")),
            as_of=parse_datetime(_pick(obj, "dateTime", "date_time")),
            raw=obj,
        )


class Transaction(msgspec.Struct, frozen=True):
    """A frozen msgspec Struct rather than a dataclass: a sync makes one per transaction, and a Struct
    costs a tenth of a frozen dataclass to build (bankapi/wire.py decodes pages straight into these).
    Equality includes `raw` (a dict or the `JSONObject` of the bank's text: equal when the JSON is)."""

    account_id: str
    transaction_id: str
    amount: Decimal  # as given (positive); see `signed_amount`
    currency: str | None
    credit_debit_indicator: str | None  # Credit | Debit
    status: str | None  # completed, Booked, Pending, … (stored as given)
    booking_time: datetime | None
    value_time: datetime | None
    description: str | None  # transactionInformation
    bank_code: str | None  # bankTransactionCode.code: 01 card purchase, 02 transfers/income/interest/loans
    merchant_name: str | None
    merchant_category: str | None
    mcc: str | None
    agreement_id: str | None  # from "Платеж по кредиту №<id>" / "Проценты по депозиту №<id>"
    raw: Mapping[str, Any] = msgspec.field(default_factory=dict)

    @property
    def signed_amount(self) -> Decimal:
        """Negative for a Debit, positive otherwise."""
        return -abs(self.amount) if (self.credit_debit_indicator or "").lower() == "debit" else self.amount

    @classmethod
    def from_api(cls, obj: Mapping[str, Any], *, account_id: str | None = None) -> Transaction:
        amount, currency = _amount_and_currency(obj)
        code = obj.get("bankTransactionCode")
        given = obj.get("merchant")
        merchant: Mapping[str, Any] = given if isinstance(given, dict) else {}
        description = _opt_str(_pick(obj, "transactionInformation", "transaction_information", "description"))
        return cls(
            account_id=_req(obj, "accountId", "account_id", default=account_id),
            transaction_id=_req(obj, "transactionId", "transaction_id"),
            amount=amount,
            currency=currency,
            credit_debit_indicator=_opt_str(_pick(obj, "creditDebitIndicator", "credit_debit_indicator")),
            status=_opt_str(obj.get("status")),
            booking_time=parse_datetime(_pick(obj, "bookingDateTime", "booking_date_time")),
            value_time=parse_datetime(_pick(obj, "valueDateTime", "value_date_time")),
            description=description,
            bank_code=_opt_str(code.get("code") if isinstance(code, dict) else code),
            merchant_name=_opt_str(merchant.get("name")),
            merchant_category=_opt_str(merchant.get("category")),
            mcc=_opt_str(_pick(merchant, "mccCode", "mcc")),
            agreement_id=agreement_id_from_text(description),
            raw=obj,
        )


@dataclass(frozen=True)
class TransactionPage:
    transactions: tuple[Transaction, ...]
    total_pages: int | None
    total_records: int | None
    current_page: int | None
    next_link: str | None  # links.next as given (None on the last page)

    @classmethod
    def from_api(cls, body: Mapping[str, Any], *, account_id: str | None = None) -> TransactionPage:
        items = items_of(body.get("data"), "transaction", "transactions")
        meta = body.get("meta") or {}
        links = body.get("links") or {}
        return cls(
            transactions=tuple(Transaction.from_api(t, account_id=account_id) for t in items),
            total_pages=_opt_int(_pick(meta, "totalPages", "total_pages")),
            total_records=_opt_int(_pick(meta, "totalRecords", "total_records")),
            current_page=_opt_int(_pick(meta, "currentPage", "current_page")),
            next_link=_opt_str(links.get("next")) or None,
        )


def _opt_int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------- products


@dataclass(frozen=True)
class ProductAgreement:
    agreement_id: str
    product_id: str | None
    product_name: str | None
    product_type: str | None  # loan | deposit | card
    amount: Decimal  # principal (loan), deposited sum (deposit) or the limit (card): not a debt
    status: str | None  # active | closed
    start_date: datetime | None
    end_date: datetime | None
    account_number: str | None
    interest_rate: Decimal | None = None  # only in the detail call
    account_balance: Decimal | None = None  # only in the detail call: the linked account's balance
    raw: Mapping[str, Any] = _raw()

    @classmethod
    def from_api(cls, obj: Mapping[str, Any]) -> ProductAgreement:
        return cls(
            agreement_id=_req(obj, "agreement_id", "agreementId", "id"),
            product_id=_opt_str(_pick(obj, "product_id", "productId")),
            product_name=_opt_str(_pick(obj, "product_name", "productName")),
            product_type=_opt_str(_pick(obj, "product_type", "productType")),
            amount=to_decimal(_pick(obj, "amount", default=0)),
            status=_opt_str(obj.get("status")),
            start_date=parse_datetime(_pick(obj, "start_date", "startDate")),
            end_date=parse_datetime(_pick(obj, "end_date", "endDate")),
            account_number=_opt_str(_pick(obj, "account_number", "accountNumber")),
            interest_rate=_opt_decimal(_pick(obj, "interest_rate", "interestRate")),
            account_balance=_opt_decimal(_pick(obj, "account_balance", "accountBalance")),
            raw=obj,
        )


@dataclass(frozen=True)
class Product:
    """An entry of the bank's public catalogue (`GET /products`)."""

    product_id: str
    product_type: str | None
    product_name: str | None
    interest_rate: Decimal | None
    min_amount: Decimal | None
    max_amount: Decimal | None
    term_months: int | None
    description: str | None = None
    raw: Mapping[str, Any] = _raw()

    @classmethod
    def from_api(cls, obj: Mapping[str, Any]) -> Product:
        return cls(
            product_id=_req(obj, "productId", "product_id"),
            product_type=_opt_str(_pick(obj, "productType", "product_type")),
            product_name=_opt_str(_pick(obj, "productName", "product_name")),
            interest_rate=_opt_decimal(_pick(obj, "interestRate", "interest_rate")),
            min_amount=_opt_decimal(_pick(obj, "minAmount", "min_amount")),
            max_amount=_opt_decimal(_pick(obj, "maxAmount", "max_amount")),
            term_months=_opt_int(_pick(obj, "termMonths", "term_months")),
            description=_opt_str(obj.get("description")),
            raw=obj,
        )


# ---------------------------------------------------------------------------------------------- payments


@dataclass(frozen=True)
class Payment:
    payment_id: str
    raw_status: str | None
    status: PaymentStatus
    amount: Decimal | None
    currency: str | None
    created_at: datetime | None
    updated_at: datetime | None
    raw: Mapping[str, Any] = _raw()

    @classmethod
    def from_api(cls, body: Mapping[str, Any]) -> Payment:
        inner = body.get("data")
        data: Mapping[str, Any] = inner if isinstance(inner, dict) else body
        amount: Any = data.get("amount")
        currency = data.get("currency")
        if isinstance(amount, dict):
            amount, currency = amount.get("amount"), amount.get("currency", currency)
        elif amount is None:  # fall back to the initiation block when echoed
            instructed = (data.get("initiation") or {}).get("instructedAmount") or {}
            amount, currency = instructed.get("amount"), instructed.get("currency", currency)
        raw_status = _opt_str(data.get("status"))
        return cls(
            payment_id=_req(data, "paymentId", "payment_id"),
            raw_status=raw_status,
            status=normalize_payment_status(raw_status),
            amount=_opt_decimal(amount),
            currency=_opt_str(currency),
            created_at=parse_datetime(_pick(data, "creationDateTime", "created_at")),
            updated_at=parse_datetime(_pick(data, "statusUpdateDateTime", "updated_at")),
            raw=body,
        )
