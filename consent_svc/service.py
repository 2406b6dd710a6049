"""Consent domain logic (no gRPC): create/reuse, refresh, callback, revoke, status."""
from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging

from bankapi import errors as bank_errors
from bankapi.client import BankClient, BankClients
from bankapi.models import Account, ConsentResult, ConsentStatus

from svclib.config import BankConfig
from svclib.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, Unavailable, require

from consent_svc.storage import ConsentStorage, NewConsent, StoredConsent

log = logging.getLogger("consent_svc")

ACCOUNTS, PRODUCTS, PAYMENTS = "accounts", "products", "payments"
KINDS = (ACCOUNTS, PRODUCTS, PAYMENTS)  # the order they are created in: the account consent first
LIVE = (ConsentStatus.APPROVED.value,)
WAITING = (ConsentStatus.PENDING.value, ConsentStatus.AWAITING_USER.value)

# Standing payment consent asked for at onboarding (single payments get their own, per payment).
ONBOARDING_VRP = {"vrp_max_individual_amount": "100000.00", "vrp_daily_limit": "200000.00",
                  "vrp_monthly_limit": "1000000.00"}


def client_status(stored_status: str) -> str:
    """The frontend's word for a stored status: approved, pending, error or creating."""
    if stored_status == "APPROVED":
        return "approved"
    if stored_status in ("AWAITING_USER", "PENDING", "CREATING"):
        return "pending"
    if stored_status in ("REJECTED", "EXPIRED", "CANCELLED", "REVOKED"):
        return "error"
    return "creating"


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
    error: str | None = None

    @property
    def status(self) -> str:
        return "error" if self.error or self.consent is None else client_status(self.consent.status)


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


def _is_expired(consent: StoredConsent) -> bool:
    return consent.expires_at is not None and consent.expires_at <= dt.datetime.now(dt.timezone.utc)


class ConsentService:
    def __init__(self, storage: ConsentStorage, banks: tuple[BankConfig, ...], clients: BankClients):
        self.storage = storage
        self.banks = {b.id: b for b in banks}
        self.order = [b.id for b in banks]
        self.clients = clients

    # ------------------------------------------------------------------------------------ helpers

    def _bank(self, bank_id: str) -> BankConfig:
        bank = self.banks.get(bank_id)
        if bank is None:
            raise NotFound(f"Bank '{bank_id}' is not supported.")
        return bank

    def _client(self, bank: BankConfig) -> BankClient:
        if not bank.base_url:
            raise Unavailable(f"Bank '{bank.id}': endpoint URL is not configured.")
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
            consent, status=result.status.value, source=source, bank_status=result.raw_status,
            consent_id=consent_id, expires_at=result.expires_at,
            permissions=tuple(result.permissions) if result.permissions else None)

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
            log.warning("consent refresh failed", extra={"bank_id": consent.bank_id, "kind": consent.kind,
                                                          "error": str(exc)})
            return consent
        if result.status == ConsentStatus.APPROVED and not result.consent_id:
            return consent  # approved but without an id we could use: wait for the callback
        return await self._record(consent, result, "poll")

    # ------------------------------------------------------------------------------------ create

    async def create(self, user_id: str, requests: list[BankRequest]) -> list[BankOutcome]:
        user_id = require(user_id, "user_id")
        seen: set[str] = set()
        for i, req in enumerate(requests):
            require(req.bank_id, f"banks[{i}].bank_id")
            if req.bank_id in seen:
                raise InvalidArgument(f"banks[{i}].bank_id: bank '{req.bank_id}' is listed twice", "banks")
            seen.add(req.bank_id)
            self._bank(req.bank_id)  # every bank is checked before anything is created
        # Banks are independent: one failing never stops the others.
        return list(await asyncio.gather(*(self._create_at_bank(user_id, r) for r in requests)))

    async def _create_at_bank(self, user_id: str, req: BankRequest) -> BankOutcome:
        bank = self._bank(req.bank_id)
        outcomes: dict[str, Outcome] = {}
        for kind in req.kinds():
            if kind != ACCOUNTS:
                account = outcomes.get(ACCOUNTS)
                if account is None:
                    stored = await self.storage.latest(user_id, bank.id, ACCOUNTS)
                    account = Outcome(stored) if stored else Outcome(None, error="no account consent")
                if account.error or account.consent is None or account.consent.status not in LIVE + WAITING:
                    outcomes[kind] = Outcome(None, error="400: the account consent at this bank is required first")
                    continue
            try:
                outcomes[kind] = await self._ensure(user_id, bank, kind)
            except (bank_errors.BankError, Unavailable, FailedPrecondition) as exc:
                text = _error_text(exc)
                log.warning("consent creation failed", extra={"bank_id": bank.id, "kind": kind, "error": text})
                outcomes[kind] = Outcome(None, error=text)
        return BankOutcome(bank, outcomes)

    async def _ensure(self, user_id: str, bank: BankConfig, kind: str) -> Outcome:
        """Reuse the user's live or still-waiting consent of this kind, else ask the bank for a new one."""
        async with self.storage.creation_lock(user_id, bank.id, kind):
            existing = await self.storage.latest(user_id, bank.id, kind)
            if existing is not None:
                existing = await self.refresh(existing)
                if existing.status in LIVE + WAITING:
                    return Outcome(existing, reused=True)
            result = await self._request_at_bank(user_id, bank, kind)
            approval_url = None
            if result.status != ConsentStatus.APPROVED and result.request_id:
                approval_url = bank.approval_url(result.request_id, user_id)
            stored = await self.storage.insert(NewConsent(
                user_id=user_id, bank_id=bank.id, kind=kind,
                consent_id=result.consent_id if result.status == ConsentStatus.APPROVED else None,
                request_id=result.request_id, status=result.status.value, bank_status=result.raw_status,
                approval_url=approval_url, permissions=tuple(result.permissions), expires_at=result.expires_at))
            log.info("consent created", extra={"bank_id": bank.id, "kind": kind, "status": stored.status})
            return Outcome(stored)

    async def _request_at_bank(self, user_id: str, bank: BankConfig, kind: str) -> ConsentResult:
        client = self._client(bank)
        if kind == ACCOUNTS:
            return await client.request_account_consent(user_id)
        if kind == PRODUCTS:
            return await client.request_product_consent(user_id)
        debtor = await self._debtor_account(user_id, bank, client)
        return await client.request_payment_consent(user_id, debtor_account=debtor, amount=None,
                                                     consent_type="vrp", **ONBOARDING_VRP)

    async def _debtor_account(self, user_id: str, bank: BankConfig, client: BankClient) -> str:
        account_consent = await self.storage.latest(user_id, bank.id, ACCOUNTS)
        if account_consent is None or account_consent.status != "APPROVED" or not account_consent.consent_id:
            raise FailedPrecondition("a payment consent needs the account consent approved first; ask again then")
        accounts = await client.get_accounts(user_id, account_consent.consent_id)
        numbered = [a for a in accounts if a.account_number]
        if not numbered:
            raise FailedPrecondition("no account with an account number to pay from at this bank")
        return _preferred_debtor(numbered).account_number

    # ------------------------------------------------------------------------------------ status

    async def status(self, user_id: str) -> list[tuple[str, dict[str, StoredConsent]]]:
        """Refresh the user's waiting consents, then the newest consent of each kind, grouped by bank."""
        user_id = require(user_id, "user_id")
        unsettled = await self.storage.unsettled(user_id)
        await asyncio.gather(*(self.refresh(c) for c in unsettled))
        grouped: dict[str, dict[str, StoredConsent]] = {}
        for consent in await self.storage.latest_per_kind(user_id):
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
            raise NotFound(f"No consent request {request_id} of this user at {bank.id}")
        if stored.status == "APPROVED" and stored.consent_id == consent_id:
            return stored  # a repeated callback
        holder = await self.storage.by_consent_id(bank.id, consent_id)
        if holder is not None and holder.id != stored.id:
            raise PermissionDenied(f"Consent {consent_id} is already recorded for another request")
        try:
            result = await self._ask_bank(stored, bank_ref=consent_id)
            if result.status != ConsentStatus.APPROVED:
                raise FailedPrecondition(
                    f"Consent {consent_id} is not authorized at {bank.id} (bank status: {result.raw_status})")
            if stored.kind == ACCOUNTS:
                # The bank answers data calls only for the customer the consent was given by.
                await self._client(bank).get_accounts(user_id, consent_id)
        except bank_errors.NotFound:
            raise NotFound(f"Consent {consent_id} was not found at {bank.id}") from None
        except bank_errors.ConsentRequired:
            raise PermissionDenied(f"Consent {consent_id} was not given by this user at {bank.id}") from None
        except bank_errors.BankError as exc:
            raise Unavailable(f"Could not verify consent {consent_id} at {bank.id}: {exc.message}") from None
        recorded = dataclasses.replace(result, consent_id=consent_id)
        return await self._record(stored, recorded, "callback")

    # ------------------------------------------------------------------------------------ revoke

    async def revoke(self, user_id: str, bank_ref: str) -> StoredConsent:
        """DELETE at the bank, then REVOKED here. Revoking a revoked consent is a no-op."""
        user_id = require(user_id, "user_id")
        bank_ref = require(bank_ref, "consent_id")
        stored = await self.storage.find_for_user(user_id, bank_ref)
        if stored is None:
            raise NotFound(f"Consent {bank_ref} not found")
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
        except bank_errors.BankError as exc:
            raise Unavailable(f"Could not revoke consent {bank_ref} at {stored.bank_id}: {exc.message}") from None
        return await self.storage.update(stored, status="REVOKED", source="revoke", bank_status="Revoked")

    # ------------------------------------------------------------------------------------ for services

    async def approved(self, user_id: str, bank_id: str | None) -> list[StoredConsent]:
        return await self.storage.approved(require(user_id, "user_id"), bank_id or None)

    async def latest(self, user_id: str) -> list[StoredConsent]:
        return await self.storage.latest_per_kind(require(user_id, "user_id"))


def _preferred_debtor(accounts: list[Account]) -> Account:
    checking = [a for a in accounts if (a.account_sub_type or "").lower() == "checking"]
    return (checking or accounts)[0]
