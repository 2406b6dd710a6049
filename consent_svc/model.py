"""Domain values of consents (no gRPC, no SQL): the kinds and statuses, what a request asks for and
what came of it.

The three kinds in the order they are created (the account consent first), the stored statuses
beyond the bank's own (FAILED: the bank could not create it; DEFERRED: a payment consent waiting
for the account consent), the standing `vrp` payment consent asked for at onboarding, a request
per bank (`BankRequest`) and its outcome per kind (`Outcome`, `BankOutcome`) with the frontend's
words for them (`client_status`, `overall_status`, `consent_message`), and the Protocol of the
sync queue the consent domain needs (`SyncQueue`, implemented in peers.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable
from typing import Protocol

from bankapi.models import ConsentStatus
from consent_svc import messages
from consent_svc.storage import StoredConsent
from svclib.config import BankConfig
from svclib.errors import FailedPrecondition

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


def became_approved(before: StoredConsent, after: StoredConsent) -> bool:
    return before.status != APPROVED and after.status == APPROVED
