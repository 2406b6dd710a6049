"""Payment requests (no gRPC): what CreatePayment and RepayLoan ask for, how a request is checked (step 1
of `consent_svc.payments`: validation and its fingerprint) and what it resolves to against the user's
stored accounts and loans (the debtor's account number, the loan and its next instalment) before its
intent is recorded. Bank data comes from sync_svc through `PaymentData`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Protocol

from consent_svc.payment_storage import PaymentIntent
from finance.dates import today_of
from finance.loans import Repayments, obligation_of, repayments_by_key
from svclib.config import BankConfig
from svclib.errors import FailedPrecondition, InvalidArgument, NotFound, require
from svclib.validation import format_amount, parse_amount

KEY_MAX = 255  # as Stripe's idempotency keys
TEXT_MAX = 140  # comment, creditor name
_ACCOUNT_NUMBER_RE = re.compile(r"^[0-9A-Za-z]{5,34}$")
_CURRENCY_RE = re.compile(r"^[A-Z]{3}$")
_BANK_CODE_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


# ---------------------------------------------------------------------------------------------- inputs


@dataclasses.dataclass(frozen=True)
class DebtorAccount:
    """A stored account of the user (from sync_svc)."""

    bank_id: str
    account_id: str
    account_number: str | None
    currency: str
    sub_type: str


@dataclasses.dataclass(frozen=True)
class Loan:
    """A stored product agreement of the user (from sync_svc)."""

    bank_id: str
    agreement_id: str
    product_type: str
    status: str
    account_number: str | None


class PaymentData(Protocol):
    """What payments read from sync_svc, and the sync they queue."""

    def account(self, user_id: str, bank_id: str, account_id: str) -> Awaitable[DebtorAccount | None]: ...

    def loans(self, user_id: str) -> Awaitable[list[Loan]]: ...

    def repayments(self, user_id: str) -> Awaitable[list[Repayments]]: ...

    def start_sync(self, user_id: str, bank_ids: list[str], reason: str) -> Awaitable[None]: ...


@dataclasses.dataclass(frozen=True)
class TransferRequest:
    bank_id: str
    account_id: str
    creditor_account: str
    amount: str
    creditor_bank_id: str = ""
    creditor_name: str = ""
    currency: str = ""
    comment: str = ""


@dataclasses.dataclass(frozen=True)
class RepaymentRequest:
    agreement_id: str
    bank_id: str
    account_id: str
    amount: str = ""  # empty: the next instalment as the dashboard derives it
    loan_bank_id: str = ""
    comment: str = ""


@dataclasses.dataclass(frozen=True)
class CheckedRequest:
    """A valid request: its acting user, idempotency key and fingerprint, and how to resolve it into the
    payment's intent (called only when no payment has this key yet)."""

    user_id: str
    key: str
    fingerprint: str
    resolve: Callable[[], Awaitable[PaymentIntent]]


def fingerprint(canonical: dict[str, str]) -> str:
    """SHA-256 of the canonical request (sorted keys, normalised values)."""
    text = json.dumps(canonical, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _optional_text(value: str | None, field: str, max_len: int = TEXT_MAX) -> str | None:
    value = (value or "").strip()
    if not value:
        return None
    if len(value) > max_len:
        raise InvalidArgument(
            f"{field} is too long ({len(value)} characters, at most {max_len})",
            field,
            reason="LIMIT_EXCEEDED",
            metadata={"limit": max_len},
        )
    if _CONTROL_RE.search(value):
        raise InvalidArgument(f"{field} must not contain control characters", field, reason="INVALID_CHARACTER")
    return value


def _idempotency_key(value: str | None) -> str:
    key = require(value, "idempotency_key", KEY_MAX)
    if _CONTROL_RE.search(key):
        raise InvalidArgument(
            "idempotency_key must not contain control characters", "idempotency_key", reason="INVALID_CHARACTER"
        )
    return key


def _account_number(value: str | None, field: str) -> str:
    number = require(value, field, 64)
    if not _ACCOUNT_NUMBER_RE.match(number):
        raise InvalidArgument(
            f"{field}: {number!r} is not an account number (5 to 34 letters and digits)", field, reason="INVALID_FORMAT"
        )
    return number


def _currency(value: str | None) -> str | None:
    text = (value or "").strip().upper()
    if text and not _CURRENCY_RE.match(text):
        raise InvalidArgument(
            f"currency: {value!r} is not a three-letter currency code", "currency", reason="INVALID_FORMAT"
        )
    return text or None


def _amount(value: str | None) -> Decimal:
    return parse_amount(require(value, "amount", 32), "amount")


# ---------------------------------------------------------------------------------------------- requests


class PaymentRequests:
    """Checks CreatePayment and RepayLoan requests and resolves them against the user's stored data. The
    acting user is the request's `user_id` (the services' interceptor has already refused a call naming
    another user than the caller's statement)."""

    def __init__(self, banks: dict[str, BankConfig], data: PaymentData, clock: Callable[[], dt.datetime]):
        self.banks = banks
        self.data = data
        self.clock = clock

    def transfer(self, user_id: str, key: str, request: TransferRequest) -> CheckedRequest:
        """A transfer to any account number (`creditor_bank_id` for another bank)."""
        user_id, key = require(user_id, "user_id"), _idempotency_key(key)
        bank = self.bank(require(request.bank_id, "bank_id"), "bank_id")
        account_id = require(request.account_id, "account_id")
        amount = _amount(request.amount)
        creditor = _account_number(request.creditor_account, "creditor_account")
        creditor_bank = _optional_text(request.creditor_bank_id, "creditor_bank_id", 32)
        if creditor_bank is not None and not _BANK_CODE_RE.match(creditor_bank):
            raise InvalidArgument(
                f"creditor_bank_id: {creditor_bank!r} is not a bank code", "creditor_bank_id", reason="INVALID_FORMAT"
            )
        creditor_name = _optional_text(request.creditor_name, "creditor_name")
        currency = _currency(request.currency)
        comment = _optional_text(request.comment, "comment")
        canonical = {
            "kind": "transfer",
            "bank_id": bank.id,
            "account_id": account_id,
            "amount": format_amount(amount),
            "creditor_account": creditor,
            "creditor_bank_id": creditor_bank or "",
            "creditor_name": creditor_name or "",
            "currency": currency or "",
            "comment": comment or "",
        }

        async def resolve() -> PaymentIntent:
            account = await self._debtor(user_id, bank.id, account_id, currency)
            if creditor == account.account_number:
                raise InvalidArgument(
                    "creditor_account: it is the account the payment is made from",
                    "creditor_account",
                    reason="SAME_ACCOUNT",
                )
            return PaymentIntent(
                user_id=user_id,
                idempotency_key=key,
                fingerprint=fingerprint(canonical),
                kind="transfer",
                bank_id=bank.id,
                account_id=account_id,
                debtor_account=account.account_number,
                creditor_account=creditor,
                creditor_bank_id=creditor_bank,
                creditor_name=creditor_name,
                amount=amount,
                currency=currency or account.currency,
                comment=comment,
            )

        return CheckedRequest(user_id, key, fingerprint(canonical), resolve)

    def repayment(self, user_id: str, key: str, request: RepaymentRequest) -> CheckedRequest:
        """A loan's repayment: the amount asked for, else its next instalment (`_next_instalment`)."""
        user_id, key = require(user_id, "user_id"), _idempotency_key(key)
        agreement_id = require(request.agreement_id, "agreement_id")
        bank = self.bank(require(request.bank_id, "bank_id"), "bank_id")
        account_id = require(request.account_id, "account_id")
        amount = _amount(request.amount) if (request.amount or "").strip() else None
        loan_bank_id = _optional_text(request.loan_bank_id, "loan_bank_id", 32)
        if loan_bank_id is not None:
            self.bank(loan_bank_id, "loan_bank_id")
        comment = _optional_text(request.comment, "comment") or f"Платеж по кредиту №{agreement_id}"
        canonical = {
            "kind": "loan_repayment",
            "agreement_id": agreement_id,
            "loan_bank_id": loan_bank_id or "",
            "bank_id": bank.id,
            "account_id": account_id,
            "amount": format_amount(amount) if amount is not None else "",
            "comment": comment,
        }

        async def resolve() -> PaymentIntent:
            loan = await self._loan(user_id, agreement_id, loan_bank_id)
            account = await self._debtor(user_id, bank.id, account_id, None)
            if loan.account_number == account.account_number:
                raise FailedPrecondition(
                    f"loan {agreement_id} is repaid from its own account {account_id} by the bank: choose another "
                    "account to pay from",
                    reason="LOAN_OWN_ACCOUNT",
                    metadata={"bank_id": bank.id},
                )
            source, note, value = "requested", None, amount
            if value is None:
                value, currency, note = await self._next_instalment(user_id, loan)
                source = "detected"
                if currency != account.currency:
                    raise FailedPrecondition(
                        f"loan {agreement_id} is repaid in {currency}, account {account_id} holds {account.currency}",
                        reason="CURRENCY_MISMATCH",
                    )
            return PaymentIntent(
                user_id=user_id,
                idempotency_key=key,
                fingerprint=fingerprint(canonical),
                kind="loan_repayment",
                bank_id=bank.id,
                account_id=account_id,
                debtor_account=account.account_number,
                creditor_account=loan.account_number,
                creditor_bank_id=loan.bank_id,
                creditor_name=None,
                amount=value,
                currency=account.currency,
                comment=comment,
                agreement_id=agreement_id,
                amount_source=source,
                amount_note=note,
            )

        return CheckedRequest(user_id, key, fingerprint(canonical), resolve)

    def bank(self, bank_id: str, field: str) -> BankConfig:
        bank = self.banks.get(bank_id)
        if bank is None:
            raise InvalidArgument(
                f"{field}: bank '{bank_id}' is not supported",
                field,
                reason="BANK_NOT_FOUND",
                metadata={"bank_id": bank_id},
            )
        return bank

    async def _debtor(self, user_id: str, bank_id: str, account_id: str, currency: str | None) -> DebtorAccount:
        account = await self.data.account(user_id, bank_id, account_id)
        if account is None:
            raise NotFound(
                f"Account {account_id} at {bank_id} is not one of your synced accounts",
                reason="ACCOUNT_NOT_FOUND",
                metadata={"bank_id": bank_id, "account_id": account_id},
            )
        if not account.account_number:
            raise FailedPrecondition(
                f"{bank_id} gave no account number for account {account_id}: it cannot pay",
                reason="ACCOUNT_NUMBER_UNKNOWN",
                metadata={"bank_id": bank_id},
            )
        if account.sub_type.strip().lower() == "loan":
            raise FailedPrecondition(
                f"Account {account_id} at {bank_id} holds a loan: its money cannot be spent",
                reason="LOAN_ACCOUNT",
                metadata={"bank_id": bank_id},
            )
        if currency is not None and currency != account.currency:
            raise InvalidArgument(
                f"currency: account {account_id} holds {account.currency}, not {currency}",
                "currency",
                reason="CURRENCY_MISMATCH",
            )
        return account

    async def _loan(self, user_id: str, agreement_id: str, bank_id: str | None) -> Loan:
        found = [
            loan
            for loan in await self.data.loans(user_id)
            if loan.agreement_id == agreement_id and bank_id in (None, loan.bank_id)
        ]
        if not found:
            raise NotFound(f"Loan {agreement_id} is not among your synced agreements", reason="LOAN_NOT_FOUND")
        if len(found) > 1:
            raise InvalidArgument(
                f"loan_bank_id: agreement {agreement_id} exists at "
                f"{', '.join(sorted(loan.bank_id for loan in found))}: name the loan's bank",
                "loan_bank_id",
                reason="AMBIGUOUS_LOAN",
            )
        loan = found[0]
        if loan.product_type.strip().lower() != "loan":
            raise FailedPrecondition(
                f"Agreement {agreement_id} is a {loan.product_type}, not a loan", reason="NOT_A_LOAN"
            )
        if loan.status.strip().lower() != "active":
            raise FailedPrecondition(f"Loan {agreement_id} is {loan.status}: nothing is due", reason="LOAN_NOT_ACTIVE")
        if not loan.account_number:
            raise FailedPrecondition(
                f"{loan.bank_id} gave no account number for loan {agreement_id}",
                reason="ACCOUNT_NUMBER_UNKNOWN",
                metadata={"bank_id": loan.bank_id},
            )
        return loan

    async def _next_instalment(self, user_id: str, loan: Loan) -> tuple[Decimal, str, str]:
        """The instalment exactly as the dashboard derives it (`finance.loans.obligation_of`): the average of the
        loan's past repayments, due on their typical day."""
        series = repayments_by_key(await self.data.repayments(user_id)).get((loan.bank_id, loan.agreement_id))
        if series is None:
            raise FailedPrecondition(
                f"No repayment of loan {loan.agreement_id} is in the synced transactions, so "
                "its instalment is unknown: give the amount",
                reason="INSTALMENT_UNKNOWN",
            )
        obligation = obligation_of(series, today_of(self.clock()))
        if obligation.amount <= 0:
            raise FailedPrecondition(
                f"The repayments of loan {loan.agreement_id} give no positive instalment: give the amount",
                reason="INSTALMENT_UNKNOWN",
            )
        note = (
            f"average of {series.count} repayments of loan {loan.agreement_id} "
            f"({format_amount(series.total)} {series.currency} in total), next due {obligation.first.isoformat()}"
        )
        return obligation.amount, obligation.currency, note
