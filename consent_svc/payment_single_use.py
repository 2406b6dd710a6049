"""The single-use consent flow of a payment (no gRPC; step 4 of `consent_svc.payments`): a payment consent
for exactly this payment (amount, debtor, creditor), waiting for the customer where the bank approves
manually, the payment with it, and the reconciliation of a payment whose outcome is unknown: the
consent, single use, tells whether it was used.
"""

from __future__ import annotations

import logging
import uuid

from bankapi import errors as bank_errors
from bankapi.client import BankClient
from bankapi.models import ConsentResult, ConsentStatus
from consent_svc.payment_bank import (
    TRANSIENT,
    WAITING,
    fail,
    made_unnamed,
    not_made,
    record,
    refusal_code,
    unavailable,
)
from consent_svc.payment_storage import PaymentStorage, StoredPayment
from svclib.config import BankConfig
from svclib.errors import FailedPrecondition

log = logging.getLogger("consent_svc.payments")


async def request_consent(
    store: PaymentStorage, p: StoredPayment, client: BankClient, bank: BankConfig
) -> StoredPayment:
    """A single-use consent for exactly this payment (amount, debtor, creditor)."""
    try:
        result = await client.request_payment_consent(
            p.user_id,
            debtor_account=p.debtor_account,
            amount=p.amount,
            currency=p.currency,
            creditor_account=p.creditor_account,
            creditor_name=p.creditor_name,
            reference=p.payment_id,
            consent_type="single_use",
            creditor_bank_code=p.creditor_bank_id,
        )
    except TRANSIENT as exc:
        raise unavailable(p, "the payment consent request", exc) from None
    except bank_errors.BankError as exc:
        return await fail(store, p, "consent", refusal_code(exc), exc.message, consent_kind="single_use")
    if not (result.request_id or result.consent_id):
        raise unavailable(p, "the payment consent request", ValueError("no consent or request id"))
    return await store_consent(store, p, result, bank)


async def refresh_consent(
    store: PaymentStorage, p: StoredPayment, client: BankClient, bank: BankConfig, *, strict: bool
) -> StoredPayment:
    """A consent waiting for the customer: ask the bank again."""
    try:
        result = await client.get_payment_consent(p.consent_request_id)
    except bank_errors.NotFound:
        return await fail(
            store,
            p,
            "consent",
            "CONSENT_REJECTED",
            f"{p.bank_id} no longer knows the payment consent request {p.consent_request_id}",
        )
    except bank_errors.BankError as exc:
        if strict:
            raise unavailable(p, "the payment consent status", exc) from None
        log.warning("payment consent refresh failed", extra={"payment_id": p.payment_id, "error": str(exc)})
        return p
    if result.status in WAITING or (result.status is ConsentStatus.APPROVED and not result.consent_id):
        return p
    return await store_consent(store, p, result, bank)


async def store_consent(
    store: PaymentStorage, p: StoredPayment, result: ConsentResult, bank: BankConfig
) -> StoredPayment:
    request_id = result.request_id or p.consent_request_id
    if result.status is ConsentStatus.APPROVED and result.consent_id:
        return await store.update(
            p,
            source="consent",
            message=f"payment consent {result.consent_id} approved",
            bank_status=result.raw_status,
            status="INITIATING",
            consent_request_id=request_id,
            consent_id=result.consent_id,
            consent_status=result.status.value,
            approval_url=None,
            consent_kind="single_use",
        )
    if result.status in WAITING:
        url = bank.approval_url(request_id, p.user_id) if request_id else None
        return await store.update(
            p,
            source="consent",
            message=f"payment consent {request_id} waits for the customer",
            bank_status=result.raw_status,
            status="AWAITING_AUTHORIZATION",
            consent_request_id=request_id,
            consent_status=result.status.value,
            approval_url=url,
            consent_kind="single_use",
        )
    return await fail(
        store,
        p,
        "consent",
        "CONSENT_REJECTED",
        f"the payment consent is {result.raw_status}",
        consent_request_id=request_id,
        consent_status=result.status.value,
        bank_status=result.raw_status,
        approval_url=None,
        consent_kind="single_use",
    )


async def pay(store: PaymentStorage, p: StoredPayment, client: BankClient) -> StoredPayment:
    interaction_id = str(uuid.uuid4())
    p = await store.update(
        p,
        source="bank_call",
        in_doubt=True,
        bank_attempts=p.bank_attempts + 1,
        interaction_id=interaction_id,
        message=f"payment sent with consent {p.consent_id} (X-Fapi-Interaction-Id {interaction_id})",
    )
    try:
        answer = await client.create_payment(
            p.user_id,
            p.consent_id,
            amount=p.amount,
            currency=p.currency,
            debtor_account=p.debtor_account,
            creditor_account=p.creditor_account,
            creditor_bank_code=p.creditor_bank_id,
            comment=p.comment,
            interaction_id=interaction_id,
        )
    except bank_errors.ConsentRequired as exc:
        if exc.code == "INVALID_CONSENT":
            return p  # used or expired: still in doubt, the next step asks the bank which
        return await fail(store, p, "bank_answer", "CONSENT_REFUSED", exc.message, in_doubt=False)
    except TRANSIENT as exc:
        raise unavailable(p, "the payment", exc) from None
    except bank_errors.BankError as exc:  # refused: nothing was paid
        return await fail(store, p, "bank_answer", refusal_code(exc), exc.message, in_doubt=False)
    return await record(store, p, answer, "bank_answer")


async def reconcile(store: PaymentStorage, p: StoredPayment, client: BankClient, *, strict: bool) -> StoredPayment:
    """The outcome of a payment call is unknown: the payment consent tells whether it happened."""
    if p.consent_id is None:  # never sent without a consent; heal the row rather than guess
        return await not_made(store, p, "no consent: not sent")
    try:
        consent = await client.get_payment_consent(p.consent_id)
        paid = None
        if consent.used and consent.payment_ids:
            paid = await client.get_payment(p.user_id, consent.payment_ids[-1])
    except bank_errors.BankError as exc:
        if strict:
            raise unavailable(p, "the reconciliation of the last payment call", exc) from None
        log.warning("payment reconciliation failed", extra={"payment_id": p.payment_id, "error": str(exc)})
        return p
    if paid is not None:
        return await record(store, p, paid, "reconcile")
    if consent.used:
        return await made_unnamed(
            store, p, consent.raw_status, f"the bank reports consent {p.consent_id} as used ({consent.raw_status})"
        )
    if consent.status is ConsentStatus.APPROVED:
        return await not_made(
            store, p, f"consent {p.consent_id} is unused: the payment was not made", consent_status="APPROVED"
        )
    if consent.used_count == 0:
        return await not_made(
            store,
            p,
            f"consent {p.consent_id} is {consent.raw_status} and unused: a new one is needed",
            consent_id=None,
            consent_request_id=None,
            consent_status=consent.status.value,
        )
    reason = (
        f"{p.bank_id} cannot say whether payment {p.payment_id} was made (its consent is "
        f"{consent.raw_status}): it is kept pending and will not be sent again; check the account"
    )
    if strict:
        raise FailedPrecondition(
            reason, reason="PAYMENT_IN_DOUBT", metadata={"payment_id": p.payment_id, "bank_id": p.bank_id}
        )
    return p
