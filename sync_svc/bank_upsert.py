"""The table-by-table SQL of the bank write (`BankWrite`, sync_svc/bank_write.py): how rows reach their tables.

Each table goes through the same machinery (`_Upsert`, `_write`): the rows are COPYed (binary,
`copy_records_to_table`) into a temporary table that is dropped at commit, then one
`INSERT … SELECT … ON CONFLICT (natural key) DO UPDATE` moves them into the real table. Rows
identical to the stored ones are filtered out before the insert, so an unchanged row is neither
rewritten nor locked; the `DO UPDATE … WHERE … IS DISTINCT FROM …` guard says the same thing once
more at the row. Inserts and updates are told apart by `xmax = 0`. When a table holds no row of the
(user, bank) yet (its first sync, the big one), the rows are COPYed straight into it instead.
Balance snapshots are appended only when the value differs from the latest snapshot
(`_SNAPSHOT_BALANCES`); pending transactions the bank replaced by their booked version are deleted
(`_DELETE_REPLACED_PENDING`); the sync state (watermark, last success, running row totals) is
updated by `_RECORD_SUCCESS`; the transactions' rollups (sync_svc/rollups.py) follow every insert,
update and delete. All of it runs inside the write's one transaction, under its (user, bank)
advisory lock.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from svclib.db import copy_records
from svclib.rows import Connection, returned
from sync_svc import rollups
from sync_svc.bank_records import TableStats


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
    "accounts",
    ("account_id",),
    (
        "status",
        "currency",
        "account_type",
        "account_sub_type",
        "nickname",
        "opening_date",
        "account_number",
        "owner_name",
        "raw",
    ),
    keep_when_null=frozenset({"account_number", "owner_name"}),
)  # GET /accounts/{id} has no identification
CREDITS = _Upsert(
    "credits",
    ("agreement_id",),
    (
        "product_id",
        "product_type",
        "product_name",
        "amount",
        "interest_rate",
        "status",
        "start_date",
        "end_date",
        "account_number",
        "account_balance",
        "raw",
    ),
    keep_when_null=frozenset({"interest_rate", "account_balance"}),
)  # only in the detail call
TRANSACTIONS = _Upsert(
    "transactions",
    ("account_id", "transaction_id"),
    (
        "amount",
        "direction",
        "currency",
        "status",
        "booking_time",
        "value_time",
        "description",
        "bank_code",
        "merchant",
        "category",
        "mcc",
        "agreement_id",
        "raw",
    ),
)
BALANCE_COLUMNS = ("account_id", "balance_type", "amount", "currency", "credit_debit_indicator", "as_of", "raw")


async def _create_stage(conn: Connection, table: str, stage: str, columns: Sequence[str]) -> None:
    """A temporary copy of `table`'s `columns` (same types, no constraints), dropped at commit."""
    await conn.execute(
        f"CREATE TEMP TABLE {stage} ON COMMIT DROP AS SELECT {', '.join(columns)} FROM {table} WITH NO DATA"
    )


async def _stage(conn: Connection, table: str, stage: str, columns: Sequence[str], rows: Iterable[tuple]) -> None:
    """`_create_stage`, filled by binary COPY. `rows` may be lazy: they are then built while the server
    parses what was sent."""
    await _create_stage(conn, table, stage, columns)
    await copy_records(conn, stage, records=rows, columns=list(columns))


async def _write(
    conn: Connection, spec: _Upsert, user_id: str, bank_id: str, rows: Iterable[tuple], count: int
) -> tuple[TableStats, bool]:
    """Write `count` rows (unique per key) of (user_id, bank_id) into `spec.table`; answers the stats and
    whether the rows were staged (then `spec.stage` holds them until commit).

    Normally: stage, then upsert. When the table holds no row of (user_id, bank_id) yet — the first
    sync of that bank, by far the largest write — the rows are COPYed straight into the table: there
    is nothing they could conflict with (every key starts with user and bank, the rows are unique per
    key, and the caller holds the (user, bank) advisory lock), so staging would only copy them twice.
    """
    if count and not await conn.fetchval(spec.any_stored_sql, user_id, bank_id):
        await copy_records(
            conn,
            spec.table,
            records=((user_id, bank_id, *row) for row in rows),
            columns=["user_id", "bank_id", *spec.columns],
        )
        return TableStats(inserted=count), False
    await _stage(conn, spec.table, spec.stage, spec.columns, rows)
    inserted, updated = returned(await conn.fetchrow(spec.sql, user_id, bank_id), spec.table)
    return TableStats(inserted=inserted, updated=updated, unchanged=count - inserted - updated), True


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
# Their contributions leave the rollups in the same statement; answers (deleted, emptied rollup rows).
_DELETE_REPLACED_PENDING = rollups.apply_sql(
    f"""
    gone AS (
        DELETE FROM transactions t
        WHERE t.user_id = $1 AND t.bank_id = $2 AND t.account_id = ANY($3::text[])
          AND lower(t.status) = 'pending'
          AND t.booking_time >= COALESCE($4::timestamptz, '-infinity') AND t.booking_time <= $5
          AND NOT EXISTS (SELECT 1 FROM _stage_transactions s
                          WHERE s.account_id = t.account_id AND s.transaction_id = t.transaction_id)
        RETURNING {rollups.CONTRIBUTION.removeprefix("sign, ")}
    ),
    d AS (SELECT -1 AS sign, * FROM gone)""",
    "(SELECT count(*) FROM gone) AS deleted",
)

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
