"""The aggregates of GetAggregates computed by scanning every stored transaction of the user, as
sync_svc answered them before the rollups (migration 007, sync_svc/rollups.py): the reference the
rollup reads are tested against (tests/test_rollups.py) and measured against (bench/dashboard.py).
Same signatures and results as the aggregates of `BankReads`."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from sync_svc.bank_records import (
    CategorySpending,
    DayIncome,
    LoanRepayments,
    MonthlyCashFlow,
    _aware,
    _build,
    _Where,
)


class AggregateScan:
    """The scanning aggregates on a pool whose search_path is the `sync` schema."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

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
        where = (
            _Where()
            .add("user_id = {}", user_id)
            .add("direction = 'debit'")
            .add("booking_time >= {}", _aware(since, "since"))
            .maybe("booking_time < {}", _aware(until, "until"))
        )
        rows = await self.pool.fetch(
            f"""SELECT category, currency, -sum(signed_amount) AS total, count(*) AS count
                FROM transactions WHERE {where}
                GROUP BY category, currency ORDER BY total DESC, category NULLS LAST, currency""",
            *where.args,
        )
        return _build(CategorySpending, rows)

    async def loan_repayments(self, user_id: str, since: datetime | None = None) -> list[LoanRepayments]:
        """Per loan agreement (bank, agreement id, currency): the debits naming it — count, total, average,
        last payment and the most common day of month."""
        where = (
            _Where()
            .add("user_id = {}", user_id)
            .add("agreement_id IS NOT NULL")
            .add("direction = 'debit'")
            .maybe("booking_time >= {}", _aware(since, "since"))
        )
        rows = await self.pool.fetch(
            f"""SELECT bank_id, agreement_id, currency, count(*) AS count, -sum(signed_amount) AS total,
                       round(-avg(signed_amount), 2) AS average, max(booking_time) AS last_paid_at,
                       mode() WITHIN GROUP (ORDER BY extract(day FROM booking_time AT TIME ZONE 'UTC'))::int
                           AS typical_day,
                       array_agg(DISTINCT date_trunc('month', booking_time AT TIME ZONE 'UTC')::date) AS months
                FROM transactions WHERE {where}
                GROUP BY bank_id, agreement_id, currency ORDER BY bank_id, agreement_id, currency""",
            *where.args,
        )
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
               GROUP BY 1, currency ORDER BY 1, currency""",
            user_id,
            _aware(since, "since"),
        )
        return _build(DayIncome, rows)
