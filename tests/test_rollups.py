"""The rollups of sync_svc/rollups.py on real Postgres: after randomized syncs (new rows, re-delivered pages,
changed amounts, categories, dates and directions, pending rows replaced, closed accounts, two banks of one
user written at once) every rollup row equals a recomputation from the raw rows, and every aggregate the
dashboard reads from them equals the scan of the raw rows it replaced (sync_svc/aggregate_scan.py). The
rebuild and the migration's backfill give the same rows."""

from __future__ import annotations

import asyncio
import pathlib
import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from bankapi.models import Account, Transaction
from sync_svc import rollups
from sync_svc.__main__ import SPEC
from sync_svc.aggregate_scan import AggregateScan
from sync_svc.bank_storage import BankDataStorage

T0 = datetime(2025, 3, 10, 12, 34, 56, tzinfo=UTC)
BANKS = ("abank", "vbank")
ACCOUNTS = ("acc-1", "acc-2", "acc-3")
INFOS = (
    "Дикси - Москва",
    "Кофейня - Москва",
    "Перевод от Ивана И.",
    "перевод между своими счетами",
    "Зарплата",
    "Платеж по кредиту №loan-1",
    "Платеж по кредиту №loan-2",
    "Проценты по депозиту №dep-1",
    None,
)

# Independent recomputations of every rollup table from the raw rows (not the code under test).
RECOMPUTED = {
    "rollup_month_flow": """
        SELECT date_trunc('month', booking_time AT TIME ZONE 'UTC')::date AS month, bank_id, currency,
               sum(CASE WHEN direction = 'credit' THEN signed_amount ELSE 0 END) AS income,
               sum(CASE WHEN direction = 'debit' THEN -signed_amount ELSE 0 END) AS spending,
               sum(CASE WHEN direction = 'credit' THEN 1 ELSE 0 END) AS credits,
               sum(CASE WHEN direction = 'debit' THEN 1 ELSE 0 END) AS debits
        FROM transactions WHERE user_id = $1 GROUP BY 1, 2, 3 ORDER BY 1, 2, 3 NULLS FIRST""",
    "rollup_day_spending": """
        SELECT (booking_time AT TIME ZONE 'UTC')::date AS day, bank_id, category, currency, sum(-signed_amount),
               count(*)
        FROM transactions WHERE user_id = $1 AND direction = 'debit'
        GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3 NULLS FIRST, 4 NULLS FIRST""",
    "rollup_day_income": """
        SELECT (booking_time AT TIME ZONE 'UTC')::date AS day, bank_id, currency, sum(amount), count(*)
        FROM transactions
        WHERE user_id = $1 AND direction = 'credit' AND agreement_id IS NULL
          AND NOT (lower(coalesce(description, '')) LIKE 'перевод%')
        GROUP BY 1, 2, 3 ORDER BY 1, 2, 3 NULLS FIRST""",
    "rollup_day_loans": """
        SELECT bank_id, agreement_id, currency, (booking_time AT TIME ZONE 'UTC')::date AS day, sum(-signed_amount),
               count(*)
        FROM transactions WHERE user_id = $1 AND direction = 'debit' AND agreement_id IS NOT NULL
        GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3 NULLS FIRST, 4""",
}
STORED = {
    "rollup_month_flow": """SELECT month, bank_id, currency, income, spending, credits, debits FROM rollup_month_flow
                            WHERE user_id = $1 ORDER BY 1, 2, 3 NULLS FIRST""",
    "rollup_day_spending": """SELECT day, bank_id, category, currency, total, n FROM rollup_day_spending
                              WHERE user_id = $1 ORDER BY 1, 2, 3 NULLS FIRST, 4 NULLS FIRST""",
    "rollup_day_income": """SELECT day, bank_id, currency, total, n FROM rollup_day_income
                            WHERE user_id = $1 ORDER BY 1, 2, 3 NULLS FIRST""",
    "rollup_day_loans": """SELECT bank_id, agreement_id, currency, day, total, n FROM rollup_day_loans
                           WHERE user_id = $1 ORDER BY 1, 2, 3 NULLS FIRST, 4""",
}


@pytest.fixture
async def storage(schema_pool):
    return BankDataStorage(await schema_pool(SPEC))


@pytest.fixture
def user() -> str:
    return f"rollup-{uuid.uuid4().hex[:10]}"


def account(account_id: str, status: str = "Enabled") -> Account:
    return Account.from_api(
        {
            "accountId": account_id,
            "status": status,
            "currency": "RUB",
            "accountType": "Personal",
            "accountSubType": "Checking",
            "nickname": account_id,
        }
    )


def transaction(spec: dict) -> Transaction:
    category = spec["category"]
    info = spec["info"]
    return Transaction.from_api(
        {
            "accountId": spec["account_id"],
            "transactionId": spec["transaction_id"],
            "amount": {"amount": spec["amount"], "currency": spec["currency"]},
            "creditDebitIndicator": spec["indicator"],
            "status": spec["status"],
            "bookingDateTime": spec["when"].isoformat(),
            "valueDateTime": spec["when"].isoformat(),
            "transactionInformation": info,
            "bankTransactionCode": {"code": "01" if category else "02"},
            "merchant": {"merchantId": "m-1", "name": "M", "mccCode": "5411", "category": category}
            if category
            else None,
        }
    )


def random_fields(r: random.Random) -> dict:
    cents = r.randint(1, 500_000)
    amount = (
        f"{cents // 100}.{cents % 100:02d}" if r.random() < 0.9 else f"{cents / 1000:.3f}"
    )  # rounded by numeric(18,2)
    return {
        "amount": amount,
        "indicator": r.choice(("Debit", "Debit", "Credit")),
        "currency": r.choice(("RUB", "RUB", "RUB", "USD", None)),
        "status": r.choice(("completed", "completed", "Booked", "pending")),
        # edges of days and months included: midnights, the last microsecond of a day
        "when": r.choice(
            (
                T0 - timedelta(days=r.randint(-2, 200), seconds=r.randint(0, 86_399)),
                datetime(2025, r.randint(1, 3), r.choice((1, 9, 10, 28)), tzinfo=UTC),
                datetime(2025, 2, 28, 23, 59, 59, 999_999, tzinfo=UTC),
            )
        ),
        "category": r.choice(("grocery", "cafe", "transport", None)),
        "info": r.choice(INFOS),
    }


class Model:
    """What the banks hold for one user: bank → (account, transaction id) → fields."""

    def __init__(self, r: random.Random):
        self.r = r
        self.banks: dict[str, dict[tuple[str, str], dict]] = {b: {} for b in BANKS}
        self.closed: set[tuple[str, str]] = set()
        self.serial = 0

    def new(self, bank: str, count: int) -> list[dict]:
        added = []
        for _ in range(count):
            self.serial += 1
            account_id = self.r.choice(ACCOUNTS)
            spec = {"account_id": account_id, "transaction_id": f"tx-{self.serial}", **random_fields(self.r)}
            self.banks[bank][account_id, spec["transaction_id"]] = spec
            added.append(spec)
        return added

    def change(self, bank: str, count: int) -> list[dict]:
        stored = list(self.banks[bank].values())
        changed = []
        for spec in self.r.sample(stored, min(count, len(stored))):
            fresh = random_fields(self.r)
            for field in self.r.sample(sorted(fresh), self.r.randint(1, 3)):
                spec[field] = fresh[field]
            changed.append(spec)
        return changed


async def write(storage: BankDataStorage, user: str, bank: str, specs: list[dict], r: random.Random, **rest) -> None:
    """One sync of `specs`, written at once or streamed page by page (a key repeated on a later page)."""
    txs = [transaction(s) for s in specs]
    r.shuffle(txs)
    if r.random() < 0.5:
        await storage.write_bank_data(user, bank, transactions=txs, **rest)
        return
    async with storage.bank_write(user, bank) as w:
        for i in range(0, len(txs), 9):
            await w.add_transactions(txs[i : i + 9])
        if txs:
            await w.add_transactions(r.sample(txs, min(3, len(txs))))  # fetched twice (pages shift)
        await w.commit(**rest)


async def assert_exact(storage: BankDataStorage, user: str) -> None:
    """Every rollup row as recomputed from the raw rows, and every aggregate as the scan gives it."""
    pool = storage.pool
    for table, sql in RECOMPUTED.items():
        assert [tuple(r) for r in await pool.fetch(STORED[table], user)] == [
            tuple(r) for r in await pool.fetch(sql, user)
        ], table
    scan = AggregateScan(pool)
    midnight = T0.replace(hour=0, minute=0, second=0, microsecond=0)
    for at in (T0, datetime(2025, 2, 28, 23, 59, tzinfo=UTC), T0 + timedelta(days=40)):
        for months in (1, 3, 12):
            assert await storage.monthly_cash_flow(user, months, at=at) == await scan.monthly_cash_flow(
                user, months, at=at
            )
    windows = [
        (T0 - timedelta(days=30), None),
        (midnight, None),
        (midnight - timedelta(days=45), midnight - timedelta(days=3)),
        (T0 - timedelta(days=61, hours=5), T0 - timedelta(days=2, hours=20)),
        (T0 - timedelta(hours=3), T0 - timedelta(hours=1)),  # within one day
        (datetime(2025, 2, 28, 23, 59, 59, 999_999, tzinfo=UTC), datetime(2025, 3, 1, tzinfo=UTC)),
        (T0, T0 - timedelta(days=1)),  # empty
    ]
    for since, until in windows:
        assert await storage.spending_by_category(user, since, until) == await scan.spending_by_category(
            user, since, until
        ), (since, until)
    for since in (T0 - timedelta(days=180), midnight - timedelta(days=90), T0 + timedelta(days=1)):
        assert await storage.income_by_day(user, since) == await scan.income_by_day(user, since), since
    for since in (None, T0 - timedelta(days=50, minutes=7), datetime(2025, 2, 1, tzinfo=UTC)):
        assert await storage.loan_repayments(user, since) == await scan.loan_repayments(user, since), since


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
async def test_rollups_stay_exact_through_randomized_syncs(storage, user, seed):
    r = random.Random(seed)
    model = Model(r)
    accounts = [account(a) for a in ACCOUNTS]
    # first syncs: rows COPYed straight into the table, rollups computed from them
    for bank in BANKS:
        await write(storage, user, bank, model.new(bank, r.randint(20, 60)), r, accounts=accounts)
    await assert_exact(storage, user)
    for _ in range(10):
        bank = r.choice(BANKS)
        step = r.choice(("new", "redeliver", "change", "pending", "close", "parallel"))
        if step == "new":  # new rows with an overlap of stored ones, as an incremental sync fetches
            stored = list(model.banks[bank].values())
            specs = model.new(bank, r.randint(1, 30)) + r.sample(stored, min(len(stored), r.randint(0, 15)))
            await write(storage, user, bank, specs, r)
        elif step == "redeliver":  # the same page again: nothing changes
            stored = list(model.banks[bank].values())
            await write(storage, user, bank, r.sample(stored, min(len(stored), 25)), r)
        elif step == "change":  # amounts, categories, dates, directions, descriptions changed at the bank
            await write(storage, user, bank, model.change(bank, r.randint(1, 15)), r)
        elif step == "pending":  # a full window fetch without some pending rows: they are deleted
            held = model.banks[bank]
            fetched = [a for a in ACCOUNTS if (bank, a) not in model.closed]  # a closed account is not fetched
            for key in [k for k, s in held.items() if k[0] in fetched and s["status"] == "pending"]:
                if r.random() < 0.6:
                    del held[key]
            await write(
                storage,
                user,
                bank,
                [s for s in held.values() if s["account_id"] in fetched],
                r,
                accounts=[account(a) for a in fetched],
                fetched_window=(None, T0 + timedelta(days=30)),  # every row's time
                window_accounts=fetched,
            )
        elif step == "close":  # an account closed: no longer fetched, its stored rows stay
            closed = r.choice(ACCOUNTS)
            model.closed.add((bank, closed))
            accounts_now = [account(a, "Closed" if (bank, a) in model.closed else "Enabled") for a in ACCOUNTS]
            await write(storage, user, bank, model.new(bank, 5), r, accounts=accounts_now)
        else:  # both banks of the user at once
            await asyncio.gather(
                *(
                    write(storage, user, b, model.new(b, r.randint(5, 20)) + model.change(b, r.randint(1, 10)), r)
                    for b in BANKS
                )
            )
        await assert_exact(storage, user)
    stored = await storage.pool.fetch(
        "SELECT bank_id, account_id, transaction_id FROM transactions WHERE user_id = $1", user
    )
    assert {tuple(x) for x in stored} == {(b, *k) for b, v in model.banks.items() for k in v}


async def test_concurrent_writes_of_one_user_lose_nothing(storage, user):
    """Eight writes at once, at two banks (each bank's writes wait for each other; the banks' do not)."""
    r = random.Random(7)
    model = Model(r)
    batches = [(bank, model.new(bank, 40)) for bank in BANKS for _ in range(4)]
    await asyncio.gather(
        *(write(storage, user, bank, specs, random.Random(i)) for i, (bank, specs) in enumerate(batches))
    )
    await assert_exact(storage, user)


async def test_rebuild_and_backfill_recompute_the_rows(storage, user):
    r = random.Random(11)
    model = Model(r)
    for bank in BANKS:
        await write(storage, user, bank, model.new(bank, 80), r)
        await write(storage, user, bank, model.change(bank, 20), r)
    expected = {t: [tuple(x) for x in await storage.pool.fetch(sql, user)] for t, sql in STORED.items()}
    # damaged: a row gone, a sum wrong, a row too many
    await storage.pool.execute(
        """DELETE FROM rollup_day_spending
           WHERE ctid IN (SELECT ctid FROM rollup_day_spending WHERE user_id = $1 LIMIT 1)""",
        user,
    )
    await storage.pool.execute("UPDATE rollup_month_flow SET income = income + 1 WHERE user_id = $1", user)
    await storage.pool.execute(
        """INSERT INTO rollup_day_income (user_id, day, bank_id, currency, total, n)
           VALUES ($1, '2020-01-01', 'zbank', 'RUB', 5, 1)""",
        user,
    )
    async with storage.pool.acquire() as conn:
        assert await rollups.rebuild_user(conn, user) == ["abank", "vbank", "zbank"]
    assert {t: [tuple(x) for x in await storage.pool.fetch(sql, user)] for t, sql in STORED.items()} == expected
    await assert_exact(storage, user)

    # the migration's backfill, run again on emptied tables, gives the same rows (then rolled back)
    migration = (pathlib.Path(rollups.__file__).parent / "migrations" / "007_rollups.sql").read_text()
    backfill = migration[migration.index("LOCK TABLE") :]
    async with storage.pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        try:
            for table in rollups.TABLES:
                await conn.execute(f"DELETE FROM {table}")
            await conn.execute(backfill)
            assert {t: [tuple(x) for x in await conn.fetch(sql, user)] for t, sql in STORED.items()} == expected
        finally:
            await transaction.rollback()
