"""Asking the banks for consents (no gRPC): create or reuse, refresh, and what an approval sets off.

`ConsentCreation` holds the storage, the banks and their clients; `ConsentService`
(consent_svc/service.py) builds the status, callback, revoke and query calls on it. Beyond asking
the banks:

* A consent the bank could not create is stored FAILED with its error (shown in the status, in the
  request's language); asking again for that bank and kind retries and puts the new outcome in its
  place.
* A payment consent asked for while the account consent at its bank still waits for the customer (a
  bank that approves manually) is stored DEFERRED and requested at the bank as soon as that account
  consent is recorded APPROVED (a status refresh, the callback, or asking again). It is the bank's
  standing `vrp` consent (limits per payment, day and month), which loan repayments then use.
* When a bank's account consent becomes APPROVED, that bank's first sync is queued (sync_svc), and
  again, after any running one (`after_change`), when a product consent becomes APPROVED there: the
  bank's data arrives without waiting for onboarding's finalize. Best effort: a failure is logged.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from bankapi import errors as bank_errors
from bankapi.client import BankClient, BankClients
from bankapi.models import Account, ConsentResult, ConsentStatus
from consent_svc import messages
from consent_svc.model import (
    ACCOUNTS,
    APPROVED,
    DEFERRED,
    FAILED,
    LIVE,
    ONBOARDING_PAYMENT_TYPE,
    ONBOARDING_VRP,
    PAYMENTS,
    PRODUCTS,
    SYNC_REASON,
    WAITING,
    BankOutcome,
    BankRequest,
    NoDebtorAccount,
    Outcome,
    SyncQueue,
    became_approved,
)
from consent_svc.storage import ConsentStorage, NewConsent, StoredConsent
from svclib.config import BankConfig
from svclib.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable, require

log = logging.getLogger("consent_svc")


def _error_text(exc: Exception) -> str:
    """A per-bank error message prefixed with its HTTP-style code, as the seed frontend shows it."""
    if isinstance(exc, bank_errors.BankError):
        status = exc.http_status or (503 if isinstance(exc, bank_errors.BankUnavailable) else 502)
        return f"{status}: {exc.message}"
    return f"{503 if isinstance(exc, Unavailable) else 400}: {exc}"


_UNAVAILABLE = (bank_errors.BankUnavailable, bank_errors.RateLimited, bank_errors.UnknownBank, Unavailable)


def _failure(exc: Exception) -> tuple[str, str]:
    """(error_code, technical text) of a failed consent creation."""
    if isinstance(exc, NoDebtorAccount):
        return exc.error_code, _error_text(exc)
    if isinstance(exc, _UNAVAILABLE):
        return messages.BANK_UNAVAILABLE, _error_text(exc)
    if isinstance(exc, bank_errors.AuthFailed):
        return messages.BANK_AUTH_FAILED, _error_text(exc)
    return messages.BANK_REFUSED, _error_text(exc)


def _without_bank_answer(
    user_id: str,
    bank_id: str,
    kind: str,
    status: str,
    *,
    error_code: str | None = None,
    error_message: str | None = None,
) -> NewConsent:
    """A consent row the bank issued nothing for (yet): DEFERRED, or FAILED with the bank's error."""
    return NewConsent(
        user_id=user_id,
        bank_id=bank_id,
        kind=kind,
        consent_id=None,
        request_id=None,
        status=status,
        bank_status=None,
        approval_url=None,
        permissions=(),
        expires_at=None,
        error_code=error_code,
        error_message=error_message,
        payment_type=ONBOARDING_PAYMENT_TYPE if kind == PAYMENTS else None,
    )


def _is_expired(consent: StoredConsent) -> bool:
    return consent.expires_at is not None and consent.expires_at <= dt.datetime.now(dt.UTC)


class ConsentCreation:
    """The user's consents at the configured banks: asked for (`create`), reused, refreshed from the bank
    (`refresh`), and acted on once approved. The base of `ConsentService` (consent_svc/service.py)."""

    def __init__(
        self,
        storage: ConsentStorage,
        banks: tuple[BankConfig, ...],
        clients: BankClients,
        sync: SyncQueue | None = None,
    ):
        self.storage = storage
        self.banks = {b.id: b for b in banks}
        self.order = [b.id for b in banks]
        self.clients = clients
        self.sync = sync

    # ------------------------------------------------------------------------------------ helpers

    def _bank(self, bank_id: str) -> BankConfig:
        bank = self.banks.get(bank_id)
        if bank is None:
            raise NotFound(
                f"Bank '{bank_id}' is not supported.", reason="BANK_NOT_FOUND", metadata={"bank_id": bank_id}
            )
        return bank

    def _client(self, bank: BankConfig) -> BankClient:
        if not bank.base_url:
            raise Unavailable(
                f"Bank '{bank.id}': endpoint URL is not configured.",
                reason="BANK_NOT_CONFIGURED",
                metadata={"bank_id": bank.id},
            )
        return self.clients.get(bank.id)

    async def _ask_bank(self, consent: StoredConsent, bank_ref: str | None = None) -> ConsentResult:
        """The bank's current view of a stored consent (by consent id, else request id)."""
        client = self._client(self._bank(consent.bank_id))
        ref = bank_ref or consent.bank_ref
        if consent.kind == ACCOUNTS:
            return await client.get_account_consent(ref)
        if consent.kind == PRODUCTS:
            return await client.get_product_consent(ref, consent.user_id)
        return await client.get_payment_consent(ref)

    async def _record(self, consent: StoredConsent, result: ConsentResult, source: str) -> StoredConsent:
        consent_id = result.consent_id if result.status == ConsentStatus.APPROVED else None
        return await self.storage.update(
            consent,
            status=result.status.value,
            source=source,
            bank_status=result.raw_status,
            consent_id=consent_id,
            expires_at=result.expires_at,
            permissions=tuple(result.permissions) if result.permissions else None,
        )

    async def refresh(self, consent: StoredConsent) -> StoredConsent:
        """Ask the bank about a waiting consent and store the answer; mark expired ones EXPIRED.
        A bank failure leaves the stored state as it is (logged)."""
        if consent.status == "APPROVED" and _is_expired(consent):
            return await self.storage.update(consent, status="EXPIRED", source="expiry", message="past expires_at")
        if consent.status not in WAITING:
            return consent
        try:
            result = await self._ask_bank(consent)
        except (bank_errors.BankError, Unavailable) as exc:
            log.warning(
                "consent refresh failed", extra={"bank_id": consent.bank_id, "kind": consent.kind, "error": str(exc)}
            )
            return consent
        if result.status == ConsentStatus.APPROVED and not result.consent_id:
            return consent  # approved but without an id we could use: wait for the callback
        return await self._record(consent, result, "poll")

    # ------------------------------------------------------------------------------------ create

    async def create(self, user_id: str, requests: list[BankRequest]) -> list[BankOutcome]:
        user_id = require(user_id, "user_id")
        if not requests:
            raise InvalidArgument("banks: at least one bank is required", "banks", reason="FIELD_REQUIRED")
        seen: set[str] = set()
        for i, req in enumerate(requests):
            require(req.bank_id, f"banks[{i}].bank_id")
            if req.bank_id in seen:
                raise InvalidArgument(
                    f"banks[{i}].bank_id: bank '{req.bank_id}' is listed twice",
                    "banks",
                    reason="DUPLICATE_VALUE",
                    violations=[(f"banks[{i}].bank_id", "listed twice")],
                )
            seen.add(req.bank_id)
            self._bank(req.bank_id)  # every bank is checked before anything is created
        # Banks are independent: one failing never stops the others.
        return list(await asyncio.gather(*(self._create_at_bank(user_id, r) for r in requests)))

    async def _create_at_bank(self, user_id: str, req: BankRequest) -> BankOutcome:
        bank = self._bank(req.bank_id)
        outcomes: dict[str, Outcome] = {}
        for kind in req.kinds():
            account: StoredConsent | None = None
            if kind != ACCOUNTS:
                account = (
                    outcomes[ACCOUNTS].consent
                    if ACCOUNTS in outcomes
                    else await self.storage.latest(user_id, bank.id, ACCOUNTS)
                )
                if account is None or account.status not in LIVE + WAITING:
                    outcomes[kind] = Outcome(None, error=messages.account_consent_first())
                    continue
            outcomes[kind] = await self._ensure(user_id, bank, kind, account)
        # Once per bank, after all its kinds: the first sync when the bank got connected.
        await self._after_approval(user_id, bank, {k for k, o in outcomes.items() if o.newly_approved})
        return BankOutcome(bank, outcomes)

    async def _ensure(self, user_id: str, bank: BankConfig, kind: str, account: StoredConsent | None) -> Outcome:
        """Reuse the user's live or still-waiting consent of this kind, else ask the bank for one (in
        place of a FAILED or DEFERRED one). A payment consent while the account consent (`account`)
        waits for the customer is DEFERRED instead."""
        async with self.storage.creation_lock(user_id, bank.id, kind):
            existing = await self.storage.latest(user_id, bank.id, kind)
            if existing is not None:
                refreshed = await self.refresh(existing)
                if refreshed.status in LIVE + WAITING:
                    return Outcome(refreshed, reused=True, newly_approved=became_approved(existing, refreshed))
                existing = refreshed
            replace = existing if existing is not None and existing.status in (FAILED, DEFERRED) else None
            if kind == PAYMENTS and account is not None and account.status != APPROVED:
                account = await self.storage.latest(user_id, bank.id, ACCOUNTS) or account  # approved meanwhile?
            if kind == PAYMENTS and account is not None and account.status != APPROVED:
                if existing is not None and existing.status == DEFERRED:
                    return Outcome(existing, reused=True)
                deferred = await self._save(replace, _without_bank_answer(user_id, bank.id, kind, DEFERRED))
                log.info(
                    "payment consent deferred until the account consent is approved",
                    extra={"bank_id": bank.id, "kind": kind},
                )
                return Outcome(deferred)
            stored = await self._create(user_id, bank, kind, replace)
            return Outcome(stored, newly_approved=stored.status == APPROVED)

    async def _create(self, user_id: str, bank: BankConfig, kind: str, replace: StoredConsent | None) -> StoredConsent:
        """Ask the bank for a consent and store the answer, or the failure (FAILED, with its error), in
        place of `replace` (a FAILED or DEFERRED row) when given. Call under the creation lock."""
        debtor = None
        try:
            if kind == PAYMENTS:
                debtor = await self._debtor_account(user_id, bank)
            result = await self._request_at_bank(user_id, bank, kind, debtor)
        except (bank_errors.BankError, Unavailable, FailedPrecondition) as exc:
            code, text = _failure(exc)
            log.warning("consent creation failed", extra={"bank_id": bank.id, "kind": kind, "error": text})
            return await self._save(
                replace,
                _without_bank_answer(user_id, bank.id, kind, FAILED, error_code=code, error_message=text),
            )
        approval_url = None
        if result.status != ConsentStatus.APPROVED and result.request_id:
            approval_url = bank.approval_url(result.request_id, user_id)
        stored = await self._save(
            replace,
            NewConsent(
                user_id=user_id,
                bank_id=bank.id,
                kind=kind,
                consent_id=result.consent_id if result.status == ConsentStatus.APPROVED else None,
                request_id=result.request_id,
                status=result.status.value,
                bank_status=result.raw_status,
                approval_url=approval_url,
                permissions=tuple(result.permissions),
                expires_at=result.expires_at,
                payment_type=(result.consent_type or ONBOARDING_PAYMENT_TYPE) if kind == PAYMENTS else None,
                debtor_account=debtor,
            ),
        )
        log.info("consent created", extra={"bank_id": bank.id, "kind": kind, "status": stored.status})
        return stored

    async def _save(self, replace: StoredConsent | None, new: NewConsent) -> StoredConsent:
        if replace is None:
            return await self.storage.insert(new)
        return await self.storage.replace(replace, new, "deferred" if replace.status == DEFERRED else "retry")

    async def _request_at_bank(self, user_id: str, bank: BankConfig, kind: str, debtor: str | None) -> ConsentResult:
        client = self._client(bank)
        if kind == ACCOUNTS:
            return await client.request_account_consent(user_id)
        if kind == PRODUCTS:
            return await client.request_product_consent(user_id)
        return await client.request_payment_consent(
            user_id, debtor_account=debtor, amount=None, consent_type=ONBOARDING_PAYMENT_TYPE, **ONBOARDING_VRP
        )

    async def _debtor_account(self, user_id: str, bank: BankConfig) -> str:
        account_consent = await self.storage.latest(user_id, bank.id, ACCOUNTS)
        if account_consent is None or account_consent.status != APPROVED or not account_consent.consent_id:
            raise NoDebtorAccount(
                "a payment consent needs the account consent approved first; ask again then",
                messages.ACCOUNT_CONSENT_NOT_APPROVED,
            )
        accounts = await self._client(bank).get_accounts(user_id, account_consent.consent_id)
        numbered = [a for a in accounts if a.account_number]
        if not numbered:
            raise NoDebtorAccount("no account with an account number to pay from at this bank")
        return _preferred_debtor(numbered).account_number

    # ------------------------------------------------------------------------------------ approvals

    async def _after_approval(self, user_id: str, bank: BankConfig, kinds: set[str]) -> None:
        """Consents of `kinds` at `bank` just became APPROVED: with the account consent approved, ask
        for a deferred payment consent now and queue the bank's sync (after a running one when a product
        consent came: that sync read without the agreements)."""
        if not kinds & {ACCOUNTS, PRODUCTS}:
            return
        account = await self.storage.latest(user_id, bank.id, ACCOUNTS)
        if account is None or account.status != APPROVED:
            return
        if ACCOUNTS in kinds:
            await self._request_deferred(user_id, bank)
        await self._queue_sync(user_id, bank.id, after_change=PRODUCTS in kinds)

    async def _request_deferred(self, user_id: str, bank: BankConfig) -> None:
        """A DEFERRED payment consent at the bank is asked for once the account consent is approved."""
        async with self.storage.creation_lock(user_id, bank.id, PAYMENTS):
            deferred = await self.storage.latest(user_id, bank.id, PAYMENTS)
            if deferred is None or deferred.status != DEFERRED:
                return
            account = await self.storage.latest(user_id, bank.id, ACCOUNTS)
            if account is None or account.status != APPROVED:
                return
            stored = await self._create(user_id, bank, PAYMENTS, deferred)
            log.info("deferred payment consent requested", extra={"bank_id": bank.id, "status": stored.status})

    async def _queue_sync(self, user_id: str, bank_id: str, *, after_change: bool) -> None:
        """Best effort: a sync that cannot be queued now runs at finalize or the next refresh."""
        if self.sync is None:
            return
        try:
            await self.sync.start_sync(user_id, [bank_id], SYNC_REASON, after_change=after_change)
            log.info("sync queued after a consent approval", extra={"bank_id": bank_id, "after_change": after_change})
        except Exception as exc:  # noqa: BLE001 - never fails the consent call
            log.warning(
                "could not queue a sync after a consent approval", extra={"bank_id": bank_id, "error": str(exc)}
            )


def _preferred_debtor(accounts: list[Account]) -> Account:
    checking = [a for a in accounts if (a.account_sub_type or "").lower() == "checking"]
    return (checking or accounts)[0]
