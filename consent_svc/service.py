"""Consent domain logic (no gRPC): create/reuse, refresh, callback, revoke, status.

Beyond asking the banks:

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
import dataclasses
import datetime as dt
import logging
from collections.abc import Awaitable
from typing import Protocol

from bankapi import errors as bank_errors
from bankapi.client import BankClient, BankClients
from bankapi.models import Account, ConsentResult, ConsentStatus
from consent_svc import messages
from consent_svc.storage import ConsentStorage, NewConsent, StoredConsent
from svclib.config import BankConfig
from svclib.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, Unavailable, require

log = logging.getLogger("consent_svc")

ACCOUNTS, PRODUCTS, PAYMENTS = "accounts", "products", "payments"
KINDS = (ACCOUNTS, PRODUCTS, PAYMENTS)  # the order they are created in: the account consent first
APPROVED = ConsentStatus.APPROVED.value
FAILED, DEFERRED = "FAILED", "DEFERRED"
LIVE = (APPROVED,)
WAITING = (ConsentStatus.PENDING.value, ConsentStatus.AWAITING_USER.value)

# Standing payment consent asked for at onboarding (single payments get their own, per payment):
# variable recurring payments, what fits the repayments of loans.
ONBOARDING_PAYMENT_TYPE = "vrp"
ONBOARDING_VRP = {
    "vrp_max_individual_amount": "100000.00",
    "vrp_daily_limit": "200000.00",
    "vrp_monthly_limit": "1000000.00",
}
SYNC_REASON = "consent_approved"


class SyncQueue(Protocol):
    """sync_svc as consents need it: queue a sync of some of the user's banks."""

    def start_sync(
        self, user_id: str, bank_ids: list[str], reason: str, *, after_change: bool = False
    ) -> Awaitable[None]: ...


class NoDebtorAccount(FailedPrecondition):
    """A payment consent cannot be asked for: no account to pay from (or no approved account consent)."""

    def __init__(self, message: str, code: str = messages.NO_DEBTOR_ACCOUNT):
        super().__init__(message, reason=code)
        self.error_code = code


def client_status(stored_status: str) -> str:
    """The frontend's word for a stored status: approved, pending, error or creating."""
    if stored_status == "APPROVED":
        return "approved"
    if stored_status in ("AWAITING_USER", "PENDING", "CREATING", DEFERRED):
        return "pending"
    if stored_status in ("REJECTED", "EXPIRED", "CANCELLED", "REVOKED", FAILED):
        return "error"
    return "creating"


def consent_message(consent: StoredConsent) -> str | None:
    """For people, in the request's language: why the consent is not usable, or what it waits for."""
    return messages.consent_message(consent.status, consent.error_code, consent.error_message)


@dataclasses.dataclass(frozen=True)
class BankRequest:
    bank_id: str
    account: bool
    product: bool
    payment: bool

    def kinds(self) -> list[str]:
        wanted = {ACCOUNTS: self.account, PRODUCTS: self.product, PAYMENTS: self.payment}
        return [k for k in KINDS if wanted[k]]


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What happened to one requested consent."""

    consent: StoredConsent | None
    reused: bool = False
    error: str | None = None  # not asked for at the bank (for people, in the request's language)
    newly_approved: bool = False  # became APPROVED during this request

    @property
    def status(self) -> str:
        return "error" if self.error or self.consent is None else client_status(self.consent.status)

    @property
    def message(self) -> str | None:
        """For people: the error, or why the stored consent is not usable or what it waits for."""
        if self.error or self.consent is None:
            return self.error
        return consent_message(self.consent)


@dataclasses.dataclass(frozen=True)
class BankOutcome:
    bank: BankConfig
    outcomes: dict[str, Outcome]  # kind -> outcome, only for requested kinds


def overall_status(results: list[BankOutcome]) -> str:
    statuses = [o.status for r in results for o in r.outcomes.values()]
    errors = "error" in statuses
    pending = any(s in ("pending", "creating") for s in statuses)
    if errors and pending:
        return "partial"
    if errors:
        return "error"
    return "in_progress" if pending else "completed"


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


def _is_expired(consent: StoredConsent) -> bool:
    return consent.expires_at is not None and consent.expires_at <= dt.datetime.now(dt.UTC)


def _became_approved(before: StoredConsent, after: StoredConsent) -> bool:
    return before.status != APPROVED and after.status == APPROVED


class ConsentService:
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
                    return Outcome(refreshed, reused=True, newly_approved=_became_approved(existing, refreshed))
                existing = refreshed
            replace = existing if existing is not None and existing.status in (FAILED, DEFERRED) else None
            if kind == PAYMENTS and account is not None and account.status != APPROVED:
                account = await self.storage.latest(user_id, bank.id, ACCOUNTS) or account  # approved meanwhile?
            if kind == PAYMENTS and account is not None and account.status != APPROVED:
                if existing is not None and existing.status == DEFERRED:
                    return Outcome(existing, reused=True)
                deferred = await self._save(
                    replace,
                    NewConsent(
                        user_id=user_id,
                        bank_id=bank.id,
                        kind=kind,
                        consent_id=None,
                        request_id=None,
                        status=DEFERRED,
                        bank_status=None,
                        approval_url=None,
                        permissions=(),
                        expires_at=None,
                        payment_type=ONBOARDING_PAYMENT_TYPE,
                    ),
                )
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
                NewConsent(
                    user_id=user_id,
                    bank_id=bank.id,
                    kind=kind,
                    consent_id=None,
                    request_id=None,
                    status=FAILED,
                    bank_status=None,
                    approval_url=None,
                    permissions=(),
                    expires_at=None,
                    error_code=code,
                    error_message=text,
                    payment_type=ONBOARDING_PAYMENT_TYPE if kind == PAYMENTS else None,
                ),
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

    # ------------------------------------------------------------------------------------ status

    async def status(self, user_id: str) -> list[tuple[str, dict[str, StoredConsent]]]:
        """Refresh the user's waiting consents (acting on approvals), then the newest consent of each
        kind, grouped by bank."""
        user_id = require(user_id, "user_id")
        unsettled = await self.storage.unsettled(user_id)
        refreshed = await asyncio.gather(*(self.refresh(c) for c in unsettled))
        approved: dict[str, set[str]] = {}
        for before, after in zip(unsettled, refreshed, strict=True):
            if _became_approved(before, after):
                approved.setdefault(after.bank_id, set()).add(after.kind)
        for bank_id, kinds in approved.items():
            if bank_id in self.banks:
                await self._after_approval(user_id, self.banks[bank_id], kinds)
        latest = await self.storage.latest_per_kind(user_id)
        # A deferred payment consent whose account consent is approved (e.g. approved while a request
        # acting on it died) is asked for now.
        accounts_ok = {c.bank_id for c in latest if c.kind == ACCOUNTS and c.status == APPROVED}
        waiting = [c for c in latest if c.status == DEFERRED and c.bank_id in accounts_ok and c.bank_id in self.banks]
        for consent in waiting:
            await self._request_deferred(user_id, self.banks[consent.bank_id])
        if waiting:
            latest = await self.storage.latest_per_kind(user_id)
        grouped: dict[str, dict[str, StoredConsent]] = {}
        for consent in latest:
            grouped.setdefault(consent.bank_id, {})[consent.kind] = consent
        # Banks in configuration order (the bank list's order); unknown (removed) banks last.
        rank = {bank_id: i for i, bank_id in enumerate(self.order)}
        return sorted(grouped.items(), key=lambda item: rank.get(item[0], len(rank)))

    def bank_name(self, bank_id: str) -> str:
        bank = self.banks.get(bank_id)
        return bank.name if bank else bank_id

    # ------------------------------------------------------------------------------------ callback

    async def callback(self, user_id: str, bank_id: str, request_id: str, consent_id: str) -> StoredConsent:
        """Record a consent id the bank's app sent the customer back with, once the bank confirms it."""
        user_id = require(user_id, "user_id")
        bank = self._bank(require(bank_id, "bank_id"))
        request_id = require(request_id, "request_id")
        consent_id = require(consent_id, "consent_id")
        stored = await self.storage.by_request(bank.id, request_id)
        if stored is None or stored.user_id != user_id:
            raise NotFound(
                f"No consent request {request_id} of this user at {bank.id}",
                reason="CONSENT_REQUEST_NOT_FOUND",
                metadata={"bank_id": bank.id},
            )
        if stored.status == "APPROVED" and stored.consent_id == consent_id:
            return stored  # a repeated callback
        holder = await self.storage.by_consent_id(bank.id, consent_id)
        if holder is not None and holder.id != stored.id:
            raise PermissionDenied(
                f"Consent {consent_id} is already recorded for another request",
                reason="CONSENT_ALREADY_RECORDED",
                metadata={"bank_id": bank.id},
            )
        try:
            result = await self._ask_bank(stored, bank_ref=consent_id)
            if result.status != ConsentStatus.APPROVED:
                raise FailedPrecondition(
                    f"Consent {consent_id} is not authorized at {bank.id} (bank status: {result.raw_status})",
                    reason="CONSENT_NOT_AUTHORIZED",
                    metadata={"bank_id": bank.id, "bank_status": result.raw_status},
                )
            if stored.kind == ACCOUNTS:
                # The bank answers data calls only for the customer the consent was given by.
                await self._client(bank).get_accounts(user_id, consent_id)
        except bank_errors.NotFound:
            raise NotFound(
                f"Consent {consent_id} was not found at {bank.id}",
                reason="CONSENT_NOT_FOUND",
                metadata={"bank_id": bank.id},
            ) from None
        except bank_errors.ConsentRequired:
            raise PermissionDenied(
                f"Consent {consent_id} was not given by this user at {bank.id}",
                reason="CONSENT_OF_ANOTHER_USER",
                metadata={"bank_id": bank.id},
            ) from None
        except (bank_errors.AuthFailed, bank_errors.CallRefused, bank_errors.Forbidden) as exc:
            raise PermissionDenied(
                f"{bank.id} refused to verify consent {consent_id}: {exc.message}",
                reason="BANK_REFUSED",
                metadata={"bank_id": bank.id},
            ) from None
        except bank_errors.BankError as exc:
            raise Unavailable(
                f"Could not verify consent {consent_id} at {bank.id}: {exc.message}",
                reason="BANK_UNAVAILABLE",
                metadata={"bank_id": bank.id},
            ) from None
        recorded = await self._record(stored, dataclasses.replace(result, consent_id=consent_id), "callback")
        if _became_approved(stored, recorded):
            await self._after_approval(user_id, bank, {recorded.kind})
        return recorded

    # ------------------------------------------------------------------------------------ revoke

    async def revoke(self, user_id: str, bank_ref: str) -> StoredConsent:
        """DELETE at the bank, then REVOKED here. Revoking a revoked consent is a no-op."""
        user_id = require(user_id, "user_id")
        bank_ref = require(bank_ref, "consent_id")
        stored = await self.storage.find_for_user(user_id, bank_ref)
        if stored is None:
            raise NotFound(f"Consent {bank_ref} not found", reason="CONSENT_NOT_FOUND")
        if stored.status == "REVOKED":
            return stored
        client = self._client(self._bank(stored.bank_id))
        try:
            if stored.kind == ACCOUNTS:
                await client.delete_account_consent(stored.bank_ref)
            elif stored.kind == PRODUCTS:
                await client.delete_product_consent(stored.bank_ref, user_id)
            else:
                await client.delete_payment_consent(stored.bank_ref)
        except bank_errors.NotFound:
            pass  # already gone at the bank
        except (bank_errors.AuthFailed, bank_errors.CallRefused, bank_errors.Forbidden) as exc:
            raise PermissionDenied(
                f"{stored.bank_id} refused to revoke consent {bank_ref}: {exc.message}",
                reason="BANK_REFUSED",
                metadata={"bank_id": stored.bank_id},
            ) from None
        except bank_errors.BankError as exc:
            raise Unavailable(
                f"Could not revoke consent {bank_ref} at {stored.bank_id}: {exc.message}",
                reason="BANK_UNAVAILABLE",
                metadata={"bank_id": stored.bank_id},
            ) from None
        return await self.storage.update(stored, status="REVOKED", source="revoke", bank_status="Revoked")

    # ------------------------------------------------------------------------------------ for services

    async def approved(self, user_id: str, bank_id: str | None) -> list[StoredConsent]:
        return await self.storage.approved(require(user_id, "user_id"), bank_id or None)

    async def latest(self, user_id: str) -> list[StoredConsent]:
        return await self.storage.latest_per_kind(require(user_id, "user_id"))


def _preferred_debtor(accounts: list[Account]) -> Account:
    checking = [a for a in accounts if (a.account_sub_type or "").lower() == "checking"]
    return (checking or accounts)[0]
