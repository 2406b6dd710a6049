"""A payment's exchanges with its bank that both flows (`consent_svc.payment_single_use`,
`consent_svc.payment_standing`) share (no gRPC): recording the bank's answer, failing with the bank's
reason, refreshing a payment the bank is settling, and the answer to a bank that did not take the call.
"""

from __future__ import annotations

import logging

from bankapi import errors as bank_errors
from bankapi.client import BankClient
from bankapi.models import ConsentStatus, Payment, PaymentStatus
from consent_svc.payment_storage import PaymentStorage, StoredPayment
from svclib.errors import DomainError, FailedPrecondition, Unavailable

log = logging.getLogger("consent_svc.payments")

# Failures the bank cannot fix by itself being retried: the whole call must be repeated later.
TRANSIENT = (bank_errors.BankUnavailable, bank_errors.RateLimited, bank_errors.AuthFailed, bank_errors.UnknownBank)
WAITING = (ConsentStatus.PENDING, ConsentStatus.AWAITING_USER)

_STATUS_OF = {PaymentStatus.COMPLETED: "COMPLETED", PaymentStatus.FAILED: "FAILED", PaymentStatus.PENDING: "PENDING"}


def refusal_code(exc: bank_errors.BankError) -> str:
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


def unavailable(p: StoredPayment, what: str, exc: Exception) -> DomainError:
    """The answer to a bank that did not take the call: unreachable or busy → UNAVAILABLE; refusing
    the app's own credentials even after a token refresh → FAILED_PRECONDITION (a refusal, not an
    outage: retrying soon changes nothing). Either way nothing was paid and the payment is kept
    pending for a retry with the same key."""
    log.warning(
        "bank did not take a payment call",
        extra={"payment_id": p.payment_id, "bank_id": p.bank_id, "step": what, "error": str(exc)},
    )
    reason = exc.message if isinstance(exc, bank_errors.BankError) else str(exc)
    if isinstance(exc, bank_errors.AuthFailed):
        return FailedPrecondition(
            f"{p.bank_id} refused the app's credentials for {what} ({reason}); nothing was paid and payment "
            f"{p.payment_id} is kept pending: retry with the same Idempotency-Key once the credentials are fixed",
            reason="BANK_AUTH_FAILED",
            metadata={"payment_id": p.payment_id, "bank_id": p.bank_id},
        )
    retry_after = getattr(exc, "retry_after", None)
    return Unavailable(
        f"{p.bank_id} did not answer {what} ({reason}); payment {p.payment_id} is kept pending: "
        "retry with the same Idempotency-Key",
        reason="BANK_RATE_LIMITED" if isinstance(exc, bank_errors.RateLimited) else "BANK_UNAVAILABLE",
        metadata={"payment_id": p.payment_id, "bank_id": p.bank_id},
        retry_after=retry_after,
    )


async def fail(
    store: PaymentStorage, p: StoredPayment, source: str, code: str, reason: str, **changes: object
) -> StoredPayment:
    log.info("payment failed", extra={"payment_id": p.payment_id, "error_code": code, "reason": reason})
    return await store.update(
        p, source=source, message=f"{code}: {reason}", status="FAILED", error_code=code, error_message=reason, **changes
    )


async def record(store: PaymentStorage, p: StoredPayment, answer: Payment, source: str) -> StoredPayment:
    status = _STATUS_OF[answer.status]
    changes: dict[str, object] = {
        "status": status,
        "bank_payment_id": answer.payment_id,
        "bank_status": answer.raw_status,
        "in_doubt": False,
    }
    if status == "FAILED":
        changes.update(error_code="BANK_REJECTED", error_message=f"the bank rejected the payment ({answer.raw_status})")
    if answer.amount is not None and answer.amount != p.amount:
        log.warning(
            "bank payment amount differs", extra={"payment_id": p.payment_id, "bank_amount": str(answer.amount)}
        )
    return await store.update(
        p, source=source, message=f"bank payment {answer.payment_id}: {answer.raw_status}", **changes
    )


async def made_unnamed(store: PaymentStorage, p: StoredPayment, bank_status: str | None, why: str) -> StoredPayment:
    """Reconciled: the bank's consent shows the payment was made, though the bank does not name it."""
    return await store.update(
        p,
        source="reconcile",
        status="COMPLETED",
        in_doubt=False,
        bank_status=bank_status,
        message=f"{why}: the payment was made (the bank does not name it)",
    )


async def not_made(store: PaymentStorage, p: StoredPayment, message: str, **changes: object) -> StoredPayment:
    """Reconciled: the payment was not made (no longer in doubt; `changes` say what it needs next)."""
    return await store.update(p, source="reconcile", in_doubt=False, message=message, **changes)


async def refresh_payment(store: PaymentStorage, p: StoredPayment, client: BankClient) -> StoredPayment:
    """A payment the bank accepted and is settling: its current status."""
    try:
        answer = await client.get_payment(p.user_id, p.bank_payment_id)
    except bank_errors.BankError as exc:
        log.warning("payment refresh failed", extra={"payment_id": p.payment_id, "error": str(exc)})
        return p
    if answer.raw_status == p.bank_status:
        return p
    return await record(store, p, answer, "refresh")
