"""SQL of the `onboarding` schema."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal
from typing import Any

import asyncpg

from onboarding_svc.model import COMPLETED, STARTED, Account, AccountChange, Goals, Profile, Session
from svclib.rows import returned

_COLUMNS = "onboarding_id, user_id, user_name, status, created_at, completed_at, finalize_result"


def _session_or_none(row: asyncpg.Record | None) -> Session | None:
    return None if row is None else _session(row)


def _session(row: asyncpg.Record) -> Session:
    result = row["finalize_result"]
    return Session(
        row["onboarding_id"],
        row["user_id"],
        row["user_name"],
        row["status"],
        row["created_at"],
        row["completed_at"],
        json.loads(result) if result is not None else None,
    )


class OnboardingStorage:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def open_session(self, user_id: str, user_name: str | None) -> Session:
        """The user's open (started) session, or a new one. A retried start creates nothing new."""
        async with self.pool.acquire() as conn, conn.transaction():
            # Serialise starts of one user so two concurrent starts cannot both create a session.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('onboarding:' || $1, 0))", user_id)
            row = await conn.fetchrow(
                f"""
                UPDATE onboarding_sessions SET user_name = COALESCE($2, user_name), updated_at = now()
                WHERE onboarding_id = (SELECT onboarding_id FROM onboarding_sessions
                                       WHERE user_id = $1 AND status = '{STARTED}'
                                       ORDER BY created_at DESC LIMIT 1)
                RETURNING {_COLUMNS}
                """,
                user_id,
                user_name,
            )
            if row is None:
                row = await conn.fetchrow(
                    f"INSERT INTO onboarding_sessions (onboarding_id, user_id, user_name) VALUES ($1, $2, $3) "
                    f"RETURNING {_COLUMNS}",
                    str(uuid.uuid4()),
                    user_id,
                    user_name,
                )
            return _session(returned(row, "open session"))

    async def get(self, onboarding_id: str) -> Session | None:
        return _session_or_none(
            await self.pool.fetchrow(
                f"SELECT {_COLUMNS} FROM onboarding_sessions WHERE onboarding_id = $1", onboarding_id
            )
        )

    async def latest_for_user(self, user_id: str) -> Session | None:
        return _session_or_none(
            await self.pool.fetchrow(
                f"SELECT {_COLUMNS} FROM onboarding_sessions WHERE user_id = $1 ORDER BY created_at DESC LIMIT 1",
                user_id,
            )
        )

    async def complete(self, onboarding_id: str, result: dict[str, Any]) -> Session:
        """Record completion once; a concurrent or repeated call gets the first recorded result."""
        row = await self.pool.fetchrow(
            f"""
            UPDATE onboarding_sessions
            SET status = '{COMPLETED}', completed_at = now(), updated_at = now(), finalize_result = $2::jsonb
            WHERE onboarding_id = $1 AND status <> '{COMPLETED}'
            RETURNING {_COLUMNS}
            """,
            onboarding_id,
            json.dumps(result),
        )
        if row is not None:
            return _session(row)
        done = await self.get(onboarding_id)  # completed before: its first result
        if done is None:
            raise LookupError(f"no onboarding session {onboarding_id}")
        return done

    async def has_goal(self, user_id: str) -> bool:
        return bool(
            await self.pool.fetchval("SELECT goal_type IS NOT NULL FROM user_profiles WHERE user_id = $1", user_id)
        )

    async def login(self, user_id: str, name: str | None) -> Account:
        """The user's account, created at the first login; a given name replaces the stored one."""
        row = await self.pool.fetchrow(
            f"""
            INSERT INTO user_profiles AS p (user_id, display_name, last_login_at) VALUES ($1, $2, now())
            ON CONFLICT (user_id) DO UPDATE SET display_name = COALESCE(EXCLUDED.display_name, p.display_name),
                last_login_at = now(),
                updated_at = CASE WHEN EXCLUDED.display_name IS DISTINCT FROM NULL
                                   AND EXCLUDED.display_name IS DISTINCT FROM p.display_name
                                  THEN now() ELSE p.updated_at END
            RETURNING {_PROFILE_COLUMNS}
            """,
            user_id,
            name,
        )
        return _profile(row).account

    async def rename(self, user_id: str, name: str) -> None:
        """Store a display name given at onboarding start (the account is created when missing)."""
        await self.pool.execute(
            """
            INSERT INTO user_profiles AS p (user_id, display_name) VALUES ($1, $2)
            ON CONFLICT (user_id) DO UPDATE SET display_name = EXCLUDED.display_name, updated_at = now()
            WHERE p.display_name IS DISTINCT FROM EXCLUDED.display_name
            """,
            user_id,
            name,
        )

    async def get_profile(self, user_id: str) -> Profile:
        row = await self.pool.fetchrow(f"SELECT {_PROFILE_COLUMNS} FROM user_profiles WHERE user_id = $1", user_id)
        return _profile(row, user_id)

    async def put_profile(self, user_id: str, goals: Goals, change: AccountChange) -> Profile:
        """Replace the user's goals and apply the account change (None fields keep what is stored);
        the timestamp moves only when something changed."""
        details = json.dumps(
            {
                "target_amount": str(goals.target_amount) if goals.target_amount is not None else None,
                "target_date": goals.target_date.isoformat() if goals.target_date else None,
                "note": goals.note,
                "loans_speed": goals.loans_speed,
                "savings_speed": goals.savings_speed,
                "loan_strategy": goals.loan_strategy,
                "horizon_months": goals.horizon_months,
            },
            sort_keys=True,
        )
        row = await self.pool.fetchrow(
            f"""
            INSERT INTO user_profiles AS p (user_id, goal_type, goal_details, display_name, subscription_plan,
                                            is_active)
            VALUES ($1, $2, $3::jsonb, $4, COALESCE($5, 'free'), COALESCE($6, true))
            ON CONFLICT (user_id) DO UPDATE SET goal_type = EXCLUDED.goal_type,
                goal_details = EXCLUDED.goal_details,
                display_name = COALESCE($4, p.display_name),
                subscription_plan = COALESCE($5, p.subscription_plan),
                is_active = COALESCE($6, p.is_active),
                updated_at = now()
            WHERE (p.goal_type, p.goal_details, p.display_name, p.subscription_plan, p.is_active)
                  IS DISTINCT FROM (EXCLUDED.goal_type, EXCLUDED.goal_details, COALESCE($4, p.display_name),
                                    COALESCE($5, p.subscription_plan), COALESCE($6, p.is_active))
            RETURNING {_PROFILE_COLUMNS}
            """,
            user_id,
            goals.goal_type,
            details,
            change.name,
            change.subscription_plan,
            change.is_active,
        )
        if row is None:
            return await self.get_profile(user_id)
        return _profile(row)


_PROFILE_COLUMNS = "user_id, goal_type, goal_details, display_name, subscription_plan, is_active, updated_at"


def _profile(row: asyncpg.Record | None, user_id: str | None = None) -> Profile:
    if row is None:
        return Profile(Account(user_id or ""), Goals(), None)
    details = row["goal_details"]
    details = json.loads(details) if isinstance(details, str) else (details or {})
    amount = details.get("target_amount")
    target_date = details.get("target_date")
    goals = Goals(
        goal_type=row["goal_type"],
        target_amount=Decimal(amount) if amount else None,
        target_date=dt.date.fromisoformat(target_date) if target_date else None,
        note=details.get("note"),
        loans_speed=details.get("loans_speed"),
        savings_speed=details.get("savings_speed"),
        loan_strategy=details.get("loan_strategy"),
        horizon_months=details.get("horizon_months"),
    )
    account = Account(row["user_id"], row["display_name"], row["subscription_plan"], row["is_active"])
    return Profile(account, goals, row["updated_at"])
