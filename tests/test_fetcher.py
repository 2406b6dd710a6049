"""BankFetcher against an in-process fake bank: pages are handed over as they arrive (the sync job
streams them into its write), every page exactly once, incremental stop, and a failing request
stops the rest of the fetch."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from bankapi import errors as bank_errors
from bankapi.models import Account, Balance, ProductAgreement, Transaction, TransactionPage
from sync_svc.fetcher import PAGE_LIMIT, BankFetcher, Progress

UTC = dt.UTC
NOW = dt.datetime(2025, 3, 10, 12, 0, tzinfo=UTC)


class FakeBank:
    """Accounts with `per_account` transactions each (newest first, one per hour), pages of PAGE_LIMIT.
    `delay(account_id, page)` gives each page's latency; `fail` = (account_id, page) answers 400."""

    def __init__(
        self,
        accounts: int = 2,
        per_account: int = 250,
        *,
        delay=lambda account_id, page: 0.01,
        fail: tuple[str, int] | None = None,
    ):
        self.accounts = [f"acc-{i}" for i in range(accounts)]
        self.per_account = per_account
        self.delay = delay
        self.fail = fail
        self.log: list[tuple] = []  # ("request" | "answer", account_id, page) in order

    def transaction(self, account_id: str, n: int) -> Transaction:
        when = (NOW - dt.timedelta(hours=n)).isoformat()
        return Transaction.from_api(
            {
                "accountId": account_id,
                "transactionId": f"{account_id}-tx-{n:05d}",
                "amount": {"amount": "10.00", "currency": "RUB"},
                "creditDebitIndicator": "Debit",
                "status": "completed",
                "bookingDateTime": when,
                "valueDateTime": when,
            }
        )

    async def get_accounts(self, client_id, consent_id):
        return [Account.from_api({"accountId": a}) for a in self.accounts]

    async def get_balances(self, client_id, consent_id, account_id):
        return [
            Balance.from_api(
                {"type": "InterimAvailable", "amount": {"amount": "1.00", "currency": "RUB"}}, account_id=account_id
            )
        ]

    async def get_transactions_page(self, client_id, consent_id, account_id, *, page, limit):
        self.log.append(("request", account_id, page))
        try:
            await asyncio.sleep(self.delay(account_id, page))
        except asyncio.CancelledError:
            self.log.append(("cancelled", account_id, page))
            raise
        if self.fail == (account_id, page):
            raise bank_errors.BadRequest("no such page")
        pages = -(-self.per_account // limit)
        rows = [self.transaction(account_id, n) for n in range((page - 1) * limit, min(page * limit, self.per_account))]
        self.log.append(("answer", account_id, page))
        return TransactionPage(
            tuple(rows), pages, self.per_account, page, f"/next?page={page + 1}" if page < pages else None
        )

    async def get_product_agreements(self, client_id, consent_id):
        return [ProductAgreement.from_api({"agreement_id": "loan-1", "amount": "100.00"})]

    async def get_product_agreement(self, client_id, consent_id, agreement_id):
        return ProductAgreement.from_api({"agreement_id": agreement_id, "amount": "100.00", "interest_rate": "9.5"})


def fetcher(bank: FakeBank, *, on_transactions=None, watermark=None, stored=frozenset()) -> BankFetcher:
    async def stored_ids(account_id, ids):
        return {i for i in ids if i in stored}

    return BankFetcher(
        bank,
        "user-1",
        account_consent="c-1",
        product_consent="p-1",
        watermark=watermark,
        force=False,
        stored_ids=stored_ids,
        progress=Progress(),
        concurrency=4,
        on_transactions=on_transactions,
    )


async def test_pages_are_handed_over_as_they_arrive():
    # Page 3 of every account is slow: the other pages must reach the hook before it answers.
    bank = FakeBank(delay=lambda account_id, page: 0.3 if page == 3 else 0.01)
    seen: list[tuple[str, int]] = []
    log_at_hook: dict[str, int] = {}

    async def on_transactions(page):
        first = page[0]
        seen.extend((t.account_id, int(t.transaction_id.rsplit("-", 1)[1])) for t in page)
        log_at_hook[first.transaction_id] = len(bank.log)

    f = fetcher(bank, on_transactions=on_transactions)
    fetched = await f.fetch()
    assert fetched.transactions == []  # they went to the hook
    assert sorted(seen) == [(a, n) for a in bank.accounts for n in range(250)]
    assert f.progress.pages_fetched == 6 and f.progress.accounts_done == 2
    answered_3 = {a: bank.log.index(("answer", a, 3)) for a in bank.accounts}
    for account_id in bank.accounts:
        page_2 = f"{account_id}-tx-{PAGE_LIMIT:05d}"
        assert log_at_hook[page_2] <= answered_3[account_id], "page 2 waited for page 3"
    assert [a.agreement_id for a in fetched.agreements] == ["loan-1"]
    assert fetched.agreements[0].interest_rate is not None
    assert fetched.window[0] is None and fetched.window_accounts == set(bank.accounts)


async def test_without_a_hook_the_transactions_are_collected():
    bank = FakeBank(accounts=3, per_account=120)
    fetched = await fetcher(bank).fetch()
    assert len(fetched.transactions) == 360
    assert len({(t.account_id, t.transaction_id) for t in fetched.transactions}) == 360
    assert [b.account_id for b in fetched.balances] == bank.accounts


async def test_incremental_fetch_stops_at_the_first_known_page():
    bank = FakeBank(accounts=1, per_account=1000)
    # Stored: everything from 150 hours back; the watermark is 100 hours ago.
    stored = {bank.transaction("acc-0", n).transaction_id for n in range(150, 1000)}
    pages: list[int] = []

    async def on_transactions(page):
        pages.append(len(page))

    fetched = await fetcher(
        bank, on_transactions=on_transactions, watermark=NOW - dt.timedelta(hours=100), stored=stored
    ).fetch()
    # Pages 1 and 2 (hours 0-199) hold rows newer than the watermark minus the overlap (172 h); page 3
    # (hours 200-299) is all older and all stored: the last one fetched.
    assert [r for r in bank.log if r[0] == "request"] == [("request", "acc-0", n) for n in (1, 2, 3)]
    assert pages == [100, 100, 100]
    assert fetched.window[0] == NOW - dt.timedelta(hours=299)


async def test_a_failing_request_stops_the_other_requests():
    def delay(account_id, page):
        return 0.01 if page == 1 else 0.05 if (account_id, page) == ("acc-0", 2) else 5

    bank = FakeBank(accounts=2, per_account=1000, delay=delay, fail=("acc-0", 2))
    f = fetcher(bank, on_transactions=lambda page: asyncio.sleep(0))
    with pytest.raises(bank_errors.BadRequest):
        await asyncio.wait_for(f.fetch(), 3)
    # Every other page request in flight was cancelled, none left running.
    in_flight = {r[1:] for r in bank.log if r[0] == "request"} - {r[1:] for r in bank.log if r[0] == "answer"}
    assert in_flight - {("acc-0", 2)} <= {r[1:] for r in bank.log if r[0] == "cancelled"}
    assert not [
        t
        for t in asyncio.all_tasks()
        if t is not asyncio.current_task() and not t.done() and "BankFetcher" in repr(t.get_coro())
    ]


async def test_a_failing_hook_fails_the_fetch():
    bank = FakeBank(accounts=2, per_account=500)

    async def on_transactions(page):
        raise RuntimeError("the write failed")

    with pytest.raises(RuntimeError, match="the write failed"):
        await fetcher(bank, on_transactions=on_transactions).fetch()
