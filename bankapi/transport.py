"""`BankTransport`: the HTTP exchange with one bank's Open Banking API (see docs/bank-api.md), under
the endpoints of `BankClient`.

One pooled aiohttp session per bank, created lazily, closed by `close()` / `async with`. Every call:

* goes to `BankEndpoint.base_url` with the team's credentials (nothing bank-specific is hard-coded);
* carries a bearer token from the per-bank `TokenCache` (in-process → shared `TokenStore` → bank);
  a 401 drops the token, fetches a new one and repeats the call once (then `AuthFailed`), except a
  401 `Insufficient permissions`, which refuses the call, not the token (`CallRefused`, at once);
* carries a fresh uuid4 `X-Fapi-Interaction-Id` (and `X-Request-Id` when the caller's
  `request_id_provider` gives one), and is logged (logger `bankapi`) and reported to the `on_call`
  hook as a `CallRecord`;
* passes the bank's circuit breaker (`bankapi.breaker`) and the caller's `throttle` (a request-rate cap);
* is bounded by `aiohttp.ClientTimeout(total=timeout)`;
* is retried on 5xx, transport errors and timeouts, up to `max_retries` more times with exponential
  backoff and full jitter — unless the endpoint says `retry=False` (`create_payment`: a repeat could
  pay twice): it raises `BankUnavailable` and the caller reconciles;
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
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any, Self, TypeVar
from urllib.parse import urlsplit

import aiohttp

from .breaker import Breaker, BreakerStore, MemoryBreakerStore
from .config import BankEndpoint, TeamCredentials
from .errors import (
    BankUnavailable,
    CircuitOpen,
    MalformedResponse,
    UnknownBank,
    decode_body,
    describe_detail,
    error_for_status,
    is_refusal,
)
from .tokens import Token, TokenCache, TokenStore
from .tracing import BankSpan

log = logging.getLogger("bankapi")
_Parsed = TypeVar("_Parsed")  # what a model parser makes of a bank answer

DEFAULT_TOKEN_LIFETIME = 86400.0  # seconds, when the token answer has no expires_in


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


class _TransportError(Exception):
    """Connection failure or timeout of one HTTP exchange (internal: becomes BankUnavailable)."""


@dataclass(frozen=True)
class Response:
    """A bank's answer: status, decoded JSON body (None when empty), headers, the call's interaction id."""

    status: int
    body: Any
    headers: Mapping[str, str]
    interaction_id: str


def json_default(value: Any) -> Any:
    """JSON for request bodies: Decimal as a number (shortest repr), datetimes in ISO-8601."""
    if isinstance(value, Decimal):
        return float(value)  # serialisation only: the text is the decimal's own digits
    if isinstance(value, datetime):
        return wire_time(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def wire_time(value: datetime) -> str:
    """A timestamp as the API writes them: UTC without offset ("2026-12-31T23:59:59[.ffffff]");
    a naive value is taken as UTC."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat()


class BankTransport:
    """The HTTP exchange with one bank (see the module docstring for the call policy); `BankClient`
    adds the endpoints. `request_id_provider` gives the caller's current request id (sent as
    `X-Request-Id`); `throttle(bank_id)` is awaited before every exchange."""

    def __init__(
        self,
        bank: BankEndpoint,
        team: TeamCredentials,
        *,
        token_store: TokenStore | None = None,
        timeout: float = 10.0,
        max_retries: int = 3,
        backoff_base: float = 0.2,
        backoff_max: float = 5.0,
        session: aiohttp.ClientSession | None = None,
        on_call: OnCall | None = None,
        request_id_provider: Callable[[], str | None] | None = None,
        pool_size: int = 20,
        throttle: Callable[[str], Awaitable[None]] | None = None,
        breaker_store: BreakerStore | None = None,
    ):
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
        self._host = urlsplit(self._base_url).hostname or ""  # the bank's host, for its spans
        self._session = session
        self._owns_session = session is None
        self._pool_size = pool_size
        self._on_call = on_call
        # Awaited before every HTTP exchange with the bank id: a request-rate cap shared by replicas.
        self._throttle = throttle
        # Every exchange passes the bank's circuit breaker (shared by replicas with a Redis store).
        self._breaker = Breaker(bank.id, breaker_store or MemoryBreakerStore())
        self._request_id_provider = request_id_provider
        self._random = random.Random()
        self._tokens = TokenCache(f"{bank.id}:{team.client_id}", self._fetch_token, token_store)

    @property
    def bank_id(self) -> str:
        return self.bank.id

    # ------------------------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
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
                connector=aiohttp.TCPConnector(limit=self._pool_size), timeout=aiohttp.ClientTimeout(total=self.timeout)
            )
        return self._session

    # ------------------------------------------------------------------------------------ token

    async def get_token(self) -> str:
        """The bank token (cached per bank; fetched at most once by concurrent callers)."""
        return await self._tokens.get()

    async def _fetch_token(self) -> Token:
        response = await self._call(
            "get_token",
            "POST",
            "/auth/bank-token",
            authorized=False,
            params={"client_id": self.team.client_id, "client_secret": self.team.client_secret},
        )
        return self._parse("get_token", response, _token_from_answer)

    # ------------------------------------------------------------------------------------ calls

    def _requesting_bank(self) -> dict[str, str]:
        return {"X-Requesting-Bank": self.team.client_id}

    def _parse(self, operation: str, response: Response, parse: Callable[[Any], _Parsed]) -> _Parsed:
        """Apply a model parser to a JSON-object body; any other shape becomes `MalformedResponse`."""
        try:
            if not isinstance(response.body, Mapping):
                raise TypeError(f"expected a JSON object, got {type(response.body).__name__}")
            return parse(response.body)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MalformedResponse(
                f"unexpected answer shape: {exc}",
                bank_id=self.bank_id,
                operation=operation,
                http_status=response.status,
                interaction_id=response.interaction_id,
            ) from exc

    async def _call(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        authorized: bool = True,
        retry: bool = True,
        interaction_id: str | None = None,
    ) -> Response:
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
            error = error_for_status(
                response.status,
                response.body,
                after_refresh=refreshed,
                retry_after_header=response.headers.get("Retry-After"),
                **context,
            )
            if isinstance(error, BankUnavailable):
                if attempt < max_attempts:
                    await self._backoff(attempt)
                    continue
                error.attempts = attempt
            raise error

    async def _backoff(self, attempt: int) -> None:
        """Exponential backoff with full jitter: uniform(0, min(max, base * 2^(attempt-1)))."""
        await asyncio.sleep(self._random.uniform(0, min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))))

    async def _send(
        self,
        operation: str,
        method: str,
        path: str,
        params: Mapping[str, Any] | None,
        body: Any,
        headers: Mapping[str, str] | None,
        token: str | None,
        iid: str,
        attempt: int,
    ) -> Response:
        """One HTTP exchange, logged and reported to `on_call`. Raises `_TransportError`, or
        `CircuitOpen` without sending anything while the bank's breaker is open."""
        verdict = await self._breaker.before_call()
        if not verdict.allowed:
            raise CircuitOpen(
                f"{self.bank_id} failing since {_clock(verdict.failing_since)}, "
                f"next try at {_clock(verdict.next_try_at)}",
                failing_since=verdict.failing_since,
                next_try_at=verdict.next_try_at,
                bank_id=self.bank_id,
                operation=operation,
                interaction_id=iid,
            )
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
            data = json.dumps(body, default=json_default, ensure_ascii=False).encode()
            request_headers["Content-Type"] = "application/json"
        query = {k: str(v) for k, v in (params or {}).items() if v is not None}
        started = time.perf_counter()
        with BankSpan(self.bank_id, self._host, operation, method, path, attempt) as span:
            span.inject(request_headers)
            try:
                async with self._http().request(
                    method,
                    self._base_url + path,
                    params=query,
                    data=data,
                    headers=request_headers,
                    timeout=aiohttp.ClientTimeout(total=self.timeout),
                ) as resp:
                    span.answered(resp.status)
                    raw = await resp.read()
                    response = Response(resp.status, decode_body(raw.decode("utf-8", "replace")), resp.headers, iid)
            except (TimeoutError, aiohttp.ClientError) as exc:
                if isinstance(exc, asyncio.TimeoutError):
                    what, message = "timeout", f"timeout after {self.timeout}s"
                else:
                    what = type(exc).__name__
                    message = f"{what}: {exc}" if str(exc) else what
                span.failed(what)
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

    async def _report(
        self,
        operation: str,
        method: str,
        path: str,
        status: int | None,
        started: float,
        iid: str,
        message: str,
        attempt: int,
    ) -> None:
        latency_ms = (time.perf_counter() - started) * 1000
        ok = status is not None and status < 300
        record = CallRecord(
            self.bank_id,
            operation,
            method,
            path,
            status,
            round(latency_ms, 1),
            iid,
            "ok" if ok else "error",
            message,
            attempt,
        )
        log.log(
            logging.INFO if ok else logging.WARNING,
            "bank=%s op=%s %s %s status=%s latency_ms=%.1f interaction_id=%s attempt=%d%s",
            self.bank_id,
            operation,
            method,
            path,
            status if status is not None else "-",
            latency_ms,
            iid,
            attempt,
            f" error={message!r}" if message else "",
            extra={
                "bank_id": self.bank_id,
                "operation": operation,
                "http_status": status,
                "latency_ms": latency_ms,
                "interaction_id": iid,
            },
        )
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
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _token_from_answer(body: Mapping[str, Any]) -> Token:
    if not isinstance(body.get("access_token"), str) or not body["access_token"]:
        raise ValueError("token answer without access_token")
    return Token.issued(body["access_token"], float(body.get("expires_in") or DEFAULT_TOKEN_LIFETIME))
