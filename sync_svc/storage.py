"""SQL of the `sync` schema."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import asyncpg


@dataclasses.dataclass(frozen=True)
class JobRef:
    job_id: str
    bank_id: str
    state: str
    created_at: dt.datetime
    joined: bool


@dataclasses.dataclass(frozen=True)
class Job:
    job_id: str
    user_id: str
    bank_id: str
    state: str
    reason: str
    force: bool
    attempts: int
    run_after: dt.datetime
    lease_until: dt.datetime | None
    worker_id: str | None
    last_error: str | None
    progress: dict
    created_at: dt.datetime
    updated_at: dt.datetime
    finished_at: dt.datetime | None
    request_id: str | None = None  # of the request that queued it (the worker logs under it)
    traceparent: str | None = None  # of the request that queued it (the job's trace links to it)


_JOB_COLUMNS = (
    "job_id, user_id, bank_id, state, reason, force, attempts, run_after, lease_until, worker_id, "
    "last_error, progress, created_at, updated_at, finished_at, request_id, traceparent"
)


def _job_or_none(row: asyncpg.Record | None) -> Job | None:
    return None if row is None else _job(row)


def _job(row: asyncpg.Record) -> Job:
    values = dict(row)
    values["job_id"] = str(values["job_id"])
    progress = values["progress"]
    values["progress"] = json.loads(progress) if isinstance(progress, str) else (progress or {})
    return Job(**values)


class JobStorage:
    """The durable job queue: claimed with FOR UPDATE SKIP LOCKED, held with a lease."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def enqueue(
        self,
        user_id: str,
        bank_id: str,
        reason: str,
        force: bool = False,
        request_id: str | None = None,
        after_change: bool = False,
        traceparent: str | None = None,
    ) -> JobRef:
        """Queue a job for (user, bank), or join the one already queued or running (which keeps the
        request id and traceparent it was queued with). With `after_change` (the caller just changed data at the
        bank), a running job that is joined may have read before the change: it is marked to run again
        once it finishes."""
        async with self.pool.acquire() as conn:
            for _ in range(3):  # a concurrent insert can win the race between our two statements
                row = await conn.fetchrow(
                    """
                    INSERT INTO sync_jobs (user_id, bank_id, reason, force, request_id, traceparent)
                    VALUES ($1, $2, $3, $4, $5, $6)
                    ON CONFLICT (user_id, bank_id) WHERE state IN ('queued', 'running') DO NOTHING
                    RETURNING job_id, bank_id, state, created_at
                    """,
                    user_id,
                    bank_id,
                    reason,
                    force,
                    request_id,
                    traceparent,
                )
                if row is not None:
                    await conn.execute("NOTIFY sync_jobs")
                    return JobRef(str(row["job_id"]), row["bank_id"], row["state"], row["created_at"], False)
                row = await conn.fetchrow(
                    """
                    SELECT job_id, bank_id, state, created_at FROM sync_jobs
                    WHERE user_id = $1 AND bank_id = $2 AND state IN ('queued', 'running')
                    """,
                    user_id,
                    bank_id,
                )
                if row is not None:
                    if after_change and row["state"] == "running":
                        await conn.execute(
                            "UPDATE sync_jobs SET rerun = true WHERE job_id = $1 AND state = 'running'", row["job_id"]
                        )
                    return JobRef(str(row["job_id"]), row["bank_id"], row["state"], row["created_at"], True)
        raise RuntimeError(f"could not enqueue a sync job for {user_id}/{bank_id}")

    async def claim(self, worker_id: str, lease_seconds: float) -> Job | None:
        """Take the oldest runnable job: queued and due, or running with an expired lease (its worker
        died). The claim counts as an attempt."""
        return _job_or_none(
            await self.pool.fetchrow(
                f"""
            UPDATE sync_jobs SET state = 'running', worker_id = $1, attempts = attempts + 1, rerun = false,
                   lease_until = now() + make_interval(secs => $2), started_at = COALESCE(started_at, now()),
                   updated_at = now()
            WHERE job_id = (
                SELECT job_id FROM sync_jobs
                WHERE (state = 'queued' AND run_after <= now()) OR (state = 'running' AND lease_until < now())
                ORDER BY run_after, created_at
                LIMIT 1 FOR UPDATE SKIP LOCKED)
            RETURNING {_JOB_COLUMNS}
            """,
                worker_id,
                lease_seconds,
            )
        )

    async def heartbeat(self, job_id: str, worker_id: str, lease_seconds: float, progress: dict) -> bool:
        """Extend the lease and store progress; False when the job is no longer ours."""
        status: str = await self.pool.execute(
            """
            UPDATE sync_jobs SET lease_until = now() + make_interval(secs => $3), progress = $4::jsonb,
                   updated_at = now()
            WHERE job_id = $1 AND worker_id = $2 AND state = 'running'
            """,
            job_id,
            worker_id,
            lease_seconds,
            json.dumps(progress),
        )
        return status.endswith(" 1")

    async def finish(self, job_id: str, worker_id: str, state: str, progress: dict, error: str | None = None) -> bool:
        """Record the job's end; a job marked to run again (see `enqueue`) queues its successor in the
        same transaction. False when the job is no longer ours."""
        async with self.pool.acquire() as conn, conn.transaction():
            done = await conn.fetchrow(
                """
                UPDATE sync_jobs SET state = $3, progress = $4::jsonb, last_error = $5, lease_until = NULL,
                       finished_at = now(), updated_at = now()
                WHERE job_id = $1 AND worker_id = $2 AND state = 'running'
                RETURNING user_id, bank_id, force, request_id, traceparent, rerun
                """,
                job_id,
                worker_id,
                state,
                json.dumps(progress),
                error,
            )
            if done is None:
                return False
            if done["rerun"]:
                await conn.execute(
                    """
                    INSERT INTO sync_jobs (user_id, bank_id, reason, force, request_id, traceparent)
                    VALUES ($1, $2, 'after_change', $3, $4, $5)
                    ON CONFLICT (user_id, bank_id) WHERE state IN ('queued', 'running') DO NOTHING
                    """,
                    done["user_id"],
                    done["bank_id"],
                    done["force"],
                    done["request_id"],
                    done["traceparent"],
                )
                await conn.execute("NOTIFY sync_jobs")
            return True

    async def retry_later(
        self, job_id: str, worker_id: str, delay_seconds: float, error: str, refund_attempt: bool = False
    ) -> bool:
        """Queue our running job again in `delay_seconds`; with `refund_attempt`, the attempt that just
        ended does not count (it was cut short by something else than the job: the database going
        away). False when the job is no longer ours."""
        status: str = await self.pool.execute(
            """
            UPDATE sync_jobs SET state = 'queued', run_after = now() + make_interval(secs => $3),
                   last_error = $4, lease_until = NULL, worker_id = NULL, rerun = false, updated_at = now(),
                   attempts = CASE WHEN $5 THEN greatest(attempts - 1, 0) ELSE attempts END
            WHERE job_id = $1 AND worker_id = $2 AND state = 'running'
            """,
            job_id,
            worker_id,
            delay_seconds,
            error,
            refund_attempt,
        )
        return status.endswith(" 1")

    async def get(self, job_id: str) -> Job | None:
        return _job_or_none(await self.pool.fetchrow(f"SELECT {_JOB_COLUMNS} FROM sync_jobs WHERE job_id = $1", job_id))

    async def latest_per_bank(self, user_id: str) -> list[Job]:
        """The newest job of each bank of the user."""
        rows = await self.pool.fetch(
            f"""
            SELECT DISTINCT ON (bank_id) {_JOB_COLUMNS} FROM sync_jobs WHERE user_id = $1
            ORDER BY bank_id, created_at DESC
            """,
            user_id,
        )
        return [_job(r) for r in rows]

    async def wake_workers(self) -> None:
        await self.pool.execute("NOTIFY sync_jobs")

    async def backlog(self) -> list[tuple[str, str, int, float]]:
        """(bank, state, jobs, seconds the oldest due one has waited) of the queued and running jobs; a queued
        job is due once its `run_after` passed (one waiting out its retry backoff is not late yet)."""
        rows = await self.pool.fetch(
            """
            SELECT bank_id, state, count(*) AS jobs,
                   coalesce(extract(epoch FROM now() - min(run_after) FILTER (WHERE run_after <= now())), 0)
                       AS waited
            FROM sync_jobs WHERE state IN ('queued', 'running') GROUP BY bank_id, state
            """
        )
        return [(r["bank_id"], r["state"], r["jobs"], float(r["waited"])) for r in rows]
