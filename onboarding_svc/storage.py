"""SQL of the `onboarding` schema."""
from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal
from typing import Any

import asyncpg

from onboarding_svc.model import COMPLETED, STARTED, Goals, Session

_COLUMNS = "onboarding_id, user_id, user_name, status, created_at, completed_at, finalize_result"


def _session(row: asyncpg.Record | None) -> Session | None:
    if row is None:
        return None
    result = row["finalize_result"]
    return Session(row["onboarding_id"], row["user_id"], row["user_name"], row["status"], row["created_at"],
                   row["completed_at"], json.loads(result) if result is not None else None)


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
                """, user_id, user_name)
            if row is None:
                row = await conn.fetchrow(
                    f"INSERT INTO onboarding_sessions (onboarding_id, user_id, user_name) VALUES ($1, $2, $3) "
                    f"RETURNING {_COLUMNS}", str(uuid.uuid4()), user_id, user_name)
            return _session(row)

    async def get(self, onboarding_id: str) -> Session | None:
        return _session(await self.pool.fetchrow(
            f"SELECT {_COLUMNS} FROM onboarding_sessions WHERE onboarding_id = $1", onboarding_id))

    async def latest_for_user(self, user_id: str) -> Session | None:
        return _session(await self.pool.fetchrow(
            f"SELECT {_COLUMNS} FROM onboarding_sessions WHERE user_id = $1 ORDER BY created_at DESC LIMIT 1",
            user_id))

    async def complete(self, onboarding_id: str, result: dict[str, Any]) -> Session:
        """Record completion once; a concurrent or repeated call gets the first recorded result."""
        row = await self.pool.fetchrow(
            f"""
            UPDATE onboarding_sessions
            SET status = '{COMPLETED}', completed_at = now(), updated_at = now(), finalize_result = $2::jsonb
            WHERE onboarding_id = $1 AND status <> '{COMPLETED}'
            RETURNING {_COLUMNS}
            """, onboarding_id, json.dumps(result))
        return _session(row) if row is not None else await self.get(onboarding_id)

    async def has_goal(self, user_id: str) -> bool:
        return bool(await self.pool.fetchval(
            "SELECT goal_type IS NOT NULL FROM user_profiles WHERE user_id = $1", user_id))

    async def get_goals(self, user_id: str) -> tuple[Goals, dt.datetime | None]:
        row = await self.pool.fetchrow("SELECT goal_type, goal_details, updated_at FROM user_profiles "
                                       "WHERE user_id = $1", user_id)
        return _goals(row)

    async def put_goals(self, user_id: str, goals: Goals) -> tuple[Goals, dt.datetime]:
        """Replace the user's goals; the timestamp moves only when something changed."""
        details = json.dumps({"target_amount": str(goals.target_amount) if goals.target_amount is not None else None,
                              "target_date": goals.target_date.isoformat() if goals.target_date else None,
                              "note": goals.note})
        row = await self.pool.fetchrow(
            """
            INSERT INTO user_profiles AS p (user_id, goal_type, goal_details) VALUES ($1, $2, $3::jsonb)
            ON CONFLICT (user_id) DO UPDATE SET goal_type = EXCLUDED.goal_type,
                goal_details = EXCLUDED.goal_details, updated_at = now()
            WHERE (p.goal_type, p.goal_details) IS DISTINCT FROM (EXCLUDED.goal_type, EXCLUDED.goal_details)
            RETURNING goal_type, goal_details, updated_at
            """, user_id, goals.goal_type, details)
        if row is None:
            return await self.get_goals(user_id)
        return _goals(row)


def _goals(row: asyncpg.Record | None) -> tuple[Goals, dt.datetime | None]:
    if row is None:
        return Goals(), None
    details = row["goal_details"]
    details = json.loads(details) if isinstance(details, str) else (details or {})
    amount = details.get("target_amount")
    target_date = details.get("target_date")
    return Goals(goal_type=row["goal_type"], target_amount=Decimal(amount) if amount else None,
                 target_date=dt.date.fromisoformat(target_date) if target_date else None,
                 note=details.get("note")), row["updated_at"]
