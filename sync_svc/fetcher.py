"""Fetching one bank's data for one user (no gRPC, no SQL).

Per bank: accounts, then for every account concurrently (bounded by `concurrency` requests in
flight) its balances and every transaction page (`limit` 100; after the first page gives
`meta.totalPages`, the remaining pages are fetched in parallel), and the product agreements with
their details. An incremental fetch (a watermark exists and the job is not forced) pages one at a
time and stops at the first page whose transactions are all stored already and older than the
watermark minus the overlap window.

Transaction pages are handed to `on_transactions` as each one arrives (the sync job streams them into
its write transaction meanwhile); without that hook they are collected into `Fetched.transactions`.

Rate limits (429) and transient failures that outlast the client's own retries are retried here per
call, honouring Retry-After, so one bad answer among hundreds does not restart the whole job.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from bankapi import errors as bank_errors
from bankapi.client import BankClient
from bankapi.models import Account, Balance, ProductAgreement, Transaction, TransactionPage

log = logging.getLogger("sync_svc.fetcher")

PAGE_LIMIT = 100
OVERLAP = dt.timedelta(days=3)
CALL_ATTEMPTS = 6

T = TypeVar("T")

# (account id, transaction ids) -> the ids already stored (for the incremental stop check)
StoredIds = Callable[[str, list[str]], Awaitable[set[str]]]
# a page of transactions, as it arrives
OnTransactions = Callable[[Sequence[Transaction]], Awaitable[None]]


@dataclasses.dataclass
class Progress:
    accounts_total: int = 0
    accounts_done: int = 0
    pages_fetched: int = 0
    rows_written: int = 0
    # The latest failed bank exchange of a running job ("get_accounts: timeout after 10.0s, attempt 2"),
    # shown in the sync status at once instead of after the job gives up.
    last_problem: str | None = None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Fetched:
    accounts: list[Account]
    balances: list[Balance]
    transactions: list[Transaction]  # empty when they went to `on_transactions`
    agreements: list[ProductAgreement]
    # Booking-time window the transactions were fetched completely over (None start: all history).
    window: tuple[dt.datetime | None, dt.datetime]
    window_accounts: set[str]


class BankFetcher:
    def __init__(
        self,
        client: BankClient,
        user_id: str,
        *,
        account_consent: str,
        product_consent: str | None,
        watermark: dt.datetime | None,
        force: bool,
        stored_ids: StoredIds,
        progress: Progress,
        concurrency: int = 8,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        on_transactions: OnTransactions | None = None,
    ):
        self.client = client
        self.user_id = user_id
        self.account_consent = account_consent
        self.product_consent = product_consent
        self.incremental = watermark is not None and not force
        self.stop_before = watermark - OVERLAP if watermark is not None else None
        self.stored_ids = stored_ids
        self.progress = progress
        self.slots = asyncio.Semaphore(concurrency)
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._random = random.Random()
        self._collected: list[Transaction] = []
        self._on_transactions = on_transactions or self._collect

    async def _collect(self, transactions: Sequence[Transaction]) -> None:
        self._collected.extend(transactions)

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """One bank request under the concurrency cap, retried on 429 (the bank asks us to slow down;
        `Retry-After` is honoured). A bank that fails (5xx, timeouts) is not retried here: the client
        already retried the call, and the job retries later as a whole, when the bank's breaker lets it
        (retries on top of retries multiplied one failing bank into hundreds of calls)."""
        for attempt in range(1, CALL_ATTEMPTS + 1):
            try:
                async with self.slots:
                    return await fn()
            except bank_errors.RateLimited as exc:
                if attempt == CALL_ATTEMPTS:
                    raise
                delay = getattr(exc, "retry_after", None)
                if delay is None:
                    delay = self._random.uniform(0, min(self.backoff_max, self.backoff_base * 2**attempt))
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def fetch(self) -> Fetched:
        started = dt.datetime.now(dt.UTC)
        accounts = await self.call(lambda: self.client.get_accounts(self.user_id, self.account_consent))
        self.progress.accounts_total = len(accounts)
        per_account, agreements = await _all(_all(*(self._account(a) for a in accounts)), self._agreements())
        balances = [b for bs, _ in per_account for b in bs]
        window_start = None
        if self.incremental:
            # Everything newer than the oldest transaction we paged down to was seen in full.
            window_start = min((o for _, o in per_account if o is not None), default=started)
        return Fetched(
            accounts, balances, self._collected, agreements, (window_start, started), {a.account_id for a in accounts}
        )

    async def _account(self, account: Account) -> tuple[list[Balance], dt.datetime | None]:
        balances, oldest = await _all(
            self.call(lambda: self.client.get_balances(self.user_id, self.account_consent, account.account_id)),
            self._transactions(account.account_id),
        )
        self.progress.accounts_done += 1
        return balances, oldest

    async def _page(self, account_id: str, page: int) -> TransactionPage:
        """Fetch one page and hand its transactions over before anything else is done with it."""
        got = await self.call(
            lambda: self.client.get_transactions_page(
                self.user_id, self.account_consent, account_id, page=page, limit=PAGE_LIMIT
            )
        )
        self.progress.pages_fetched += 1
        await self._on_transactions(got.transactions)
        return got

    async def _transactions(self, account_id: str) -> dt.datetime | None:
        """Every page of the account; answers the oldest booking time paged down to (incremental only)."""
        first = await self._page(account_id, 1)
        if self.incremental:
            return await self._incremental(account_id, first)
        if first.total_pages is not None:
            await _all(*(self._page(account_id, n) for n in range(2, first.total_pages + 1)))
            return None
        page_no, more = 1, first.next_link is not None  # no totalPages: follow links.next
        while more:
            page_no += 1
            page = await self._page(account_id, page_no)
            more = page.next_link is not None and bool(page.transactions)
        return None

    async def _incremental(self, account_id: str, page: TransactionPage) -> dt.datetime | None:
        oldest: dt.datetime | None = None
        page_no = 1
        while True:
            times = [t.booking_time for t in page.transactions if t.booking_time is not None]
            if times:
                oldest = min(times) if oldest is None else min(oldest, min(times))
            more = page.next_link is not None and bool(page.transactions)
            if not more or await self._page_is_known(account_id, page.transactions):
                return oldest
            page_no += 1
            page = await self._page(account_id, page_no)

    async def _page_is_known(self, account_id: str, page: Sequence[Transaction]) -> bool:
        if not page:
            return True
        if any(t.booking_time is None or t.booking_time >= self.stop_before for t in page):
            return False
        stored = await self.stored_ids(account_id, [t.transaction_id for t in page])
        return len(stored) == len({t.transaction_id for t in page})

    async def _agreements(self) -> list[ProductAgreement]:
        if not self.product_consent:
            return []
        listed = await self.call(lambda: self.client.get_product_agreements(self.user_id, self.product_consent))
        return list(await _all(*(self._agreement_details(a) for a in listed)))

    async def _agreement_details(self, agreement: ProductAgreement) -> ProductAgreement:
        try:
            detailed = await self.call(
                lambda: self.client.get_product_agreement(self.user_id, self.product_consent, agreement.agreement_id)
            )
        except bank_errors.NotFound:
            return agreement
        # The list carries fields the details call may not repeat (and the reverse).
        return dataclasses.replace(
            agreement,
            interest_rate=detailed.interest_rate if detailed.interest_rate is not None else agreement.interest_rate,
            account_balance=detailed.account_balance
            if detailed.account_balance is not None
            else agreement.account_balance,
        )


async def _all(*aws: Awaitable[T]) -> list[T]:
    """`asyncio.gather`, except that the first failure cancels the others (no request keeps going for
    a fetch that already failed) and is raised once they have stopped."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
