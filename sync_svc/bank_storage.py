"""SQL of the bank data in the `sync` schema: the sync write path and the dashboard's read API.

Write path (`BankDataStorage.bank_write`, and `write_bank_data` on top of it): one transaction per
fetch of one (user, bank), serialised per (user, bank) by a transaction-scoped advisory lock. The
transaction is opened when the fetch starts and the transaction pages are COPYed into it as they
arrive (`BankWrite`: a queue and one COPY task on the write's connection), so Postgres parses and
indexes them while the bank is still being waited on; the rest is written at `commit`. Each table
goes through the same machinery (`_Upsert`, `_write`): the rows are COPYed (binary,
`copy_records_to_table`) into a temporary table that is dropped at commit, then one
`INSERT … SELECT … ON CONFLICT (natural key) DO UPDATE` moves them into the real table. Rows
identical to the stored ones are filtered out before the insert, so an unchanged row is neither
rewritten nor locked; the `DO UPDATE … WHERE … IS DISTINCT FROM …` guard says the same thing once
more at the row. Inserts and updates are told apart by `xmax = 0`. When a table holds no row of the
(user, bank) yet (its first sync, the big one), the rows are COPYed straight into it instead.
Balance snapshots are appended only when the value differs from the latest snapshot. The sync
state (watermark, last success, running row totals) is updated in the same transaction, and the
user's data version is bumped there too, but only when a row was inserted, updated or deleted: a
second sync with no new bank data writes no bank-data row and leaves the version alone. A write
that fails or is abandoned before `commit` rolls back whole.

Read API: small frozen dataclasses with `Decimal` money and aware-UTC datetimes (the pool's
session time zone is UTC); aggregates are computed by Postgres, never by looping over rows here.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import functools
import json
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, TypeVar

import asyncpg

from bankapi.models import Account, Balance, ProductAgreement, Transaction
from svclib.db import copy_records
from svclib.resilience import connection_lost
from svclib.rows import Connection, returned

__all__ = [
    "BankCall",
    "BankDataStorage",
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

MAX_PAGE = 1000
R = TypeVar("R")  # a result dataclass
M = TypeVar("M")  # a bank model
_MESSAGE_LIMIT = 2000  # characters of a bank call's message kept in bank_status_log


# ---------------------------------------------------------------------------------------------- results

@dataclass(frozen=True)
class TableStats:
    """What one write did to one table. `unchanged` counts fetched rows identical to the stored ones."""
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.inserted or self.updated or self.deleted)


@dataclass(frozen=True)
class WriteStats:
    """Outcome of `write_bank_data`. `skipped` counts transactions with neither a booking nor a value
    time (they cannot be placed in time and are not stored); `data_version` is the user's version
    after the write (bumped only when `changed`: a row changed, or the bank was failing until this write
    and answers again, which changes the dashboard too)."""
    accounts: TableStats
    balances: TableStats
    transactions: TableStats
    credits: TableStats
    skipped: int
    watermark: datetime | None
    data_version: int
    changed: bool

    def _total(self, name: str) -> int:
        return sum(getattr(t, name) for t in (self.accounts, self.balances, self.transactions, self.credits))

    @property
    def inserted(self) -> int:
        return self._total("inserted")

    @property
    def updated(self) -> int:
        return self._total("updated")

    @property
    def deleted(self) -> int:
        return self._total("deleted")

    @property
    def unchanged(self) -> int:
        return self._total("unchanged")


@dataclass(frozen=True)
class SyncState:
    """Per (user, bank). `watermark` is the newest booking time stored; the counts are running totals
    kept in each write's transaction (`BankDataStorage.counts` recounts the tables)."""
    user_id: str
    bank_id: str
    watermark: datetime | None
    last_success_at: datetime | None
    last_changed_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    accounts_count: int
    balances_count: int
    transactions_count: int
    credits_count: int
    updated_at: datetime


@dataclass(frozen=True)
class Counts:
    accounts: int
    balances: int
    transactions: int
    credits: int


@dataclass(frozen=True)
class BankCall:
    """One bank call for `bank_status_log` (a Mapping with the same keys is accepted too)."""
    bank_id: str
    operation: str
    outcome: str
    user_id: str | None = None
    http_status: int | None = None
    latency_ms: float | None = None
    interaction_id: str | None = None
    message: str | None = None
    at: datetime | None = None  # defaults to the time of logging


@dataclass(frozen=True)
class StoredAccount:
    bank_id: str
    account_id: str
    status: str | None
    currency: str | None
    account_type: str | None
    account_sub_type: str | None
    nickname: str | None
    opening_date: date | None
    account_number: str | None
    owner_name: str | None
    first_seen_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class StoredBalance:
    bank_id: str
    account_id: str
    balance_type: str
    amount: Decimal
    signed_amount: Decimal  # negative for a Debit balance
    currency: str | None
    credit_debit_indicator: str | None
    as_of: datetime
    fetched_at: datetime


@dataclass(frozen=True)
class StoredCredit:
    bank_id: str
    agreement_id: str
    product_id: str | None
    product_type: str | None
    product_name: str | None
    amount: Decimal  # principal, deposited sum or card limit: not a debt
    interest_rate: Decimal | None
    status: str | None
    start_date: datetime | None
    end_date: datetime | None
    account_number: str | None
    account_balance: Decimal | None
    updated_at: datetime


@dataclass(frozen=True)
class StoredTransaction:
    bank_id: str
    account_id: str
    transaction_id: str
    amount: Decimal
    signed_amount: Decimal  # negative for a debit
    currency: str | None
    direction: str  # credit | debit
    status: str | None
    booking_time: datetime
    value_time: datetime | None
    description: str | None
    bank_code: str | None
    merchant: str | None
    category: str | None
    mcc: str | None
    agreement_id: str | None
    first_seen_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class TransactionCursor:
    """Keyset position in the (booking_time, bank_id, account_id, transaction_id) DESC order: the last
    row of a page. `token()`/`from_token()` turn it into an opaque page token and back."""
    booking_time: datetime
    bank_id: str
    account_id: str
    transaction_id: str

    def token(self) -> str:
        text = json.dumps([self.booking_time.isoformat(), self.bank_id, self.account_id, self.transaction_id],
                          ensure_ascii=False, separators=(",", ":"))
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    @classmethod
    def from_token(cls, token: str) -> TransactionCursor:
        """ValueError when the token was not made by `token()`."""
        try:
            text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
            when, bank_id, account_id, transaction_id = json.loads(text)
            moment = datetime.fromisoformat(when)
            if moment.tzinfo is None or not all(isinstance(v, str) for v in (bank_id, account_id, transaction_id)):
                raise ValueError
        except (ValueError, TypeError, UnicodeDecodeError):
            raise ValueError("invalid page token") from None
        return cls(moment, bank_id, account_id, transaction_id)


@dataclass(frozen=True)
class MonthlyCashFlow:
    month: date  # first day of the calendar month (UTC)
    currency: str | None
    income: Decimal  # sum of credits
    spending: Decimal  # sum of debits, positive
    count: int


@dataclass(frozen=True)
class CategorySpending:
    category: str | None  # merchant category; None for debits without a merchant (transfers, repayments)
    currency: str | None
    total: Decimal  # positive
    count: int


@dataclass(frozen=True)
class LoanRepayments:
    """Debits naming a loan agreement ("Платеж по кредиту №<agreement_id>")."""
    bank_id: str
    agreement_id: str
    currency: str | None
    count: int
    total: Decimal
    average: Decimal  # rounded to cents
    last_paid_at: datetime
    typical_day: int  # most common day of month (UTC); the earliest such day on a tie
    months: list[date]  # first day of every calendar month (UTC) with a repayment, oldest first


@dataclass(frozen=True)
class DayIncome:
    """Income credits of one UTC day in one currency."""
    day: date
    currency: str | None
    total: Decimal
    count: int


# ---------------------------------------------------------------------------------------------- rows

def _json_default(value: Any) -> Any:
    """JSON for what the bank client leaves in `raw`: Decimal numbers (it parses floats as Decimal)
    stay numbers whenever a float carries the exact same value, else become strings."""
    if isinstance(value, Decimal):
        if value == value.to_integral_value():
            return int(value)
        as_float = float(value)
        return as_float if Decimal(repr(as_float)) == value else str(value)
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    return str(value)


# check_circular off: `raw` comes from json.loads, it cannot hold a cycle (and the check costs ~8%)
_to_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=_json_default,
                            check_circular=False).encode


def _direction(indicator: str | None) -> str:
    return "debit" if indicator is not None and indicator.lower() == "debit" else "credit"


def _account_row(a: Account) -> tuple:
    return (a.account_id, a.status, a.currency, a.account_type, a.account_sub_type, a.nickname, a.opening_date,
            a.account_number, a.owner_name, _to_json(a.raw))


def _credit_row(p: ProductAgreement) -> tuple:
    return (p.agreement_id, p.product_id, p.product_type, p.product_name, p.amount, p.interest_rate, p.status,
            p.start_date, p.end_date, p.account_number, p.account_balance, _to_json(p.raw))


def _balance_row(b: Balance) -> tuple:
    return (b.account_id, b.type or "", b.amount, b.currency, b.credit_debit_indicator, b.as_of, _to_json(b.raw))


def _transaction_row(t: Transaction, head: tuple = ()) -> tuple:
    """`head` + the TRANSACTIONS columns (head: user and bank, for a COPY straight into the table)."""
    return (*head, t.account_id, t.transaction_id, t.amount, _direction(t.credit_debit_indicator), t.currency,
            t.status, t.booking_time or t.value_time, t.value_time, t.description, t.bank_code,
            t.merchant_name, t.merchant_category, t.mcc, t.agreement_id, _to_json(t.raw))


# ---------------------------------------------------------------------------------------------- upsert machinery

@dataclass(frozen=True)
class _Upsert:
    """How one table is written: staged by COPY, then upserted on (user_id, bank_id, *key).

    `values` are compared to decide whether a stored row changed. A column in `keep_when_null` keeps
    its stored value when a fetch lacks it (e.g. interest_rate, which only the detail call carries).
    """
    table: str
    key: tuple[str, ...]
    values: tuple[str, ...]
    keep_when_null: frozenset[str] = frozenset()

    @property
    def columns(self) -> tuple[str, ...]:
        return self.key + self.values

    @property
    def stage(self) -> str:
        return f"_stage_{self.table}"

    def _new(self, column: str, fresh: str, stored: str) -> str:
        """The value a write stores for `column`, from the fresh row alias and the stored row alias."""
        if column in self.keep_when_null:
            return f"COALESCE({fresh}.{column}, {stored}.{column})"
        return f"{fresh}.{column}"

    def _same(self, fresh: str, stored: str, op: str) -> str:
        old = ", ".join(f"{stored}.{c}" for c in self.values)
        new = ", ".join(self._new(c, fresh, stored) for c in self.values)
        return f"ROW({old}) {op} ROW({new})"

    @property
    def any_stored_sql(self) -> str:
        """$1 user_id, $2 bank_id; answers whether the table holds a row of theirs."""
        return f"SELECT EXISTS (SELECT 1 FROM {self.table} WHERE user_id = $1 AND bank_id = $2)"

    @functools.cached_property
    def sql(self) -> str:
        """$1 user_id, $2 bank_id; answers (inserted, updated)."""
        cols = ", ".join(self.columns)
        key_match = " AND ".join(f"o.{k} = s.{k}" for k in self.key)
        return f"""
            WITH written AS (
                INSERT INTO {self.table} AS t (user_id, bank_id, {cols})
                SELECT $1, $2, {", ".join(f"s.{c}" for c in self.columns)}
                FROM {self.stage} s
                WHERE NOT EXISTS (
                    SELECT 1 FROM {self.table} o
                    WHERE o.user_id = $1 AND o.bank_id = $2 AND {key_match}
                      AND {self._same("s", "o", "IS NOT DISTINCT FROM")})
                ON CONFLICT (user_id, bank_id, {", ".join(self.key)}) DO UPDATE
                SET {", ".join(f"{c} = {self._new(c, 'EXCLUDED', 't')}" for c in self.values)}, updated_at = now()
                WHERE {self._same("EXCLUDED", "t", "IS DISTINCT FROM")}
                RETURNING xmax = 0 AS inserted
            )
            SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM written
        """


ACCOUNTS = _Upsert(
    "accounts", ("account_id",),
    ("status", "currency", "account_type", "account_sub_type", "nickname", "opening_date", "account_number",
     "owner_name", "raw"),
    keep_when_null=frozenset({"account_number", "owner_name"}))  # GET /accounts/{id} has no identification
CREDITS = _Upsert(
    "credits", ("agreement_id",),
    ("product_id", "product_type", "product_name", "amount", "interest_rate", "status", "start_date", "end_date",
     "account_number", "account_balance", "raw"),
    keep_when_null=frozenset({"interest_rate", "account_balance"}))  # only in the detail call
TRANSACTIONS = _Upsert(
    "transactions", ("account_id", "transaction_id"),
    ("amount", "direction", "currency", "status", "booking_time", "value_time", "description", "bank_code",
     "merchant", "category", "mcc", "agreement_id", "raw"))
BALANCE_COLUMNS = ("account_id", "balance_type", "amount", "currency", "credit_debit_indicator", "as_of", "raw")


async def _create_stage(conn: Connection, table: str, stage: str, columns: Sequence[str]) -> None:
    """A temporary copy of `table`'s `columns` (same types, no constraints), dropped at commit."""
    await conn.execute(f"CREATE TEMP TABLE {stage} ON COMMIT DROP AS "
                       f"SELECT {', '.join(columns)} FROM {table} WITH NO DATA")


async def _stage(conn: Connection, table: str, stage: str, columns: Sequence[str],
                 rows: Iterable[tuple]) -> None:
    """`_create_stage`, filled by binary COPY. `rows` may be lazy: they are then built while the server
    parses what was sent."""
    await _create_stage(conn, table, stage, columns)
    await copy_records(conn, stage, records=rows, columns=list(columns))


async def _write(conn: Connection, spec: _Upsert, user_id: str, bank_id: str,
                 rows: Iterable[tuple], count: int) -> tuple[TableStats, bool]:
    """Write `count` rows (unique per key) of (user_id, bank_id) into `spec.table`; answers the stats and
    whether the rows were staged (then `spec.stage` holds them until commit).

    Normally: stage, then upsert. When the table holds no row of (user_id, bank_id) yet — the first
    sync of that bank, by far the largest write — the rows are COPYed straight into the table: there
    is nothing they could conflict with (every key starts with user and bank, the rows are unique per
    key, and the caller holds the (user, bank) advisory lock), so staging would only copy them twice.
    """
    if count and not await conn.fetchval(spec.any_stored_sql, user_id, bank_id):
        await copy_records(conn, spec.table, records=((user_id, bank_id, *row) for row in rows),
                           columns=["user_id", "bank_id", *spec.columns])
        return TableStats(inserted=count), False
    await _stage(conn, spec.table, spec.stage, spec.columns, rows)
    inserted, updated = returned(await conn.fetchrow(spec.sql, user_id, bank_id), spec.table)
    return TableStats(inserted=inserted, updated=updated, unchanged=count - inserted - updated), True


def _latest(items: Iterable[M], key: Callable[[M], tuple]) -> list[M]:
    """One item per natural key, the last one fetched winning: a key twice in one upsert is an error,
    and pages shift while new transactions arrive."""
    return list({key(item): item for item in items}.values())


_SNAPSHOT_BALANCES = f"""
    WITH written AS (
        INSERT INTO balances (user_id, bank_id, {", ".join(BALANCE_COLUMNS)})
        SELECT $1, $2, s.account_id, s.balance_type, s.amount, s.currency, s.credit_debit_indicator,
               COALESCE(s.as_of, now()), s.raw
        FROM _stage_balances s
        WHERE NOT EXISTS (
            SELECT 1 FROM (SELECT b.amount, b.currency, b.credit_debit_indicator FROM balances b
                           WHERE b.user_id = $1 AND b.bank_id = $2 AND b.account_id = s.account_id
                             AND b.balance_type = s.balance_type
                           ORDER BY b.id DESC LIMIT 1) latest
            WHERE ROW(latest.amount, latest.currency, latest.credit_debit_indicator)
                  IS NOT DISTINCT FROM ROW(s.amount, s.currency, s.credit_debit_indicator))
        RETURNING 1
    )
    SELECT count(*) FROM written
"""

# Pending rows of the fetched accounts, inside the fetched window, that this fetch no longer carries:
# the bank replaced them by their booked version under a new id.
_DELETE_REPLACED_PENDING = """
    WITH gone AS (
        DELETE FROM transactions t
        WHERE t.user_id = $1 AND t.bank_id = $2 AND t.account_id = ANY($3::text[])
          AND lower(t.status) = 'pending'
          AND t.booking_time >= COALESCE($4::timestamptz, '-infinity') AND t.booking_time <= $5
          AND NOT EXISTS (SELECT 1 FROM _stage_transactions s
                          WHERE s.account_id = t.account_id AND s.transaction_id = t.transaction_id)
        RETURNING 1
    )
    SELECT count(*) FROM gone
"""

_RECORD_SUCCESS = """
    WITH before AS (SELECT last_success_at, last_error_at FROM sync_state WHERE user_id = $1 AND bank_id = $2)
    INSERT INTO sync_state AS s (user_id, bank_id, watermark, last_success_at, last_changed_at,
                                 accounts_count, balances_count, transactions_count, credits_count)
    VALUES ($1, $2, $3, now(), CASE WHEN $4 THEN now() END, $5, $6, $7, $8)
    ON CONFLICT (user_id, bank_id) DO UPDATE SET
        watermark = GREATEST(s.watermark, EXCLUDED.watermark),
        last_success_at = now(),
        last_changed_at = COALESCE(EXCLUDED.last_changed_at, s.last_changed_at),
        accounts_count = s.accounts_count + EXCLUDED.accounts_count,
        balances_count = s.balances_count + EXCLUDED.balances_count,
        transactions_count = s.transactions_count + EXCLUDED.transactions_count,
        credits_count = s.credits_count + EXCLUDED.credits_count,
        updated_at = now()
    RETURNING watermark, COALESCE((SELECT last_error_at IS NOT NULL
                                          AND (last_success_at IS NULL OR last_error_at > last_success_at)
                                   FROM before), false) AS was_failing
"""

_BUMP_VERSION = """
    INSERT INTO user_data_version AS v (user_id, version) VALUES ($1, 1)
    ON CONFLICT (user_id) DO UPDATE SET version = v.version + 1, updated_at = now()
    RETURNING version
"""
_DATA_VERSION = "SELECT version FROM user_data_version WHERE user_id = $1"

_BANK_CALL_COLUMNS = ("at", "user_id", "bank_id", "operation", "outcome", "http_status", "latency_ms",
                      "interaction_id", "message")


# ---------------------------------------------------------------------------------------------- helpers


@functools.cache
def _select(cls: type) -> str:
    """The select list of a result dataclass: its field names are the column names."""
    return ", ".join(f.name for f in dataclasses.fields(cls))


def _build(cls: type[R], records: Iterable[asyncpg.Record]) -> list[R]:
    return [cls(**dict(r)) for r in records]


def _aware(value: datetime | None, name: str) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware")
    return value


def _lock_name(user_id: str, bank_id: str) -> str:
    return f"finpulse:sync:bank-data:{user_id}\x1f{bank_id}"


def _field(record: Any, name: str) -> Any:
    return record.get(name) if isinstance(record, Mapping) else getattr(record, name, None)


class _Where:
    """AND-ed conditions with numbered parameters, for the reads with optional filters."""

    def __init__(self) -> None:
        self.clauses: list[str] = []
        self.args: list[Any] = []

    def arg(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}"

    def add(self, clause: str, *values: Any) -> _Where:
        """`clause` with `{}` placeholders for `values`."""
        self.clauses.append(clause.format(*(self.arg(v) for v in values)))
        return self

    def maybe(self, clause: str, value: Any) -> _Where:
        return self.add(clause, value) if value is not None else self

    def __str__(self) -> str:
        return " AND ".join(self.clauses) or "true"


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
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                           _lock_name(self.user_id, self.bank_id))
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
        if self._copier is not None and self._copier.done() and not self._copier.cancelled():
            failure = self._copier.exception()
            if failure is not None:
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
        self, *,
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
            newest = await (conn.fetchval(_NEWEST_COPIED, user_id, bank_id) if self._direct
                            else conn.fetchval(_NEWEST_STAGED))

        account_stats = credit_stats = balance_stats = transaction_stats = TableStats()
        if accounts:
            account_stats, _ = await _write(conn, ACCOUNTS, user_id, bank_id, map(_account_row, accounts),
                                            len(accounts))
        if agreements:
            credit_stats, _ = await _write(conn, CREDITS, user_id, bank_id, map(_credit_row, agreements),
                                           len(agreements))
        if balances:
            await _stage(conn, "balances", "_stage_balances", BALANCE_COLUMNS, map(_balance_row, balances))
            added = await conn.fetchval(_SNAPSHOT_BALANCES, user_id, bank_id)
            balance_stats = TableStats(inserted=added, unchanged=len(balances) - added)
        count = len(self._sent)
        if self._direct:
            # nothing was stored before this write: every row is new and no pending row needs cleaning up
            transaction_stats = TableStats(inserted=count)
        else:
            if count:
                inserted, updated = returned(await conn.fetchrow(TRANSACTIONS.sql, user_id, bank_id),
                                             TRANSACTIONS.table)
                transaction_stats = TableStats(inserted=inserted, updated=updated, unchanged=count - inserted - updated)
            if fetched_window is not None and window_accounts:
                deleted = await conn.fetchval(_DELETE_REPLACED_PENDING, user_id, bank_id, sorted(window_accounts),
                                              *fetched_window)
                transaction_stats = dataclasses.replace(transaction_stats, deleted=deleted)

        changed = any(s.changed for s in (account_stats, credit_stats, balance_stats, transaction_stats))
        watermark, was_failing = returned(await conn.fetchrow(
            _RECORD_SUCCESS, user_id, bank_id, newest, changed, account_stats.inserted, balance_stats.inserted,
            transaction_stats.inserted - transaction_stats.deleted, credit_stats.inserted), "sync state")
        changed = changed or was_failing  # a bank answering again changes what the dashboard says of it
        version = await conn.fetchval(_BUMP_VERSION if changed else _DATA_VERSION, user_id) or 0
        await self._transaction.commit()
        self._committed = True
        return WriteStats(accounts=account_stats, balances=balance_stats, transactions=transaction_stats,
                          credits=credit_stats, skipped=self._skipped, watermark=watermark, data_version=version,
                          changed=changed)

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


# ---------------------------------------------------------------------------------------------- storage

class BankDataStorage:
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
        self, user_id: str, bank_id: str, *,
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
            return await write.commit(accounts=accounts, balances=balances, agreements=agreements,
                                      fetched_window=fetched_window, window_accounts=window_accounts)

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
                """, user_id, bank_id, message[:_MESSAGE_LIMIT])
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
            rows.append((_aware(_field(rec, "at"), "at") or now, _field(rec, "user_id"), _field(rec, "bank_id"),
                         _field(rec, "operation"), _field(rec, "outcome"), None if status is None else int(status),
                         None if latency is None else float(latency), _field(rec, "interaction_id"),
                         None if message is None else str(message)[:_MESSAGE_LIMIT]))
        if rows:
            async with self.pool.acquire() as conn:
                await copy_records(conn, "bank_status_log", records=rows, columns=list(_BANK_CALL_COLUMNS))
        return len(rows)

    # ------------------------------------------------------------------------------------------ sync state

    async def sync_state(self, user_id: str, bank_id: str) -> SyncState | None:
        """The (user, bank) sync state; None before the first sync or failure."""
        states = await self._sync_states(_Where().add("user_id = {}", user_id).add("bank_id = {}", bank_id))
        return states[0] if states else None

    async def sync_states(self, user_id: str) -> list[SyncState]:
        """The user's sync state at every bank synced so far, by bank id."""
        return await self._sync_states(_Where().add("user_id = {}", user_id))

    async def _sync_states(self, where: _Where) -> list[SyncState]:
        rows = await self.pool.fetch(
            f"SELECT {_select(SyncState)} FROM sync_state WHERE {where} ORDER BY bank_id", *where.args)
        return _build(SyncState, rows)

    async def data_version(self, user_id: str) -> int:
        """The user's data version: 0 before the first change, then bumped by every changing sync."""
        return await self.pool.fetchval(_DATA_VERSION, user_id) or 0

    async def stored_transaction_ids(self, user_id: str, bank_id: str, account_id: str,
                                     ids: Collection[str]) -> set[str]:
        """Which of `ids` are already stored for the account (the incremental sync's stop check)."""
        rows = await self.pool.fetch(
            """SELECT transaction_id FROM transactions
               WHERE user_id = $1 AND bank_id = $2 AND account_id = $3 AND transaction_id = ANY($4::text[])""",
            user_id, bank_id, account_id, list(ids))
        return {r[0] for r in rows}

    async def counts(self, user_id: str, bank_id: str) -> Counts:
        """Rows stored for (user, bank), counted now."""
        row = await self.pool.fetchrow(
            """
            SELECT (SELECT count(*) FROM accounts WHERE user_id = $1 AND bank_id = $2) AS accounts,
                   (SELECT count(*) FROM balances WHERE user_id = $1 AND bank_id = $2) AS balances,
                   (SELECT count(*) FROM transactions WHERE user_id = $1 AND bank_id = $2) AS transactions,
                   (SELECT count(*) FROM credits WHERE user_id = $1 AND bank_id = $2) AS credits
            """, user_id, bank_id)
        return Counts(**dict(returned(row, "counts")))

    # ------------------------------------------------------------------------------------------ reads

    async def accounts(self, user_id: str, bank_id: str | None = None) -> list[StoredAccount]:
        """The user's accounts (at one bank or all), by bank and account id."""
        where = _Where().add("user_id = {}", user_id).maybe("bank_id = {}", bank_id)
        rows = await self.pool.fetch(
            f"SELECT {_select(StoredAccount)} FROM accounts WHERE {where} ORDER BY bank_id, account_id", *where.args)
        return _build(StoredAccount, rows)

    async def latest_balances(self, user_id: str, bank_id: str | None = None) -> list[StoredBalance]:
        """The latest snapshot of every (account, balance type)."""
        where = _Where().add("user_id = {}", user_id).maybe("bank_id = {}", bank_id)
        rows = await self.pool.fetch(
            f"""SELECT DISTINCT ON (bank_id, account_id, balance_type) {_select(StoredBalance)}
                FROM balances WHERE {where}
                ORDER BY bank_id, account_id, balance_type, id DESC""", *where.args)
        return _build(StoredBalance, rows)

    async def balance_history(self, user_id: str, bank_id: str, account_id: str) -> list[StoredBalance]:
        """Every snapshot of one account, oldest first."""
        rows = await self.pool.fetch(
            f"""SELECT {_select(StoredBalance)} FROM balances
                WHERE user_id = $1 AND bank_id = $2 AND account_id = $3 ORDER BY balance_type, id""",
            user_id, bank_id, account_id)
        return _build(StoredBalance, rows)

    async def credits(self, user_id: str, bank_id: str | None = None) -> list[StoredCredit]:
        """The user's product agreements (loans, deposits, cards), by bank and agreement id."""
        where = _Where().add("user_id = {}", user_id).maybe("bank_id = {}", bank_id)
        rows = await self.pool.fetch(
            f"SELECT {_select(StoredCredit)} FROM credits WHERE {where} ORDER BY bank_id, agreement_id", *where.args)
        return _build(StoredCredit, rows)

    async def transactions(
        self, user_id: str, *, bank_id: str | None = None, account_id: str | None = None,
        since: datetime | None = None, until: datetime | None = None, limit: int = 100,
        after: TransactionCursor | None = None,
    ) -> tuple[list[StoredTransaction], TransactionCursor | None]:
        """One page of the user's transactions with booking time in [since, until), newest first, ordered
        by (booking_time, bank_id, account_id, transaction_id) descending. Returns the page and the
        cursor of the next one (None on the last page); pass it back as `after`."""
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be 1…{MAX_PAGE}")
        where = (_Where().add("user_id = {}", user_id).maybe("bank_id = {}", bank_id)
                 .maybe("account_id = {}", account_id)
                 .maybe("booking_time >= {}", _aware(since, "since"))
                 .maybe("booking_time < {}", _aware(until, "until")))
        if after is not None:
            _aware(after.booking_time, "after.booking_time")
            # the first conjunct is implied by the second; it lets the time indexes bound the scan
            where.add("booking_time <= {0} AND "
                      "(booking_time, bank_id, account_id, transaction_id) < ({0}, {1}, {2}, {3})",
                      after.booking_time, after.bank_id, after.account_id, after.transaction_id)
        limit_param = where.arg(limit + 1)  # one more row than asked tells whether a next page exists
        rows = _build(StoredTransaction, await self.pool.fetch(
            f"""SELECT {_select(StoredTransaction)} FROM transactions WHERE {where}
                ORDER BY booking_time DESC, bank_id DESC, account_id DESC, transaction_id DESC
                LIMIT {limit_param}""", *where.args))
        if len(rows) <= limit:
            return rows, None
        last = rows[limit - 1]
        return rows[:limit], TransactionCursor(last.booking_time, last.bank_id, last.account_id, last.transaction_id)

    # ------------------------------------------------------------------------------------------ aggregates

    async def monthly_cash_flow(self, user_id: str, months: int = 12, *,
                                at: datetime | None = None) -> list[MonthlyCashFlow]:
        """Income (credits) and spending (debits, positive) per calendar month (UTC) and currency, for the
        `months` months ending with the month of `at` (default now), oldest first; months without
        transactions are absent."""
        if months < 1:
            raise ValueError("months must be at least 1")
        rows = await self.pool.fetch(
            """
            WITH bounds AS (
                SELECT date_trunc('month', COALESCE($3::timestamptz, now()) AT TIME ZONE 'UTC') AS this_month
            )
            SELECT date_trunc('month', t.booking_time AT TIME ZONE 'UTC')::date AS month, t.currency,
                   COALESCE(sum(t.signed_amount) FILTER (WHERE t.direction = 'credit'), 0) AS income,
                   COALESCE(-sum(t.signed_amount) FILTER (WHERE t.direction = 'debit'), 0) AS spending,
                   count(*) AS count
            FROM transactions t, bounds b
            WHERE t.user_id = $1
              AND t.booking_time >= (b.this_month - make_interval(months => $2 - 1)) AT TIME ZONE 'UTC'
              AND t.booking_time < (b.this_month + interval '1 month') AT TIME ZONE 'UTC'
            GROUP BY 1, 2 ORDER BY 1, 2
            """, user_id, months, _aware(at, "at"))
        return _build(MonthlyCashFlow, rows)

    async def spending_by_category(self, user_id: str, since: datetime,
                                   until: datetime | None = None) -> list[CategorySpending]:
        """Debits booked in [since, until) per merchant category and currency, largest total first."""
        where = (_Where().add("user_id = {}", user_id).add("direction = 'debit'")
                 .add("booking_time >= {}", _aware(since, "since")).maybe("booking_time < {}", _aware(until, "until")))
        rows = await self.pool.fetch(
            f"""SELECT category, currency, -sum(signed_amount) AS total, count(*) AS count
                FROM transactions WHERE {where}
                GROUP BY category, currency ORDER BY total DESC, category NULLS LAST, currency""", *where.args)
        return _build(CategorySpending, rows)

    async def loan_repayments(self, user_id: str, since: datetime | None = None) -> list[LoanRepayments]:
        """Per loan agreement (bank, agreement id, currency): the debits naming it — count, total, average,
        last payment and the most common day of month."""
        where = (_Where().add("user_id = {}", user_id).add("agreement_id IS NOT NULL").add("direction = 'debit'")
                 .maybe("booking_time >= {}", _aware(since, "since")))
        rows = await self.pool.fetch(
            f"""SELECT bank_id, agreement_id, currency, count(*) AS count, -sum(signed_amount) AS total,
                       round(-avg(signed_amount), 2) AS average, max(booking_time) AS last_paid_at,
                       mode() WITHIN GROUP (ORDER BY extract(day FROM booking_time AT TIME ZONE 'UTC'))::int
                           AS typical_day,
                       array_agg(DISTINCT date_trunc('month', booking_time AT TIME ZONE 'UTC')::date) AS months
                FROM transactions WHERE {where}
                GROUP BY bank_id, agreement_id, currency ORDER BY bank_id, agreement_id, currency""", *where.args)
        return _build(LoanRepayments, rows)

    async def income_by_day(self, user_id: str, since: datetime) -> list[DayIncome]:
        """Income per UTC day and currency since `since`, oldest first: credits, without deposit interest
        or anything naming an agreement, and without transfers ("Перевод…", which move the user's own
        money between accounts or come from other people)."""
        rows = await self.pool.fetch(
            """SELECT (booking_time AT TIME ZONE 'UTC')::date AS day, currency, sum(amount) AS total,
                      count(*) AS count
               FROM transactions
               WHERE user_id = $1 AND direction = 'credit' AND booking_time >= $2 AND agreement_id IS NULL
                 AND coalesce(description, '') NOT ILIKE 'Перевод%'
               GROUP BY 1, currency ORDER BY 1, currency""", user_id, _aware(since, "since"))
        return _build(DayIncome, rows)
