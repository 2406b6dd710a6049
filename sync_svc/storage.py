"""SQL of the `sync` schema."""
from __future__ import annotations

import dataclasses
import datetime as dt

import asyncpg


@dataclasses.dataclass(frozen=True)
class JobRef:
    job_id: str
    bank_id: str
    state: str
    created_at: dt.datetime
    joined: bool


class SyncStorage:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def enqueue(self, user_id: str, bank_id: str, reason: str) -> JobRef:
        """Queue a job for (user, bank), or join the one already queued or running."""
        async with self.pool.acquire() as conn:
            for _ in range(3):  # a concurrent insert can win the race between our two statements
                row = await conn.fetchrow(
                    """
                    INSERT INTO sync_jobs (user_id, bank_id, reason) VALUES ($1, $2, $3)
                    ON CONFLICT (user_id, bank_id) WHERE state IN ('queued', 'running') DO NOTHING
                    RETURNING job_id, bank_id, state, created_at
                    """, user_id, bank_id, reason)
                if row is not None:
                    return JobRef(str(row["job_id"]), row["bank_id"], row["state"], row["created_at"], False)
                row = await conn.fetchrow(
                    """
                    SELECT job_id, bank_id, state, created_at FROM sync_jobs
                    WHERE user_id = $1 AND bank_id = $2 AND state IN ('queued', 'running')
                    """, user_id, bank_id)
                if row is not None:
                    return JobRef(str(row["job_id"]), row["bank_id"], row["state"], row["created_at"], True)
        raise RuntimeError(f"could not enqueue a sync job for {user_id}/{bank_id}")
