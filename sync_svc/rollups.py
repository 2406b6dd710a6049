"""Rollups of the transactions (migration 007): what GetAggregates answers, maintained on write.

Four tables hold, per user and bank, the sums and counts the dashboard's aggregates are made of:
monthly cash flow, debits per day × category, income per day, loan repayments per agreement × day.
They change in the transaction that writes the transactions (sync_svc/bank_write.py), as deltas:
every transaction's contribution is added when it is stored, and when a stored row is replaced or
deleted its old contribution is subtracted (an identical re-delivered row adds and subtracts the same,
so nothing changes). Sums are NUMERIC, so the arithmetic is exact; a row whose count reaches 0 is
deleted, so the tables hold exactly what a recomputation from the raw rows gives (tests/test_rollups.py).
Whatever else comes to change or delete transactions (a purge of a user's data, say) must apply its
delta the same way (`apply_sql`) or recompute the (user, bank) (`from_raw`) in its transaction.

Every rollup key holds the bank, and a (user, bank) is written by one transaction at a time (the
advisory lock of `BankWrite`): two syncs of one user at two banks never touch the same rollup row,
so they cannot lose each other's updates nor deadlock on them. `rebuild` (all of one user's banks in
one transaction, their locks taken in bank order) recomputes them from the raw rows:

    python -m sync_svc.rollups rebuild [--user USER]

(FINPULSE_SYNC_DATABASE_URL or FINPULSE_DATABASE_URL names the database.)
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from svclib.rows import Connection
from sync_svc.bank_records import _lock_name

TABLES = ("rollup_month_flow", "rollup_day_spending", "rollup_day_income", "rollup_day_loans")

# The contribution of one set of rows: a CTE named `d` with these columns (`sign` 1 to add, -1 to take away).
CONTRIBUTION = "sign, booking_time, direction, signed_amount, amount, currency, category, agreement_id, description"

# The upserts of a contribution `d` into the four tables ($1 user, $2 bank), each a CTE answering
# `emptied` for the rows whose count it brought to 0. One row per key and table: each is written once.
_UPSERTS = """
    flow AS (
        INSERT INTO rollup_month_flow AS r (user_id, month, bank_id, currency, income, spending, credits, debits)
        SELECT $1, g.month, $2, g.currency, g.income, g.spending, g.credits, g.debits
        FROM (SELECT date_trunc('month', booking_time AT TIME ZONE 'UTC')::date AS month, currency,
                     COALESCE(sum(sign * signed_amount) FILTER (WHERE direction = 'credit'), 0) AS income,
                     COALESCE(sum(-sign * signed_amount) FILTER (WHERE direction = 'debit'), 0) AS spending,
                     COALESCE(sum(sign) FILTER (WHERE direction = 'credit'), 0) AS credits,
                     COALESCE(sum(sign) FILTER (WHERE direction = 'debit'), 0) AS debits
              FROM d GROUP BY 1, 2) g
        WHERE (g.income, g.spending, g.credits, g.debits) <> (0, 0, 0, 0)
        ON CONFLICT (user_id, month, bank_id, currency) DO UPDATE
        SET income = r.income + EXCLUDED.income, spending = r.spending + EXCLUDED.spending,
            credits = r.credits + EXCLUDED.credits, debits = r.debits + EXCLUDED.debits
        RETURNING r.credits = 0 AND r.debits = 0 AS emptied
    ),
    spending AS (
        INSERT INTO rollup_day_spending AS r (user_id, day, bank_id, category, currency, total, n)
        SELECT $1, g.day, $2, g.category, g.currency, g.total, g.n
        FROM (SELECT (booking_time AT TIME ZONE 'UTC')::date AS day, category, currency,
                     sum(-sign * signed_amount) AS total, sum(sign) AS n
              FROM d WHERE direction = 'debit' GROUP BY 1, 2, 3) g
        WHERE (g.total, g.n) <> (0, 0)
        ON CONFLICT (user_id, day, bank_id, category, currency) DO UPDATE
        SET total = r.total + EXCLUDED.total, n = r.n + EXCLUDED.n
        RETURNING r.n = 0 AS emptied
    ),
    income AS (
        INSERT INTO rollup_day_income AS r (user_id, day, bank_id, currency, total, n)
        SELECT $1, g.day, $2, g.currency, g.total, g.n
        FROM (SELECT (booking_time AT TIME ZONE 'UTC')::date AS day, currency, sum(sign * amount) AS total,
                     sum(sign) AS n
              FROM d
              WHERE direction = 'credit' AND agreement_id IS NULL
                AND coalesce(description, '') NOT ILIKE 'Перевод%'
              GROUP BY 1, 2) g
        WHERE (g.total, g.n) <> (0, 0)
        ON CONFLICT (user_id, day, bank_id, currency) DO UPDATE
        SET total = r.total + EXCLUDED.total, n = r.n + EXCLUDED.n
        RETURNING r.n = 0 AS emptied
    ),
    loans AS (
        INSERT INTO rollup_day_loans AS r (user_id, bank_id, agreement_id, currency, day, total, n)
        SELECT $1, $2, g.agreement_id, g.currency, g.day, g.total, g.n
        FROM (SELECT agreement_id, currency, (booking_time AT TIME ZONE 'UTC')::date AS day,
                     sum(-sign * signed_amount) AS total, sum(sign) AS n
              FROM d WHERE direction = 'debit' AND agreement_id IS NOT NULL GROUP BY 1, 2, 3) g
        WHERE (g.total, g.n) <> (0, 0)
        ON CONFLICT (user_id, bank_id, agreement_id, currency, day) DO UPDATE
        SET total = r.total + EXCLUDED.total, n = r.n + EXCLUDED.n
        RETURNING r.n = 0 AS emptied
    )"""
_EMPTIED = """(SELECT count(*) FROM (SELECT emptied FROM flow UNION ALL SELECT emptied FROM spending
                                  UNION ALL SELECT emptied FROM income UNION ALL SELECT emptied FROM loans) e
               WHERE emptied)"""


def apply_sql(source: str, answer: str = "") -> str:
    """One statement: the CTEs of `source` (the last one named `d`, of columns `CONTRIBUTION`) applied to
    the rollups of ($1 user, $2 bank). Answers `answer` (select-list items, e.g. of `source`'s CTEs)
    and `emptied`: rows brought to a count of 0 (then run `DROP_EMPTY`)."""
    return f"WITH {source},\n{_UPSERTS}\nSELECT {answer + ', ' if answer else ''}{_EMPTIED} AS emptied"


# Rows of the staged upsert (sync_svc/bank_upsert.py: TRANSACTIONS): run before it, it adds the staged
# rows and takes away the stored rows they replace (identical ones cancel out). The staged rows'
# signed amount is the generated column's definition (002_bank_data.sql). With statistics the join is
# a primary-key probe per staged row; on a table never analysed since a big first sync the planner
# hashes the (user, bank)'s rows instead, as for the upsert's own NOT EXISTS (a LATERAL … LIMIT 1
# forcing probes then picks transactions_by_account_time and scans an account per row: far worse).
STAGED_DELTA = apply_sql("""
    d AS (
        SELECT 1 AS sign, s.booking_time, s.direction,
               CASE WHEN s.direction = 'debit' THEN -abs(s.amount) ELSE s.amount END AS signed_amount,
               s.amount, s.currency, s.category, s.agreement_id, s.description
        FROM _stage_transactions s
        UNION ALL
        SELECT -1, o.booking_time, o.direction, o.signed_amount, o.amount, o.currency, o.category,
               o.agreement_id, o.description
        FROM _stage_transactions s
        JOIN transactions o ON o.user_id = $1 AND o.bank_id = $2
                           AND o.account_id = s.account_id AND o.transaction_id = s.transaction_id
    )""")

# Every stored row of ($1 user, $2 bank) added: after `CLEAR_BANK`, the rollups of a first sync
# (rows COPYed straight into the table) and of a rebuild.
FROM_RAW = apply_sql(f"""
    d AS (SELECT 1 AS sign, {CONTRIBUTION.removeprefix("sign, ")}
          FROM transactions WHERE user_id = $1 AND bank_id = $2)""")

CLEAR_BANK = " ".join(
    [
        "WITH",
        ", ".join(f"c{i} AS (DELETE FROM {t} WHERE user_id = $1 AND bank_id = $2)" for i, t in enumerate(TABLES[1:])),
        f"DELETE FROM {TABLES[0]} WHERE user_id = $1 AND bank_id = $2",
    ]
)

DROP_EMPTY = """
    WITH a AS (DELETE FROM rollup_month_flow WHERE user_id = $1 AND bank_id = $2 AND credits = 0 AND debits = 0),
         b AS (DELETE FROM rollup_day_spending WHERE user_id = $1 AND bank_id = $2 AND n = 0),
         c AS (DELETE FROM rollup_day_income WHERE user_id = $1 AND bank_id = $2 AND n = 0)
    DELETE FROM rollup_day_loans WHERE user_id = $1 AND bank_id = $2 AND n = 0
"""

_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))"


async def from_raw(conn: Connection, user_id: str, bank_id: str) -> None:
    """Replace the rollups of (user, bank) by a recomputation from its stored rows. In the caller's
    transaction, under the (user, bank) lock."""
    await conn.execute(CLEAR_BANK, user_id, bank_id)
    await conn.fetchval(FROM_RAW, user_id, bank_id)


async def rebuild_user(conn: Connection, user_id: str) -> list[str]:
    """Recompute every rollup of `user_id` from the raw rows, in one transaction, holding the locks of
    all its banks (taken in bank order, as no sync write takes two). Answers the banks rebuilt."""
    async with conn.transaction():
        banks = sorted(
            r[0]
            for r in await conn.fetch(
                "SELECT DISTINCT bank_id FROM transactions WHERE user_id = $1 UNION "
                + " UNION ".join(f"SELECT bank_id FROM {t} WHERE user_id = $1" for t in TABLES),
                user_id,
            )
        )
        for bank_id in banks:
            await conn.execute(_LOCK, _lock_name(user_id, bank_id))
        for bank_id in banks:
            await from_raw(conn, user_id, bank_id)
    return banks


async def users(conn: Connection) -> list[str]:
    """Every user with stored transactions or rollups."""
    rows = await conn.fetch(
        "SELECT user_id FROM sync_state UNION "
        + " UNION ".join(f"SELECT DISTINCT user_id FROM {t}" for t in TABLES)
        + " ORDER BY 1"
    )
    return [r[0] for r in rows]


async def _rebuild(dsn: str, user: str | None) -> int:
    from svclib import db
    from sync_svc.__main__ import SPEC

    pool = await db.create_pool(dsn, SPEC.schema, max_size=1, application_name="finpulse-sync-rollups")
    try:
        async with pool.acquire() as conn:
            for user_id in [user] if user else await users(conn):
                banks = await rebuild_user(conn, user_id)
                print(f"{user_id}: rebuilt {len(banks)} bank(s) {', '.join(banks)}")
    finally:
        await pool.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    from svclib.config import load_settings

    parser = argparse.ArgumentParser(prog="python -m sync_svc.rollups", description="Recompute the rollups.")
    parser.add_argument("command", choices=["rebuild"])
    parser.add_argument("--user", help="only this user (default: every user)")
    args = parser.parse_args(argv)
    dsn = load_settings().database_url_for("sync")
    if not dsn:
        print("sync_svc.rollups: set FINPULSE_SYNC_DATABASE_URL or FINPULSE_DATABASE_URL", file=sys.stderr)
        return 2
    return asyncio.run(_rebuild(dsn, args.user))


if __name__ == "__main__":
    sys.exit(main())
