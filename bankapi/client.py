"""`BankClient`: the typed async client of one bank's Open Banking API (see docs/bank-api.md).

One pooled aiohttp session per bank, created lazily, closed by `close()` / `async with`. Every call:

* goes to `BankConfig.base_url` with the team's credentials (nothing bank-specific is hard-coded);
* carries a bearer token from the per-bank `TokenCache` (in-process → shared `TokenStore` → bank);
  a 401 drops the token, fetches a new one and repeats the call once (then `AuthFailed`), except a
  401 `Insufficient permissions`, which refuses the call, not the token (`CallRefused`, at once);
* carries a fresh uuid4 `X-Fapi-Interaction-Id` (and `X-Request-Id` when a provider gives one), and is
  logged (logger `bankapi`) and reported to the `on_call` hook as a `CallRecord`;
* is bounded by `aiohttp.ClientTimeout(total=timeout)`;
* is retried on 5xx, transport errors and timeouts, up to `max_retries` more times with exponential
  backoff and full jitter — except `create_payment`, which is never repeated (a repeat could pay
  twice): it raises `BankUnavailable` and the caller reconciles;
* maps any other failure at once to a typed `BankError` (429 → `RateLimited` with `retry_after`, left
  to the caller to honour).
"""
from __future__ import annotations

import asyncio
import inspect
import json
import logging
import random
import time
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from urllib.parse import parse_qsl, quote, urlsplit

import aiohttp

from svclib.config import BankConfig, TeamCredentials

from .breaker import Breaker, BreakerStore, MemoryBreakerStore
from .errors import (BadRequest, BankUnavailable, CircuitOpen, MalformedResponse, UnknownBank, decode_body,
                     describe_detail,
                     error_for_status, is_refusal)
from .models import (Account, Balance, ConsentKind, ConsentResult, Payment, Product, ProductAgreement, Transaction,
                     TransactionPage, items_of, to_decimal)
from .tokens import Token, TokenCache, TokenStore

log = logging.getLogger("bankapi")

DEFAULT_ACCOUNT_PERMISSIONS: tuple[str, ...] = ("ReadAccountsDetail", "ReadBalances", "ReadTransactionsDetail")
DEFAULT_PRODUCT_TYPES: tuple[str, ...] = ("deposit", "loan", "card")
MAX_PAGE_LIMIT = 100  # the API rejects limit > 100 with 422
DEFAULT_TOKEN_LIFETIME = 86400.0  # seconds, when the token answer has no expires_in
MAX_PAGES = 10_000  # safety stop for a server whose links.next never ends
ACCOUNT_SCHEME = "RU.CBR.PAN"
# The two bodies of a payment-consent request (docs/bank-api.md, "Payment consent"): flat, with the
# customer in the body, or the nested Open Banking form with the customer in the query.
PAYMENT_CONSENT_FORMS = ("flat", "nested")


@dataclass(frozen=True)
class CallRecord:
    """One HTTP exchange with a bank, as given to the `on_call` hook (for bank_status_log)."""
    bank_id: str
    operation: str  # the client method, e.g. "get_accounts"
    method: str
    path: str  # without the query string (the token call's query holds the secret)
    http_status: int | None  # None: transport error or timeout
    latency_ms: float
    interaction_id: str
    outcome: str  # "ok" | "error"
    message: str
    attempt: int = 1  # 1 for the first try, 2.. for retries


OnCall = Callable[[CallRecord], "Awaitable[None] | None"]


@dataclass(frozen=True)
class _ConsentEndpoint:
    """How one consent kind is requested, read and revoked, and how data calls present it."""
    name: str  # account | product | payment (used in operation names)
    base: str  # path prefix
    data_header: str  # header that carries the consent id on data calls
    customer_in_query: bool  # client_id also in the query string (product-agreement consents)
    requesting_bank_header: bool  # X-Requesting-Bank on the request call


_CONSENTS: dict[ConsentKind, _ConsentEndpoint] = {
    ConsentKind.ACCOUNTS: _ConsentEndpoint("account", "/account-consents", "X-Consent-Id", False, True),
    ConsentKind.PRODUCTS: _ConsentEndpoint("product", "/product-agreement-consents",
                                           "X-Product-Agreement-Consent-Id", True, False),
    ConsentKind.PAYMENTS: _ConsentEndpoint("payment", "/payment-consents", "X-Payment-Consent-Id", False, True),
}


def _suite_request_id_provider() -> Callable[[], str | None] | None:
    """The suite's current request id (svclib.logging), when that module is available."""
    try:
        from svclib.logging import current_request_id
    except ImportError:
        return None
    return current_request_id


class _TransportError(Exception):
    """Connection failure or timeout of one HTTP exchange (internal: becomes BankUnavailable)."""


@dataclass(frozen=True)
class _Response:
    status: int
    body: Any
    headers: Mapping[str, str]
    interaction_id: str


def _json_default(value: Any) -> Any:
    """JSON for request bodies: Decimal as a number (shortest repr), datetimes in ISO-8601."""
    if isinstance(value, Decimal):
        return float(value)  # serialisation only: the text is the decimal's own digits
    if isinstance(value, datetime):
        return _wire_time(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _wire_time(value: datetime) -> str:
    """A timestamp as the API writes them: UTC without offset ("2026-12-31T23:59:59[.ffffff]");
    a naive value is taken as UTC."""
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value.isoformat()


def format_amount(amount: Decimal | str | int) -> str:
    """A positive amount with exactly two decimals ("1000.00"); ValueError if it needs more precision."""
    value = to_decimal(amount)
    cents = value.quantize(Decimal("0.01"))
    if cents != value:
        raise ValueError(f"amount {amount!r} has more than two decimals")
    if cents <= 0:
        raise ValueError(f"amount {amount!r} must be positive")
    return f"{cents:.2f}"


def _page_params(page: int, limit: int, from_time: datetime | None, to_time: datetime | None) -> dict[str, Any]:
    """Query of a transactions page; `limit` must be 1..100 (ValueError), as the API rejects more."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_LIMIT:
        raise ValueError(f"limit must be an integer between 1 and {MAX_PAGE_LIMIT}, got {limit!r}")
    params: dict[str, Any] = {"page": page, "limit": limit}
    if from_time is not None:
        params["from_booking_date_time"] = _wire_time(from_time)
    if to_time is not None:
        params["to_booking_date_time"] = _wire_time(to_time)
    return params


def _in_window(tx: Transaction, from_time: datetime | None, to_time: datetime | None) -> bool:
    """from_time ≤ booking_time ≤ to_time (a transaction without booking time is kept)."""
    when = tx.booking_time
    if when is None:
        return True
    return (from_time is None or when >= _utc(from_time)) and (to_time is None or when <= _utc(to_time))


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class BankClient:
    """Typed async client of one bank. See the module docstring for the call policy.

    `client_id` arguments are the bank customer's id (e.g. "team200-1"); the team code
    (`team.client_id`) goes into `X-Requesting-Bank` and `requesting_bank`.
    """

    def __init__(self, bank: BankConfig, team: TeamCredentials, *, token_store: TokenStore | None = None,
                 timeout: float = 10.0, max_retries: int = 3, backoff_base: float = 0.2, backoff_max: float = 5.0,
                 session: aiohttp.ClientSession | None = None, on_call: OnCall | None = None,
                 request_id_provider: Callable[[], str | None] | None = None, pool_size: int = 20,
                 throttle: Callable[[str], Awaitable[None]] | None = None, breaker_store: BreakerStore | None = None):
        if not bank.base_url:
            raise UnknownBank(f"bank {bank.id!r} has no base URL configured", bank_id=bank.id)
        if max_retries < 0 or timeout <= 0:
            raise ValueError("max_retries must be >= 0 and timeout > 0")
        self.bank = bank
        self.team = team
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._base_url = bank.base_url.rstrip("/")
        self._session = session
        self._owns_session = session is None
        self._pool_size = pool_size
        self._on_call = on_call
        # Awaited before every HTTP exchange with the bank id: a request-rate cap shared by replicas.
        self._throttle = throttle
        # Every exchange passes the bank's circuit breaker (shared by replicas with a Redis store).
        self._breaker = Breaker(bank.id, breaker_store or MemoryBreakerStore())
        self._request_id_provider = request_id_provider or _suite_request_id_provider()
        self._random = random.Random()
        self._tokens = TokenCache(f"{bank.id}:{team.client_id}", self._fetch_token, token_store)
        # The payment-consent body form this bank takes, once learnt (None: not known yet, the flat
        # form is tried first). Kept by this client, so per process: another replica learns it again
        # with one refused request.
        self.payment_consent_form: str | None = None

    @property
    def bank_id(self) -> str:
        return self.bank.id

    @property
    def auto_approves(self) -> bool:
        """True when this bank approves consents without the customer (configuration, not bank name)."""
        return self.bank.approval_mode == "auto"

    # ------------------------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> BankClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the pooled session (only if this client created it)."""
        if self._owns_session and self._session is not None and not self._session.closed:
            await self._session.close()
        if self._owns_session:
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            if not self._owns_session:
                raise RuntimeError("the session given to BankClient is closed")
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._pool_size),
                timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self._session

    # ------------------------------------------------------------------------------------ token

    async def get_token(self) -> str:
        """The bank token (cached per bank; fetched at most once by concurrent callers)."""
        return await self._tokens.get()

    async def _fetch_token(self) -> Token:
        response = await self._call("get_token", "POST", "/auth/bank-token", authorized=False,
                                    params={"client_id": self.team.client_id,
                                            "client_secret": self.team.client_secret})
        return self._parse("get_token", response, _token_from_answer)

    # ------------------------------------------------------------------------------------ consents

    async def request_account_consent(self, client_id: str, permissions: Iterable[str] = DEFAULT_ACCOUNT_PERMISSIONS,
                                      reason: str = "Aggregation of accounts in FinPulse") -> ConsentResult:
        """Ask for an account consent. Each call creates a new consent: reuse a stored one when valid."""
        return await self._request_consent(ConsentKind.ACCOUNTS, client_id, {
            "permissions": list(permissions), "reason": reason, "requesting_bank_name": self.team.name})

    async def get_account_consent(self, consent_or_request_id: str) -> ConsentResult:
        return await self._get_consent(ConsentKind.ACCOUNTS, consent_or_request_id)

    async def delete_account_consent(self, consent_id: str) -> None:
        await self._delete_consent(ConsentKind.ACCOUNTS, consent_id)

    async def request_product_consent(self, client_id: str, *, read_agreements: bool = True,
                                      open_agreements: bool = False, close_agreements: bool = False, product_types: Iterable[str] = DEFAULT_PRODUCT_TYPES,
                                      max_amount: Decimal | int | str | None = None,
                                      valid_until: datetime | None = None,
                                      reason: str = "Overview of loans, deposits and cards in FinPulse"
                                      ) -> ConsentResult:
        """Ask for a product-agreement consent (customer id in the query and the body)."""
        if not (read_agreements or open_agreements or close_agreements):
            raise ValueError("at least one of read/open/close_agreements must be true")
        body: dict[str, Any] = {
            "read_product_agreements": read_agreements, "open_product_agreements": open_agreements,
            "close_product_agreements": close_agreements,
            "allowed_product_types": list(product_types), "reason": reason,
            "valid_until": valid_until or (datetime.now(timezone.utc) + timedelta(days=365)).replace(microsecond=0),
        }
        if max_amount is not None:
            body["max_amount"] = to_decimal(max_amount)
        return await self._request_consent(ConsentKind.PRODUCTS, client_id, body)

    async def get_product_consent(self, consent_or_request_id: str, client_id: str) -> ConsentResult:
        return await self._get_consent(ConsentKind.PRODUCTS, consent_or_request_id, client_id)

    async def delete_product_consent(self, consent_id: str, client_id: str) -> None:
        await self._delete_consent(ConsentKind.PRODUCTS, consent_id, client_id)

    async def request_payment_consent(self, client_id: str, *, debtor_account: str,
                                      amount: Decimal | int | str | None, currency: str = "RUB",
                                      creditor_account: str | None = None, creditor_name: str | None = None,
                                      reference: str | None = None, consent_type: str = "single_use",
                                      creditor_bank_code: str | None = None, **extra: Any) -> ConsentResult:
        """Ask for a payment consent. Accounts are account numbers (`Account.account_number`), not ids.
        `extra` carries the multi_use / vrp fields (max_uses, vrp_daily_limit, valid_until, …).

        The flat body is sent first; a bank that answers it 422 `body.data: Field required` takes only
        the nested Open Banking form (customer in the query): the request is sent again in that form,
        and this client remembers it for the bank (`payment_consent_form`), so later requests go nested
        at once. `creditor_bank_code` is sent in the nested form only (the flat one has no such field)."""
        fields = {"consent_type": consent_type, "currency": currency, "debtor_account": debtor_account,
                  "amount": None if amount is None else to_decimal(amount), "creditor_account": creditor_account,
                  "creditor_name": creditor_name, "reference": reference, **extra}
        fields = {k: v for k, v in fields.items() if v is not None}
        if self.payment_consent_form != "nested":
            try:
                result = await self._request_consent(ConsentKind.PAYMENTS, client_id, fields)
            except BadRequest as exc:
                if not _wants_nested_form(exc):
                    raise
                log.info("bank=%s takes payment consents in the nested form only", self.bank_id,
                         extra={"bank_id": self.bank_id, "operation": "request_payment_consent"})
                self.payment_consent_form = "nested"
            else:
                self.payment_consent_form = "flat"
                return result
        body = _nested_payment_consent(fields, creditor_bank_code)
        answer = await self._call("request_payment_consent", "POST", "/payment-consents/request",
                                  params={"client_id": client_id}, body=body, headers=self._requesting_bank())
        return self._parse("request_payment_consent", answer,
                           lambda b: ConsentResult.from_api(ConsentKind.PAYMENTS, b))

    async def get_payment_consent(self, consent_or_request_id: str) -> ConsentResult:
        return await self._get_consent(ConsentKind.PAYMENTS, consent_or_request_id)

    async def delete_payment_consent(self, consent_id: str) -> None:
        await self._delete_consent(ConsentKind.PAYMENTS, consent_id)

    async def _request_consent(self, kind: ConsentKind, client_id: str, fields: Mapping[str, Any]) -> ConsentResult:
        ep = _CONSENTS[kind]
        body = {"requesting_bank": self.team.client_id, "client_id": client_id, **fields}
        operation = f"request_{ep.name}_consent"
        answer = await self._call(operation, "POST", f"{ep.base}/request", body=body,
                                  params={"client_id": client_id} if ep.customer_in_query else None,
                                  headers=self._requesting_bank() if ep.requesting_bank_header else None)
        return self._parse(operation, answer, lambda b: ConsentResult.from_api(kind, b))

    async def _get_consent(self, kind: ConsentKind, consent_id: str, client_id: str | None = None) -> ConsentResult:
        ep = _CONSENTS[kind]
        operation = f"get_{ep.name}_consent"
        answer = await self._call(operation, "GET", f"{ep.base}/{quote(consent_id, safe='')}",
                                  params={"client_id": client_id} if ep.customer_in_query else None)
        return self._parse(operation, answer, lambda b: ConsentResult.from_api(kind, b, queried_id=consent_id))

    async def _delete_consent(self, kind: ConsentKind, consent_id: str, client_id: str | None = None) -> None:
        ep = _CONSENTS[kind]
        await self._call(f"delete_{ep.name}_consent", "DELETE", f"{ep.base}/{quote(consent_id, safe='')}",
                         params={"client_id": client_id} if ep.customer_in_query else None)

    # ------------------------------------------------------------------------------------ accounts

    async def get_accounts(self, client_id: str, consent_id: str) -> list[Account]:
        answer = await self._data_call("get_accounts", ConsentKind.ACCOUNTS, consent_id, "/accounts", client_id)
        return self._parse("get_accounts", answer,
                           lambda b: [Account.from_api(a) for a in items_of(b.get("data"), "account", "accounts")])

    async def get_account(self, client_id: str, consent_id: str, account_id: str) -> Account:
        """One account (the bank omits the account-number block here: use `get_accounts` for numbers)."""
        answer = await self._data_call("get_account", ConsentKind.ACCOUNTS, consent_id,
                                       f"/accounts/{quote(account_id, safe='')}", client_id)
        return self._parse("get_account", answer, _single_account)

    async def get_balances(self, client_id: str, consent_id: str, account_id: str) -> list[Balance]:
        answer = await self._data_call("get_balances", ConsentKind.ACCOUNTS, consent_id,
                                       f"/accounts/{quote(account_id, safe='')}/balances", client_id)
        return self._parse("get_balances", answer, lambda b: [
            Balance.from_api(x, account_id=account_id) for x in items_of(b.get("data"), "balance", "balances")])

    async def get_transactions_page(self, client_id: str, consent_id: str, account_id: str, page: int = 1,
                                    limit: int = MAX_PAGE_LIMIT, from_time: datetime | None = None,
                                    to_time: datetime | None = None) -> TransactionPage:
        """One page of an account's transactions (newest first), as the bank returns it (not re-filtered)."""
        params = _page_params(page, limit, from_time, to_time)
        return await self._transactions_page(client_id, consent_id, account_id, params)

    async def iter_transactions(self, client_id: str, consent_id: str, account_id: str, *,
                                from_time: datetime | None = None, to_time: datetime | None = None,
                                limit: int = MAX_PAGE_LIMIT) -> AsyncIterator[Transaction]:
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

    async def _transactions_page(self, client_id: str, consent_id: str, account_id: str,
                                 params: Mapping[str, Any]) -> TransactionPage:
        answer = await self._data_call("get_transactions", ConsentKind.ACCOUNTS, consent_id,
                                       f"/accounts/{quote(account_id, safe='')}/transactions", client_id, params)
        return self._parse("get_transactions", answer, lambda b: TransactionPage.from_api(b, account_id=account_id))

    # ------------------------------------------------------------------------------------ products

    async def get_product_agreements(self, client_id: str, consent_id: str) -> list[ProductAgreement]:
        answer = await self._data_call("get_product_agreements", ConsentKind.PRODUCTS, consent_id,
                                       "/product-agreements", client_id)
        return self._parse("get_product_agreements", answer, lambda b: [
            ProductAgreement.from_api(a)
            for a in items_of(b.get("data"), "agreements", "product_agreements", "agreement")])

    async def get_product_agreement(self, client_id: str, consent_id: str, agreement_id: str) -> ProductAgreement:
        """One agreement with `interest_rate` and `account_balance` (the linked account's balance)."""
        answer = await self._data_call("get_product_agreement", ConsentKind.PRODUCTS, consent_id,
                                       f"/product-agreements/{quote(agreement_id, safe='')}", client_id)
        return self._parse("get_product_agreement", answer, lambda b: ProductAgreement.from_api(
            b["data"] if isinstance(b.get("data"), Mapping) else b))

    async def get_products(self, product_type: str | None = None) -> list[Product]:
        """The bank's public catalogue (token only, no consent)."""
        answer = await self._call("get_products", "GET", "/products",
                                  params={"product_type": product_type} if product_type else None)
        return self._parse("get_products", answer,
                           lambda b: [Product.from_api(p) for p in items_of(b.get("data"), "product", "products")])

    # ------------------------------------------------------------------------------------ payments

    async def create_payment(self, client_id: str, payment_consent_id: str, *, amount: Decimal | str | int,
                             currency: str, debtor_account: str, creditor_account: str,
                             creditor_bank_code: str | None = None, comment: str | None = None,
                             interaction_id: str | None = None) -> Payment:
        """Initiate a payment. NEVER retried on 5xx/transport errors/timeouts (the API has no idempotency
        key: a repeat could pay twice): those raise `BankUnavailable` and the caller must reconcile (e.g.
        by `get_payment` or the debtor account's transactions). Pass `interaction_id` to know the bank-side
        request id in advance (persist it before calling). Accounts are account numbers."""
        creditor: dict[str, Any] = {"schemeName": ACCOUNT_SCHEME, "identification": creditor_account}
        if creditor_bank_code:
            creditor["bank_code"] = creditor_bank_code
        initiation: dict[str, Any] = {
            "instructedAmount": {"amount": format_amount(amount), "currency": currency},
            "debtorAccount": {"schemeName": ACCOUNT_SCHEME, "identification": debtor_account},
            "creditorAccount": creditor,
        }
        if comment:
            initiation["comment"] = comment
        answer = await self._call("create_payment", "POST", "/payments", params={"client_id": client_id},
                                  body={"data": {"initiation": initiation}}, retry=False,
                                  headers={**self._requesting_bank(), "X-Payment-Consent-Id": payment_consent_id},
                                  interaction_id=interaction_id)
        return self._parse("create_payment", answer, Payment.from_api)

    async def get_payment(self, client_id: str, payment_id: str) -> Payment:
        answer = await self._call("get_payment", "GET", f"/payments/{quote(payment_id, safe='')}",
                                  params={"client_id": client_id}, headers=self._requesting_bank())
        return self._parse("get_payment", answer, Payment.from_api)

    # ------------------------------------------------------------------------------------ plumbing

    def _requesting_bank(self) -> dict[str, str]:
        return {"X-Requesting-Bank": self.team.client_id}

    async def _data_call(self, operation: str, kind: ConsentKind, consent_id: str, path: str, client_id: str,
                         params: Mapping[str, Any] | None = None) -> _Response:
        """GET a consented resource: X-Requesting-Bank + the kind's consent header, client_id in the query."""
        headers = {**self._requesting_bank(), _CONSENTS[kind].data_header: consent_id}
        return await self._call(operation, "GET", path, params={"client_id": client_id, **(params or {})},
                                headers=headers)

    def _parse(self, operation: str, response: _Response, parse: Callable[[Any], Any]) -> Any:
        """Apply a model parser to a JSON-object body; any other shape becomes `MalformedResponse`."""
        try:
            if not isinstance(response.body, Mapping):
                raise TypeError(f"expected a JSON object, got {type(response.body).__name__}")
            return parse(response.body)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MalformedResponse(f"unexpected answer shape: {exc}", bank_id=self.bank_id, operation=operation,
                                    http_status=response.status, interaction_id=response.interaction_id) from exc

    async def _call(self, operation: str, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                    body: Any = None, headers: Mapping[str, str] | None = None, authorized: bool = True,
                    retry: bool = True, interaction_id: str | None = None) -> _Response:
        """One logical call: token, retries with backoff (5xx/transport/timeout), one token refresh on
        401, typed errors. Returns the 2xx response (body decoded JSON, None when empty)."""
        max_attempts = 1 + (self.max_retries if retry else 0)
        attempt = 0
        refreshed = False
        while True:
            attempt += 1
            token = await self._tokens.get() if authorized else None
            iid = interaction_id or str(uuid.uuid4())
            context = {"bank_id": self.bank_id, "operation": operation, "interaction_id": iid}
            try:
                response = await self._send(operation, method, path, params, body, headers, token, iid, attempt)
            except _TransportError as exc:
                if attempt < max_attempts:
                    await self._backoff(attempt)
                    continue
                raise BankUnavailable(str(exc), attempts=attempt, **context) from exc
            if response.status < 300:
                return response
            if response.status == 401 and authorized and not refreshed and not is_refusal(response.body):
                refreshed = True
                attempt -= 1  # a token refresh is not a retry
                await self._tokens.refresh(token or "")
                continue
            error = error_for_status(response.status, response.body, after_refresh=refreshed,
                                     retry_after_header=response.headers.get("Retry-After"), **context)
            if isinstance(error, BankUnavailable):
                if attempt < max_attempts:
                    await self._backoff(attempt)
                    continue
                error.attempts = attempt
            raise error

    async def _backoff(self, attempt: int) -> None:
        """Exponential backoff with full jitter: uniform(0, min(max, base * 2^(attempt-1)))."""
        await asyncio.sleep(self._random.uniform(0, min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))))

    async def _send(self, operation: str, method: str, path: str, params: Mapping[str, Any] | None, body: Any,
                    headers: Mapping[str, str] | None, token: str | None, iid: str, attempt: int) -> _Response:
        """One HTTP exchange, logged and reported to `on_call`. Raises `_TransportError`, or
        `CircuitOpen` without sending anything while the bank's breaker is open."""
        verdict = await self._breaker.before_call()
        if not verdict.allowed:
            raise CircuitOpen(
                f"{self.bank_id} failing since {_clock(verdict.failing_since)}, next try at {_clock(verdict.next_try_at)}",
                failing_since=verdict.failing_since, next_try_at=verdict.next_try_at, bank_id=self.bank_id,
                operation=operation, interaction_id=iid)
        if self._throttle is not None:
            await self._throttle(self.bank_id)
        request_headers = {"Accept": "application/json", "X-Fapi-Interaction-Id": iid}
        if token:
            request_headers["Authorization"] = f"Bearer {token}"
        request_id = self._request_id_provider() if self._request_id_provider else None
        if request_id:
            request_headers["X-Request-Id"] = request_id
        request_headers.update(headers or {})
        data = None
        if body is not None:
            data = json.dumps(body, default=_json_default, ensure_ascii=False).encode()
            request_headers["Content-Type"] = "application/json"
        query = {k: str(v) for k, v in (params or {}).items() if v is not None}
        started = time.perf_counter()
        try:
            async with self._http().request(method, self._base_url + path, params=query, data=data,
                                            headers=request_headers,
                                            timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
                raw = await resp.read()
                response = _Response(resp.status, decode_body(raw.decode("utf-8", "replace")), resp.headers, iid)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            if isinstance(exc, asyncio.TimeoutError):
                message = f"timeout after {self.timeout}s"
            else:
                message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            await self._report(operation, method, path, None, started, iid, message, attempt)
            await self._breaker.failed()
            raise _TransportError(message) from exc
        message = "" if response.status < 300 else describe_detail(response.body)[0]
        await self._report(operation, method, path, response.status, started, iid, message, attempt)
        if response.status >= 500:
            await self._breaker.failed()
        elif verdict.failing_since is not None:  # the bank answers again: the breaker closes
            await self._breaker.succeeded()
        return response

    async def _report(self, operation: str, method: str, path: str, status: int | None, started: float, iid: str,
                      message: str, attempt: int) -> None:
        latency_ms = (time.perf_counter() - started) * 1000
        ok = status is not None and status < 300
        record = CallRecord(self.bank_id, operation, method, path, status, round(latency_ms, 1), iid,
                            "ok" if ok else "error", message, attempt)
        log.log(logging.INFO if ok else logging.WARNING,
                "bank=%s op=%s %s %s status=%s latency_ms=%.1f interaction_id=%s attempt=%d%s",
                self.bank_id, operation, method, path, status if status is not None else "-", latency_ms, iid,
                attempt, f" error={message!r}" if message else "",
                extra={"bank_id": self.bank_id, "operation": operation, "http_status": status,
                       "latency_ms": latency_ms, "interaction_id": iid})
        if self._on_call is None:
            return
        try:
            result = self._on_call(record)
            if inspect.isawaitable(result):
                await result
        except Exception:  # the hook must never break a bank call
            log.exception("bankapi on_call hook failed")


def _clock(when: float | None) -> str:
    """Unix seconds as an ISO-8601 UTC time, to the second (for messages people read)."""
    if when is None:
        return "?"
    return datetime.fromtimestamp(when, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _wants_nested_form(exc: BadRequest) -> bool:
    """The 422 of a bank that takes payment consents only in the nested form: `body.data` is missing."""
    if exc.http_status != 422:
        return False
    if isinstance(exc.detail, list):
        return any(isinstance(item, Mapping) and list(item.get("loc") or ()) == ["body", "data"]
                   for item in exc.detail)
    return "body.data" in exc.message


def _nested_payment_consent(fields: Mapping[str, Any], creditor_bank_code: str | None) -> dict[str, Any]:
    """The nested Open Banking body of a payment-consent request, from the flat fields: the payment's
    initiation (amount, debtor, creditor, comment), and the standing consent's type and limits beside it."""
    initiation: dict[str, Any] = {
        "debtorAccount": {"schemeName": ACCOUNT_SCHEME, "identification": fields["debtor_account"]}}
    if "amount" in fields:
        initiation["instructedAmount"] = {"amount": format_amount(fields["amount"]), "currency": fields["currency"]}
    if "creditor_account" in fields:
        creditor: dict[str, Any] = {"schemeName": ACCOUNT_SCHEME, "identification": fields["creditor_account"]}
        if "creditor_name" in fields:
            creditor["name"] = fields["creditor_name"]
        if creditor_bank_code:
            creditor["bank_code"] = creditor_bank_code
        initiation["creditorAccount"] = creditor
    if "reference" in fields:
        initiation["comment"] = fields["reference"]
    data: dict[str, Any] = {"initiation": initiation}
    rest = {k: v for k, v in fields.items()
            if k not in ("debtor_account", "amount", "creditor_account", "creditor_name", "reference")}
    if rest.get("consent_type") == "single_use" and "amount" in fields:
        rest = {}  # a single payment: the initiation says it all
    data.update(rest)
    return {"data": data}


def _single_account(body: Mapping[str, Any]) -> Account:
    """`{"data": {"account": [{…}]}}`, `{"data": {"account": {…}}}` or `{"data": {accountId…}}`."""
    data = body["data"]
    if isinstance(data, Mapping) and ("accountId" in data or "account_id" in data):
        return Account.from_api(data)
    items = list(items_of(data, "account", "accounts"))
    if not items:
        raise ValueError("no account in the answer")
    return Account.from_api(items[0])


def _token_from_answer(body: Mapping[str, Any]) -> Token:
    if not isinstance(body.get("access_token"), str) or not body["access_token"]:
        raise ValueError("token answer without access_token")
    return Token.issued(body["access_token"], float(body.get("expires_in") or DEFAULT_TOKEN_LIFETIME))


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


class BankClients:
    """The configured banks' clients, by bank id: `clients.get("vbank")`. Clients are created lazily
    and share the token store and call options; `close()` closes them all."""

    def __init__(self, settings_or_banks: Any, team: TeamCredentials | None = None,
                 token_store: TokenStore | None = None, **client_options: Any):
        """`settings_or_banks`: a `Settings` (its banks, team, bank_timeout and bank_max_retries are used,
        `team`/options override) or an iterable of `BankConfig` (then `team` is required)."""
        if hasattr(settings_or_banks, "banks"):
            settings = settings_or_banks
            banks = settings.banks
            team = team or settings.team
            client_options.setdefault("timeout", settings.bank_timeout)
            client_options.setdefault("max_retries", settings.bank_max_retries)
        else:
            banks = tuple(settings_or_banks)
        if team is None:
            raise ValueError("team credentials are required")
        self.team = team
        self.banks: dict[str, BankConfig] = {b.id: b for b in banks}
        self._token_store = token_store
        self._options = client_options
        self._clients: dict[str, BankClient] = {}

    @property
    def bank_ids(self) -> list[str]:
        return list(self.banks)

    def __contains__(self, bank_id: object) -> bool:
        return bank_id in self.banks

    def get(self, bank_id: str) -> BankClient:
        """The client of `bank_id`; `UnknownBank` if it is not configured or has no base URL."""
        client = self._clients.get(bank_id)
        if client is None:
            bank = self.banks.get(bank_id)
            if bank is None:
                raise UnknownBank(f"unknown bank {bank_id!r} (configured: {', '.join(self.banks) or 'none'})",
                                  bank_id=bank_id)
            client = self._clients[bank_id] = BankClient(bank, self.team, token_store=self._token_store,
                                                         **self._options)
        return client

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)

    async def __aenter__(self) -> BankClients:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
