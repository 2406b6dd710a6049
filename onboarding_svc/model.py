"""Domain values of onboarding (no gRPC, no SQL)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Awaitable
from decimal import Decimal
from typing import Any, Protocol

STARTED = "started"
COMPLETED = "completed"

# Consent kinds as stored and shown (`consents_status[bank][kind]`).
KINDS = ("accounts", "products", "payments")


@dataclasses.dataclass(frozen=True)
class Session:
    onboarding_id: str
    user_id: str
    user_name: str | None
    status: str
    created_at: dt.datetime
    completed_at: dt.datetime | None
    finalize_result: dict[str, Any] | None


@dataclasses.dataclass(frozen=True)
class ConsentInfo:
    bank_id: str
    kind: str  # accounts | products | payments
    status: str  # normalised: APPROVED, AWAITING_USER, ...


@dataclasses.dataclass(frozen=True)
class QueuedSync:
    bank_id: str
    job_id: str
    state: str = "queued"  # queued | running | succeeded | failed | needs_reconsent (the job's state)


@dataclasses.dataclass(frozen=True)
class StatusView:
    session: Session
    current_step: int
    completed_steps: list[int]
    consents_status: dict[str, dict[str, str]]


class Consents(Protocol):
    """What onboarding needs of consent_svc."""

    def list_user_consents(self, user_id: str) -> Awaitable[list[ConsentInfo]]: ...


class Sync(Protocol):
    """What onboarding needs of sync_svc."""

    def start_sync(
        self, user_id: str, bank_ids: list[str], reason: str, skip_synced: bool = False
    ) -> Awaitable[list[QueuedSync]]: ...


GOAL_TYPES = ("savings", "loans", "emergency_fund", "savings_and_loans")
SPEEDS = ("conservative", "optimal", "fast")
STRATEGIES = ("avalanche", "snowball")
PLANS = ("free", "premium")


@dataclasses.dataclass(frozen=True)
class Goals:
    goal_type: str | None = None  # one of GOAL_TYPES
    target_amount: Decimal | None = None
    target_date: dt.date | None = None
    note: str | None = None
    loans_speed: str | None = None  # one of SPEEDS (None: the default, optimal)
    savings_speed: str | None = None
    loan_strategy: str | None = None  # one of STRATEGIES (None: the default, avalanche)
    horizon_months: int | None = None  # savings horizon when there is no target date


@dataclasses.dataclass(frozen=True)
class Account:
    """Who the user is: display name (None: never given), plan, active flag."""

    user_id: str
    name: str | None = None
    subscription_plan: str = "free"
    is_active: bool = True

    @property
    def display_name(self) -> str:
        return self.name or f"User {self.user_id}"


@dataclasses.dataclass(frozen=True)
class AccountChange:
    """Fields of an update of the account part of a profile; None keeps the stored value."""

    name: str | None = None
    subscription_plan: str | None = None
    is_active: bool | None = None


@dataclasses.dataclass(frozen=True)
class Profile:
    account: Account
    goals: Goals
    updated_at: dt.datetime | None


class Dashboard(Protocol):
    """What onboarding needs of dashboard_svc: drop a user's cached dashboard when the goals change."""

    def invalidate(self, user_id: str) -> Awaitable[None]: ...
