"""Consent domain logic (no gRPC): status, callback, revoke, and the queries other services make.

`ConsentService` is what the servicer holds. Creating, reusing and refreshing consents, and acting
on an approval (a deferred payment consent asked for, the bank's sync queued), are its base
`ConsentCreation` (consent_svc/creation.py); here: the status of a user's consents (refreshing the
waiting ones first and acting on approvals), the callback the bank's app sends the customer back
with (recorded once the bank confirms the consent), revoking a consent at the bank, and the
approved and latest consents other services ask for. The values these calls take and answer are
in consent_svc/model.py.
"""

from __future__ import annotations

import asyncio
import dataclasses

from bankapi import errors as bank_errors
from bankapi.models import ConsentStatus
from consent_svc.creation import ConsentCreation
from consent_svc.model import ACCOUNTS, APPROVED, DEFERRED, PRODUCTS, became_approved
from consent_svc.storage import StoredConsent
from svclib.errors import FailedPrecondition, NotFound, PermissionDenied, Unavailable, require


class ConsentService(ConsentCreation):
    """The consent domain the servicer calls: `create` and `refresh` (from `ConsentCreation`), status,
    callback, revoke, and the queries of other services."""

    # ------------------------------------------------------------------------------------ status

    async def status(self, user_id: str) -> list[tuple[str, dict[str, StoredConsent]]]:
        """Refresh the user's waiting consents (acting on approvals), then the newest consent of each
        kind, grouped by bank."""
        user_id = require(user_id, "user_id")
        unsettled = await self.storage.unsettled(user_id)
        refreshed = await asyncio.gather(*(self.refresh(c) for c in unsettled))
        approved: dict[str, set[str]] = {}
        for before, after in zip(unsettled, refreshed, strict=True):
            if became_approved(before, after):
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
        if became_approved(stored, recorded):
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
