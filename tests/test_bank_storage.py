"""sync_svc bank-data storage on real Postgres: idempotent bulk writes, pending clean-up, history,
keyset paging, SQL aggregates, the bank call log, concurrent writers and the streaming write (pages
COPYed while the fetch goes on, one transaction, rolled back on failure)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest

from bankapi.models import Account, Balance, ProductAgreement, Transaction
from sync_svc.__main__ import SPEC
from sync_svc.bank_storage import (
    BankCall,
    BankDataStorage,
    CategorySpending,
    LoanRepayments,
    MonthlyCashFlow,
    TableStats,
    TransactionCursor,
)

UTC = UTC
T0 = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)


@pytest.fixture
async def storage(schema_pool):
    return BankDataStorage(await schema_pool(SPEC))


@pytest.fixture
def user() -> str:
    return f"user-{uuid.uuid4().hex[:10]}"


# ---------------------------------------------------------------------------------------------- bank JSON


def account(account_id: str = "acc-1", nickname: str = "Основной") -> Account:
    return Account.from_api(
        {
            "accountId": account_id,
            "status": "Enabled",
            "currency": "RUB",
            "accountType": "Personal",
            "accountSubType": "Checking",
            "nickname": nickname,
            "openingDate": "2024-10-30",
            "account": [
                {
                    "schemeName": "RU.CBR.PAN",
                    "identification": "40817810260030549" + account_id[-2:].zfill(2),
                    "name": "Иван Иванов",
                }
            ],
        }
    )


def balance(amount: str, kind: str = "InterimAvailable", account_id: str = "acc-1", when: datetime = T0) -> Balance:
    return Balance.from_api(
        {
            "accountId": account_id,
            "type": kind,
            "dateTime": when.isoformat(),
            "amount": {"amount": amount, "currency": "RUB"},
            "creditDebitIndicator": "Credit",
        }
    )


def tx(
    tx_id: str,
    amount: str,
    when: datetime,
    *,
    indicator: str = "Debit",
    status: str = "completed",
    info: str = "Дикси - Москва",
    account_id: str = "acc-1",
    category: str | None = "grocery",
    currency: str = "RUB",
) -> Transaction:
    merchant = (
        {"merchantId": "m-1", "name": info.split(" - ")[0], "mccCode": "5411", "category": category}
        if category
        else None
    )
    return Transaction.from_api(
        {
            "accountId": account_id,
            "transactionId": tx_id,
            "amount": {"amount": amount, "currency": currency},
            "creditDebitIndicator": indicator,
            "status": status,
            "bookingDateTime": when.isoformat(),
            "valueDateTime": when.isoformat(),
            "transactionInformation": info,
            "bankTransactionCode": {"code": "01" if category else "02"},
            "merchant": merchant,
            "counterparty": None,
        }
    )


def agreement(
    agreement_id: str = "loan-1", amount=Decimal("895465.41"), status: str = "active", **extra
) -> ProductAgreement:
    return ProductAgreement.from_api(
        {
            "agreement_id": agreement_id,
            "product_id": "prod-vbank-loan-001",
            "product_name": "Ипотека 9.3%",
            "product_type": "loan",
            "amount": amount,
            "status": status,
            "start_date": "2025-07-24T12:48:14.207067",
            "end_date": None,
            "account_number": "4081781026003054973",
            **extra,
        }
    )


def fetch(n: int = 5, **changes) -> dict:
    """A bank fetch: one account, two balances, one loan, `n` daily purchases (tx-0 is the newest)."""
    data = dict(
        accounts=[account()],
        balances=[balance("1000.00"), balance("900.00", "InterimBooked")],
        agreements=[agreement()],
        transactions=[tx(f"tx-{i}", f"{100 + i}.50", T0 - timedelta(days=i)) for i in range(n)],
    )
    data.update(changes)
    return data


# ---------------------------------------------------------------------------------------------- writes


async def test_first_write_inserts_all_and_second_identical_write_changes_nothing(storage, user):
    first = await storage.write_bank_data(user, "vbank", **fetch())
    assert first.changed and first.data_version == 1
    assert (first.accounts, first.credits) == (TableStats(inserted=1), TableStats(inserted=1))
    assert first.balances == TableStats(inserted=2)
    assert first.transactions == TableStats(inserted=5)
    assert first.watermark == T0

    second = await storage.write_bank_data(user, "vbank", **fetch())
    assert not second.changed
    assert (second.inserted, second.updated, second.deleted, second.unchanged) == (0, 0, 0, 9)
    assert second.data_version == 1 == await storage.data_version(user)

    state = await storage.sync_state(user, "vbank")
    assert state.last_success_at is not None and state.watermark == T0 and state.last_error is None
    assert (state.accounts_count, state.balances_count, state.transactions_count, state.credits_count) == (1, 2, 5, 1)
    counts = await storage.counts(user, "vbank")
    assert (counts.accounts, counts.balances, counts.transactions, counts.credits) == (1, 2, 5, 1)


async def test_identical_write_touches_no_row(storage, user):
    """Not even a row lock: the stored row versions (xmin), lockers (xmax) and updated_at stay as they were."""
    await storage.write_bank_data(user, "vbank", **fetch())
    query = "SELECT xmin::text, xmax::text, updated_at FROM {} WHERE user_id = $1 ORDER BY 1"
    before = {t: await storage.pool.fetch(query.format(t), user) for t in ("accounts", "transactions", "credits")}
    await storage.write_bank_data(user, "vbank", **fetch())
    after = {t: await storage.pool.fetch(query.format(t), user) for t in ("accounts", "transactions", "credits")}
    assert before == after


async def test_first_load_and_upsert_path_store_the_same_rows(storage, user):
    """A bank's first sync is COPYed straight into the tables; later ones are staged and upserted."""
    data = fetch(20)
    data["transactions"].append(tx("tx-3", "1.00", T0))  # a key twice: the last one wins on both paths
    await storage.write_bank_data(user, "abank", transactions=[tx("tx-seed", "1.00", T0 - timedelta(days=99))])
    first_load = await storage.write_bank_data(user, "vbank", **data)
    upserted = await storage.write_bank_data(user, "abank", **data)
    assert first_load.transactions == upserted.transactions == TableStats(inserted=20)
    query = """SELECT account_id, transaction_id, amount, direction, signed_amount, currency, status, booking_time,
                      value_time, description, bank_code, merchant, category, mcc, agreement_id, raw
               FROM transactions WHERE user_id = $1 AND bank_id = $2 AND transaction_id <> 'tx-seed'
               ORDER BY transaction_id"""
    vbank, abank = [await storage.pool.fetch(query, user, b) for b in ("vbank", "abank")]
    assert [tuple(r) for r in vbank] == [tuple(r) for r in abank] and len(vbank) == 20
    assert not (await storage.write_bank_data(user, "vbank", **data)).changed


async def test_changed_amount_or_status_updates_exactly_that_row(storage, user):
    await storage.write_bank_data(user, "vbank", **fetch())
    data = fetch()
    data["transactions"][2] = tx("tx-2", "999.99", T0 - timedelta(days=2))
    data["transactions"][3] = tx("tx-3", "103.50", T0 - timedelta(days=3), status="Booked")
    stats = await storage.write_bank_data(user, "vbank", **data)
    assert stats.changed and stats.data_version == 2
    assert stats.transactions == TableStats(updated=2, unchanged=3)
    assert stats.inserted == stats.deleted == 0

    rows, _ = await storage.transactions(user)
    by_id = {r.transaction_id: r for r in rows}
    assert len(rows) == 5
    assert (by_id["tx-2"].amount, by_id["tx-2"].signed_amount) == (Decimal("999.99"), Decimal("-999.99"))
    assert by_id["tx-3"].status == "Booked"
    assert by_id["tx-2"].updated_at > by_id["tx-2"].first_seen_at
    assert by_id["tx-1"].updated_at == by_id["tx-1"].first_seen_at


async def test_agreement_detail_fields_survive_a_list_fetch(storage, user):
    await storage.write_bank_data(
        user, "vbank", agreements=[agreement(interest_rate=Decimal("9.3"), account_balance="1200.50")]
    )
    stats = await storage.write_bank_data(user, "vbank", agreements=[agreement(status="closed")])
    assert stats.credits == TableStats(updated=1)
    (credit,) = await storage.credits(user)
    assert (credit.status, credit.interest_rate, credit.account_balance) == (
        "closed",
        Decimal("9.3"),
        Decimal("1200.50"),
    )
    assert (credit.amount, credit.product_type) == (Decimal("895465.41"), "loan")


async def test_pending_replaced_by_booked_is_removed_inside_the_window_only(storage, user):
    inside, outside = T0 - timedelta(days=1), T0 - timedelta(days=20)
    pending = [tx("tx-p1", "50.00", inside, status="Pending"), tx("tx-p2", "70.00", outside, status="Pending")]
    await storage.write_bank_data(user, "vbank", accounts=[account()], transactions=pending)

    window = (T0 - timedelta(days=7), T0)
    booked = tx("tx-b1", "50.00", inside, status="Booked")  # the bank's booked version, new id
    stats = await storage.write_bank_data(
        user, "vbank", accounts=[account()], transactions=[booked], fetched_window=window
    )
    assert stats.transactions == TableStats(inserted=1, deleted=1)
    rows, _ = await storage.transactions(user)
    assert {r.transaction_id for r in rows} == {"tx-b1", "tx-p2"}
    assert (await storage.sync_state(user, "vbank")).transactions_count == 2

    again = await storage.write_bank_data(
        user, "vbank", accounts=[account()], transactions=[booked], fetched_window=window
    )
    assert not again.changed


async def test_pending_clean_up_needs_a_window_and_keeps_other_accounts(storage, user):
    await storage.write_bank_data(
        user,
        "vbank",
        accounts=[account("acc-1"), account("acc-2")],
        transactions=[
            tx("tx-p1", "50.00", T0, status="Pending", account_id="acc-1"),
            tx("tx-p2", "60.00", T0, status="pending", account_id="acc-2"),
        ],
    )
    no_window = await storage.write_bank_data(user, "vbank", accounts=[account("acc-1")], transactions=[])
    assert no_window.transactions.deleted == 0
    only_acc1 = await storage.write_bank_data(
        user, "vbank", transactions=[], window_accounts=["acc-1"], fetched_window=(None, T0 + timedelta(days=1))
    )
    assert only_acc1.transactions.deleted == 1
    rows, _ = await storage.transactions(user)
    assert [r.transaction_id for r in rows] == ["tx-p2"]


async def test_same_account_id_at_two_banks_stays_two_rows(storage, user):
    await storage.write_bank_data(user, "vbank", **fetch(3))
    await storage.write_bank_data(user, "abank", **fetch(3))
    assert [(a.bank_id, a.account_id) for a in await storage.accounts(user)] == [("abank", "acc-1"), ("vbank", "acc-1")]
    assert [a.bank_id for a in await storage.accounts(user, "vbank")] == ["vbank"]
    rows, _ = await storage.transactions(user)
    assert len(rows) == 6 and {r.bank_id for r in rows} == {"vbank", "abank"}
    assert len(await storage.credits(user)) == 2
    assert await storage.data_version(user) == 2  # each bank's first sync changed something


async def test_balances_keep_history(storage, user):
    await storage.write_bank_data(user, "vbank", balances=[balance("1000.00")])
    unchanged = await storage.write_bank_data(
        user, "vbank", balances=[balance("1000.00", when=T0 + timedelta(hours=1))]
    )
    assert unchanged.balances == TableStats(unchanged=1) and not unchanged.changed
    moved = await storage.write_bank_data(
        user, "vbank", balances=[balance("750.25", when=T0 + timedelta(hours=2)), balance("800.00", "InterimBooked")]
    )
    assert moved.balances == TableStats(inserted=2)
    await storage.write_bank_data(user, "vbank", balances=[balance("1000.00", when=T0 + timedelta(hours=3))])

    history = await storage.balance_history(user, "vbank", "acc-1")
    assert [(b.balance_type, b.amount) for b in history] == [
        ("InterimAvailable", Decimal("1000.00")),
        ("InterimAvailable", Decimal("750.25")),
        ("InterimAvailable", Decimal("1000.00")),
        ("InterimBooked", Decimal("800.00")),
    ]
    latest = await storage.latest_balances(user)
    assert [(b.balance_type, b.amount, b.as_of) for b in latest] == [
        ("InterimAvailable", Decimal("1000.00"), T0 + timedelta(hours=3)),
        ("InterimBooked", Decimal("800.00"), T0),
    ]


async def test_duplicate_rows_in_one_fetch_and_untimed_rows(storage, user):
    """Pages shift while new transactions arrive: a row twice in one fetch is stored once (last wins)."""
    untimed = Transaction.from_api(
        {"accountId": "acc-1", "transactionId": "tx-x", "amount": {"amount": "1.00"}, "creditDebitIndicator": "Debit"}
    )
    stats = await storage.write_bank_data(
        user, "vbank", transactions=[tx("tx-1", "10.00", T0), tx("tx-1", "11.00", T0), untimed]
    )
    assert stats.transactions == TableStats(inserted=1) and stats.skipped == 1
    rows, _ = await storage.transactions(user)
    assert [(r.transaction_id, r.amount) for r in rows] == [("tx-1", Decimal("11.00"))]


async def test_record_failure_keeps_last_success(storage, user):
    await storage.record_failure(user, "sbank", "consent required")
    state = await storage.sync_state(user, "sbank")
    assert (state.last_error, state.last_success_at) == ("consent required", None)
    await storage.write_bank_data(user, "sbank", **fetch(1))
    success = (await storage.sync_state(user, "sbank")).last_success_at
    await storage.record_failure(user, "sbank", "HTTP 503")
    state = await storage.sync_state(user, "sbank")
    assert (state.last_error, state.last_success_at, state.transactions_count) == ("HTTP 503", success, 1)
    assert state.last_error_at >= success
    assert [s.bank_id for s in await storage.sync_states(user)] == ["sbank"]


async def test_stored_transaction_ids(storage, user):
    await storage.write_bank_data(user, "vbank", **fetch(3))
    assert await storage.stored_transaction_ids(user, "vbank", "acc-1", ["tx-0", "tx-2", "tx-9"]) == {"tx-0", "tx-2"}
    assert await storage.stored_transaction_ids(user, "abank", "acc-1", ["tx-0"]) == set()


async def test_naive_datetimes_are_refused(storage, user):
    with pytest.raises(ValueError):
        await storage.write_bank_data(user, "vbank", fetched_window=(None, datetime(2025, 1, 1)))
    with pytest.raises(ValueError):
        await storage.transactions(user, since=datetime(2025, 1, 1))


# ---------------------------------------------------------------------------------------------- reads


async def test_keyset_paging_returns_every_row_once_in_order(storage, user):
    ties = T0 - timedelta(days=3)  # several rows at the same instant, across banks and accounts
    for bank_id in ("vbank", "abank"):
        txs = [
            tx(f"tx-{bank_id}-{i}", "10.00", T0 - timedelta(hours=7 * i), account_id=f"acc-{i % 3}") for i in range(40)
        ]
        txs += [tx(f"tx-{bank_id}-tie-{i}", "1.00", ties, account_id=f"acc-{i % 2}") for i in range(6)]
        await storage.write_bank_data(user, bank_id, transactions=txs)

    seen, cursor, pages = [], None, 0
    while True:
        page, cursor = await storage.transactions(user, limit=7, after=cursor)
        seen.extend(page)
        pages += 1
        if cursor is None:
            break
        cursor = TransactionCursor.from_token(cursor.token())  # through the opaque page token
    keys = [(r.booking_time, r.bank_id, r.account_id, r.transaction_id) for r in seen]
    assert len(keys) == len(set(keys)) == 92 and pages == 14
    assert keys == sorted(keys, reverse=True)

    window, _ = await storage.transactions(
        user, bank_id="abank", account_id="acc-1", limit=1000, since=T0 - timedelta(days=4), until=T0
    )
    assert window and all(r.bank_id == "abank" and r.account_id == "acc-1" for r in window)
    assert all(T0 - timedelta(days=4) <= r.booking_time < T0 for r in window)
    with pytest.raises(ValueError):
        TransactionCursor.from_token("not-a-token")


async def test_aggregates_on_a_hand_computed_dataset(storage, user):
    jan, feb = datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 2, 1, tzinfo=UTC)
    loan = "Платеж по кредиту №loan-team200-1-0447"
    vbank = [
        tx("v1", "50000.00", jan + timedelta(days=4), indicator="Credit", info="Доход", category=None),
        tx("v2", "1200.50", jan + timedelta(days=5)),  # grocery
        tx("v3", "3000.00", jan + timedelta(days=9, hours=23), category="restaurants", info="Теремок - Москва"),
        tx("v4", "5000.00", jan + timedelta(days=14), info=loan, category=None),  # repayment, day 15
        tx("v5", "30000.00", feb + timedelta(days=2), indicator="Credit", info="Доход от бизнеса", category=None),
        tx("v6", "799.50", feb + timedelta(days=3)),  # grocery
        tx("v7", "5000.00", feb + timedelta(days=14), info=loan, category=None),  # repayment, day 15
        tx(
            "v8",
            "120.00",
            feb + timedelta(days=20),
            indicator="Credit",
            category=None,
            info="Проценты по депозиту №dep-1",
        ),  # deposit interest: income
        tx("v9", "10.00", feb + timedelta(days=21), currency="USD"),  # grocery in USD
        tx("v0", "777.00", datetime(2024, 11, 30, tzinfo=UTC)),  # outside 3 months
    ]
    abank = [
        tx("a1", "5100.00", feb + timedelta(days=27), info=loan, category=None),  # same loan id, other bank
        tx("a2", "4900.00", datetime(2025, 3, 28, tzinfo=UTC), info=loan, category=None),
    ]
    await storage.write_bank_data(user, "vbank", transactions=vbank)
    await storage.write_bank_data(user, "abank", transactions=abank)

    flow = await storage.monthly_cash_flow(user, months=3, at=datetime(2025, 3, 31, 23, tzinfo=UTC))
    assert flow == [
        MonthlyCashFlow(datetime(2025, 1, 1).date(), "RUB", Decimal("50000.00"), Decimal("9200.50"), 4),
        MonthlyCashFlow(datetime(2025, 2, 1).date(), "RUB", Decimal("30120.00"), Decimal("10899.50"), 5),
        MonthlyCashFlow(datetime(2025, 2, 1).date(), "USD", Decimal("0"), Decimal("10.00"), 1),
        MonthlyCashFlow(datetime(2025, 3, 1).date(), "RUB", Decimal("0"), Decimal("4900.00"), 1),
    ]

    spending = await storage.spending_by_category(user, since=jan, until=datetime(2025, 3, 1, tzinfo=UTC))
    assert spending == [
        CategorySpending(None, "RUB", Decimal("15100.00"), 3),  # the three repayments up to February
        CategorySpending("restaurants", "RUB", Decimal("3000.00"), 1),
        CategorySpending("grocery", "RUB", Decimal("2000.00"), 2),
        CategorySpending("grocery", "USD", Decimal("10.00"), 1),
    ]

    repayments = await storage.loan_repayments(user)
    assert repayments == [
        LoanRepayments(
            "abank",
            "loan-team200-1-0447",
            "RUB",
            2,
            Decimal("10000.00"),
            Decimal("5000.00"),
            datetime(2025, 3, 28, tzinfo=UTC),
            28,
            [date(2025, 2, 1), date(2025, 3, 1)],
        ),
        LoanRepayments(
            "vbank",
            "loan-team200-1-0447",
            "RUB",
            2,
            Decimal("10000.00"),
            Decimal("5000.00"),
            feb + timedelta(days=14),
            15,
            [date(2025, 1, 1), date(2025, 2, 1)],
        ),
    ]
    assert [r.count for r in await storage.loan_repayments(user, since=feb)] == [2, 1]


# ---------------------------------------------------------------------------------------------- log, concurrency


async def test_bank_status_log_batch_insert(storage, user):
    calls = [
        BankCall(
            bank_id="vbank",
            operation="accounts",
            outcome="ok",
            user_id=user,
            http_status=200,
            latency_ms=12.5,
            interaction_id=str(uuid.uuid4()),
        ),
        {
            "bank_id": "vbank",
            "operation": "transactions",
            "outcome": "error",
            "user_id": user,
            "http_status": 503,
            "latency_ms": 1500,
            "interaction_id": "i-2",
            "message": "x" * 5000,
        },
        BankCall(bank_id="vbank", operation="token", outcome="ok", http_status=200),
    ]
    assert await storage.log_bank_calls(calls) == 3
    assert await storage.log_bank_calls([]) == 0
    rows = await storage.pool.fetch(
        "SELECT operation, outcome, http_status, latency_ms, length(message) AS len FROM bank_status_log "
        "WHERE user_id = $1 ORDER BY id",
        user,
    )
    assert [tuple(r) for r in rows] == [
        ("accounts", "ok", 200, 12.5, None),
        ("transactions", "error", 503, 1500.0, 2000),
    ]


async def test_concurrent_identical_writes_leave_no_duplicates(storage, user):
    data = fetch(50)
    results = await asyncio.gather(*(storage.write_bank_data(user, "vbank", **data) for _ in range(4)))
    assert sum(r.changed for r in results) == 1
    assert sorted(r.transactions.inserted for r in results) == [0, 0, 0, 50]
    counts = await storage.counts(user, "vbank")
    assert (counts.accounts, counts.balances, counts.transactions, counts.credits) == (1, 2, 50, 1)
    assert await storage.data_version(user) == 1
    state = await storage.sync_state(user, "vbank")
    assert (state.balances_count, state.transactions_count) == (2, 50)


# ---------------------------------------------------------------------------------------------- streaming write

TX_QUERY = """SELECT account_id, transaction_id, amount, direction, signed_amount, currency, status, booking_time,
                     value_time, description, bank_code, merchant, category, mcc, agreement_id, raw
              FROM transactions WHERE user_id = $1 AND bank_id = $2 ORDER BY account_id, transaction_id"""


async def stored_rows(storage, user: str, bank_id: str) -> list[tuple]:
    return [tuple(r) for r in await storage.pool.fetch(TX_QUERY, user, bank_id)]


async def stream(storage, user: str, bank_id: str, pages: list[list[Transaction]], **rest):
    """One write fed page by page, as a sync job does, letting the COPY task run between pages."""
    async with storage.bank_write(user, bank_id) as write:
        for page in pages:
            await write.add_transactions(page)
            await asyncio.sleep(0)
        return await write.commit(**rest)


def paged(data: dict, size: int = 7) -> tuple[list[list[Transaction]], dict]:
    rest = {k: v for k, v in data.items() if k != "transactions"}
    txs = data["transactions"]
    return [txs[i : i + size] for i in range(0, len(txs), size)], rest


async def test_pages_streamed_in_batches_equal_one_write(storage, user):
    """First sync (COPY into the table) and a later one (staged upsert), streamed page by page or written
    at once: the same rows, stats, watermark and sync state. A key repeated on a later page, changed,
    is stored once with its last version."""
    data = fetch(40)
    data["transactions"] += [
        tx("tx-3", "1.00", T0 + timedelta(hours=1)),  # changed on a later page
        tx("tx-5", "105.50", T0 - timedelta(days=5)),
    ]  # repeated unchanged
    pages, rest = paged(data)
    streamed = await stream(storage, user, "vbank", pages, **rest)
    at_once = await storage.write_bank_data(user, "abank", **data)
    assert streamed.transactions == at_once.transactions == TableStats(inserted=40)
    assert (streamed.watermark, streamed.inserted, streamed.changed) == (at_once.watermark, at_once.inserted, True)
    assert streamed.watermark == T0 + timedelta(hours=1)
    assert await stored_rows(storage, user, "vbank") == await stored_rows(storage, user, "abank")
    assert {r[1]: r[2] for r in await stored_rows(storage, user, "vbank")}["tx-3"] == Decimal("1.00")

    # A second sync with changes goes through the stage on both paths.
    again = fetch(45)
    again["transactions"][10] = tx("tx-10", "999.99", T0 - timedelta(days=10))
    again["transactions"].append(tx("tx-11", "5.00", T0 - timedelta(days=11), status="Booked"))
    pages, rest = paged(again, 4)
    streamed = await stream(storage, user, "vbank", pages, **rest)
    at_once = await storage.write_bank_data(user, "abank", **again)
    assert streamed.transactions == at_once.transactions == TableStats(inserted=5, updated=3, unchanged=37)
    assert await stored_rows(storage, user, "vbank") == await stored_rows(storage, user, "abank")
    vstate, astate = await storage.sync_state(user, "vbank"), await storage.sync_state(user, "abank")
    assert (
        (vstate.watermark, vstate.transactions_count)
        == (astate.watermark, astate.transactions_count)
        == (T0 + timedelta(hours=1), 45)
    )


async def test_identical_streamed_resync_writes_nothing(storage, user):
    pages, rest = paged(fetch(30), 4)
    first = await stream(storage, user, "vbank", pages, **rest)
    assert first.changed and first.data_version == 1
    query = "SELECT xmin::text, xmax::text, updated_at FROM {} WHERE user_id = $1 ORDER BY 1"
    before = {t: await storage.pool.fetch(query.format(t), user) for t in ("accounts", "transactions", "credits")}
    second = await stream(storage, user, "vbank", pages, **rest, fetched_window=(None, T0 + timedelta(days=1)))
    assert not second.changed and second.data_version == 1 == await storage.data_version(user)
    assert (second.inserted, second.updated, second.deleted) == (0, 0, 0)
    assert second.transactions == TableStats(unchanged=30)
    after = {t: await storage.pool.fetch(query.format(t), user) for t in ("accounts", "transactions", "credits")}
    assert before == after


@pytest.mark.parametrize("stored_before", [False, True], ids=["first-sync", "staged"])
async def test_failed_streamed_write_leaves_nothing(storage, user, stored_before):
    if stored_before:
        await storage.write_bank_data(user, "vbank", **fetch(3))
    before = (
        await stored_rows(storage, user, "vbank"),
        await storage.sync_state(user, "vbank"),
        await storage.data_version(user),
    )
    pages, rest = paged(fetch(30), 5)

    # The fetch fails after some pages were COPYed.
    with pytest.raises(LookupError):
        async with storage.bank_write(user, "vbank") as write:
            for page in pages[:4]:
                await write.add_transactions(page)
                await asyncio.sleep(0.01)
            raise LookupError("the bank went away")
    # Leaving without commit.
    async with storage.bank_write(user, "vbank") as write:
        await write.add_transactions(pages[0])
    # A page the database refuses (the amount overflows numeric(18, 2)): the COPY task fails, and the
    # next call of the write says so.
    with pytest.raises(asyncpg.NumericValueOutOfRangeError):
        async with storage.bank_write(user, "vbank") as write:
            await write.add_transactions(pages[0])
            await write.add_transactions([tx("tx-huge", "1e20", T0)])
            for page in pages[1:]:
                await asyncio.sleep(0.01)
                await write.add_transactions(page)
            await write.commit(**rest)
    with pytest.raises(RuntimeError, match="finished"):
        await write.add_transactions(pages[0])

    after = (
        await stored_rows(storage, user, "vbank"),
        await storage.sync_state(user, "vbank"),
        await storage.data_version(user),
    )
    assert after == before
    # The lock was released and the connections are fine: the same write now goes through.
    done = await stream(storage, user, "vbank", pages, **rest)
    assert done.transactions.inserted == (27 if stored_before else 30)


async def test_cancelled_streamed_write_rolls_back(storage, user):
    pages, rest = paged(fetch(600), 100)
    started = asyncio.Event()

    async def job():
        async with storage.bank_write(user, "vbank") as write:
            for page in pages:
                await write.add_transactions(page)
            started.set()
            await asyncio.sleep(0)  # the COPY task is sending now
            await asyncio.sleep(30)

    task = asyncio.create_task(job())
    await started.wait()
    await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await stored_rows(storage, user, "vbank") == []
    assert await storage.sync_state(user, "vbank") is None
    assert (await stream(storage, user, "vbank", pages, **rest)).transactions.inserted == 600


async def test_streamed_writes_of_one_bank_take_turns(storage, user):
    """The (user, bank) lock is taken when the write opens: a second write waits for the first to commit
    and then upserts against its rows (no duplicate, no lost update); another bank does not wait."""
    pages, rest = paged(fetch(20), 5)
    first_open = asyncio.Event()
    release = asyncio.Event()

    async def first():
        async with storage.bank_write(user, "vbank") as write:
            first_open.set()
            for page in pages:
                await write.add_transactions(page)
            await release.wait()
            return await write.commit(**rest)

    one = asyncio.create_task(first())
    await first_open.wait()
    two = asyncio.create_task(stream(storage, user, "vbank", pages, **rest))
    other = await asyncio.wait_for(stream(storage, user, "abank", pages, **rest), 10)
    assert other.transactions.inserted == 20
    await asyncio.sleep(0.2)
    assert not two.done()
    release.set()
    first_stats, second_stats = await one, await two
    assert first_stats.transactions == TableStats(inserted=20)
    assert second_stats.transactions == TableStats(unchanged=20) and not second_stats.changed
    assert (await storage.counts(user, "vbank")).transactions == 20


async def test_large_batches_and_concurrent_pages(storage, user):
    """A batch larger than a COPY chunk, and pages added by concurrent tasks (as the fetcher's page tasks
    do): every row once, the last copy of a repeated key winning, the watermark the newest time."""
    txs = [tx(f"tx-{i}", "1.00", T0 - timedelta(minutes=i)) for i in range(1300)]
    txs.append(tx("tx-1299", "2.00", T0 + timedelta(hours=2)))  # in the last chunk, replacing one of the first
    stats = await storage.write_bank_data(user, "vbank", transactions=txs)
    assert stats.transactions == TableStats(inserted=1300) and stats.watermark == T0 + timedelta(hours=2)

    async with storage.bank_write(user, "abank") as write:
        await asyncio.gather(
            *(write.add_transactions(txs[i : i + 100]) for i in range(0, 1200, 100)), write.add_transactions(txs[1200:])
        )
        concurrent = await write.commit()
    assert concurrent.transactions == stats.transactions and concurrent.watermark == stats.watermark
    assert await stored_rows(storage, user, "vbank") == await stored_rows(storage, user, "abank")
    assert {r[1]: r[2] for r in await stored_rows(storage, user, "abank")}["tx-1299"] == Decimal("2.00")
