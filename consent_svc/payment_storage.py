"""SQL of the payments in the `consent` schema: `payments` (one row per user and idempotency key) and
`payment_events` (every status change and bank exchange)."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from decimal import Decimal

import asyncpg

from consent_svc import metrics
from svclib.db import AdvisoryLock
from svclib.rows import Connection, returned

FINAL = ("COMPLETED", "FAILED")

_COLUMNS = (
    "id, payment_id, user_id, idempotency_key, fingerprint, kind, status, bank_id, account_id, "
    "debtor_account, creditor_account, creditor_bank_id, creditor_name, amount, currency, comment, "
    "agreement_id, amount_source, amount_note, consent_request_id, consent_id, consent_status, "
    "approval_url, in_doubt, bank_attempts, interaction_id, bank_payment_id, bank_status, error_code, "
    "error_message, created_at, updated_at, completed_at, consent_kind, consent_used_count, "
    "consent_payment_ids"
)

# Columns a step may change (`PaymentStorage.update`).
_MUTABLE = frozenset(
    {
        "status",
        "consent_request_id",
        "consent_id",
        "consent_status",
        "approval_url",
        "in_doubt",
        "bank_attempts",
        "interaction_id",
        "bank_payment_id",
        "bank_status",
        "error_code",
        "error_message",
        "consent_kind",
        "consent_used_count",
        "consent_payment_ids",
    }
)
STANDING = ("vrp", "multi_use")  # consent kinds several payments share


@dataclasses.dataclass(frozen=True)
class PaymentIntent:
    """What a request asks for, resolved against the stored accounts: the row written before any bank call."""

    user_id: str
    idempotency_key: str
    fingerprint: str
    kind: str  # transfer | loan_repayment
    bank_id: str
    account_id: str
    debtor_account: str
    creditor_account: str
    creditor_bank_id: str | None
    creditor_name: str | None
    amount: Decimal
    currency: str
    comment: str | None
    agreement_id: str | None = None
    amount_source: str = "requested"  # requested | detected
    amount_note: str | None = None


@dataclasses.dataclass(frozen=True)
class StoredPayment:
    id: int
    payment_id: str
    user_id: str
    idempotency_key: str
    fingerprint: str
    kind: str
    status: str  # INITIATING | AWAITING_AUTHORIZATION | PENDING | COMPLETED | FAILED
    bank_id: str
    account_id: str
    debtor_account: str
    creditor_account: str
    creditor_bank_id: str | None
    creditor_name: str | None
    amount: Decimal
    currency: str
    comment: str | None
    agreement_id: str | None
    amount_source: str
    amount_note: str | None
    consent_request_id: str | None
    consent_id: str | None
    consent_status: str | None
    approval_url: str | None
    in_doubt: bool
    bank_attempts: int
    interaction_id: str | None
    bank_payment_id: str | None
    bank_status: str | None
    error_code: str | None
    error_message: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    completed_at: dt.datetime | None
    # The kind of payment consent used: single_use (made for this payment), or the user's standing
    # vrp / multi_use one (None: none chosen yet). For a standing one, its use count and payment ids
    # as the bank reported them just before the last payment call.
    consent_kind: str | None = None
    consent_used_count: int | None = None
    consent_payment_ids: tuple[str, ...] | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL

    @property
    def standing(self) -> bool:
        """Paid through a standing consent shared with other payments."""
        return self.consent_kind in STANDING


@dataclasses.dataclass(frozen=True)
class PaymentEventRow:
    old_status: str | None
    new_status: str
    source: str
    message: str | None
    bank_status: str | None
    created_at: dt.datetime


@dataclasses.dataclass(frozen=True)
class PaymentCursor:
    """Keyset position in a user's payments (newest first)."""

    created_at: dt.datetime
    id: int

    def token(self) -> str:
        raw = f"{self.created_at.isoformat()}|{self.id}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def from_token(cls, token: str) -> PaymentCursor:
        """ValueError for anything this storage did not hand out."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
            when, _, row_id = raw.partition("|")
            created_at = dt.datetime.fromisoformat(when)
            if created_at.tzinfo is None:
                raise ValueError("naive time")
            return cls(created_at, int(row_id))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"bad page token: {exc}") from None


def _payment_or_none(row: asyncpg.Record | None) -> StoredPayment | None:
    return None if row is None else _payment(row)


def _payment(row: asyncpg.Record) -> StoredPayment:
    values = {key: row[key] for key in row.keys()}
    if values["consent_payment_ids"] is not None:
        values["consent_payment_ids"] = tuple(values["consent_payment_ids"])
    return StoredPayment(**values)


class PaymentStorage:
    """The payments' SQL, on the pool, or bound to one connection (`hold`)."""

    def __init__(self, pool: asyncpg.Pool, conn: Connection | None = None):
        self.pool = pool
        self._conn = conn

    @contextlib.asynccontextmanager
    async def hold(self, payment: StoredPayment) -> AsyncIterator[PaymentStorage]:
        """Take the payment's advisory lock without waiting (`LockBusy` while another request, in any
        replica, works on it) and yield this storage bound to the lock's connection, so a payment in
        progress uses exactly one connection (each write still commits on its own)."""
        lock = AdvisoryLock(self.pool, f"payment:{payment.id}", wait=False)
        async with lock:
            yield PaymentStorage(self.pool, lock.conn)

    @contextlib.asynccontextmanager
    async def consent_lock(self, bank_id: str, consent_id: str) -> AsyncIterator[None]:
        """Serialise the payments on one standing consent across requests and replicas (waiting for
        the holder), on the connection `hold` bound: a payment in progress still uses one connection."""
        if self._conn is None:
            raise RuntimeError("consent_lock needs the storage bound by hold()")
        name = f"payment-consent:{bank_id}:{consent_id}"
        await self._conn.execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", name)
        try:
            yield
        finally:
            await self._conn.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", name)

    async def other_in_doubt(self, payment: StoredPayment, consent_id: str) -> str | None:
        """Another payment whose call with this consent has an unknown outcome (its payment id)."""
        async with self._connection() as conn:
            other: str | None = await conn.fetchval(
                "SELECT payment_id FROM payments WHERE bank_id = $1 AND consent_id = $2 AND in_doubt AND id <> $3 "
                "LIMIT 1",
                payment.bank_id,
                consent_id,
                payment.id,
            )
        return other

    async def owner_of_bank_payment(self, bank_id: str, bank_payment_id: str) -> str | None:
        """Our payment recorded with this bank payment id, if any."""
        async with self._connection() as conn:
            owner: str | None = await conn.fetchval(
                "SELECT payment_id FROM payments WHERE bank_id = $1 AND bank_payment_id = $2 LIMIT 1",
                bank_id,
                bank_payment_id,
            )
        return owner

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        if self._conn is not None:
            yield self._conn
        else:
            async with self.pool.acquire() as conn:
                yield conn

    async def _fetchrow(self, sql: str, *args: object) -> asyncpg.Record | None:
        async with self._connection() as conn:
            return await conn.fetchrow(sql, *args)

    async def by_key(self, user_id: str, idempotency_key: str) -> StoredPayment | None:
        return _payment_or_none(
            await self._fetchrow(
                f"SELECT {_COLUMNS} FROM payments WHERE user_id = $1 AND idempotency_key = $2", user_id, idempotency_key
            )
        )

    async def get(self, payment_id: str) -> StoredPayment | None:
        return _payment_or_none(
            await self._fetchrow(f"SELECT {_COLUMNS} FROM payments WHERE payment_id = $1", payment_id)
        )

    async def reload(self, payment: StoredPayment) -> StoredPayment:
        row = await self._fetchrow(f"SELECT {_COLUMNS} FROM payments WHERE id = $1", payment.id)
        return _payment(returned(row, "reload payment"))

    async def insert(self, payment_id: str, intent: PaymentIntent) -> tuple[StoredPayment, bool]:
        """Record the intent (status INITIATING) and commit; (row, True). When the user already has a
        payment with this key, nothing is written: (that row, False)."""
        async with self._connection() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"""
                INSERT INTO payments (payment_id, user_id, idempotency_key, fingerprint, kind, status, bank_id,
                                      account_id, debtor_account, creditor_account, creditor_bank_id, creditor_name,
                                      amount, currency, comment, agreement_id, amount_source, amount_note)
                VALUES ($1, $2, $3, $4, $5, 'INITIATING', $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
                ON CONFLICT (user_id, idempotency_key) DO NOTHING
                RETURNING {_COLUMNS}
                """,
                payment_id,
                intent.user_id,
                intent.idempotency_key,
                intent.fingerprint,
                intent.kind,
                intent.bank_id,
                intent.account_id,
                intent.debtor_account,
                intent.creditor_account,
                intent.creditor_bank_id,
                intent.creditor_name,
                intent.amount,
                intent.currency,
                intent.comment,
                intent.agreement_id,
                intent.amount_source,
                intent.amount_note,
            )
            if row is None:
                existing = await conn.fetchrow(
                    f"SELECT {_COLUMNS} FROM payments WHERE user_id = $1 AND idempotency_key = $2",
                    intent.user_id,
                    intent.idempotency_key,
                )
                return _payment(returned(existing, "payment of the same key")), False
            await conn.execute(
                "INSERT INTO payment_events (payment_row, old_status, new_status, source, message) "
                "VALUES ($1, NULL, 'INITIATING', 'create', $2)",
                row["id"],
                f"{intent.kind} of {intent.amount} {intent.currency} from {intent.bank_id}/{intent.account_id}",
            )
        metrics.payment_reached(intent.bank_id, "INITIATING")
        return _payment(row), True

    async def update(
        self, payment: StoredPayment, *, source: str, message: str | None = None, **changes: object
    ) -> StoredPayment:
        """Apply one step's changes and record it as an event, in one transaction. `completed_at` is
        set when the payment first becomes final."""
        unknown = set(changes) - _MUTABLE
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        names = sorted(changes)
        assignments = ", ".join(f"{name} = ${i + 2}" for i, name in enumerate(names))
        # SET expressions see the old row: the new status is the parameter when one is given.
        new_status = f"${names.index('status') + 2}::text" if "status" in changes else "status"
        async with self._connection() as conn, conn.transaction():
            old = await conn.fetchval("SELECT status FROM payments WHERE id = $1 FOR UPDATE", payment.id)
            row = await conn.fetchrow(
                f"""
                UPDATE payments SET {assignments + ", " if assignments else ""}updated_at = now(),
                    completed_at = CASE WHEN completed_at IS NULL AND {new_status} IN ('COMPLETED', 'FAILED')
                                        THEN now() ELSE completed_at END
                WHERE id = $1
                RETURNING {_COLUMNS}
                """,
                payment.id,
                *(changes[name] for name in names),
            )
            row = returned(row, "update payment")
            await conn.execute(
                "INSERT INTO payment_events (payment_row, old_status, new_status, source, message, bank_status) "
                "VALUES ($1, $2, $3, $4, $5, $6)",
                payment.id,
                old,
                row["status"],
                source,
                message,
                changes.get("bank_status"),
            )
        if row["status"] != old:
            metrics.payment_reached(row["bank_id"], row["status"])
        return _payment(row)

    async def open_payments(self) -> list[tuple[str, str, int, float]]:
        """(bank, status, payments, age of the oldest in seconds) of the payments not final yet."""
        rows = await self.pool.fetch(
            """
            SELECT bank_id, status, count(*) AS payments, extract(epoch FROM now() - min(created_at)) AS age
            FROM payments WHERE status NOT IN ('COMPLETED', 'FAILED') GROUP BY bank_id, status
            """
        )
        return [(r["bank_id"], r["status"], r["payments"], float(r["age"])) for r in rows]

    async def events(self, payment: StoredPayment) -> list[PaymentEventRow]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT old_status, new_status, source, message, bank_status, created_at FROM payment_events "
                "WHERE payment_row = $1 ORDER BY id",
                payment.id,
            )
        return [PaymentEventRow(**dict(r)) for r in rows]

    async def page(
        self, user_id: str, limit: int, after: PaymentCursor | None
    ) -> tuple[list[StoredPayment], PaymentCursor | None]:
        """The user's payments, newest first, `limit` at a time."""
        async with self._connection() as conn:
            rows = await conn.fetch(
                f"""
                SELECT {_COLUMNS} FROM payments
                WHERE user_id = $1 AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
                ORDER BY created_at DESC, id DESC LIMIT $4
                """,
                user_id,
                after.created_at if after else None,
                after.id if after else 0,
                limit + 1,
            )
        payments = [_payment(r) for r in rows[:limit]]
        more = len(rows) > limit
        return payments, PaymentCursor(payments[-1].created_at, payments[-1].id) if more else None
