"""Loan repayments through the user's standing payment consent (no gRPC; `consent_svc.payments` explains
the flow): payments on one standing consent serialised under its lock, its uses read and committed
before the payment call, a payment of unknown outcome reconciled by the uses that appeared since, and
a fall back to the single-use flow whenever the standing consent cannot be used for a payment.
"""

from __future__ import annotations

import dataclasses
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
from consent_svc.payment_storage import STANDING, PaymentStorage, StoredPayment
from consent_svc.storage import ConsentStorage, StoredConsent
from svclib.errors import FailedPrecondition

log = logging.getLogger("consent_svc.payments")


@dataclasses.dataclass
class Work:
    """One request's work on a payment, besides the payment's own connection: the user's standing
    consent for it (read before the payment's lock is taken, so a request never waits for a second
    pooled connection while it holds one), and standing consents the bank showed as no longer
    approved (recorded after)."""

    standing: StoredConsent | None = None
    dead: list[tuple[str, ConsentResult]] = dataclasses.field(default_factory=list)


async def pay_standing(
    store: PaymentStorage, p: StoredPayment, client: BankClient, consent_id: str, kind: str | None, work: Work
) -> StoredPayment:
    """Pay through the user's standing consent, under its lock (module docstring): its uses are read
    and committed with `in_doubt` before the call. A consent the bank shows as no longer approved is
    noted (`work.dead`, recorded once the payment's lock is given back) and the payment falls back
    to a single-use consent."""
    async with store.consent_lock(p.bank_id, consent_id):
        p, seen = await _pay_standing_locked(store, p, client, consent_id, kind)
    if seen is not None and seen.status is not ConsentStatus.APPROVED and seen.status not in WAITING:
        work.dead.append((consent_id, seen))
    return p


async def record_dead_consents(consents: ConsentStorage, p: StoredPayment, work: Work) -> None:
    """Standing consents the bank showed as revoked, expired or rejected while paying: stored so, so
    the next repayment does not try them (best effort)."""
    for consent_id, seen in work.dead:
        try:
            stored = await consents.by_consent_id(p.bank_id, consent_id)
            if stored is not None and stored.status == "APPROVED":
                await consents.update(
                    stored,
                    status=seen.status.value,
                    source="poll",
                    bank_status=seen.raw_status,
                    message=f"seen {seen.raw_status} when paying {p.payment_id}",
                )
        except Exception as exc:  # noqa: BLE001 - the payment went on; the next status poll sees it too
            log.warning(
                "could not record a standing consent's status", extra={"consent_id": consent_id, "error": str(exc)}
            )


async def _pay_standing_locked(
    store: PaymentStorage, p: StoredPayment, client: BankClient, consent_id: str, kind: str | None
) -> tuple[StoredPayment, ConsentResult | None]:
    other = await store.other_in_doubt(p, consent_id)
    if other is not None:
        return await fall_back(
            store, p, f"the outcome of payment {other} with standing consent {consent_id} is not known yet"
        ), None
    try:
        seen = await client.get_payment_consent(consent_id)
    except TRANSIENT as exc:
        raise unavailable(p, "the standing payment consent", exc) from None
    except bank_errors.BankError as exc:
        return await fall_back(
            store, p, f"{p.bank_id} did not show standing consent {consent_id} ({exc.message})"
        ), None
    if seen.status is not ConsentStatus.APPROVED:
        return await fall_back(store, p, f"standing consent {consent_id} is {seen.raw_status}"), seen
    if seen.used_count is None and not seen.payment_ids:
        return await fall_back(
            store,
            p,
            f"{p.bank_id} does not report the uses of standing consent "
            f"{consent_id}, so a payment with it could not be reconciled",
        ), None
    interaction_id = str(uuid.uuid4())
    uses = seen.used_count if seen.used_count is not None else len(seen.payment_ids)
    kind = kind if kind in STANDING else "vrp"
    p = await store.update(
        p,
        source="bank_call",
        consent_id=consent_id,
        consent_kind=kind,
        consent_status="APPROVED",
        consent_request_id=None,
        approval_url=None,
        consent_used_count=seen.used_count,
        consent_payment_ids=list(seen.payment_ids),
        in_doubt=True,
        bank_attempts=p.bank_attempts + 1,
        interaction_id=interaction_id,
        message=f"payment sent with standing {kind} consent {consent_id}, used {uses} times "
        f"before (X-Fapi-Interaction-Id {interaction_id})",
    )
    try:
        answer = await client.create_payment(
            p.user_id,
            consent_id,
            amount=p.amount,
            currency=p.currency,
            debtor_account=p.debtor_account,
            creditor_account=p.creditor_account,
            creditor_bank_code=p.creditor_bank_id,
            comment=p.comment,
            interaction_id=interaction_id,
        )
    except bank_errors.ConsentRequired as exc:  # refused for this payment: nothing was paid
        return await fall_back(
            store,
            p,
            f"{p.bank_id} refused standing consent {consent_id} for this payment ({exc.message})",
            in_doubt=False,
        ), None
    except TRANSIENT as exc:
        raise unavailable(p, "the payment", exc) from None
    except bank_errors.BankError as exc:  # refused: nothing was paid
        return await fail(store, p, "bank_answer", refusal_code(exc), exc.message, in_doubt=False), None
    return await record(store, p, answer, "bank_answer"), None


async def fall_back(store: PaymentStorage, p: StoredPayment, reason: str, **changes: object) -> StoredPayment:
    """The standing consent is not used for this payment: the single-use flow takes over."""
    log.info("payment falls back to a single-use consent", extra={"payment_id": p.payment_id, "reason": reason})
    return await store.update(
        p,
        source="consent",
        message=f"{reason}: a single-use consent is asked for instead",
        consent_id=None,
        consent_kind="single_use",
        consent_status=None,
        consent_used_count=None,
        consent_payment_ids=None,
        **changes,
    )


async def reconcile_standing(
    store: PaymentStorage, p: StoredPayment, client: BankClient, *, strict: bool
) -> StoredPayment:
    """The outcome of a payment call with a standing consent is unknown: compare the consent's uses
    now with those recorded before the call. Under the consent's lock, except for reads (which
    never pay, and no other payment uses the consent while this one is in doubt)."""
    if not strict:
        return await _reconcile_standing_locked(store, p, client, strict=False)
    async with store.consent_lock(p.bank_id, p.consent_id):
        return await _reconcile_standing_locked(store, p, client, strict=True)


async def _reconcile_standing_locked(
    store: PaymentStorage, p: StoredPayment, client: BankClient, *, strict: bool
) -> StoredPayment:
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
            raise unavailable(p, "the reconciliation of the last payment call", exc) from None
        log.warning("payment reconciliation failed", extra={"payment_id": p.payment_id, "error": str(exc)})
        return p
    new_ids = [i for i in seen.payment_ids if i not in known]
    if len(candidates) == 1:
        return await record(store, p, candidates[0], "reconcile")
    if new_ids:
        reason = (
            f"{p.bank_id} reports {len(new_ids)} new payments with consent {consent_id} since payment "
            f"{p.payment_id} was sent, and cannot say which is it: it is kept pending and will not be sent "
            "again; check the account"
        )
        if strict:
            raise FailedPrecondition(
                reason, reason="PAYMENT_IN_DOUBT", metadata={"payment_id": p.payment_id, "bank_id": p.bank_id}
            )
        return p
    before, now = p.consent_used_count, seen.used_count
    if before is not None and now is not None and now > before:
        return await made_unnamed(
            store,
            p,
            seen.raw_status,
            f"the bank reports consent {consent_id} used {now} times, {before} before this payment was sent",
        )
    if seen.status is ConsentStatus.APPROVED:
        return await not_made(store, p, f"standing consent {consent_id} has no new use: the payment was not made")
    return await fall_back(
        store, p, f"standing consent {consent_id} has no new use and is {seen.raw_status}", in_doubt=False
    )
