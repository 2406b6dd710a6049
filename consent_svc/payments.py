"""Payments (no gRPC): idempotent single payments and loan repayments through single-use payment consents,
or, for loan repayments, through the user's standing payment consent (below).

Payments live in consent_svc because a payment is the use of a payment consent: this service already
owns the consents, their lifecycle at the banks and the bank clients that create them, and a
single-use consent made for exactly one payment is what makes a payment safe to retry (the bank
refuses a second use). Splitting them would put the consent and its only payment in two services
and two transactions. Bank data (the debtor's account number, the loan and its past repayments)
comes from sync_svc through `PaymentData`.

One request (CreatePayment or RepayLoan) with its idempotency key:

1. Validate the request; compute its fingerprint (SHA-256 of the canonical request).
2. A payment with this (user, key) exists: another fingerprint → ALREADY_EXISTS (409); final → its
   stored result (a failed payment answers its stored error again), without a bank call.
   None: resolve the request against the stored accounts (debtor account number, the loan and its
   instalment) and record the intent, status INITIATING, committed before any bank call (a
   concurrent insert of the same key loses and continues as a retry).
3. Take the payment's advisory lock without waiting: held by another request → ABORTED (409).
4. Advance the payment from what is stored, never repeating a step the bank may have done:
   - no consent: a loan repayment pays through the standing consent when there is one (below);
     otherwise ask the debtor's bank for a single-use consent for exactly this amount, debtor and
     creditor (reference = our payment id); a manual bank leaves it AWAITING_AUTHORIZATION;
   - a consent: mark the payment `in_doubt` (committed), call POST /payments with a fresh
     X-Fapi-Interaction-Id, record the answer;
   - `in_doubt` on a later attempt (no answer came, or the process died between the bank's answer
     and our commit): ask the bank about the consent. Used (Consumed, a use count, a payment id) →
     the payment happened: fetch it when the bank names it, record it; unused and usable → pay
     with it again (single use: the bank can never execute it twice); unused and dead → a new
     consent for this same payment; unknowable → kept pending, never paid again.
5. A payment that completes queues a sync of the banks involved (where the user is connected).

Loan repayments through the standing consent. A RepayLoan at a bank where the user has an APPROVED,
unexpired standing payment consent (the onboarding's `vrp`, or a `multi_use` one) paying from that
account uses it instead of asking for a single-use consent, so a bank that approves manually does not
need the customer for each instalment. Several payments then share one consent, so the bank's "used"
no longer tells which payment happened; instead:

- payments on one standing consent are serialised across requests and replicas (an advisory lock on
  the consent, held from the reading of its uses to the recording of the answer);
- under that lock, the consent's uses as the bank reports them (its use count and payment ids) are
  read and committed with `in_doubt` BEFORE the payment call; a bank that reports neither is not
  used (its payments could not be reconciled);
- a retry after an unknown outcome reads the uses again: a payment id not known before is this
  payment (fetched and recorded; a higher count without ids: made, unnamed); no new use → it was
  not paid: pay again (with a fresh reading) while the consent is approved;
- while one payment on the consent is in doubt, no other payment uses it (they take single-use
  consents), so a new use can only be that payment's;
- a refusal of the standing consent for this payment (403: a limit exceeded, the consent invalid or
  revoked) paid nothing: the payment falls back to the single-use flow above (`consent_kind` says
  which kind a payment used). CreatePayment (transfers to any account) always uses single-use consents.

Bank refusals (insufficient funds, unknown creditor, refused or rejected consent) make the payment
FAILED with the bank's reason and answer a 4xx; an unreachable bank answers UNAVAILABLE and leaves
the payment pending for a retry with the same key. GetPayment refreshes a payment that is not final
from the bank but never initiates anything.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import re
import uuid
from decimal import Decimal
from typing import Awaitable, Callable, Protocol

from bankapi import errors as bank_errors
from bankapi.client import BankClient, BankClients
from bankapi.models import ConsentResult, ConsentStatus, Payment, PaymentStatus
from dashboard_svc import calc
from dashboard_svc.model import Repayments
from svclib.config import BankConfig
from svclib.db import LockBusy
from svclib.errors import (AlreadyExists, Aborted, DomainError, FailedPrecondition, InvalidArgument, NotFound,
                           PermissionDenied, Unavailable, require)
from svclib.logging import user_id_var
from svclib.validation import format_amount, parse_amount

from consent_svc.payment_storage import (STANDING, PaymentCursor, PaymentEventRow, PaymentIntent, PaymentStorage,
                                         StoredPayment)
from consent_svc.storage import ConsentStorage, StoredConsent

log = logging.getLogger("consent_svc.payments")

KEY_MAX = 255  # as Stripe's idempotency keys
TEXT_MAX = 140  # comment, creditor name
DEFAULT_PAGE, MAX_PAGE = 20, 100
MAX_STEPS = 6  # bank exchanges one request may drive (a consent, a payment, a reconciliation, ...)
_ACCOUNT_NUMBER_RE = re.compile(r"^[0-9A-Za-z]{5,34}$")
_CURRENCY_RE = re.compile(r"^[A-Z]{3}$")
_BANK_CODE_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")

# Failures the bank cannot fix by itself being retried: the whole call must be repeated later.
TRANSIENT = (bank_errors.BankUnavailable, bank_errors.RateLimited, bank_errors.AuthFailed, bank_errors.UnknownBank)
WAITING = (ConsentStatus.PENDING, ConsentStatus.AWAITING_USER)

# error_code of a FAILED payment -> the error its requests answer (INVALID_ARGUMENT and
# FAILED_PRECONDITION are 400 at the gateway).
FAILURES: dict[str, type[DomainError]] = {
    "INSUFFICIENT_FUNDS": FailedPrecondition,
    "CREDITOR_NOT_FOUND": InvalidArgument,
    "DEBTOR_NOT_FOUND": FailedPrecondition,
    "CONSENT_REJECTED": FailedPrecondition,
    "CONSENT_REFUSED": FailedPrecondition,
    "BANK_REJECTED": FailedPrecondition,
}


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
class PaymentResult:
    payment: StoredPayment
    replayed: bool  # the stored result of an earlier request with the same key


def fingerprint(canonical: dict[str, str]) -> str:
    """SHA-256 of the canonical request (sorted keys, normalised values)."""
    text = json.dumps(canonical, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _optional_text(value: str | None, field: str, max_len: int = TEXT_MAX) -> str | None:
    value = (value or "").strip()
    if not value:
        return None
    if len(value) > max_len:
        raise InvalidArgument(f"{field} is too long ({len(value)} characters, at most {max_len})", field)
    if _CONTROL_RE.search(value):
        raise InvalidArgument(f"{field} must not contain control characters", field)
    return value


def _idempotency_key(value: str | None) -> str:
    key = require(value, "idempotency_key", KEY_MAX)
    if _CONTROL_RE.search(key):
        raise InvalidArgument("idempotency_key must not contain control characters", "idempotency_key")
    return key


def _account_number(value: str | None, field: str) -> str:
    number = require(value, field, 64)
    if not _ACCOUNT_NUMBER_RE.match(number):
        raise InvalidArgument(f"{field}: {number!r} is not an account number (5 to 34 letters and digits)", field)
    return number


def _currency(value: str | None) -> str | None:
    text = (value or "").strip().upper()
    if text and not _CURRENCY_RE.match(text):
        raise InvalidArgument(f"currency: {value!r} is not a three-letter currency code", "currency")
    return text or None


def _amount(value: str | None) -> Decimal:
    return parse_amount(require(value, "amount", 32), "amount")


def _refusal_code(exc: bank_errors.BankError) -> str:
    """error_code for a bank's refusal of a payment or its consent."""
    if isinstance(exc, (bank_errors.ConsentRequired, bank_errors.Forbidden, bank_errors.CallRefused)):
        return "CONSENT_REFUSED"
    text = exc.message.lower()
    if "insufficient" in text:
        return "INSUFFICIENT_FUNDS"
    if "target account" in text or "creditor" in text:
        return "CREDITOR_NOT_FOUND"
    if "source account" in text or "debtor" in text:
        return "DEBTOR_NOT_FOUND"
    return "BANK_REJECTED"


_STATUS_OF = {PaymentStatus.COMPLETED: "COMPLETED", PaymentStatus.FAILED: "FAILED", PaymentStatus.PENDING: "PENDING"}


@dataclasses.dataclass
class _Work:
    """One request's work on a payment, besides the payment's own connection: the user's standing
    consent for it (read before the payment's lock is taken, so a request never waits for a second
    pooled connection while it holds one), and standing consents the bank showed as no longer
    approved (recorded after)."""
    standing: StoredConsent | None = None
    dead: list[tuple[str, ConsentResult]] = dataclasses.field(default_factory=list)


# ---------------------------------------------------------------------------------------------- service

class PaymentService:
    def __init__(self, storage: PaymentStorage, banks: tuple[BankConfig, ...], clients: BankClients,
                 consents: ConsentStorage, data: PaymentData,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc)):
        self.storage = storage
        self.banks = {b.id: b for b in banks}
        self.clients = clients
        self.consents = consents
        self.data = data
        self.clock = clock

    # ------------------------------------------------------------------------------------ requests

    async def create_payment(self, user_id: str, key: str, request: TransferRequest) -> PaymentResult:
        user_id, key = self._acting_user(user_id), _idempotency_key(key)
        bank = self._bank(require(request.bank_id, "bank_id"), "bank_id")
        account_id = require(request.account_id, "account_id")
        amount = _amount(request.amount)
        creditor = _account_number(request.creditor_account, "creditor_account")
        creditor_bank = _optional_text(request.creditor_bank_id, "creditor_bank_id", 32)
        if creditor_bank is not None and not _BANK_CODE_RE.match(creditor_bank):
            raise InvalidArgument(f"creditor_bank_id: {creditor_bank!r} is not a bank code", "creditor_bank_id")
        creditor_name = _optional_text(request.creditor_name, "creditor_name")
        currency = _currency(request.currency)
        comment = _optional_text(request.comment, "comment")
        canonical = {"kind": "transfer", "bank_id": bank.id, "account_id": account_id, "amount": format_amount(amount),
                     "creditor_account": creditor, "creditor_bank_id": creditor_bank or "",
                     "creditor_name": creditor_name or "", "currency": currency or "", "comment": comment or ""}

        async def resolve() -> PaymentIntent:
            account = await self._debtor(user_id, bank.id, account_id, currency)
            if creditor == account.account_number:
                raise InvalidArgument("creditor_account: it is the account the payment is made from",
                                      "creditor_account")
            return PaymentIntent(
                user_id=user_id, idempotency_key=key, fingerprint=fingerprint(canonical), kind="transfer",
                bank_id=bank.id, account_id=account_id, debtor_account=account.account_number,
                creditor_account=creditor, creditor_bank_id=creditor_bank, creditor_name=creditor_name,
                amount=amount, currency=currency or account.currency, comment=comment)

        return await self._submit(user_id, key, fingerprint(canonical), resolve)

    async def repay_loan(self, user_id: str, key: str, request: RepaymentRequest) -> PaymentResult:
        user_id, key = self._acting_user(user_id), _idempotency_key(key)
        agreement_id = require(request.agreement_id, "agreement_id")
        bank = self._bank(require(request.bank_id, "bank_id"), "bank_id")
        account_id = require(request.account_id, "account_id")
        amount = _amount(request.amount) if (request.amount or "").strip() else None
        loan_bank_id = _optional_text(request.loan_bank_id, "loan_bank_id", 32)
        if loan_bank_id is not None:
            self._bank(loan_bank_id, "loan_bank_id")
        comment = _optional_text(request.comment, "comment") or f"Платеж по кредиту №{agreement_id}"
        canonical = {"kind": "loan_repayment", "agreement_id": agreement_id, "loan_bank_id": loan_bank_id or "",
                     "bank_id": bank.id, "account_id": account_id,
                     "amount": format_amount(amount) if amount is not None else "", "comment": comment}

        async def resolve() -> PaymentIntent:
            loan = await self._loan(user_id, agreement_id, loan_bank_id)
            account = await self._debtor(user_id, bank.id, account_id, None)
            if loan.account_number == account.account_number:
                raise FailedPrecondition(
                    f"loan {agreement_id} is repaid from its own account {account_id} by the bank: choose another "
                    "account to pay from", )
            source, note, value = "requested", None, amount
            if value is None:
                value, currency, note = await self._next_instalment(user_id, loan)
                source = "detected"
                if currency != account.currency:
                    raise FailedPrecondition(f"loan {agreement_id} is repaid in {currency}, account {account_id} "
                                             f"holds {account.currency}")
            return PaymentIntent(
                user_id=user_id, idempotency_key=key, fingerprint=fingerprint(canonical), kind="loan_repayment",
                bank_id=bank.id, account_id=account_id, debtor_account=account.account_number,
                creditor_account=loan.account_number, creditor_bank_id=loan.bank_id, creditor_name=None,
                amount=value, currency=account.currency, comment=comment, agreement_id=agreement_id,
                amount_source=source, amount_note=note)

        return await self._submit(user_id, key, fingerprint(canonical), resolve)

    async def get(self, user_id: str, payment_id: str) -> tuple[StoredPayment, list[PaymentEventRow]]:
        """The user's payment (refreshed from the bank when not final) and its history."""
        user_id = require(user_id, "user_id")
        payment_id = require(payment_id, "payment_id")
        payment = await self.storage.get(payment_id)
        caller = user_id_var.get()
        if payment is None or payment.user_id != user_id or (caller and caller != payment.user_id):
            raise NotFound(f"Payment {payment_id} not found")
        if not payment.final:
            try:
                payment = await self._work_on(payment, initiate=False)
            except LockBusy:
                pass  # a request is working on it right now: what is stored
        return payment, await self.storage.events(payment)

    async def list(self, user_id: str, page_size: int, page_token: str) -> tuple[list[StoredPayment], str]:
        user_id = self._acting_user(user_id)
        if page_size < 0 or page_size > MAX_PAGE:
            raise InvalidArgument(f"page_size must be between 1 and {MAX_PAGE}", "page_size")
        after = None
        if page_token:
            try:
                after = PaymentCursor.from_token(page_token)
            except ValueError:
                raise InvalidArgument("page_token is not a token this service gave out", "page_token") from None
        payments, cursor = await self.storage.page(user_id, page_size or DEFAULT_PAGE, after)
        return payments, cursor.token() if cursor else ""

    # ------------------------------------------------------------------------------------ checks

    def _acting_user(self, user_id: str) -> str:
        user_id = require(user_id, "user_id")
        caller = user_id_var.get()
        if caller and caller != user_id:
            raise PermissionDenied("a payment can only be made by the user it is for")
        return user_id

    def _bank(self, bank_id: str, field: str) -> BankConfig:
        bank = self.banks.get(bank_id)
        if bank is None:
            raise InvalidArgument(f"{field}: bank '{bank_id}' is not supported", field)
        return bank

    def _client(self, bank_id: str) -> BankClient:
        bank = self.banks.get(bank_id)
        if bank is None or not bank.base_url:
            raise Unavailable(f"Bank '{bank_id}' is not configured")
        return self.clients.get(bank_id)

    async def _debtor(self, user_id: str, bank_id: str, account_id: str, currency: str | None) -> DebtorAccount:
        account = await self.data.account(user_id, bank_id, account_id)
        if account is None:
            raise NotFound(f"Account {account_id} at {bank_id} is not one of your synced accounts")
        if not account.account_number:
            raise FailedPrecondition(f"{bank_id} gave no account number for account {account_id}: it cannot pay")
        if account.sub_type.strip().lower() == "loan":
            raise FailedPrecondition(f"Account {account_id} at {bank_id} holds a loan: its money cannot be spent")
        if currency is not None and currency != account.currency:
            raise InvalidArgument(f"currency: account {account_id} holds {account.currency}, not {currency}",
                                  "currency")
        return account

    async def _loan(self, user_id: str, agreement_id: str, bank_id: str | None) -> Loan:
        found = [loan for loan in await self.data.loans(user_id)
                 if loan.agreement_id == agreement_id and bank_id in (None, loan.bank_id)]
        if not found:
            raise NotFound(f"Loan {agreement_id} is not among your synced agreements")
        if len(found) > 1:
            raise InvalidArgument(f"loan_bank_id: agreement {agreement_id} exists at "
                                  f"{', '.join(sorted(loan.bank_id for loan in found))}: name the loan's bank",
                                  "loan_bank_id")
        loan = found[0]
        if loan.product_type.strip().lower() != "loan":
            raise FailedPrecondition(f"Agreement {agreement_id} is a {loan.product_type}, not a loan")
        if loan.status.strip().lower() != "active":
            raise FailedPrecondition(f"Loan {agreement_id} is {loan.status}: nothing is due")
        if not loan.account_number:
            raise FailedPrecondition(f"{loan.bank_id} gave no account number for loan {agreement_id}")
        return loan

    async def _next_instalment(self, user_id: str, loan: Loan) -> tuple[Decimal, str, str]:
        """The instalment exactly as the dashboard derives it (`calc.obligation_of`): the average of the
        loan's past repayments, due on their typical day."""
        series = calc.repayments_by_key(await self.data.repayments(user_id)).get((loan.bank_id, loan.agreement_id))
        if series is None:
            raise FailedPrecondition(f"No repayment of loan {loan.agreement_id} is in the synced transactions, so "
                                     "its instalment is unknown: give the amount")
        obligation = calc.obligation_of(series, calc.today_of(self.clock()))
        if obligation.amount <= 0:
            raise FailedPrecondition(f"The repayments of loan {loan.agreement_id} give no positive instalment: "
                                     "give the amount")
        note = (f"average of {series.count} repayments of loan {loan.agreement_id} "
                f"({format_amount(series.total)} {series.currency} in total), next due {obligation.first.isoformat()}")
        return obligation.amount, obligation.currency, note

    # ------------------------------------------------------------------------------------ idempotency

    async def _submit(self, user_id: str, key: str, print_: str,
                      resolve: Callable[[], Awaitable[PaymentIntent]]) -> PaymentResult:
        payment, created = await self.storage.by_key(user_id, key), False
        if payment is None:
            intent = await resolve()  # a request that fails here is not recorded: the key stays free
            payment, created = await self.storage.insert(f"pmt-{uuid.uuid4().hex}", intent)
            if created:
                log.info("payment recorded", extra={"payment_id": payment.payment_id, "kind": payment.kind,
                                                    "bank_id": payment.bank_id})
        if payment.fingerprint != print_:
            raise AlreadyExists(f"Idempotency-Key {key!r} was already used for another request (payment "
                                f"{payment.payment_id}): use a new key for a new payment")
        if not payment.final:
            try:
                payment = await self._work_on(payment, initiate=True)
            except LockBusy:
                raise Aborted(f"A request with Idempotency-Key {key!r} is still in progress (payment "
                              f"{payment.payment_id}): retry in a moment") from None
        if payment.status == "FAILED":
            error = FAILURES.get(payment.error_code or "", FailedPrecondition)
            raise error(f"Payment {payment.payment_id} failed at {payment.bank_id}: {payment.error_message}")
        return PaymentResult(payment, replayed=not created)

    async def _work_on(self, payment: StoredPayment, *, initiate: bool) -> StoredPayment:
        """Advance the payment under its lock (`LockBusy` when another request holds it); a payment that
        completes here queues a sync once the lock and its connection are given back. While the lock is
        held, only its connection is used: what else is needed from the database is read before
        (the standing consent) and written after (a standing consent seen dead)."""
        work = _Work()
        if initiate and payment.kind == "loan_repayment" and payment.consent_kind is None:
            work.standing = await self.consents.standing_payment_consent(payment.user_id, payment.bank_id,
                                                                         payment.debtor_account)
        try:
            async with self.storage.hold(payment) as store:
                payment = await store.reload(payment)
                before = payment.status
                payment = await self._advance(store, payment, initiate=initiate, work=work)
        finally:
            await self._record_dead_consents(payment, work)
        if payment.status == "COMPLETED" and before != "COMPLETED":
            await self._after_completion(payment)
        return payment

    # ------------------------------------------------------------------------------------ the steps

    async def _advance(self, store: PaymentStorage, p: StoredPayment, *, initiate: bool,
                       work: _Work | None = None) -> StoredPayment:
        """Move a payment on from its stored state. `initiate` False (reads): only ask the bank, never
        request a consent or pay, and keep the stored state when the bank does not answer."""
        work = work or _Work()
        client = self._client(p.bank_id)
        for _ in range(MAX_STEPS):
            if p.final:
                return p
            if p.bank_payment_id:
                return await self._refresh_payment(store, p, client)
            if p.in_doubt:
                reconcile = self._reconcile_standing if p.standing else self._reconcile
                p = await reconcile(store, p, client, strict=initiate)
                if p.in_doubt:
                    return p  # the bank could not tell (read mode)
                continue
            if p.consent_id is None:
                if p.consent_request_id is None:
                    if not initiate:
                        return p
                    standing = work.standing
                    if p.kind == "loan_repayment" and p.consent_kind is None and standing is not None:
                        p = await self._pay_standing(store, p, client, standing.consent_id,
                                                     standing.payment_type, work)
                        continue  # paid, failed, or fallen back to a single-use consent
                    p = await self._request_consent(store, p, client)
                else:
                    p = await self._refresh_consent(store, p, client, strict=initiate)
                if p.consent_id is None:
                    return p  # waits for the customer, or failed
                continue
            if not initiate:
                return p
            if p.standing:  # not paid with it after all (reconciled): again, with a fresh reading of its uses
                p = await self._pay_standing(store, p, client, p.consent_id, p.consent_kind, work)
                continue
            p = await self._pay(store, p, client)
        raise Unavailable(f"Payment {p.payment_id} could not be settled with {p.bank_id} yet: retry with the same "
                          "Idempotency-Key")

    def _unavailable(self, p: StoredPayment, what: str, exc: Exception) -> DomainError:
        """The answer to a bank that did not take the call: unreachable or busy → UNAVAILABLE; refusing
        the app's own credentials even after a token refresh → FAILED_PRECONDITION (a refusal, not an
        outage: retrying soon changes nothing). Either way nothing was paid and the payment is kept
        pending for a retry with the same key."""
        log.warning("bank did not take a payment call", extra={"payment_id": p.payment_id, "bank_id": p.bank_id,
                                                               "step": what, "error": str(exc)})
        reason = exc.message if isinstance(exc, bank_errors.BankError) else str(exc)
        if isinstance(exc, bank_errors.AuthFailed):
            return FailedPrecondition(
                f"{p.bank_id} refused the app's credentials for {what} ({reason}); nothing was paid and payment "
                f"{p.payment_id} is kept pending: retry with the same Idempotency-Key once the credentials are fixed")
        return Unavailable(f"{p.bank_id} did not answer {what} ({reason}); payment {p.payment_id} is kept pending: "
                           "retry with the same Idempotency-Key")

    async def _fail(self, store: PaymentStorage,
                    p: StoredPayment, source: str, code: str, reason: str, **changes: object) -> StoredPayment:
        log.info("payment failed", extra={"payment_id": p.payment_id, "error_code": code, "reason": reason})
        return await store.update(p, source=source, message=f"{code}: {reason}", status="FAILED",
                                  error_code=code, error_message=reason, **changes)

    async def _request_consent(self, store: PaymentStorage, p: StoredPayment, client: BankClient) -> StoredPayment:
        """A single-use consent for exactly this payment (amount, debtor, creditor)."""
        try:
            result = await client.request_payment_consent(
                p.user_id, debtor_account=p.debtor_account, amount=p.amount, currency=p.currency,
                creditor_account=p.creditor_account, creditor_name=p.creditor_name, reference=p.payment_id,
                consent_type="single_use", creditor_bank_code=p.creditor_bank_id)
        except TRANSIENT as exc:
            raise self._unavailable(p, "the payment consent request", exc) from None
        except bank_errors.BankError as exc:
            return await self._fail(store, p, "consent", _refusal_code(exc), exc.message, consent_kind="single_use")
        if not (result.request_id or result.consent_id):
            raise self._unavailable(p, "the payment consent request", ValueError("no consent or request id"))
        return await self._store_consent(store, p, result)

    async def _refresh_consent(self, store: PaymentStorage,
                               p: StoredPayment, client: BankClient, *, strict: bool) -> StoredPayment:
        """A consent waiting for the customer: ask the bank again."""
        try:
            result = await client.get_payment_consent(p.consent_request_id)
        except bank_errors.NotFound:
            return await self._fail(store, p, "consent", "CONSENT_REJECTED",
                                    f"{p.bank_id} no longer knows the payment consent request {p.consent_request_id}")
        except bank_errors.BankError as exc:
            if strict:
                raise self._unavailable(p, "the payment consent status", exc) from None
            log.warning("payment consent refresh failed", extra={"payment_id": p.payment_id, "error": str(exc)})
            return p
        if result.status in WAITING or (result.status is ConsentStatus.APPROVED and not result.consent_id):
            return p
        return await self._store_consent(store, p, result)

    async def _store_consent(self, store: PaymentStorage, p: StoredPayment, result: ConsentResult) -> StoredPayment:
        request_id = result.request_id or p.consent_request_id
        if result.status is ConsentStatus.APPROVED and result.consent_id:
            return await store.update(
                p, source="consent", message=f"payment consent {result.consent_id} approved",
                bank_status=result.raw_status, status="INITIATING", consent_request_id=request_id,
                consent_id=result.consent_id, consent_status=result.status.value, approval_url=None,
                consent_kind="single_use")
        if result.status in WAITING:
            url = self.banks[p.bank_id].approval_url(request_id, p.user_id) if request_id else None
            return await store.update(
                p, source="consent", message=f"payment consent {request_id} waits for the customer",
                bank_status=result.raw_status, status="AWAITING_AUTHORIZATION", consent_request_id=request_id,
                consent_status=result.status.value, approval_url=url, consent_kind="single_use")
        return await self._fail(store, p, "consent", "CONSENT_REJECTED", f"the payment consent is {result.raw_status}",
                                consent_request_id=request_id, consent_status=result.status.value,
                                bank_status=result.raw_status, approval_url=None, consent_kind="single_use")

    async def _pay(self, store: PaymentStorage, p: StoredPayment, client: BankClient) -> StoredPayment:
        interaction_id = str(uuid.uuid4())
        p = await store.update(
            p, source="bank_call", in_doubt=True, bank_attempts=p.bank_attempts + 1, interaction_id=interaction_id,
            message=f"payment sent with consent {p.consent_id} (X-Fapi-Interaction-Id {interaction_id})")
        try:
            answer = await client.create_payment(
                p.user_id, p.consent_id, amount=p.amount, currency=p.currency, debtor_account=p.debtor_account,
                creditor_account=p.creditor_account, creditor_bank_code=p.creditor_bank_id, comment=p.comment,
                interaction_id=interaction_id)
        except bank_errors.ConsentRequired as exc:
            if exc.code == "INVALID_CONSENT":
                return p  # used or expired: still in doubt, the next step asks the bank which
            return await self._fail(store, p, "bank_answer", "CONSENT_REFUSED", exc.message, in_doubt=False)
        except TRANSIENT as exc:
            raise self._unavailable(p, "the payment", exc) from None
        except bank_errors.BankError as exc:  # refused: nothing was paid
            return await self._fail(store, p, "bank_answer", _refusal_code(exc), exc.message, in_doubt=False)
        return await self._record(store, p, answer, "bank_answer")

    async def _record(self, store: PaymentStorage, p: StoredPayment, answer: Payment, source: str) -> StoredPayment:
        status = _STATUS_OF[answer.status]
        changes: dict[str, object] = {"status": status, "bank_payment_id": answer.payment_id,
                                      "bank_status": answer.raw_status, "in_doubt": False}
        if status == "FAILED":
            changes.update(error_code="BANK_REJECTED", error_message=f"the bank rejected the payment "
                                                                     f"({answer.raw_status})")
        if answer.amount is not None and answer.amount != p.amount:
            log.warning("bank payment amount differs", extra={"payment_id": p.payment_id,
                                                              "bank_amount": str(answer.amount)})
        return await store.update(p, source=source, message=f"bank payment {answer.payment_id}: {answer.raw_status}",
                                  **changes)

    async def _refresh_payment(self, store: PaymentStorage, p: StoredPayment, client: BankClient) -> StoredPayment:
        """A payment the bank accepted and is settling: its current status."""
        try:
            answer = await client.get_payment(p.user_id, p.bank_payment_id)
        except bank_errors.BankError as exc:
            log.warning("payment refresh failed", extra={"payment_id": p.payment_id, "error": str(exc)})
            return p
        if answer.raw_status == p.bank_status:
            return p
        return await self._record(store, p, answer, "refresh")

    async def _reconcile(self, store: PaymentStorage,
                         p: StoredPayment, client: BankClient, *, strict: bool) -> StoredPayment:
        """The outcome of a payment call is unknown: the payment consent tells whether it happened."""
        if p.consent_id is None:  # never sent without a consent; heal the row rather than guess
            return await store.update(p, source="reconcile", in_doubt=False, message="no consent: not sent")
        try:
            consent = await client.get_payment_consent(p.consent_id)
            paid = None
            if consent.used and consent.payment_ids:
                paid = await client.get_payment(p.user_id, consent.payment_ids[-1])
        except bank_errors.BankError as exc:
            if strict:
                raise self._unavailable(p, "the reconciliation of the last payment call", exc) from None
            log.warning("payment reconciliation failed", extra={"payment_id": p.payment_id, "error": str(exc)})
            return p
        if paid is not None:
            return await self._record(store, p, paid, "reconcile")
        if consent.used:
            return await store.update(
                p, source="reconcile", status="COMPLETED", in_doubt=False, bank_status=consent.raw_status,
                message=f"the bank reports consent {p.consent_id} as used ({consent.raw_status}): the payment was "
                        "made (the bank does not name it)")
        if consent.status is ConsentStatus.APPROVED:
            return await store.update(p, source="reconcile", in_doubt=False, consent_status="APPROVED",
                                      message=f"consent {p.consent_id} is unused: the payment was not made")
        if consent.used_count == 0:
            return await store.update(
                p, source="reconcile", in_doubt=False, consent_id=None, consent_request_id=None,
                consent_status=consent.status.value,
                message=f"consent {p.consent_id} is {consent.raw_status} and unused: a new one is needed")
        reason = (f"{p.bank_id} cannot say whether payment {p.payment_id} was made (its consent is "
                  f"{consent.raw_status}): it is kept pending and will not be sent again; check the account")
        if strict:
            raise FailedPrecondition(reason)
        return p

    # ------------------------------------------------------------------------------------ standing consents

    async def _pay_standing(self, store: PaymentStorage, p: StoredPayment, client: BankClient, consent_id: str,
                            kind: str | None, work: _Work) -> StoredPayment:
        """Pay through the user's standing consent, under its lock (module docstring): its uses are read
        and committed with `in_doubt` before the call. A consent the bank shows as no longer approved is
        noted (`work.dead`, recorded once the payment's lock is given back) and the payment falls back
        to a single-use consent."""
        async with store.consent_lock(p.bank_id, consent_id):
            p, seen = await self._pay_standing_locked(store, p, client, consent_id, kind)
        if seen is not None and seen.status is not ConsentStatus.APPROVED and seen.status not in WAITING:
            work.dead.append((consent_id, seen))
        return p

    async def _record_dead_consents(self, p: StoredPayment, work: _Work) -> None:
        """Standing consents the bank showed as revoked, expired or rejected while paying: stored so, so
        the next repayment does not try them (best effort)."""
        for consent_id, seen in work.dead:
            try:
                stored = await self.consents.by_consent_id(p.bank_id, consent_id)
                if stored is not None and stored.status == "APPROVED":
                    await self.consents.update(stored, status=seen.status.value, source="poll",
                                               bank_status=seen.raw_status,
                                               message=f"seen {seen.raw_status} when paying {p.payment_id}")
            except Exception as exc:  # noqa: BLE001 - the payment went on; the next status poll sees it too
                log.warning("could not record a standing consent's status", extra={"consent_id": consent_id,
                                                                                    "error": str(exc)})

    async def _pay_standing_locked(self, store: PaymentStorage, p: StoredPayment, client: BankClient,
                                   consent_id: str, kind: str | None) -> tuple[StoredPayment, ConsentResult | None]:
        other = await store.other_in_doubt(p, consent_id)
        if other is not None:
            return await self._fall_back(store, p, f"the outcome of payment {other} with standing consent "
                                                   f"{consent_id} is not known yet"), None
        try:
            seen = await client.get_payment_consent(consent_id)
        except TRANSIENT as exc:
            raise self._unavailable(p, "the standing payment consent", exc) from None
        except bank_errors.BankError as exc:
            return await self._fall_back(store, p, f"{p.bank_id} did not show standing consent {consent_id} "
                                                   f"({exc.message})"), None
        if seen.status is not ConsentStatus.APPROVED:
            return await self._fall_back(store, p, f"standing consent {consent_id} is {seen.raw_status}"), seen
        if seen.used_count is None and not seen.payment_ids:
            return await self._fall_back(store, p, f"{p.bank_id} does not report the uses of standing consent "
                                                   f"{consent_id}, so a payment with it could not be reconciled"), None
        interaction_id = str(uuid.uuid4())
        uses = seen.used_count if seen.used_count is not None else len(seen.payment_ids)
        kind = kind if kind in STANDING else "vrp"
        p = await store.update(
            p, source="bank_call", consent_id=consent_id, consent_kind=kind, consent_status="APPROVED",
            consent_request_id=None, approval_url=None, consent_used_count=seen.used_count,
            consent_payment_ids=list(seen.payment_ids), in_doubt=True, bank_attempts=p.bank_attempts + 1,
            interaction_id=interaction_id,
            message=f"payment sent with standing {kind} consent {consent_id}, used {uses} times "
                    f"before (X-Fapi-Interaction-Id {interaction_id})")
        try:
            answer = await client.create_payment(
                p.user_id, consent_id, amount=p.amount, currency=p.currency, debtor_account=p.debtor_account,
                creditor_account=p.creditor_account, creditor_bank_code=p.creditor_bank_id, comment=p.comment,
                interaction_id=interaction_id)
        except bank_errors.ConsentRequired as exc:  # refused for this payment: nothing was paid
            return await self._fall_back(store, p, f"{p.bank_id} refused standing consent {consent_id} for this "
                                                   f"payment ({exc.message})", in_doubt=False), None
        except TRANSIENT as exc:
            raise self._unavailable(p, "the payment", exc) from None
        except bank_errors.BankError as exc:  # refused: nothing was paid
            return await self._fail(store, p, "bank_answer", _refusal_code(exc), exc.message, in_doubt=False), None
        return await self._record(store, p, answer, "bank_answer"), None

    async def _fall_back(self, store: PaymentStorage, p: StoredPayment, reason: str,
                         **changes: object) -> StoredPayment:
        """The standing consent is not used for this payment: the single-use flow takes over."""
        log.info("payment falls back to a single-use consent", extra={"payment_id": p.payment_id, "reason": reason})
        return await store.update(p, source="consent", message=f"{reason}: a single-use consent is asked for instead",
                                  consent_id=None, consent_kind="single_use", consent_status=None,
                                  consent_used_count=None, consent_payment_ids=None, **changes)

    async def _reconcile_standing(self, store: PaymentStorage, p: StoredPayment, client: BankClient, *,
                                  strict: bool) -> StoredPayment:
        """The outcome of a payment call with a standing consent is unknown: compare the consent's uses
        now with those recorded before the call. Under the consent's lock, except for reads (which
        never pay, and no other payment uses the consent while this one is in doubt)."""
        if not strict:
            return await self._reconcile_standing_locked(store, p, client, strict=False)
        async with store.consent_lock(p.bank_id, p.consent_id):
            return await self._reconcile_standing_locked(store, p, client, strict=True)

    async def _reconcile_standing_locked(self, store: PaymentStorage, p: StoredPayment, client: BankClient, *,
                                         strict: bool) -> StoredPayment:
        consent_id = p.consent_id
        try:
            seen = await client.get_payment_consent(consent_id)
            known = set(p.consent_payment_ids or ())
            candidates = []
            for bank_payment_id in (i for i in seen.payment_ids if i not in known):
                if await store.owner_of_bank_payment(p.bank_id, bank_payment_id) is not None:
                    continue  # another of our payments (never expected while this one is in doubt)
                paid = await client.get_payment(p.user_id, bank_payment_id)
                if paid.amount is None or paid.amount == p.amount:
                    candidates.append(paid)
        except bank_errors.BankError as exc:
            if strict:
                raise self._unavailable(p, "the reconciliation of the last payment call", exc) from None
            log.warning("payment reconciliation failed", extra={"payment_id": p.payment_id, "error": str(exc)})
            return p
        new_ids = [i for i in seen.payment_ids if i not in known]
        if len(candidates) == 1:
            return await self._record(store, p, candidates[0], "reconcile")
        if new_ids:
            reason = (f"{p.bank_id} reports {len(new_ids)} new payments with consent {consent_id} since payment "
                      f"{p.payment_id} was sent, and cannot say which is it: it is kept pending and will not be sent "
                      "again; check the account")
            if strict:
                raise FailedPrecondition(reason)
            return p
        before, now = p.consent_used_count, seen.used_count
        if before is not None and now is not None and now > before:
            return await store.update(
                p, source="reconcile", status="COMPLETED", in_doubt=False, bank_status=seen.raw_status,
                message=f"the bank reports consent {consent_id} used {now} times, {before} before this payment was "
                        "sent: the payment was made (the bank does not name it)")
        if seen.status is ConsentStatus.APPROVED:
            return await store.update(p, source="reconcile", in_doubt=False,
                                      message=f"standing consent {consent_id} has no new use: the payment was not "
                                              "made")
        return await self._fall_back(store, p, f"standing consent {consent_id} has no new use and is "
                                               f"{seen.raw_status}", in_doubt=False)

    async def _after_completion(self, p: StoredPayment) -> None:
        """Queue a sync of the banks the money moved at, where the user is connected (best effort)."""
        connected = {c.bank_id for c in await self.consents.approved(p.user_id, None) if c.kind == "accounts"}
        banks = [b for b in dict.fromkeys((p.bank_id, p.creditor_bank_id)) if b and b in connected]
        log.info("payment completed", extra={"payment_id": p.payment_id, "sync_banks": banks})
        if not banks:
            return
        try:
            await self.data.start_sync(p.user_id, banks, "payment")
        except Exception as exc:  # noqa: BLE001 - the payment is done; the next sync will show it
            log.warning("could not queue a sync after a payment", extra={"payment_id": p.payment_id,
                                                                         "error": str(exc)})
