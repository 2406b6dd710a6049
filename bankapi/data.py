"""Data endpoints of `BankClient`: accounts, balances and transactions under an account consent,
product agreements under a product-agreement consent, and the bank's public product catalogue."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

from .consents import CONSENT_ENDPOINTS
from .models import Account, Balance, ConsentKind, Product, ProductAgreement, Transaction, TransactionPage, items_of
from .transport import BankTransport, Response, wire_time
from .wire import decode_transaction_page

MAX_PAGE_LIMIT = 100  # the API rejects limit > 100 with 422
MAX_PAGES = 10_000  # safety stop for a server whose links.next never ends


def _page_params(page: int, limit: int, from_time: datetime | None, to_time: datetime | None) -> dict[str, Any]:
    """Query of a transactions page; `limit` must be 1..100 (ValueError), as the API rejects more."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_LIMIT:
        raise ValueError(f"limit must be an integer between 1 and {MAX_PAGE_LIMIT}, got {limit!r}")
    params: dict[str, Any] = {"page": page, "limit": limit}
    if from_time is not None:
        params["from_booking_date_time"] = wire_time(from_time)
    if to_time is not None:
        params["to_booking_date_time"] = wire_time(to_time)
    return params


def _in_window(tx: Transaction, from_time: datetime | None, to_time: datetime | None) -> bool:
    """from_time ≤ booking_time ≤ to_time (a transaction without booking time is kept)."""
    when = tx.booking_time
    if when is None:
        return True
    return (from_time is None or when >= _utc(from_time)) and (to_time is None or when <= _utc(to_time))


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class DataEndpoints(BankTransport):
    """Consented data (`client_id`: the bank customer; `consent_id`: the kind's approved consent) and
    the catalogue (token only)."""

    async def _data_call(
        self,
        operation: str,
        kind: ConsentKind,
        consent_id: str,
        path: str,
        client_id: str,
        params: Mapping[str, Any] | None = None,
    ) -> Response:
        """GET a consented resource: X-Requesting-Bank + the kind's consent header, client_id in the query."""
        headers = {**self._requesting_bank(), CONSENT_ENDPOINTS[kind].data_header: consent_id}
        return await self._call(
            operation, "GET", path, params={"client_id": client_id, **(params or {})}, headers=headers
        )

    # ------------------------------------------------------------------------------------ accounts

    async def get_accounts(self, client_id: str, consent_id: str) -> list[Account]:
        answer = await self._data_call("get_accounts", ConsentKind.ACCOUNTS, consent_id, "/accounts", client_id)
        return self._parse(
            "get_accounts",
            answer,
            lambda b: [Account.from_api(a) for a in items_of(b.get("data"), "account", "accounts")],
        )

    async def get_account(self, client_id: str, consent_id: str, account_id: str) -> Account:
        """One account (the bank omits the account-number block here: use `get_accounts` for numbers)."""
        answer = await self._data_call(
            "get_account", ConsentKind.ACCOUNTS, consent_id, f"/accounts/{quote(account_id, safe='')}", client_id
        )
        return self._parse("get_account", answer, _single_account)

    async def get_balances(self, client_id: str, consent_id: str, account_id: str) -> list[Balance]:
        answer = await self._data_call(
            "get_balances",
            ConsentKind.ACCOUNTS,
            consent_id,
            f"/accounts/{quote(account_id, safe='')}/balances",
            client_id,
        )
        return self._parse(
            "get_balances",
            answer,
            lambda b: [
                Balance.from_api(x, account_id=account_id) for x in items_of(b.get("data"), "balance", "balances")
            ],
        )

    async def get_transactions_page(
        self,
        client_id: str,
        consent_id: str,
        account_id: str,
        page: int = 1,
        limit: int = MAX_PAGE_LIMIT,
        from_time: datetime | None = None,
        to_time: datetime | None = None,
    ) -> TransactionPage:
        """One page of an account's transactions (newest first), as the bank returns it (not re-filtered)."""
        params = _page_params(page, limit, from_time, to_time)
        return await self._transactions_page(client_id, consent_id, account_id, params)

    async def iter_transactions(
        self,
        client_id: str,
        consent_id: str,
        account_id: str,
        *,
        from_time: datetime | None = None,
        to_time: datetime | None = None,
        limit: int = MAX_PAGE_LIMIT,
    ) -> AsyncIterator[Transaction]:
        """Every transaction of the account in [from_time, to_time], page by page following `links.next`
        (its query string; the path and host stay ours so the token only goes to the configured bank).
        Stops at a page without `links.next` or an empty page; filters by time on our side too."""
        params = _page_params(1, limit, from_time, to_time)
        page = await self._transactions_page(client_id, consent_id, account_id, params)
        seen: set[tuple] = {tuple(sorted(params.items()))}
        while True:
            for tx in page.transactions:
                if _in_window(tx, from_time, to_time):
                    yield tx
            if not page.transactions or not page.next_link or len(seen) >= MAX_PAGES:
                return
            params = _next_page_params(params, page.next_link, limit)
            key = tuple(sorted(params.items()))
            if key in seen:
                return
            seen.add(key)
            page = await self._transactions_page(client_id, consent_id, account_id, params)

    async def _transactions_page(
        self, client_id: str, consent_id: str, account_id: str, params: Mapping[str, Any]
    ) -> TransactionPage:
        answer = await self._data_call(
            "get_transactions",
            ConsentKind.ACCOUNTS,
            consent_id,
            f"/accounts/{quote(account_id, safe='')}/transactions",
            client_id,
            params,
        )
        return self._parse("get_transactions", answer, lambda b: decode_transaction_page(b, account_id))

    # ------------------------------------------------------------------------------------ products

    async def get_product_agreements(self, client_id: str, consent_id: str) -> list[ProductAgreement]:
        answer = await self._data_call(
            "get_product_agreements", ConsentKind.PRODUCTS, consent_id, "/product-agreements", client_id
        )
        return self._parse(
            "get_product_agreements",
            answer,
            lambda b: [
                ProductAgreement.from_api(a)
                for a in items_of(b.get("data"), "agreements", "product_agreements", "agreement")
            ],
        )

    async def get_product_agreement(self, client_id: str, consent_id: str, agreement_id: str) -> ProductAgreement:
        """One agreement with `interest_rate` and `account_balance` (the linked account's balance)."""
        answer = await self._data_call(
            "get_product_agreement",
            ConsentKind.PRODUCTS,
            consent_id,
            f"/product-agreements/{quote(agreement_id, safe='')}",
            client_id,
        )
        return self._parse(
            "get_product_agreement",
            answer,
            lambda b: ProductAgreement.from_api(b["data"] if isinstance(b.get("data"), Mapping) else b),
        )

    async def get_products(self, product_type: str | None = None) -> list[Product]:
        """The bank's public catalogue (token only, no consent)."""
        answer = await self._call(
            "get_products", "GET", "/products", params={"product_type": product_type} if product_type else None
        )
        return self._parse(
            "get_products",
            answer,
            lambda b: [Product.from_api(p) for p in items_of(b.get("data"), "product", "products")],
        )


def _single_account(body: Mapping[str, Any]) -> Account:
    """`{"data": {"account": [{…}]}}`, `{"data": {"account": {…}}}` or `{"data": {accountId…}}`."""
    data = body["data"]
    if isinstance(data, Mapping) and ("accountId" in data or "account_id" in data):
        return Account.from_api(data)
    items = list(items_of(data, "account", "accounts"))
    if not items:
        raise ValueError("no account in the answer")
    return Account.from_api(items[0])


def _next_page_params(current: Mapping[str, Any], next_link: str, limit: int) -> dict[str, Any]:
    """The query of the next page from `links.next` (absolute or relative); our own `limit` is kept.
    A link without a page number means "the page after this one"."""
    params = dict(current)
    link_params = dict(parse_qsl(urlsplit(next_link).query))
    link_params.pop("client_id", None)
    params.update(link_params)
    if "page" not in link_params:
        params["page"] = int(current.get("page", 1)) + 1
    params["limit"] = limit
    return params
