"""SQL of the `dashboard` schema."""

from __future__ import annotations

import datetime as dt
import json

import asyncpg

from dashboard_svc.model import FinancialInputs
from svclib.db import AdvisoryLock
from svclib.rows import returned


def _inputs(row: asyncpg.Record | None) -> tuple[FinancialInputs, dt.datetime | None]:
    return (FinancialInputs(), None) if row is None else _stored_inputs(row)


def _stored_inputs(row: asyncpg.Record) -> tuple[FinancialInputs, dt.datetime]:
    return FinancialInputs(
        salary_amount=row["salary_amount"],
        next_salary_date=row["next_salary_date"],
        credit_payment_amount=row["credit_payment_amount"],
        credit_payment_date=row["credit_payment_date"],
    ), row["updated_at"]


class CacheRow:
    """A stored dashboard: the computed payload and what it was computed from."""

    __slots__ = ("calculated_at", "data_version", "payload")

    def __init__(self, payload: dict, calculated_at: dt.datetime, data_version: int):
        self.payload = payload
        self.calculated_at = calculated_at
        self.data_version = data_version


class DashboardStorage:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def get_inputs(self, user_id: str) -> tuple[FinancialInputs, dt.datetime | None]:
        row = await self.pool.fetchrow("SELECT * FROM user_financial_inputs WHERE user_id = $1", user_id)
        return _inputs(row)

    async def put_inputs(self, user_id: str, inputs: FinancialInputs) -> tuple[FinancialInputs, dt.datetime]:
        """Replace the user's inputs (PUT semantics); the timestamp moves only when something changed."""
        row = await self.pool.fetchrow(
            """
            INSERT INTO user_financial_inputs AS f
                (user_id, salary_amount, next_salary_date, credit_payment_amount, credit_payment_date)
            VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (user_id) DO UPDATE SET
                salary_amount = EXCLUDED.salary_amount,
                next_salary_date = EXCLUDED.next_salary_date,
                credit_payment_amount = EXCLUDED.credit_payment_amount,
                credit_payment_date = EXCLUDED.credit_payment_date,
                updated_at = now()
            WHERE (f.salary_amount, f.next_salary_date, f.credit_payment_amount, f.credit_payment_date)
                  IS DISTINCT FROM
                  (EXCLUDED.salary_amount, EXCLUDED.next_salary_date, EXCLUDED.credit_payment_amount,
                   EXCLUDED.credit_payment_date)
            RETURNING *
            """,
            user_id,
            inputs.salary_amount,
            inputs.next_salary_date,
            inputs.credit_payment_amount,
            inputs.credit_payment_date,
        )
        if row is None:  # nothing changed: read back what is stored
            row = await self.pool.fetchrow("SELECT * FROM user_financial_inputs WHERE user_id = $1", user_id)
        return _stored_inputs(returned(row, "financial inputs"))

    async def drop_cached_dashboard(self, user_id: str) -> None:
        await self.pool.execute("DELETE FROM dashboard_cache WHERE user_id = $1", user_id)

    async def cached(self, user_id: str) -> CacheRow | None:
        """The stored dashboard (the second cache level, which still serves when Redis is down)."""
        row = await self.pool.fetchrow(
            "SELECT dashboard_data, calculated_at, data_version FROM dashboard_cache "
            "WHERE user_id = $1 AND expires_at > now()",
            user_id,
        )
        if row is None:
            return None
        data = row["dashboard_data"]
        return CacheRow(json.loads(data) if isinstance(data, str) else data, row["calculated_at"], row["data_version"])

    async def store_cached(
        self, user_id: str, entry: CacheRow, synced_at: dt.datetime | None, ttl: dt.timedelta
    ) -> None:
        await self.pool.execute(
            """
            INSERT INTO dashboard_cache (user_id, dashboard_data, synced_at, calculated_at, expires_at, data_version)
            VALUES ($1, $2::jsonb, $3, $4, $5, $6)
            ON CONFLICT (user_id) DO UPDATE SET dashboard_data = EXCLUDED.dashboard_data,
                synced_at = EXCLUDED.synced_at, calculated_at = EXCLUDED.calculated_at,
                expires_at = EXCLUDED.expires_at, data_version = EXCLUDED.data_version,
                version = dashboard_cache.version + 1
            WHERE dashboard_cache.calculated_at <= EXCLUDED.calculated_at
            """,
            user_id,
            json.dumps(entry.payload),
            synced_at,
            entry.calculated_at,
            entry.calculated_at + ttl,
            entry.data_version,
        )

    def compute_lock(self, user_id: str) -> AdvisoryLock:
        """One computation per user at a time, across replicas."""
        return AdvisoryLock(self.pool, f"dashboard:{user_id}")

    # ------------------------------------------------------------------------------ refinancing

    async def record_application(
        self, application_id: str, user_id: str, offer_id: str, offer: dict
    ) -> tuple[StoredApplication, bool]:
        """Record an application for an offer, once per (user, offer): (the application, True when it was
        recorded by an earlier request)."""
        row = await self.pool.fetchrow(
            f"""
            INSERT INTO refinance_applications (application_id, user_id, offer_id, status, offer)
            VALUES ($1, $2, $3, 'recorded', $4::jsonb)
            ON CONFLICT (user_id, offer_id) DO NOTHING
            RETURNING {_APPLICATION_COLUMNS}
            """,
            application_id,
            user_id,
            offer_id,
            json.dumps(offer),
        )
        if row is not None:
            return _application(row), False
        existing = await self.application_for_offer(user_id, offer_id)
        assert existing is not None  # the conflict was this user's application for this offer
        return existing, True

    async def application_for_offer(self, user_id: str, offer_id: str) -> StoredApplication | None:
        row = await self.pool.fetchrow(
            f"SELECT {_APPLICATION_COLUMNS} FROM refinance_applications WHERE user_id = $1 AND offer_id = $2",
            user_id,
            offer_id,
        )
        return _application(row) if row is not None else None

    async def application(self, application_id: str) -> StoredApplication | None:
        row = await self.pool.fetchrow(
            f"SELECT {_APPLICATION_COLUMNS} FROM refinance_applications WHERE application_id = $1", application_id
        )
        return _application(row) if row is not None else None

    async def applications(self, user_id: str, limit: int = 100) -> list[StoredApplication]:
        rows = await self.pool.fetch(
            f"SELECT {_APPLICATION_COLUMNS} FROM refinance_applications WHERE user_id = $1 "
            "ORDER BY created_at DESC, application_id LIMIT $2",
            user_id,
            limit,
        )
        return [_application(r) for r in rows]


_APPLICATION_COLUMNS = "application_id, user_id, offer_id, status, offer, created_at, updated_at"


class StoredApplication:
    """A recorded refinancing application: the offer as it was shown when applied for."""

    __slots__ = ("application_id", "created_at", "offer", "offer_id", "status", "updated_at", "user_id")

    def __init__(
        self,
        application_id: str,
        user_id: str,
        offer_id: str,
        status: str,
        offer: dict,
        created_at: dt.datetime,
        updated_at: dt.datetime,
    ):
        self.application_id = application_id
        self.user_id = user_id
        self.offer_id = offer_id
        self.status = status
        self.offer = offer
        self.created_at = created_at
        self.updated_at = updated_at


def _application(row: asyncpg.Record) -> StoredApplication:
    offer = row["offer"]
    return StoredApplication(
        row["application_id"],
        row["user_id"],
        row["offer_id"],
        row["status"],
        json.loads(offer) if isinstance(offer, str) else offer,
        row["created_at"],
        row["updated_at"],
    )
