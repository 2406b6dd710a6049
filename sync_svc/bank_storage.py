"""SQL of the bank data in the `sync` schema: the sync write path and the dashboard's read API.

`BankDataStorage` is the one object the service and the workers hold. Its write side is here: the
write of one fetch of one (user, bank) in one transaction (`bank_write`, `write_bank_data`; the
machinery is `BankWrite`, sync_svc/bank_write.py, with its COPY and upsert SQL in
sync_svc/bank_upsert.py), a failed sync's note, and the bank-call log. Its read side is `BankReads`
(sync_svc/bank_reads.py); the result dataclasses and shared query helpers are in
sync_svc/bank_records.py, all re-exported here for the importers of this module.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Collection, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import asyncpg

from bankapi.models import Account, Balance, ProductAgreement, Transaction
from svclib.db import copy_records
from sync_svc.bank_reads import BankReads
from sync_svc.bank_records import (
    _BANK_CALL_COLUMNS,
    _BUMP_VERSION,
    _MESSAGE_LIMIT,
    MAX_PAGE,
    BankCall,
    CategorySpending,
    Counts,
    DayIncome,
    LoanRepayments,
    MonthlyCashFlow,
    StoredAccount,
    StoredBalance,
    StoredCredit,
    StoredTransaction,
    SyncState,
    TableStats,
    TransactionCursor,
    WriteStats,
    _aware,
    _field,
)
from sync_svc.bank_write import BankWrite

__all__ = [
    "MAX_PAGE",
    "BankCall",
    "BankDataStorage",
    "BankReads",
    "BankWrite",
    "CategorySpending",
    "Counts",
    "DayIncome",
    "LoanRepayments",
    "MonthlyCashFlow",
    "StoredAccount",
    "StoredBalance",
    "StoredCredit",
    "StoredTransaction",
    "SyncState",
    "TableStats",
    "TransactionCursor",
    "WriteStats",
]

# ---------------------------------------------------------------------------------------------- storage


class BankDataStorage(BankReads):
    """Bank data of the `sync` schema on a pool whose search_path is that schema (svclib.db.create_pool)."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    # ------------------------------------------------------------------------------------------ writes

    @contextlib.asynccontextmanager
    async def bank_write(self, user_id: str, bank_id: str) -> AsyncIterator[BankWrite]:
        """`async with storage.bank_write(user, bank) as w: await w.add_transactions(page); …;
        stats = await w.commit(accounts=…, balances=…, agreements=…, fetched_window=…)`.

        The one write path (see `BankWrite`): it holds a pooled connection, its transaction and the
        (user, bank) advisory lock from entry until `commit` or the end of the block, so open it when
        the fetch starts, not before anything else that may wait. Without `commit`, or on an
        exception, nothing is written."""
        async with self.pool.acquire() as conn:
            write = BankWrite(conn, user_id, bank_id)
            try:
                await write._open()
                yield write
            finally:
                await write._close()

    async def write_bank_data(
        self,
        user_id: str,
        bank_id: str,
        *,
        accounts: Iterable[Account] = (),
        balances: Iterable[Balance] = (),
        transactions: Iterable[Transaction] = (),
        agreements: Iterable[ProductAgreement] = (),
        fetched_window: tuple[datetime | None, datetime] | None = None,
        window_accounts: Collection[str] | None = None,
    ) -> WriteStats:
        """Store one fetch of one (user, bank) in one transaction; idempotent. (`bank_write` with every
        transaction added at once.)

        Accounts, agreements and transactions are upserted on their natural keys (a changed row is
        updated in place, an identical one is not touched); balances get a new snapshot only when the
        value changed. With `fetched_window = (from, to)` (`from` None = since the beginning) the
        transactions were fetched completely over that booking-time window: pending rows of the
        window that this fetch no longer carries are deleted (the bank replaced them by their booked
        version under a new id). That clean-up covers `window_accounts`, by default every account in
        `accounts` or in `transactions`; pass the accounts whose transaction fetch covered the window
        when some did not. Rows and the sync state (watermark = newest booking time, last success,
        running totals) commit together; the user's data version is bumped in the same transaction
        when any row was inserted, updated or deleted.
        """
        if fetched_window is not None:  # refused before taking a connection and the lock
            _aware(fetched_window[0], "fetched_window[0]")
            if _aware(fetched_window[1], "fetched_window[1]") is None:
                raise ValueError("fetched_window needs an end")
        async with self.bank_write(user_id, bank_id) as write:
            await write.add_transactions(transactions)
            return await write.commit(
                accounts=accounts,
                balances=balances,
                agreements=agreements,
                fetched_window=fetched_window,
                window_accounts=window_accounts,
            )

    async def record_failure(self, user_id: str, bank_id: str, message: str) -> int | None:
        """Note a failed sync of (user, bank): last_error and its time; the last success is kept. When
        the bank was healthy until now (its first failure since its last success), the user's data
        version is bumped in the same transaction and returned (what the dashboard says of that bank
        changes); else None."""
        async with self.pool.acquire() as conn, conn.transaction():
            newly = await conn.fetchval(
                """
                WITH before AS (SELECT last_success_at, last_error_at FROM sync_state
                                WHERE user_id = $1 AND bank_id = $2 FOR UPDATE)
                INSERT INTO sync_state AS s (user_id, bank_id, last_error, last_error_at) VALUES ($1, $2, $3, now())
                ON CONFLICT (user_id, bank_id) DO UPDATE
                SET last_error = EXCLUDED.last_error, last_error_at = EXCLUDED.last_error_at, updated_at = now()
                RETURNING COALESCE((SELECT last_error_at IS NULL OR last_error_at <= last_success_at FROM before), true)
                """,
                user_id,
                bank_id,
                message[:_MESSAGE_LIMIT],
            )
            return await conn.fetchval(_BUMP_VERSION, user_id) if newly else None

    async def log_bank_calls(self, records: Iterable[BankCall | Mapping[str, Any] | Any]) -> int:
        """Append bank calls to bank_status_log in one COPY. Each record is a `BankCall`, a Mapping or any
        object with its attribute names; a missing `at` is the time of logging. Returns the rows written."""
        now = datetime.now(UTC)
        rows = []
        for rec in records:
            message = _field(rec, "message")
            latency = _field(rec, "latency_ms")
            status = _field(rec, "http_status")
            rows.append(
                (
                    _aware(_field(rec, "at"), "at") or now,
                    _field(rec, "user_id"),
                    _field(rec, "bank_id"),
                    _field(rec, "operation"),
                    _field(rec, "outcome"),
                    None if status is None else int(status),
                    None if latency is None else float(latency),
                    _field(rec, "interaction_id"),
                    None if message is None else str(message)[:_MESSAGE_LIMIT],
                )
            )
        if rows:
            async with self.pool.acquire() as conn:
                await copy_records(conn, "bank_status_log", records=rows, columns=list(_BANK_CALL_COLUMNS))
        return len(rows)
