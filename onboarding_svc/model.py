"""Domain values of onboarding (no gRPC, no SQL)."""
from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal
from typing import Any, Awaitable, Protocol

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

    def start_sync(self, user_id: str, bank_ids: list[str], reason: str) -> Awaitable[list[QueuedSync]]: ...


GOAL_TYPES = ("savings", "loans", "emergency_fund")


@dataclasses.dataclass(frozen=True)
class Goals:
    goal_type: str | None = None  # one of GOAL_TYPES
    target_amount: Decimal | None = None
    target_date: dt.date | None = None
    note: str | None = None


class Dashboard(Protocol):
    """What onboarding needs of dashboard_svc: drop a user's cached dashboard when the goals change."""

    def invalidate(self, user_id: str) -> Awaitable[None]: ...
