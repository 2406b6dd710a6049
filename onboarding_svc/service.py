"""Onboarding domain logic (no gRPC): start, status from stored state, finalize."""
from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from svclib.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, require
from svclib.validation import parse_amount, parse_date

from onboarding_svc.model import COMPLETED, GOAL_TYPES, KINDS, Consents, Dashboard, Goals, Session, StatusView, Sync
from onboarding_svc.storage import OnboardingStorage

log = logging.getLogger("onboarding_svc")

APPROVED = "APPROVED"

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
        if user_name is not None:
            user_name = require(user_name, "user_name", max_len=200) if user_name.strip() else None
        return await self.storage.open_session(user_id, user_name)

    async def status(self, onboarding_id: str, caller: str | None = None) -> StatusView:
        """The session's progress. `caller`, when known (the gateway's authenticated user), must own it:
        another user's session is answered exactly like a missing one."""
        onboarding_id = require(onboarding_id, "onboarding_id")
        session = await self.storage.get(onboarding_id)
        if session is None or (caller is not None and session.user_id != caller):
            raise NotFound(f"Onboarding session {onboarding_id} not found")
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
        return StatusView(session=session, current_step=pending[0] if pending else STEP_FINALIZE,
                          completed_steps=completed,
                          consents_status={bank: {k: v for k, v in kinds.items() if k in KINDS}
                                           for bank, kinds in by_bank.items()})

    async def _session_for_finalize(self, onboarding_id: str, user_id: str) -> Session:
        session = await self.storage.get(onboarding_id)
        if session is None and onboarding_id == user_id:
            # The seed frontend never calls start and sends its user id as the onboarding id.
            session = await self.storage.latest_for_user(user_id) or await self.storage.open_session(user_id, None)
        if session is None:
            raise NotFound(f"Onboarding session {onboarding_id} not found")
        if session.user_id != user_id:
            raise PermissionDenied(f"Onboarding session {onboarding_id} belongs to another user")
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
                "No approved consents found. Cannot finalize onboarding: "
                "create and approve an account consent at one or more banks first.")
        account_banks = [c.bank_id for c in approved if c.kind == "accounts"]
        if not account_banks:
            waiting = sorted({c.bank_id for c in consents if c.kind == "accounts"})
            hint = f" (waiting for approval at: {', '.join(waiting)})" if waiting else ""
            raise FailedPrecondition(
                "No approved account consents found. Cannot finalize onboarding: "
                f"the account consent is mandatory{hint}.")

        # Ask sync_svc to load every connected bank; it joins jobs already queued, so a retry is safe.
        jobs = await self.sync.start_sync(user_id, account_banks, "onboarding")
        result = {
            "onboarding_id": session.onboarding_id,
            "user_id": user_id,
            "status": COMPLETED,
            "ready": True,
            "approved_consents_count": len(approved),
            "bootstrap_results": [{"bank_id": j.bank_id, "status": "queued", "job_id": j.job_id} for j in jobs],
            "completed_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        }
        stored = await self.storage.complete(session.onboarding_id, result)
        log.info("onboarding finalized", extra={"onboarding_id": session.onboarding_id, "banks": account_banks})
        return stored.finalize_result or result

    # ------------------------------------------------------------------------------------ goals

    async def goals(self, user_id: str) -> tuple[Goals, dt.datetime | None]:
        return await self.storage.get_goals(require(user_id, "user_id"))

    async def set_goals(self, user_id: str, goal_type: str | None, target_amount: str | None,
                        target_date: str | None, note: str | None) -> tuple[Goals, dt.datetime]:
        user_id = require(user_id, "user_id")
        if goal_type is not None and goal_type not in GOAL_TYPES:
            raise InvalidArgument(f"profile.goal_type: expected one of {', '.join(GOAL_TYPES)}", "profile.goal_type")
        today = dt.datetime.now(dt.timezone.utc).date()
        goals = Goals(
            goal_type=goal_type,
            target_amount=parse_amount(target_amount, "profile.target_amount") if target_amount else None,
            target_date=parse_date(target_date, "profile.target_date", earliest=today + dt.timedelta(days=1))
            if target_date else None,
            note=(note.strip()[:500] or None) if note else None)
        stored = await self.storage.put_goals(user_id, goals)
        await self.dashboard.invalidate(user_id)  # the savings part of the dashboard follows at once
        return stored
