"""SQL of the `onboarding` schema."""
from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg

from onboarding_svc.model import COMPLETED, STARTED, Session

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
