"""SQL of the `consent` schema."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator

import asyncpg

from svclib.db import AdvisoryLock
from svclib.rows import returned

_COLUMNS = (
    "id, user_id, bank_id, consent_type, consent_id, request_id, status, bank_status, approval_url, "
    "permissions, expires_at, created_at, updated_at, checked_at, error_code, error_message, payment_type, "
    "debtor_account"
)
STANDING_TYPES = ("vrp", "multi_use")  # payment consents that allow more than one payment


@dataclasses.dataclass(frozen=True)
class StoredConsent:
    id: int
    user_id: str
    bank_id: str
    kind: str  # accounts | products | payments
    consent_id: str | None
    request_id: str | None
    # PENDING | AWAITING_USER | APPROVED | REJECTED | REVOKED | EXPIRED, FAILED (could not be created:
    # error_code, error_message) | DEFERRED (a payment consent waiting for the account consent)
    status: str
    bank_status: str | None
    approval_url: str | None
    permissions: tuple[str, ...]
    expires_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime
    checked_at: dt.datetime
    error_code: str | None = None
    error_message: str | None = None
    payment_type: str | None = None  # payments: single_use | multi_use | vrp
    debtor_account: str | None = None  # payments: the account number it pays from

    @property
    def bank_ref(self) -> str:
        """The id the bank knows this consent by: the consent id, or the request id while pending."""
        return self.consent_id or self.request_id or ""


def _consent_or_none(row: asyncpg.Record | None) -> StoredConsent | None:
    return None if row is None else _consent(row)


def _consent(row: asyncpg.Record) -> StoredConsent:
    return StoredConsent(
        row["id"],
        row["user_id"],
        row["bank_id"],
        row["consent_type"],
        row["consent_id"],
        row["request_id"],
        row["status"],
        row["bank_status"],
        row["approval_url"],
        tuple(row["permissions"]),
        row["expires_at"],
        row["created_at"],
        row["updated_at"],
        row["checked_at"],
        row["error_code"],
        row["error_message"],
        row["payment_type"],
        row["debtor_account"],
    )


@dataclasses.dataclass(frozen=True)
class NewConsent:
    user_id: str
    bank_id: str
    kind: str
    consent_id: str | None
    request_id: str | None
    status: str
    bank_status: str | None
    approval_url: str | None
    permissions: tuple[str, ...]
    expires_at: dt.datetime | None
    error_code: str | None = None
    error_message: str | None = None
    payment_type: str | None = None
    debtor_account: str | None = None


_NEW_FIELDS = (
    "consent_id, request_id, status, bank_status, approval_url, permissions, expires_at, error_code, "
    "error_message, payment_type, debtor_account"
)


def _new_values(new: NewConsent) -> tuple:
    return (
        new.consent_id,
        new.request_id,
        new.status,
        new.bank_status,
        new.approval_url,
        list(new.permissions),
        new.expires_at,
        new.error_code,
        new.error_message,
        new.payment_type,
        new.debtor_account,
    )


class ConsentStorage:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool
        # A creation lock holds a pooled connection while the work under it takes another: at most half
        # the pool is held by locks, or enough concurrent creations would wait on each other for ever.
        self._lock_slots = asyncio.Semaphore(max(1, pool.get_max_size() // 2))

    @contextlib.asynccontextmanager
    async def creation_lock(self, user_id: str, bank_id: str, kind: str) -> AsyncIterator[None]:
        """Serialises consent creation for one (user, bank, kind) across replicas."""
        async with self._lock_slots, AdvisoryLock(self.pool, f"consent:{user_id}:{bank_id}:{kind}"):
            yield

    async def insert(self, new: NewConsent) -> StoredConsent:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"""
                INSERT INTO consents (user_id, bank_id, consent_type, {_NEW_FIELDS})
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
                RETURNING {_COLUMNS}
                """,
                new.user_id,
                new.bank_id,
                new.kind,
                *_new_values(new),
            )
            row = returned(row, "insert consent")
            await conn.execute(
                "INSERT INTO consent_events (consent_row, user_id, bank_id, old_status, new_status, bank_status, "
                "source, message) VALUES ($1, $2, $3, NULL, $4, $5, 'create', $6)",
                row["id"],
                new.user_id,
                new.bank_id,
                new.status,
                new.bank_status,
                new.error_message,
            )
            return _consent(row)

    async def replace(self, consent: StoredConsent, new: NewConsent, source: str) -> StoredConsent:
        """Put the outcome of asking the bank again in place of a FAILED or DEFERRED row (one row per
        asked-for consent, not one per attempt); the event keeps the old status. `source`: retry or
        deferred."""
        async with self.pool.acquire() as conn, conn.transaction():
            old = await conn.fetchval("SELECT status FROM consents WHERE id = $1 FOR UPDATE", consent.id)
            row = await conn.fetchrow(
                f"""
                UPDATE consents SET ({_NEW_FIELDS}) = ($2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12),
                    updated_at = now(), checked_at = now()
                WHERE id = $1
                RETURNING {_COLUMNS}
                """,
                consent.id,
                *_new_values(new),
            )
            await conn.execute(
                "INSERT INTO consent_events (consent_row, user_id, bank_id, old_status, new_status, bank_status, "
                "source, message) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                consent.id,
                consent.user_id,
                consent.bank_id,
                old,
                new.status,
                new.bank_status,
                source,
                new.error_message,
            )
            return _consent(returned(row, "replace consent"))

    async def update(
        self,
        consent: StoredConsent,
        *,
        status: str,
        source: str,
        bank_status: str | None = None,
        consent_id: str | None = None,
        expires_at: dt.datetime | None = None,
        permissions: tuple[str, ...] | None = None,
        message: str | None = None,
    ) -> StoredConsent:
        """Record what the bank said; an event row is written when the status changes."""
        async with self.pool.acquire() as conn, conn.transaction():
            old = await conn.fetchval("SELECT status FROM consents WHERE id = $1 FOR UPDATE", consent.id)
            row = await conn.fetchrow(
                f"""
                UPDATE consents SET
                    status = $2,
                    bank_status = COALESCE($3, bank_status),
                    consent_id = COALESCE($4, consent_id),
                    expires_at = COALESCE($5, expires_at),
                    permissions = COALESCE($6, permissions),
                    updated_at = CASE WHEN status IS DISTINCT FROM $2
                                           OR consent_id IS DISTINCT FROM COALESCE($4, consent_id)
                                      THEN now() ELSE updated_at END,
                    checked_at = now()
                WHERE id = $1
                RETURNING {_COLUMNS}
                """,
                consent.id,
                status,
                bank_status,
                consent_id,
                expires_at,
                list(permissions) if permissions is not None else None,
            )
            if old != status:
                await conn.execute(
                    "INSERT INTO consent_events (consent_row, user_id, bank_id, old_status, new_status, bank_status, "
                    "source, message) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    consent.id,
                    consent.user_id,
                    consent.bank_id,
                    old,
                    status,
                    bank_status,
                    source,
                    message,
                )
            return _consent(returned(row, "update consent"))

    async def latest(self, user_id: str, bank_id: str, kind: str) -> StoredConsent | None:
        return _consent_or_none(
            await self.pool.fetchrow(
                f"SELECT {_COLUMNS} FROM consents WHERE user_id = $1 AND bank_id = $2 AND consent_type = $3 "
                "ORDER BY created_at DESC, id DESC LIMIT 1",
                user_id,
                bank_id,
                kind,
            )
        )

    async def find_for_user(self, user_id: str, bank_ref: str) -> StoredConsent | None:
        """A consent of the user by its consent id or request id."""
        return _consent_or_none(
            await self.pool.fetchrow(
                f"SELECT {_COLUMNS} FROM consents WHERE user_id = $1 AND (consent_id = $2 OR request_id = $2) "
                "ORDER BY id DESC LIMIT 1",
                user_id,
                bank_ref,
            )
        )

    async def by_request(self, bank_id: str, request_id: str) -> StoredConsent | None:
        return _consent_or_none(
            await self.pool.fetchrow(
                f"SELECT {_COLUMNS} FROM consents WHERE bank_id = $1 AND request_id = $2", bank_id, request_id
            )
        )

    async def by_consent_id(self, bank_id: str, consent_id: str) -> StoredConsent | None:
        return _consent_or_none(
            await self.pool.fetchrow(
                f"SELECT {_COLUMNS} FROM consents WHERE bank_id = $1 AND consent_id = $2", bank_id, consent_id
            )
        )

    async def latest_per_kind(self, user_id: str) -> list[StoredConsent]:
        """The newest consent of each (bank, kind) of the user."""
        rows = await self.pool.fetch(
            f"""
            SELECT DISTINCT ON (bank_id, consent_type) {_COLUMNS}
            FROM consents WHERE user_id = $1
            ORDER BY bank_id, consent_type, created_at DESC, id DESC
            """,
            user_id,
        )
        return [_consent(r) for r in rows]

    async def unsettled(self, user_id: str) -> list[StoredConsent]:
        """Consents waiting on the bank or the customer, and approved ones past their expiry."""
        rows = await self.pool.fetch(
            f"SELECT {_COLUMNS} FROM consents WHERE user_id = $1 AND (status IN ('PENDING', 'AWAITING_USER') "
            "OR (status = 'APPROVED' AND expires_at < now()))",
            user_id,
        )
        return [_consent(r) for r in rows]

    async def standing_payment_consent(self, user_id: str, bank_id: str, debtor_account: str) -> StoredConsent | None:
        """The user's newest approved, unexpired standing (vrp or multi_use) payment consent at the bank
        that pays from `debtor_account` (or from an account it does not name)."""
        return _consent_or_none(
            await self.pool.fetchrow(
                f"""
            SELECT {_COLUMNS} FROM consents
            WHERE user_id = $1 AND bank_id = $2 AND consent_type = 'payments' AND status = 'APPROVED'
              AND consent_id IS NOT NULL AND payment_type = ANY($3::text[])
              AND (expires_at IS NULL OR expires_at > now()) AND (debtor_account IS NULL OR debtor_account = $4)
            ORDER BY created_at DESC, id DESC LIMIT 1
            """,
                user_id,
                bank_id,
                list(STANDING_TYPES),
                debtor_account,
            )
        )

    async def approved(self, user_id: str, bank_id: str | None) -> list[StoredConsent]:
        """The newest approved, unexpired consent of each (bank, kind) of the user."""
        rows = await self.pool.fetch(
            f"""
            SELECT DISTINCT ON (bank_id, consent_type) {_COLUMNS} FROM consents
            WHERE user_id = $1 AND ($2::text IS NULL OR bank_id = $2) AND status = 'APPROVED'
              AND (expires_at IS NULL OR expires_at > now())
            ORDER BY bank_id, consent_type, created_at DESC, id DESC
            """,
            user_id,
            bank_id,
        )
        return [_consent(r) for r in rows]
