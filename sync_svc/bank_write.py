"""The write path of the bank data: one fetch of one (user, bank) in one transaction (`BankWrite`).

One transaction per fetch of one (user, bank), opened by `BankDataStorage.bank_write`
(sync_svc/bank_storage.py), serialised per (user, bank) by a transaction-scoped advisory lock. The
transaction is opened when the fetch starts and the transaction pages are COPYed into it as they
arrive (`BankWrite`: a queue and one COPY task on the write's connection), so Postgres parses and
indexes them while the bank is still being waited on; the rest is written at `commit`, table by
table through the staging and upsert SQL of sync_svc/bank_upsert.py (rows COPYed into a temporary
stage, then upserted on their natural key; unchanged rows are neither rewritten nor locked; a
table holding no row of the (user, bank) yet is COPYed into directly). The sync state (watermark,
last success, running row totals) and the rollups the dashboard's aggregates read
(sync_svc/rollups.py) are updated in the same transaction, and the user's data version is bumped
there too, but only when a row was inserted, updated or deleted: a second sync with no new bank
data writes no bank-data row and leaves the version alone. A write that fails or is
abandoned before `commit` rolls back whole.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Collection, Iterable
from datetime import datetime
from typing import TypeVar

import asyncpg

from bankapi.models import Account, Balance, ProductAgreement, Transaction
from svclib.db import copy_records
from svclib.resilience import connection_lost
from svclib.rows import Connection, returned
from sync_svc import rollups
from sync_svc.bank_records import (
    _BUMP_VERSION,
    _DATA_VERSION,
    TableStats,
    WriteStats,
    _account_row,
    _aware,
    _balance_row,
    _credit_row,
    _lock_name,
    _transaction_row,
)
from sync_svc.bank_upsert import (
    _DELETE_REPLACED_PENDING,
    _RECORD_SUCCESS,
    _SNAPSHOT_BALANCES,
    ACCOUNTS,
    BALANCE_COLUMNS,
    CREDITS,
    TRANSACTIONS,
    _create_stage,
    _stage,
    _write,
)

M = TypeVar("M")  # a bank model


def _latest(items: Iterable[M], key: Callable[[M], tuple]) -> list[M]:
    """One item per natural key, the last one fetched winning: a key twice in one upsert is an error,
    and pages shift while new transactions arrive."""
    return list({key(item): item for item in items}.values())


# ---------------------------------------------------------------------------------------------- streaming write

# Replacing rows that a later page of the same fetch carried again, changed (last one fetched wins).
_FORGET_STAGED = """
    DELETE FROM _stage_transactions
    WHERE (account_id, transaction_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
"""
_FORGET_COPIED = """
    DELETE FROM transactions
    WHERE user_id = $1 AND bank_id = $2
      AND (account_id, transaction_id) IN (SELECT * FROM unnest($3::text[], $4::text[]))
"""
_NEWEST_STAGED = "SELECT max(booking_time) FROM _stage_transactions"
_NEWEST_COPIED = "SELECT max(booking_time) FROM transactions WHERE user_id = $1 AND bank_id = $2"
_DONE = None  # end of the pages, for the COPY task
# Rows `add_transactions` queues at a time: given many at once (`write_bank_data`), it builds the next
# chunk while the COPY task sends the last one and the server parses it, and the event loop stays free.
_CHUNK = 500


class BankWrite:
    """One fetch of one (user, bank) being written, in one transaction: `BankDataStorage.bank_write`.

    Opened (connection, transaction, the (user, bank) advisory lock) before the fetch starts, so the
    database takes the transaction pages while the bank is still being asked for the next ones:
    `add_transactions` turns a page into rows and queues them, and one task COPYs whatever is queued
    (several pages in one COPY when they piled up) on the write's connection — asyncpg runs one
    command per connection at a time, and this way a slow COPY never blocks the fetch. When no
    transaction of (user, bank) was stored before (its first sync), the rows go straight into
    `transactions` (nothing they could conflict with, and the lock keeps it so); otherwise into the
    temporary stage that `commit` upserts from. `commit` writes the rest and commits: rows, sync state
    and data version together. Leaving the `async with` without `commit` (or with an exception, or
    when the COPY task failed) rolls everything back.

    A transaction fetched twice (pages shift while new ones arrive) is stored once, the last one
    fetched winning: the first copy is sent at once, a later one is kept aside and replaces it in
    `commit`. Only the keys of the rows sent are remembered, not the rows. Transactions with neither
    a booking nor a value time are not stored (counted as `skipped`).
    """

    def __init__(self, conn: Connection, user_id: str, bank_id: str):
        self._conn = conn
        self.user_id = user_id
        self.bank_id = bank_id
        self._direct = False
        self._head: tuple = ()
        self._columns: list[str] = []
        self._target = ""
        self._sent: set[tuple[str, str]] = set()  # (account, transaction id) of the rows queued
        self._late: dict[tuple[str, str], tuple] = {}  # later copies of those, the last one fetched
        self._newest: datetime | None = None  # booking time (or value time) of the rows
        self._account_ids: set[str] = set()
        self._skipped = 0
        self._pages: asyncio.Queue[list[tuple] | None] = asyncio.Queue()
        self._copier: asyncio.Task | None = None
        self._transaction = conn.transaction()
        self._closed = False
        self._started = self._committed = False

    async def _open(self) -> None:
        conn = self._conn
        await self._transaction.start()
        self._started = True
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", _lock_name(self.user_id, self.bank_id)
        )
        self._direct = not await conn.fetchval(TRANSACTIONS.any_stored_sql, self.user_id, self.bank_id)
        if self._direct:
            self._head = (self.user_id, self.bank_id)
            self._columns = ["user_id", "bank_id", *TRANSACTIONS.columns]
            self._target = TRANSACTIONS.table
        else:
            await _create_stage(conn, TRANSACTIONS.table, TRANSACTIONS.stage, TRANSACTIONS.columns)
            self._columns = list(TRANSACTIONS.columns)
            self._target = TRANSACTIONS.stage
        self._copier = asyncio.create_task(self._copy_pages(), name=f"bank-write-copy:{self.bank_id}")

    async def _copy_pages(self) -> None:
        while True:
            rows = await self._pages.get()
            if rows is _DONE:
                return
            done = False
            while not self._pages.empty():  # whatever piled up during the last COPY goes in one
                more = self._pages.get_nowait()
                if more is _DONE:
                    done = True
                    break
                rows.extend(more)
            if connection_lost(self._conn):  # dropped while the pages were being fetched
                raise asyncpg.ConnectionDoesNotExistError("the connection of this bank write was lost")
            await copy_records(self._conn, self._target, records=rows, columns=self._columns)
            if done:
                return

    def _check_usable(self) -> None:
        if self._closed:
            raise RuntimeError("this bank write is finished")
        if (
            self._copier is not None
            and self._copier.done()
            and not self._copier.cancelled()
            and self._copier.exception() is not None
        ):
            failure = self._copier.exception()
            assert failure is not None
            raise failure

    async def add_transactions(self, transactions: Iterable[Transaction]) -> None:
        """Queue fetched transactions (a page, or any batch) for the COPY task and return: a page goes
        in one piece, a large batch in chunks of `_CHUNK` rows with the COPY task running in between.
        Raises the COPY's error if an earlier one failed (the write is then lost: leave the
        `async with`)."""
        self._check_usable()
        head, sent, late, rows = self._head, self._sent, self._late, []
        newest = self._newest
        for t in transactions:
            self._account_ids.add(t.account_id)
            when = t.booking_time or t.value_time
            if when is None:
                self._skipped += 1
                continue
            if newest is None or when > newest:
                newest = when
            key = (t.account_id, t.transaction_id)
            if key in sent:
                late[key] = _transaction_row(t, head)
                continue
            sent.add(key)
            rows.append(_transaction_row(t, head))
            if len(rows) == _CHUNK:
                self._newest = newest
                self._pages.put_nowait(rows)
                rows = []
                await asyncio.sleep(0)  # the COPY task takes them
                self._check_usable()
                newest = self._newest  # another caller may have added rows meanwhile
        self._newest = newest
        if rows:
            self._pages.put_nowait(rows)

    async def commit(
        self,
        *,
        accounts: Iterable[Account] = (),
        balances: Iterable[Balance] = (),
        agreements: Iterable[ProductAgreement] = (),
        fetched_window: tuple[datetime | None, datetime] | None = None,
        window_accounts: Collection[str] | None = None,
    ) -> WriteStats:
        """Write the rest of the fetch and commit; see `BankDataStorage.write_bank_data` for what each
        argument means (there, `transactions` are the ones given to `add_transactions`)."""
        self._check_usable()
        if fetched_window is not None:
            _aware(fetched_window[0], "fetched_window[0]")
            if _aware(fetched_window[1], "fetched_window[1]") is None:
                raise ValueError("fetched_window needs an end")
        accounts = _latest(accounts, lambda a: (a.account_id,))
        agreements = _latest(agreements, lambda p: (p.agreement_id,))
        balances = _latest(balances, lambda b: (b.account_id, b.type or ""))
        if fetched_window is not None and window_accounts is None:
            window_accounts = {a.account_id for a in accounts} | self._account_ids
        user_id, bank_id, conn = self.user_id, self.bank_id, self._conn

        self._pages.put_nowait(_DONE)
        assert self._copier is not None
        await self._copier  # the COPY's error, if any, ends the write here
        self._closed = True
        newest = self._newest
        if self._late:
            account_ids, transaction_ids = zip(*self._late, strict=True)
            if self._direct:
                await conn.execute(_FORGET_COPIED, user_id, bank_id, account_ids, transaction_ids)
            else:
                await conn.execute(_FORGET_STAGED, account_ids, transaction_ids)
            await copy_records(conn, self._target, records=list(self._late.values()), columns=self._columns)
            # the replaced copies' times no longer count
            newest = await (
                conn.fetchval(_NEWEST_COPIED, user_id, bank_id) if self._direct else conn.fetchval(_NEWEST_STAGED)
            )

        account_stats = credit_stats = balance_stats = transaction_stats = TableStats()
        if accounts:
            account_stats, _ = await _write(
                conn, ACCOUNTS, user_id, bank_id, map(_account_row, accounts), len(accounts)
            )
        if agreements:
            credit_stats, _ = await _write(
                conn, CREDITS, user_id, bank_id, map(_credit_row, agreements), len(agreements)
            )
        if balances:
            await _stage(conn, "balances", "_stage_balances", BALANCE_COLUMNS, map(_balance_row, balances))
            added = await conn.fetchval(_SNAPSHOT_BALANCES, user_id, bank_id)
            balance_stats = TableStats(inserted=added, unchanged=len(balances) - added)
        count = len(self._sent)
        if self._direct:
            # nothing was stored before this write: every row is new and no pending row needs cleaning up
            transaction_stats = TableStats(inserted=count)
            if count:
                await rollups.from_raw(conn, user_id, bank_id)
        else:
            emptied = 0
            if count:
                emptied += await conn.fetchval(rollups.STAGED_DELTA, user_id, bank_id)  # reads the old rows
                inserted, updated = returned(await conn.fetchrow(TRANSACTIONS.sql, user_id, bank_id), "transactions")
                transaction_stats = TableStats(inserted=inserted, updated=updated, unchanged=count - inserted - updated)
            if fetched_window is not None and window_accounts:
                deleted, gone = returned(
                    await conn.fetchrow(
                        _DELETE_REPLACED_PENDING, user_id, bank_id, sorted(window_accounts), *fetched_window
                    ),
                    "transactions",
                )
                emptied += gone
                transaction_stats = dataclasses.replace(transaction_stats, deleted=deleted)
            if emptied:
                await conn.execute(rollups.DROP_EMPTY, user_id, bank_id)

        changed = any(s.changed for s in (account_stats, credit_stats, balance_stats, transaction_stats))
        watermark, was_failing = returned(
            await conn.fetchrow(
                _RECORD_SUCCESS,
                user_id,
                bank_id,
                newest,
                changed,
                account_stats.inserted,
                balance_stats.inserted,
                transaction_stats.inserted - transaction_stats.deleted,
                credit_stats.inserted,
            ),
            "sync_state",
        )
        changed = changed or was_failing  # a bank answering again changes what the dashboard says of it
        version = await conn.fetchval(_BUMP_VERSION if changed else _DATA_VERSION, user_id) or 0
        await self._transaction.commit()
        self._committed = True
        return WriteStats(
            accounts=account_stats,
            balances=balance_stats,
            transactions=transaction_stats,
            credits=credit_stats,
            skipped=self._skipped,
            watermark=watermark,
            data_version=version,
            changed=changed,
        )

    async def _close(self) -> None:
        """End of the `async with`: stop the COPY task if it still runs, and roll back unless committed.

        Runs to its end even when the caller is cancelled meanwhile (a worker stopping, a request
        abandoned): the connection goes back to the pool only once no task of this write uses it any
        more (otherwise the COPY task would touch a connection already released, or one another task
        was given)."""
        cleanup = asyncio.ensure_future(self._close_now())
        try:
            await asyncio.shield(cleanup)
        except asyncio.CancelledError:
            await asyncio.wait([cleanup])
            raise

    async def _close_now(self) -> None:
        self._closed = True
        copier = self._copier
        if copier is not None:
            if not copier.done():
                copier.cancel()
            await asyncio.wait([copier])
            if not copier.cancelled():
                copier.exception()  # retrieved: the error reached the caller already (or nobody asked)
        # A connection the server dropped (a restart) is detached from its pool proxy already: nothing to
        # roll back (the server did), and touching it would only raise "released back to the pool".
        if not self._started or self._committed or connection_lost(self._conn):
            return
        try:
            await self._transaction.rollback()
        except Exception:  # noqa: BLE001 - e.g. COMMIT itself failed: drop the session, the server rolls back
            if not connection_lost(self._conn):
                self._conn.terminate()
