"""The read side of the bank data: sync state, counts, stored rows with keyset pages, and the aggregates the
dashboard asks for, each computed by Postgres (never by looping over rows here). Results are the
dataclasses of `sync_svc.bank_records`."""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, date, datetime, timedelta

import asyncpg

from svclib.rows import returned
from sync_svc.bank_records import (
    _DATA_VERSION,
    MAX_PAGE,
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
    TransactionCursor,
    _aware,
    _build,
    _select,
    _Where,
)


class BankReads:
    """Reads of the bank data on a pool whose search_path is the `sync` schema (svclib.db.create_pool)."""

    pool: asyncpg.Pool

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
            f"SELECT {_select(SyncState)} FROM sync_state WHERE {where} ORDER BY bank_id", *where.args
        )
        return _build(SyncState, rows)

    async def data_version(self, user_id: str) -> int:
        """The user's data version: 0 before the first change, then bumped by every changing sync."""
        return await self.pool.fetchval(_DATA_VERSION, user_id) or 0

    async def stored_transaction_ids(
        self, user_id: str, bank_id: str, account_id: str, ids: Collection[str]
    ) -> set[str]:
        """Which of `ids` are already stored for the account (the incremental sync's stop check)."""
        rows = await self.pool.fetch(
            """SELECT transaction_id FROM transactions
               WHERE user_id = $1 AND bank_id = $2 AND account_id = $3 AND transaction_id = ANY($4::text[])""",
            user_id,
            bank_id,
            account_id,
            list(ids),
        )
        return {r[0] for r in rows}

    async def counts(self, user_id: str, bank_id: str) -> Counts:
        """Rows stored for (user, bank), counted now."""
        row = await self.pool.fetchrow(
            """
            SELECT (SELECT count(*) FROM accounts WHERE user_id = $1 AND bank_id = $2) AS accounts,
                   (SELECT count(*) FROM balances WHERE user_id = $1 AND bank_id = $2) AS balances,
                   (SELECT count(*) FROM transactions WHERE user_id = $1 AND bank_id = $2) AS transactions,
                   (SELECT count(*) FROM credits WHERE user_id = $1 AND bank_id = $2) AS credits
            """,
            user_id,
            bank_id,
        )
        return Counts(**dict(returned(row, "counts")))

    # ------------------------------------------------------------------------------------------ reads

    async def accounts(self, user_id: str, bank_id: str | None = None) -> list[StoredAccount]:
        """The user's accounts (at one bank or all), by bank and account id."""
        where = _Where().add("user_id = {}", user_id).maybe("bank_id = {}", bank_id)
        rows = await self.pool.fetch(
            f"SELECT {_select(StoredAccount)} FROM accounts WHERE {where} ORDER BY bank_id, account_id", *where.args
        )
        return _build(StoredAccount, rows)

    async def latest_balances(self, user_id: str, bank_id: str | None = None) -> list[StoredBalance]:
        """The latest snapshot of every (account, balance type)."""
        where = _Where().add("user_id = {}", user_id).maybe("bank_id = {}", bank_id)
        rows = await self.pool.fetch(
            f"""SELECT DISTINCT ON (bank_id, account_id, balance_type) {_select(StoredBalance)}
                FROM balances WHERE {where}
                ORDER BY bank_id, account_id, balance_type, id DESC""",
            *where.args,
        )
        return _build(StoredBalance, rows)

    async def balance_history(self, user_id: str, bank_id: str, account_id: str) -> list[StoredBalance]:
        """Every snapshot of one account, oldest first."""
        rows = await self.pool.fetch(
            f"""SELECT {_select(StoredBalance)} FROM balances
                WHERE user_id = $1 AND bank_id = $2 AND account_id = $3 ORDER BY balance_type, id""",
            user_id,
            bank_id,
            account_id,
        )
        return _build(StoredBalance, rows)

    async def credits(self, user_id: str, bank_id: str | None = None) -> list[StoredCredit]:
        """The user's product agreements (loans, deposits, cards), by bank and agreement id."""
        where = _Where().add("user_id = {}", user_id).maybe("bank_id = {}", bank_id)
        rows = await self.pool.fetch(
            f"SELECT {_select(StoredCredit)} FROM credits WHERE {where} ORDER BY bank_id, agreement_id", *where.args
        )
        return _build(StoredCredit, rows)

    async def transactions(
        self,
        user_id: str,
        *,
        bank_id: str | None = None,
        account_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        after: TransactionCursor | None = None,
    ) -> tuple[list[StoredTransaction], TransactionCursor | None]:
        """One page of the user's transactions with booking time in [since, until), newest first, ordered
        by (booking_time, bank_id, account_id, transaction_id) descending. Returns the page and the
        cursor of the next one (None on the last page); pass it back as `after`."""
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be 1…{MAX_PAGE}")
        where = (
            _Where()
            .add("user_id = {}", user_id)
            .maybe("bank_id = {}", bank_id)
            .maybe("account_id = {}", account_id)
            .maybe("booking_time >= {}", _aware(since, "since"))
            .maybe("booking_time < {}", _aware(until, "until"))
        )
        if after is not None:
            _aware(after.booking_time, "after.booking_time")
            # the first conjunct is implied by the second; it lets the time indexes bound the scan
            where.add(
                "booking_time <= {0} AND (booking_time, bank_id, account_id, transaction_id) < ({0}, {1}, {2}, {3})",
                after.booking_time,
                after.bank_id,
                after.account_id,
                after.transaction_id,
            )
        limit_param = where.arg(limit + 1)  # one more row than asked tells whether a next page exists
        rows = _build(
            StoredTransaction,
            await self.pool.fetch(
                f"""SELECT {_select(StoredTransaction)} FROM transactions WHERE {where}
                ORDER BY booking_time DESC, bank_id DESC, account_id DESC, transaction_id DESC
                LIMIT {limit_param}""",
                *where.args,
            ),
        )
        if len(rows) <= limit:
            return rows, None
        last = rows[limit - 1]
        return rows[:limit], TransactionCursor(last.booking_time, last.bank_id, last.account_id, last.transaction_id)

    # ------------------------------------------------------------------------------------------ aggregates
    # Read from the rollups (sync_svc/rollups.py): whole UTC days and months come from them, the part of a
    # day at a window's edge from the raw rows. Results equal the scans they replaced
    # (sync_svc/aggregate_scan.py; tests/test_rollups.py).

    async def monthly_cash_flow(
        self, user_id: str, months: int = 12, *, at: datetime | None = None
    ) -> list[MonthlyCashFlow]:
        """Income (credits) and spending (debits, positive) per calendar month (UTC) and currency, for the
        `months` months ending with the month of `at` (default now), oldest first; months without
        transactions are absent."""
        if months < 1:
            raise ValueError("months must be at least 1")
        rows = await self.pool.fetch(
            """
            WITH bounds AS (
                SELECT date_trunc('month', COALESCE($3::timestamptz, now()) AT TIME ZONE 'UTC')::date AS this_month
            )
            SELECT r.month, r.currency, sum(r.income) AS income, sum(r.spending) AS spending,
                   sum(r.credits + r.debits)::bigint AS count
            FROM rollup_month_flow r, bounds b
            WHERE r.user_id = $1
              AND r.month >= (b.this_month - make_interval(months => $2 - 1))::date AND r.month <= b.this_month
            GROUP BY 1, 2 HAVING sum(r.credits + r.debits) > 0 ORDER BY 1, 2
            """,
            user_id,
            months,
            _aware(at, "at"),
        )
        return _build(MonthlyCashFlow, rows)

    async def spending_by_category(
        self, user_id: str, since: datetime, until: datetime | None = None
    ) -> list[CategorySpending]:
        """Debits booked in [since, until) per merchant category and currency, largest total first."""
        first, end, edges = _whole_days(_aware(since, "since"), _aware(until, "until"))
        q = _Where()
        user = q.arg(user_id)
        parts = [
            f"SELECT category, currency, total, n FROM rollup_day_spending WHERE user_id = {user} "
            f"AND day >= {q.arg(first)}" + (f" AND day < {q.arg(end)}" if end is not None else "")
        ]
        if edges:
            parts.append(
                f"""SELECT category, currency, -signed_amount, 1 FROM transactions
                    WHERE user_id = {user} AND direction = 'debit' AND ({_between(q, edges)})"""
            )
        rows = await self.pool.fetch(
            f"""SELECT category, currency, sum(total) AS total, sum(n)::bigint AS count
                FROM ({" UNION ALL ".join(parts)}) p
                GROUP BY category, currency HAVING sum(n) > 0
                ORDER BY total DESC, category NULLS LAST, currency""",
            *q.args,
        )
        return _build(CategorySpending, rows)

    async def loan_repayments(self, user_id: str, since: datetime | None = None) -> list[LoanRepayments]:
        """Per loan agreement (bank, agreement id, currency): the debits naming it — count, total, average,
        last payment and the most common day of month (the earliest day among equally common ones)."""
        q = _Where()
        user = q.arg(user_id)
        since = _aware(since, "since")
        parts = [
            "SELECT bank_id, agreement_id, currency, day, total, n FROM rollup_day_loans "
            f"WHERE user_id = {user} AND n > 0"
        ]
        if since is not None:
            first, _, edges = _whole_days(since, None)
            parts[0] += f" AND day >= {q.arg(first)}"
            if edges:
                parts.append(
                    f"""SELECT bank_id, agreement_id, currency, (booking_time AT TIME ZONE 'UTC')::date,
                               -signed_amount, 1
                        FROM transactions
                        WHERE user_id = {user} AND agreement_id IS NOT NULL AND direction = 'debit'
                          AND ({_between(q, edges)})"""
                )
        rows = await self.pool.fetch(
            f"""
            WITH parts AS ({" UNION ALL ".join(parts)}),
            groups AS (
                SELECT bank_id, agreement_id, currency, sum(n)::bigint AS count, sum(total) AS total,
                       max(day) AS last_day, array_agg(DISTINCT date_trunc('month', day::timestamp)::date) AS months
                FROM parts GROUP BY bank_id, agreement_id, currency HAVING sum(n) > 0
            ),
            by_day AS (
                SELECT bank_id, agreement_id, currency, extract(day FROM day)::int AS day_of_month, sum(n) AS n
                FROM parts GROUP BY 1, 2, 3, 4
            ),
            typical AS (  -- mode(): the most frequent, the first in order among equally frequent ones
                SELECT bank_id, agreement_id, currency,
                       (array_agg(day_of_month ORDER BY n DESC, day_of_month))[1] AS typical_day
                FROM by_day GROUP BY 1, 2, 3
            )
            SELECT g.bank_id, g.agreement_id, g.currency, g.count, g.total,
                   round(-((-g.total) / g.count), 2) AS average,  -- as round(-avg(signed_amount), 2)
                   (SELECT max(t.booking_time) FROM transactions t
                    WHERE t.user_id = {user} AND t.agreement_id = g.agreement_id AND t.bank_id = g.bank_id
                      AND t.currency IS NOT DISTINCT FROM g.currency AND t.direction = 'debit'
                      AND t.booking_time >= greatest(g.last_day::timestamp AT TIME ZONE 'UTC', {q.arg(since)})
                      AND t.booking_time < (g.last_day + 1)::timestamp AT TIME ZONE 'UTC') AS last_paid_at,
                   y.typical_day, g.months
            FROM groups g
            JOIN typical y ON y.bank_id = g.bank_id AND y.agreement_id = g.agreement_id
                          AND y.currency IS NOT DISTINCT FROM g.currency
            ORDER BY g.bank_id, g.agreement_id, g.currency
            """,
            *q.args,
        )
        return _build(LoanRepayments, rows)

    async def income_by_day(self, user_id: str, since: datetime) -> list[DayIncome]:
        """Income per UTC day and currency since `since`, oldest first: credits, without deposit interest
        or anything naming an agreement, and without transfers ("Перевод…", which move the user's own
        money between accounts or come from other people)."""
        first, _, edges = _whole_days(_aware(since, "since"), None)
        q = _Where()
        user = q.arg(user_id)
        parts = [
            f"SELECT day, currency, total, n FROM rollup_day_income WHERE user_id = {user} AND day >= {q.arg(first)}"
        ]
        if edges:
            parts.append(
                f"""SELECT (booking_time AT TIME ZONE 'UTC')::date, currency, amount, 1 FROM transactions
                    WHERE user_id = {user} AND direction = 'credit' AND agreement_id IS NULL
                      AND coalesce(description, '') NOT ILIKE 'Перевод%' AND ({_between(q, edges)})"""
            )
        rows = await self.pool.fetch(
            f"""SELECT day, currency, sum(total) AS total, sum(n)::bigint AS count
                FROM ({" UNION ALL ".join(parts)}) p
                GROUP BY day, currency HAVING sum(n) > 0 ORDER BY day, currency""",
            *q.args,
        )
        return _build(DayIncome, rows)


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _whole_days(
    since: datetime | None, until: datetime | None
) -> tuple[date, date | None, list[tuple[datetime, datetime]]]:
    """[since, until) as UTC days: the first whole day, the day after the last whole one (None: no end),
    and the parts of days at the edges, as [start, end) time ranges (none when the edges are midnights)."""
    assert since is not None
    since = since.astimezone(UTC)
    first = since.date() if since == _midnight(since.date()) else since.date() + timedelta(days=1)
    head_end = _midnight(first)
    if until is None:
        return first, None, [(since, head_end)] if since < head_end else []
    until = until.astimezone(UTC)
    edges = [(since, min(head_end, until)), (max(_midnight(until.date()), head_end), until)]
    return first, until.date(), [(a, b) for a, b in edges if a < b]


def _between(q: _Where, ranges: list[tuple[datetime, datetime]]) -> str:
    return " OR ".join(f"(booking_time >= {q.arg(a)} AND booking_time < {q.arg(b)})" for a, b in ranges)
