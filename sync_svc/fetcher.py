"""Fetching one bank's data for one user (no gRPC, no SQL).

Per bank: accounts, then for every account concurrently (bounded by `concurrency` requests in
flight) its balances and every transaction page (`limit` 100; after the first page gives
`meta.totalPages`, the remaining pages are fetched in parallel), and the product agreements with
their details. An incremental fetch (a watermark exists and the job is not forced) pages one at a
time and stops at the first page whose transactions are all stored already and older than the
watermark minus the overlap window.

Rate limits (429) and transient failures that outlast the client's own retries are retried here per
call, honouring Retry-After, so one bad answer among hundreds does not restart the whole job.
"""
from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import random
from typing import Awaitable, Callable, TypeVar

from bankapi import errors as bank_errors
from bankapi.client import BankClient
from bankapi.models import Account, Balance, ProductAgreement, Transaction

log = logging.getLogger("sync_svc.fetcher")

PAGE_LIMIT = 100
OVERLAP = dt.timedelta(days=3)
CALL_ATTEMPTS = 6

T = TypeVar("T")

# (account id, transaction ids) -> the ids already stored (for the incremental stop check)
StoredIds = Callable[[str, list[str]], Awaitable[set[str]]]


@dataclasses.dataclass
class Progress:
    accounts_total: int = 0
    accounts_done: int = 0
    pages_fetched: int = 0
    rows_written: int = 0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Fetched:
    accounts: list[Account]
    balances: list[Balance]
    transactions: list[Transaction]
    agreements: list[ProductAgreement]
    # Booking-time window the transactions were fetched completely over (None start: all history).
    window: tuple[dt.datetime | None, dt.datetime]
    window_accounts: set[str]


class BankFetcher:
    def __init__(self, client: BankClient, user_id: str, *, account_consent: str, product_consent: str | None,
                 watermark: dt.datetime | None, force: bool, stored_ids: StoredIds, progress: Progress,
                 concurrency: int = 8, backoff_base: float = 0.5, backoff_max: float = 30.0):
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

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """One bank request under the concurrency cap, retried on 429 and transient failures."""
        for attempt in range(1, CALL_ATTEMPTS + 1):
            try:
                async with self.slots:
                    return await fn()
            except (bank_errors.RateLimited, bank_errors.BankUnavailable) as exc:
                if attempt == CALL_ATTEMPTS:
                    raise
                delay = getattr(exc, "retry_after", None)
                if delay is None:
                    delay = self._random.uniform(0, min(self.backoff_max, self.backoff_base * 2 ** attempt))
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def fetch(self) -> Fetched:
        started = dt.datetime.now(dt.timezone.utc)
        accounts = await self.call(lambda: self.client.get_accounts(self.user_id, self.account_consent))
        self.progress.accounts_total = len(accounts)
        per_account, agreements = await asyncio.gather(
            asyncio.gather(*(self._account(a) for a in accounts)), self._agreements())
        balances = [b for bs, _, _ in per_account for b in bs]
        transactions = [t for _, ts, _ in per_account for t in ts]
        oldest = [o for _, _, o in per_account]
        window_start = None
        if self.incremental:
            # Everything newer than the oldest transaction we paged down to was seen in full.
            window_start = min((o for o in oldest if o is not None), default=started)
        return Fetched(accounts, balances, transactions, agreements, (window_start, started),
                       {a.account_id for a in accounts})

    async def _account(self, account: Account) -> tuple[list[Balance], list[Transaction], dt.datetime | None]:
        balances, (transactions, oldest) = await asyncio.gather(
            self.call(lambda: self.client.get_balances(self.user_id, self.account_consent, account.account_id)),
            self._transactions(account.account_id))
        self.progress.accounts_done += 1
        return balances, transactions, oldest

    def _page(self, account_id: str, page: int):
        return self.call(lambda: self.client.get_transactions_page(
            self.user_id, self.account_consent, account_id, page=page, limit=PAGE_LIMIT))

    async def _transactions(self, account_id: str) -> tuple[list[Transaction], dt.datetime | None]:
        first = await self._page(account_id, 1)
        self.progress.pages_fetched += 1
        rows = list(first.transactions)
        if self.incremental:
            return await self._incremental(account_id, rows, first.next_link is not None)
        if first.total_pages is not None:
            pages = await asyncio.gather(*(self._page(account_id, n) for n in range(2, first.total_pages + 1)))
            self.progress.pages_fetched += len(pages)
            for page in pages:
                rows.extend(page.transactions)
            return rows, None
        page_no, more = 1, first.next_link is not None  # no totalPages: follow links.next
        while more:
            page_no += 1
            page = await self._page(account_id, page_no)
            self.progress.pages_fetched += 1
            rows.extend(page.transactions)
            more = page.next_link is not None and bool(page.transactions)
        return rows, None

    async def _incremental(self, account_id: str, rows: list[Transaction], more: bool
                           ) -> tuple[list[Transaction], dt.datetime | None]:
        page_rows = list(rows)
        page_no = 1
        while True:
            if await self._page_is_known(account_id, page_rows) or not more:
                break
            page_no += 1
            page = await self._page(account_id, page_no)
            self.progress.pages_fetched += 1
            page_rows = list(page.transactions)
            rows.extend(page_rows)
            more = page.next_link is not None and bool(page_rows)
        times = [t.booking_time for t in rows if t.booking_time is not None]
        return rows, min(times) if times else None

    async def _page_is_known(self, account_id: str, page: list[Transaction]) -> bool:
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
        return list(await asyncio.gather(*(self._agreement_details(a) for a in listed)))

    async def _agreement_details(self, agreement: ProductAgreement) -> ProductAgreement:
        try:
            detailed = await self.call(lambda: self.client.get_product_agreement(
                self.user_id, self.product_consent, agreement.agreement_id))
        except bank_errors.NotFound:
            return agreement
        # The list carries fields the details call may not repeat (and the reverse).
        return dataclasses.replace(
            agreement,
            interest_rate=detailed.interest_rate if detailed.interest_rate is not None else agreement.interest_rate,
            account_balance=detailed.account_balance if detailed.account_balance is not None
            else agreement.account_balance)
