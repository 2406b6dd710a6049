"""Onboarding domain logic (no gRPC): start, status from stored state, finalize."""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import Any

from onboarding_svc.model import (
    COMPLETED,
    GOAL_TYPES,
    KINDS,
    PLANS,
    SPEEDS,
    STRATEGIES,
    Account,
    AccountChange,
    Consents,
    Dashboard,
    Goals,
    Profile,
    Session,
    StatusView,
    Sync,
)
from onboarding_svc.storage import OnboardingStorage
from svclib.errors import FailedPrecondition, InvalidArgument, NotFound, require
from svclib.validation import parse_amount, parse_date

log = logging.getLogger("onboarding_svc")

APPROVED = "APPROVED"

# A user id is the bank customer id; the app builds query strings without encoding, so it must be URL-safe.
_USER_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
NAME_MAX = 200
NOTE_MAX = 500

# Steps: 1 start, 2 account consent approved, 3 product consent approved, 4 goals, 5 finalized.
STEP_START, STEP_CONSENTS, STEP_PRODUCTS, STEP_GOALS, STEP_FINALIZE = 1, 2, 3, 4, 5


class OnboardingService:
    def __init__(self, storage: OnboardingStorage, consents: Consents, sync: Sync, dashboard: Dashboard):
        self.storage = storage
        self.consents = consents
        self.sync = sync
        self.dashboard = dashboard

    async def start(self, user_id: str, user_name: str | None) -> Session:
        user_id = require(user_id, "user_id")
        user_name = _display_name(user_name, "user_name")
        session = await self.storage.open_session(user_id, user_name)
        if user_name is not None:
            await self.storage.rename(user_id, user_name)
        return session

    async def login(self, user_id: str, user_name: str | None) -> Account:
        """The app's sign-in: the user's account, created at the first login (plan free, active); a
        given name replaces the stored one. Tokens are not this service's business (the gateway's)."""
        user_id = require(user_id, "user_id")
        if not _USER_ID_RE.match(user_id):
            raise InvalidArgument(
                "user_id: letters, digits, '.', '_' and '-' only (it goes into URLs)",
                "user_id",
                reason="INVALID_FORMAT",
            )
        return await self.storage.login(user_id, _display_name(user_name, "user_name"))

    async def status(self, onboarding_id: str, caller: str | None = None) -> StatusView:
        """The session's progress. `caller`, when known (the gateway's authenticated user), must own it:
        another user's session is answered exactly like a missing one."""
        onboarding_id = require(onboarding_id, "onboarding_id")
        session = await self.storage.get(onboarding_id)
        if session is None or (caller is not None and session.user_id != caller):
            raise NotFound(
                f"Onboarding session {onboarding_id} not found",
                reason="ONBOARDING_SESSION_NOT_FOUND",
                metadata={"onboarding_id": onboarding_id},
            )
        consents = await self.consents.list_user_consents(session.user_id)
        by_bank: dict[str, dict[str, str]] = {}
        for consent in consents:
            by_bank.setdefault(consent.bank_id, {})[consent.kind] = consent.status
        approved_kinds = {c.kind for c in consents if c.status == APPROVED}
        done = {
            STEP_START: True,
            STEP_CONSENTS: "accounts" in approved_kinds,
            STEP_PRODUCTS: "products" in approved_kinds,
            STEP_GOALS: session.status == COMPLETED or await self.storage.has_goal(session.user_id),
            STEP_FINALIZE: session.status == COMPLETED,
        }
        completed = [step for step, ok in sorted(done.items()) if ok]
        pending = [step for step, ok in sorted(done.items()) if not ok]
        return StatusView(
            session=session,
            current_step=pending[0] if pending else STEP_FINALIZE,
            completed_steps=completed,
            consents_status={bank: {k: v for k, v in kinds.items() if k in KINDS} for bank, kinds in by_bank.items()},
        )

    async def _session_for_finalize(self, onboarding_id: str, user_id: str) -> Session:
        session = await self.storage.get(onboarding_id)
        if session is None and onboarding_id == user_id:
            # The seed frontend never calls start and sends its user id as the onboarding id.
            session = await self.storage.latest_for_user(user_id) or await self.storage.open_session(user_id, None)
        if session is None:
            raise NotFound(
                f"Onboarding session {onboarding_id} not found",
                reason="ONBOARDING_SESSION_NOT_FOUND",
                metadata={"onboarding_id": onboarding_id},
            )
        if session.user_id != user_id:
            # Another user's session is answered exactly like a missing one: its existence is not theirs to know.
            raise NotFound(
                f"Onboarding session {onboarding_id} not found",
                reason="ONBOARDING_SESSION_NOT_FOUND",
                metadata={"onboarding_id": onboarding_id},
            )
        return session

    async def finalize(self, onboarding_id: str, user_id: str) -> dict[str, Any]:
        onboarding_id = require(onboarding_id, "onboarding_id")
        user_id = require(user_id, "user_id")
        session = await self._session_for_finalize(onboarding_id, user_id)
        if session.status == COMPLETED and session.finalize_result is not None:
            return session.finalize_result

        consents = await self.consents.list_user_consents(user_id)
        approved = [c for c in consents if c.status == APPROVED]
        if not approved:
            raise FailedPrecondition(
                reason="NO_APPROVED_CONSENT",
                message="No approved consents found. Cannot finalize onboarding: "
                "create and approve an account consent at one or more banks first.",
            )
        account_banks = [c.bank_id for c in approved if c.kind == "accounts"]
        if not account_banks:
            waiting = sorted({c.bank_id for c in consents if c.kind == "accounts"})
            hint = f" (waiting for approval at: {', '.join(waiting)})" if waiting else ""
            raise FailedPrecondition(
                reason="NO_APPROVED_ACCOUNT_CONSENT",
                message="No approved account consents found. Cannot finalize onboarding: "
                f"the account consent is mandatory{hint}.",
            )

        # Every connected bank's first sync was queued when its account consent was approved; ask sync_svc
        # for the banks not synced and not syncing yet (a retry is safe: jobs in flight are joined).
        jobs = await self.sync.start_sync(user_id, account_banks, "onboarding", skip_synced=True)
        result = {
            "onboarding_id": session.onboarding_id,
            "user_id": user_id,
            "status": COMPLETED,
            "ready": True,
            "approved_consents_count": len(approved),
            "bootstrap_results": [
                {"bank_id": j.bank_id, "status": "synced" if j.state == "succeeded" else "queued", "job_id": j.job_id}
                for j in jobs
            ],
            "completed_at": dt.datetime.now(dt.UTC).isoformat(),
        }
        stored = await self.storage.complete(session.onboarding_id, result)
        log.info("onboarding finalized", extra={"onboarding_id": session.onboarding_id, "banks": account_banks})
        return stored.finalize_result or result

    # ------------------------------------------------------------------------------------ profile

    async def profile(self, user_id: str) -> Profile:
        return await self.storage.get_profile(require(user_id, "user_id"))

    async def update_profile(self, user_id: str, fields: dict[str, Any]) -> Profile:
        """Replace the goals (goal fields absent from `fields` are cleared) and apply name, plan and
        active flag when given (absent: kept). `fields` holds raw values by Profile field name."""
        user_id = require(user_id, "user_id")
        goal_type = fields.get("goal_type")
        if goal_type is not None and goal_type not in GOAL_TYPES:
            raise InvalidArgument(
                f"profile.goal_type: expected one of {', '.join(GOAL_TYPES)}",
                "profile.goal_type",
                reason="INVALID_VALUE",
            )
        for name, allowed in (("loans_speed", SPEEDS), ("savings_speed", SPEEDS), ("loan_strategy", STRATEGIES)):
            if fields.get(name) is not None and fields[name] not in allowed:
                raise InvalidArgument(
                    f"profile.{name}: expected one of {', '.join(allowed)}", f"profile.{name}", reason="INVALID_VALUE"
                )
        horizon = fields.get("horizon_months")
        if horizon is not None and not 1 <= horizon <= 600:
            raise InvalidArgument(
                "profile.horizon_months: must be between 1 and 600", "profile.horizon_months", reason="OUT_OF_RANGE"
            )
        plan = fields.get("subscription_plan")
        if plan is not None and plan.strip().lower() not in PLANS:
            raise InvalidArgument(
                f"profile.subscription_plan: expected one of {', '.join(PLANS)}",
                "profile.subscription_plan",
                reason="INVALID_VALUE",
            )
        note = fields.get("note")
        if note is not None and len(note.strip()) > NOTE_MAX:
            raise InvalidArgument(
                f"profile.note: at most {NOTE_MAX} characters",
                "profile.note",
                reason="LIMIT_EXCEEDED",
                metadata={"limit": NOTE_MAX},
            )
        today = dt.datetime.now(dt.UTC).date()
        amount, target_date = fields.get("target_amount"), fields.get("target_date")
        goals = Goals(
            goal_type=goal_type,
            target_amount=parse_amount(amount, "profile.target_amount") if amount else None,
            target_date=parse_date(target_date, "profile.target_date", earliest=today + dt.timedelta(days=1))
            if target_date
            else None,
            note=(note or "").strip() or None,
            loans_speed=fields.get("loans_speed"),
            savings_speed=fields.get("savings_speed"),
            loan_strategy=fields.get("loan_strategy"),
            horizon_months=horizon,
        )
        change = AccountChange(
            name=_display_name(fields.get("name"), "profile.name"),
            subscription_plan=plan.strip().lower() if plan is not None else None,
            is_active=fields.get("is_active"),
        )
        stored = await self.storage.put_profile(user_id, goals, change)
        await self.dashboard.invalidate(user_id)  # the savings and loan parts of the dashboard follow at once
        return stored


def _display_name(value: str | None, field: str) -> str | None:
    """A display name: blank is unset, over NAME_MAX characters an error."""
    if value is None or not value.strip():
        return None
    return require(value, field, max_len=NAME_MAX)
