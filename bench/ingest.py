"""Ingest: rows/s of the production write path for 100,000 transactions ÷ rows/s of a plain COPY of the
same rows into an identical table (same columns, defaults, constraints and indexes). Goal ≥ 0.5.

The production path is `BankDataStorage.write_bank_data` end to end, from the bank models (building
rows, JSON of `raw`, accounts, balances, agreements, sync state, data version, commit), one call per
bank, into empty tables: a bank's first sync, which loads its rows with one COPY. The baseline is
`copy_records_to_table` of ready-made rows (raw already JSON text, not charged to it) into
`CREATE TABLE … (LIKE transactions INCLUDING ALL)`, one call per bank. Also timed: an identical
re-write of the same rows (must write nothing), and the same 100k rows through the staged upsert
path that every later sync takes (COPY into a temporary table, INSERT … ON CONFLICT).

Other work on the machine disturbs single timings, so each measurement is taken in several rounds
(each from truncated tables after a CHECKPOINT) and the best of each is reported.

Runs on a scratch database created on FINPULSE_DATABASE_URL (dropped afterwards), or on an embedded
Postgres in a temporary folder when that is not set.
`python -m bench.ingest [--rows N] [--rounds N]`, or `python -m bench` for every benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import random
import tempfile
import time
import uuid
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from urllib.parse import urlparse, urlunparse

import asyncpg

import sync_svc
from bankapi.models import Account, Balance, ProductAgreement, Transaction
from svclib import db
from svclib.embedded import ensure_backing_services
from sync_svc import bank_records, bank_upsert
from sync_svc.bank_storage import BankDataStorage

SCHEMA = "sync"
MIGRATIONS = pathlib.Path(sync_svc.__file__).with_name("migrations")
BANKS = ("vbank", "abank", "sbank")
ACCOUNTS_PER_BANK = 3
ANCHOR = datetime(2025, 11, 18, 12, 0, tzinfo=UTC)
MERCHANTS = (
    ("grocery", "5411", 1_000, 5_000, ("Дикси", "Пятёрочка", "Перекрёсток", "Магнит", "ВкусВилл")),
    ("restaurants", "5812", 2_000, 50_000, ("Кофемания", "Шоколадница", "Теремок", "Якитория")),
    ("online_retail", "5399", 10_000, 80_000, ("Ozon", "Wildberries", "Яндекс Маркет")),
    ("clothing", "5651", 11_000, 98_000, ("Zara", "Gloria Jeans", "Befree", "Спортмастер")),
)
USER_ID = "team200-1"
SEED = Transaction.from_api(
    {
        "accountId": "acc-seed",
        "transactionId": "tx-seed",
        "amount": {"amount": "1.00"},
        "creditDebitIndicator": "Debit",
        "bookingDateTime": "2024-01-01T00:00:00Z",
    }
)
CITIES = ("Москва", "Санкт-Петербург", "Казань", "Екатеринбург", "Новосибирск")


# ---------------------------------------------------------------------------------------------- data


def _money(r: random.Random, low: int, high: int) -> str:
    return str(Decimal(r.randint(low * 100, high * 100)) / 100)


def _transaction_json(r: random.Random, bank_id: str, account_id: str, n: int, when: datetime) -> dict:
    """One transaction as the bank's API returns it (bank-api.md), with the usual mix of kinds."""
    kind = r.random()
    body = {
        "accountId": account_id,
        "transactionId": f"tx-{bank_id}-{account_id[4:]}-{n:08d}",
        "status": "completed",
        "bookingDateTime": when.isoformat().replace("+00:00", "Z"),
        "valueDateTime": when.isoformat().replace("+00:00", "Z"),
        "counterparty": None,
    }
    if kind < 0.80:  # card purchase
        category, mcc, low, high, names = r.choices(MERCHANTS, weights=(65, 20, 8, 7))[0]
        name, city = r.choice(names), r.choice(CITIES)
        body |= {
            "amount": {"amount": _money(r, low // 10, high // 10), "currency": "RUB"},
            "creditDebitIndicator": "Debit",
            "transactionInformation": f"{name} - {city}",
            "bankTransactionCode": {"code": "01"},
            "merchant": {
                "merchantId": f"mrc-{zlib.crc32(f'{name}|{city}'.encode()):08x}",
                "name": name,
                "mccCode": mcc,
                "category": category,
                "city": city,
                "country": "RUS",
            },
            "card": {"cardId": f"card-{account_id}", "cardNumber": f"****{r.randint(1000, 9999)}", "cardType": "debit"},
        }
    else:
        if kind < 0.90:
            info, indicator = r.choice(("Доход", "Доход", "Доход от бизнеса")), "Credit"
            amount = _money(r, 30_000, 110_000)
        elif kind < 0.95:
            info, indicator, amount = "Перевод клиенту Иван И.", "Debit", _money(r, 500, 20_000)
        elif kind < 0.98:
            info, indicator, amount = f"Платеж по кредиту №loan-{bank_id}-0447", "Debit", "44773.27"
        else:
            info, indicator, amount = f"Проценты по депозиту №dep-{bank_id}-0012", "Credit", _money(r, 100, 3_000)
        body |= {
            "amount": {"amount": amount, "currency": "RUB"},
            "creditDebitIndicator": indicator,
            "transactionInformation": info,
            "bankTransactionCode": {"code": "02"},
            "merchant": None,
            "card": None,
        }
    return body


def generate(total: int, seed: int = 20251118) -> dict[str, dict]:
    """Per bank: the fetch of one user (accounts, balances, agreements, transactions newest first),
    `total` transactions in all, spread over about a year; deterministic."""
    r = random.Random(seed)
    per_account = total // (len(BANKS) * ACCOUNTS_PER_BANK)
    extra = total - per_account * len(BANKS) * ACCOUNTS_PER_BANK
    fetches: dict[str, dict] = {}
    for bank_id in BANKS:
        accounts, balances, transactions = [], [], []
        for a in range(ACCOUNTS_PER_BANK):
            account_id = f"acc-{3693 + a}"
            accounts.append(
                Account.from_api(
                    {
                        "accountId": account_id,
                        "status": "Enabled",
                        "currency": "RUB",
                        "accountType": "Personal",
                        "accountSubType": ("Checking", "Savings", "Checking")[a],
                        "nickname": f"Счёт {a + 1}",
                        "openingDate": "2024-10-30",
                        "account": [
                            {
                                "schemeName": "RU.CBR.PAN",
                                "identification": f"408178102600305{r.randint(1000, 9999)}",
                                "name": "Иван Иванов",
                            }
                        ],
                    }
                )
            )
            for kind in ("InterimAvailable", "InterimBooked"):
                balances.append(
                    Balance.from_api(
                        {
                            "accountId": account_id,
                            "type": kind,
                            "dateTime": ANCHOR.isoformat(),
                            "amount": {"amount": _money(r, 10_000, 900_000), "currency": "RUB"},
                            "creditDebitIndicator": "Credit",
                        }
                    )
                )
            count = per_account + (1 if extra > 0 else 0)
            extra -= 1
            step = timedelta(days=365) / count
            for n in range(count):
                when = ANCHOR - step * n - timedelta(seconds=r.randint(0, 59))
                transactions.append(Transaction.from_api(_transaction_json(r, bank_id, account_id, n, when)))
        agreements = [
            ProductAgreement.from_api(
                {
                    "agreement_id": f"loan-{bank_id}-0447",
                    "product_id": f"prod-{bank_id}-loan-001",
                    "product_name": "Ипотека 9.3%",
                    "product_type": "loan",
                    "amount": Decimal("895465.41"),
                    "status": "active",
                    "start_date": "2025-07-24T12:48:14.207067",
                    "end_date": None,
                    "account_number": "4081781026003054973",
                }
            )
        ]
        fetches[bank_id] = dict(accounts=accounts, balances=balances, agreements=agreements, transactions=transactions)
    return fetches


# ---------------------------------------------------------------------------------------------- scratch database


def _with_database(url: str, name: str) -> str:
    return urlunparse(urlparse(url)._replace(path=f"/{name}"))


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


# ---------------------------------------------------------------------------------------------- measurements

BANK_TABLES = ("accounts", "balances", "transactions", "credits", "sync_state", "user_data_version")


@dataclass
class Round:
    copy: float
    write: float
    rewrite: float
    upsert: float  # the same 100k rows through the staged upsert (each bank already held one row)
    inserted: int
    rewritten: int  # rows the identical re-write inserted, updated or deleted (must be 0)
    changed: bool  # whether the identical re-write reported a change (must be False)


async def _timed(coro) -> tuple[float, object]:
    start = time.perf_counter()
    result = await coro
    return time.perf_counter() - start, result


async def _settle(pool: asyncpg.Pool) -> None:
    """Flush dirty buffers so a measurement does not pay for the previous one's writes."""
    try:
        await pool.execute("CHECKPOINT")
    except asyncpg.PostgresError:
        pass  # not a superuser on a configured server


async def one_round(pool: asyncpg.Pool, fetches: dict[str, dict], copy_rows: dict[str, list[tuple]]) -> Round:
    """COPY baseline, first write into empty tables, identical re-write; each from a settled state."""
    storage = BankDataStorage(pool)
    await pool.execute(f"TRUNCATE {', '.join(BANK_TABLES)}")
    await pool.execute("DROP TABLE IF EXISTS bench_copy")
    await pool.execute("CREATE TABLE bench_copy (LIKE transactions INCLUDING ALL)")
    columns = ["user_id", "bank_id", *bank_upsert.TRANSACTIONS.columns]

    await _settle(pool)
    copy = 0.0
    async with pool.acquire() as conn:
        for bank_id in BANKS:
            spent, _ = await _timed(
                conn.copy_records_to_table("bench_copy", records=copy_rows[bank_id], columns=columns)
            )
            copy += spent
    await pool.execute("DROP TABLE bench_copy")  # nothing left for autovacuum to chew on meanwhile

    await _settle(pool)
    write, inserted = 0.0, 0
    for bank_id in BANKS:
        spent, stats = await _timed(storage.write_bank_data(USER_ID, bank_id, **fetches[bank_id]))
        write += spent
        inserted += stats.transactions.inserted

    # what autovacuum would soon do after a bulk load; the re-write is then measured on a settled table
    await pool.execute("VACUUM (ANALYZE) transactions")
    await _settle(pool)
    rewrite, rewritten, changed = 0.0, 0, False
    for bank_id in BANKS:
        spent, stats = await _timed(storage.write_bank_data(USER_ID, bank_id, **fetches[bank_id]))
        rewrite += spent
        rewritten += stats.inserted + stats.updated + stats.deleted
        changed |= stats.changed

    # The general path, as every later sync takes it: the banks already hold a row, so no first load.
    await pool.execute(f"TRUNCATE {', '.join(BANK_TABLES)}")
    for bank_id in BANKS:
        await storage.write_bank_data(USER_ID, bank_id, transactions=[SEED])
    await _settle(pool)
    upsert = 0.0
    for bank_id in BANKS:
        spent, stats = await _timed(storage.write_bank_data(USER_ID, bank_id, **fetches[bank_id]))
        upsert += spent
        assert stats.transactions.inserted == len(fetches[bank_id]["transactions"])
    return Round(copy, write, rewrite, upsert, inserted, rewritten, changed)


async def measure(url: str, rows: int, rounds: int) -> None:
    started = time.perf_counter()
    fetches = generate(rows)
    generated = time.perf_counter() - started
    total = sum(len(f["transactions"]) for f in fetches.values())
    # The baseline's rows are ready-made: the Python work (JSON of raw) is charged to the write path only.
    started = time.perf_counter()
    copy_rows = {
        bank_id: [(USER_ID, bank_id, *bank_records._transaction_row(t)) for t in fetch["transactions"]]
        for bank_id, fetch in fetches.items()
    }
    build = time.perf_counter() - started

    await db.migrate(url, SCHEMA, MIGRATIONS)
    pool = await db.create_pool(url, SCHEMA, max_size=2)
    try:
        results = []
        for n in range(rounds):
            results.append(await one_round(pool, fetches, copy_rows))
            r = results[-1]
            print(
                f"  round {n + 1}: COPY {r.copy:.2f} s, first write {r.write:.2f} s, "
                f"re-write {r.rewrite:.2f} s, upsert path {r.upsert:.2f} s",
                flush=True,
            )
    finally:
        await pool.close()

    copy, write, rewrite, upsert = (min(getattr(r, f) for r in results) for f in ("copy", "write", "rewrite", "upsert"))
    last = results[-1]
    print(
        f"ingest: {total:,} transactions, 1 user, {len(BANKS)} banks x {ACCOUNTS_PER_BANK} accounts; "
        f"best of {rounds} rounds (generated in {generated:.1f} s)"
    )
    print(f"  {'':46} {'seconds':>8} {'rows/s':>10}")
    print(f"  {'plain COPY into identical table (baseline)':46} {copy:8.2f} {total / copy:10,.0f}")
    print(
        f"  {'write_bank_data, first write (production)':46} {write:8.2f} {total / write:10,.0f}"
        f"   inserted {last.inserted:,}"
    )
    print(f"  {'  (Python row building alone; overlaps the COPY)':46} {build:8.2f}")
    print(
        f"  {'write_bank_data, identical re-write':46} {rewrite:8.2f} {total / rewrite:10,.0f}"
        f"   rows written {last.rewritten}, changed={last.changed}"
    )
    print(
        f"  {'write_bank_data, staged upsert path':46} {upsert:8.2f} {total / upsert:10,.0f}"
        f"   (bank already synced: every later sync)"
    )
    print(f"  ratio first write/COPY = {copy / write:.2f}  (goal >= 0.5);  upsert path/COPY = {copy / upsert:.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="transactions to write (default 100000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the best of each is reported (default 3)")
    args = parser.parse_args(argv if argv is not None else [])
    configured = os.environ.get("FINPULSE_DATABASE_URL") or None
    with tempfile.TemporaryDirectory(prefix="fpb-") as data_dir:  # short: unix socket paths are length-limited
        services = ensure_backing_services(configured, None, data_dir)
        name = f"finpulse_bench_{uuid.uuid4().hex[:10]}"
        try:
            asyncio.run(_admin(services.database_url, f'CREATE DATABASE "{name}"'))
            try:
                asyncio.run(measure(_with_database(services.database_url, name), args.rows, args.rounds))
            finally:
                asyncio.run(_admin(services.database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            services.stop()


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
