"""Payments (no gRPC): idempotent single payments and loan repayments through single-use payment consents,
or, for loan repayments, through the user's standing payment consent (below).

Payments live in consent_svc because a payment is the use of a payment consent: this service already
owns the consents, their lifecycle at the banks and the bank clients that create them, and a
single-use consent made for exactly one payment is what makes a payment safe to retry (the bank
refuses a second use). Splitting them would put the consent and its only payment in two services
and two transactions. Bank data (the debtor's account number, the loan and its past repayments)
comes from sync_svc through `PaymentData`.

The parts: `consent_svc.payment_requests` (step 1 and the resolution of step 2: validation, fingerprint,
the debtor's account, the loan and its instalment), this module (idempotency, the payment's lock, the
steps driven from its stored state), `consent_svc.payment_single_use` and `consent_svc.payment_standing`
(the two flows at the bank, with their reconciliation), `consent_svc.payment_bank` (what both share),
`consent_svc.payment_storage` (the SQL).

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
import logging
import uuid
from collections.abc import Callable

from bankapi.client import BankClient, BankClients
from consent_svc.payment_bank import refresh_payment
from consent_svc.payment_requests import CheckedRequest, PaymentData, PaymentRequests, RepaymentRequest, TransferRequest
from consent_svc.payment_single_use import pay, reconcile, refresh_consent, request_consent
from consent_svc.payment_standing import Work, pay_standing, reconcile_standing, record_dead_consents
from consent_svc.payment_storage import PaymentCursor, PaymentEventRow, PaymentStorage, StoredPayment
from consent_svc.storage import ConsentStorage
from svclib.config import BankConfig
from svclib.db import LockBusy
from svclib.errors import (
    Aborted,
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
    require,
)

log = logging.getLogger("consent_svc.payments")

DEFAULT_PAGE, MAX_PAGE = 20, 100
MAX_STEPS = 6  # bank exchanges one request may drive (a consent, a payment, a reconciliation, ...)

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
#: (error_code, payment kind) -> the request field a refusal of the bank is about.
FAILURE_FIELDS = {("CREDITOR_NOT_FOUND", "transfer"): "creditor_account"}


@dataclasses.dataclass(frozen=True)
class PaymentResult:
    payment: StoredPayment
    replayed: bool  # the stored result of an earlier request with the same key


# ---------------------------------------------------------------------------------------------- service


class PaymentService:
    def __init__(
        self,
        storage: PaymentStorage,
        banks: tuple[BankConfig, ...],
        clients: BankClients,
        consents: ConsentStorage,
        data: PaymentData,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ):
        self.storage = storage
        self.banks = {b.id: b for b in banks}
        self.requests = PaymentRequests(self.banks, data, clock)
        self.clients = clients
        self.consents = consents
        self.data = data
        self.clock = clock

    # ------------------------------------------------------------------------------------ requests

    async def create_payment(self, user_id: str, key: str, request: TransferRequest) -> PaymentResult:
        return await self._submit(self.requests.transfer(user_id, key, request))

    async def repay_loan(self, user_id: str, key: str, request: RepaymentRequest) -> PaymentResult:
        return await self._submit(self.requests.repayment(user_id, key, request))

    async def get(self, user_id: str, payment_id: str) -> tuple[StoredPayment, list[PaymentEventRow]]:
        """The user's payment (refreshed from the bank when not final) and its history."""
        user_id = require(user_id, "user_id")
        payment_id = require(payment_id, "payment_id")
        payment = await self.storage.get(payment_id)
        if payment is None or payment.user_id != user_id:
            raise NotFound(f"Payment {payment_id} not found", reason="PAYMENT_NOT_FOUND")
        if not payment.final:
            try:
                payment = await self._work_on(payment, initiate=False)
            except LockBusy:
                pass  # a request is working on it right now: what is stored
        return payment, await self.storage.events(payment)

    async def list(self, user_id: str, page_size: int, page_token: str) -> tuple[list[StoredPayment], str]:
        user_id = require(user_id, "user_id")
        if page_size < 0 or page_size > MAX_PAGE:
            raise InvalidArgument(
                f"page_size must be between 1 and {MAX_PAGE}",
                "page_size",
                reason="OUT_OF_RANGE",
                metadata={"limit": MAX_PAGE},
            )
        after = None
        if page_token:
            try:
                after = PaymentCursor.from_token(page_token)
            except ValueError:
                raise InvalidArgument(
                    "page_token is not a token this service gave out", "page_token", reason="INVALID_PAGE_TOKEN"
                ) from None
        payments, cursor = await self.storage.page(user_id, page_size or DEFAULT_PAGE, after)
        return payments, cursor.token() if cursor else ""

    # ------------------------------------------------------------------------------------ idempotency

    async def _submit(self, request: CheckedRequest) -> PaymentResult:
        key = request.key
        payment, created = await self.storage.by_key(request.user_id, key), False
        if payment is None:
            intent = await request.resolve()  # a request that fails here is not recorded: the key stays free
            payment, created = await self.storage.insert(f"pmt-{uuid.uuid4().hex}", intent)
            if created:
                log.info(
                    "payment recorded",
                    extra={"payment_id": payment.payment_id, "kind": payment.kind, "bank_id": payment.bank_id},
                )
        if payment.fingerprint != request.fingerprint:
            raise AlreadyExists(
                f"Idempotency-Key {key!r} was already used for another request (payment "
                f"{payment.payment_id}): use a new key for a new payment",
                reason="IDEMPOTENCY_KEY_REUSED",
                metadata={"payment_id": payment.payment_id},
            )
        if not payment.final:
            try:
                payment = await self._work_on(payment, initiate=True)
            except LockBusy:
                raise Aborted(
                    f"A request with Idempotency-Key {key!r} is still in progress (payment "
                    f"{payment.payment_id}): retry in a moment",
                    reason="IDEMPOTENCY_KEY_IN_USE",
                    metadata={"payment_id": payment.payment_id},
                    retry_after=1,
                ) from None
        if payment.status == "FAILED":
            error = FAILURES.get(payment.error_code or "", FailedPrecondition)
            message = f"Payment {payment.payment_id} failed at {payment.bank_id}: {payment.error_message}"
            details = {
                "reason": payment.error_code or "BANK_REJECTED",
                "metadata": {"payment_id": payment.payment_id, "bank_id": payment.bank_id},
            }
            if error is InvalidArgument:  # the request named something the bank does not know
                raise InvalidArgument(message, FAILURE_FIELDS.get((payment.error_code, payment.kind)), **details)
            raise error(message, **details)
        return PaymentResult(payment, replayed=not created)

    async def _work_on(self, payment: StoredPayment, *, initiate: bool) -> StoredPayment:
        """Advance the payment under its lock (`LockBusy` when another request holds it); a payment that
        completes here queues a sync once the lock and its connection are given back. While the lock is
        held, only its connection is used: what else is needed from the database is read before
        (the standing consent) and written after (a standing consent seen dead)."""
        work = Work()
        if initiate and payment.kind == "loan_repayment" and payment.consent_kind is None:
            work.standing = await self.consents.standing_payment_consent(
                payment.user_id, payment.bank_id, payment.debtor_account
            )
        try:
            async with self.storage.hold(payment) as store:
                payment = await store.reload(payment)
                before = payment.status
                payment = await self._advance(store, payment, initiate=initiate, work=work)
        finally:
            await record_dead_consents(self.consents, payment, work)
        if payment.status == "COMPLETED" and before != "COMPLETED":
            await self._after_completion(payment)
        return payment

    # ------------------------------------------------------------------------------------ the steps

    def _client(self, bank_id: str) -> BankClient:
        bank = self.banks.get(bank_id)
        if bank is None or not bank.base_url:
            raise Unavailable(
                f"Bank '{bank_id}' is not configured", reason="BANK_NOT_CONFIGURED", metadata={"bank_id": bank_id}
            )
        return self.clients.get(bank_id)

    async def _advance(
        self, store: PaymentStorage, p: StoredPayment, *, initiate: bool, work: Work | None = None
    ) -> StoredPayment:
        """Move a payment on from its stored state. `initiate` False (reads): only ask the bank, never
        request a consent or pay, and keep the stored state when the bank does not answer."""
        work = work or Work()
        client = self._client(p.bank_id)
        bank = self.banks[p.bank_id]
        for _ in range(MAX_STEPS):
            if p.final:
                return p
            if p.bank_payment_id:
                return await refresh_payment(store, p, client)
            if p.in_doubt:
                settle = reconcile_standing if p.standing else reconcile
                p = await settle(store, p, client, strict=initiate)
                if p.in_doubt:
                    return p  # the bank could not tell (read mode)
                continue
            if p.consent_id is None:
                if p.consent_request_id is None:
                    if not initiate:
                        return p
                    standing = work.standing
                    if p.kind == "loan_repayment" and p.consent_kind is None and standing is not None:
                        p = await pay_standing(store, p, client, standing.consent_id, standing.payment_type, work)
                        continue  # paid, failed, or fallen back to a single-use consent
                    p = await request_consent(store, p, client, bank)
                else:
                    p = await refresh_consent(store, p, client, bank, strict=initiate)
                if p.consent_id is None:
                    return p  # waits for the customer, or failed
                continue
            if not initiate:
                return p
            if p.standing:  # not paid with it after all (reconciled): again, with a fresh reading of its uses
                p = await pay_standing(store, p, client, p.consent_id, p.consent_kind, work)
                continue
            p = await pay(store, p, client)
        raise Unavailable(
            f"Payment {p.payment_id} could not be settled with {p.bank_id} yet: retry with the same Idempotency-Key",
            reason="PAYMENT_PENDING",
            metadata={"payment_id": p.payment_id, "bank_id": p.bank_id},
        )

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
            log.warning("could not queue a sync after a payment", extra={"payment_id": p.payment_id, "error": str(exc)})
