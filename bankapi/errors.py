"""Domain errors of the bank client, and the mapping from a bank's HTTP answer to them.

Every error a `BankClient` raises is a `BankError` carrying the bank id, the operation, the HTTP status
(None for transport errors) and the `X-Fapi-Interaction-Id` of the request that failed, so a caller
can log it and a support engineer can find the request on the bank's side. These are plain
exceptions: the services translate them to gRPC status codes themselves.

| bank answer                                  | error                          |
|----------------------------------------------|--------------------------------|
| 400, 409, 422 and other unlisted 4xx          | `BadRequest` (bank's detail)   |
| 401 on the token call, or again after refresh | `AuthFailed`                   |
| 401 `Insufficient permissions` (valid token)  | `CallRefused` (no refresh)     |
| 403 (CONSENT_REQUIRED, INVALID_CONSENT, …)    | `ConsentRequired` (with code)  |
| 403 that names no consent problem             | `Forbidden`                    |
| 404                                           | `NotFound`                     |
| 429                                           | `RateLimited` (retry_after)    |
| 5xx, transport error, timeout (after retries) | `BankUnavailable`              |
| (not sent: the bank's breaker is open)        | `CircuitOpen` (a BankUnavailable) |
| 2xx whose body cannot be understood           | `MalformedResponse`            |
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Mapping
from typing import Any

from .jsonbody import decode_json, plain


class BankError(Exception):
    """Base of every error raised by `bankapi`."""

    def __init__(
        self,
        message: str,
        *,
        bank_id: str | None = None,
        operation: str | None = None,
        http_status: int | None = None,
        interaction_id: str | None = None,
        detail: Any = None,
    ):
        super().__init__(message)
        self.message = message
        self.bank_id = bank_id
        self.operation = operation
        self.http_status = http_status
        self.interaction_id = interaction_id
        self.detail = detail  # the bank's `detail` (str, dict or list) or the raw body text

    def __str__(self) -> str:
        where = " ".join(
            p
            for p in (
                f"bank={self.bank_id}" if self.bank_id else "",
                f"op={self.operation}" if self.operation else "",
                f"status={self.http_status}" if self.http_status is not None else "",
                f"interaction_id={self.interaction_id}" if self.interaction_id else "",
            )
            if p
        )
        return f"{self.message} ({where})" if where else self.message


class ConsentRequired(BankError):
    """403: the consent is missing, revoked, expired, used up or lacks a permission. Re-consent; do not retry.

    `code` is the bank's error code: CONSENT_REQUIRED, PAYMENT_CONSENT_REQUIRED, INVALID_CONSENT,
    CONSENT_MISMATCH (or None when a plain-text 403 detail merely mentions the consent).
    """

    def __init__(self, message: str, *, code: str | None = None, **kw: Any):
        super().__init__(message, **kw)
        self.code = code  # e.g. CONSENT_REQUIRED, PAYMENT_CONSENT_REQUIRED, INVALID_CONSENT, CONSENT_MISMATCH


class RateLimited(BankError):
    """429: slow down. `retry_after` is in seconds (from the Retry-After header) or None when absent."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any):
        super().__init__(message, **kw)
        self.retry_after = retry_after


class Forbidden(BankError):
    """403 that is not about a consent (e.g. a wrong X-Requesting-Bank): a configuration problem that
    re-consenting would not fix."""


class BankUnavailable(BankError):
    """5xx, transport error or timeout, after the retries were exhausted (or for a never-retried call)."""

    def __init__(self, message: str, *, attempts: int = 1, **kw: Any):
        super().__init__(message, **kw)
        self.attempts = attempts


class CircuitOpen(BankUnavailable):
    """The bank has been failing and its breaker is open (bankapi.breaker): the call was not sent.
    `failing_since` and `next_try_at` are Unix seconds; `retry_after` the seconds until the next try."""

    def __init__(
        self, message: str, *, failing_since: float | None = None, next_try_at: float | None = None, **kw: Any
    ):
        super().__init__(message, attempts=0, **kw)
        self.failing_since = failing_since
        self.next_try_at = next_try_at
        self.retry_after = max(0.0, next_try_at - time.time()) if next_try_at else None


class MalformedResponse(BankUnavailable):
    """The bank answered 2xx with a body that does not have the documented shape."""


class BadRequest(BankError):
    """400/422 (and other unlisted 4xx): the bank rejected the request; `message` is the bank's detail."""


class NotFound(BankError):
    """404: account, consent, agreement, payment or customer not found."""


class AuthFailed(BankError):
    """401 on the token call (bad team credentials), or 401 again right after a token refresh."""


class CallRefused(BankError):
    """401 `Insufficient permissions` to the team's token: the bank will not accept this call from the app
    (some deployments answer the payment-consent request so). A refusal: not a token problem (no token
    refresh is tried) and not an outage (do not retry)."""


class UnknownBank(BankError):
    """The bank id is not configured (or has no base URL)."""


def decode_body(text: str) -> Any:
    """JSON with exact decimals (`parse_float=Decimal`); the raw text when it is not JSON; None when empty.
    A JSON object comes as a `JSONObject`: a Mapping decoded on first access, whose text a typed decoder
    can take instead (bankapi/jsonbody.py)."""
    return decode_json(text)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date; None when absent/invalid."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def describe_detail(body: Any) -> tuple[str, str | None]:
    """(human message, error code) from a FastAPI-style error body (`detail` str, object or 422 list)."""
    body = plain(body)
    detail = body.get("detail", body) if isinstance(body, Mapping) else body
    if isinstance(detail, str):
        return detail[:500] or "no detail", None
    if isinstance(detail, Mapping):
        code = detail.get("error") or detail.get("code")
        message = detail.get("message") or detail.get("msg") or code or json.dumps(detail, default=str)[:500]
        return str(message), str(code) if code else None
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, Mapping):
                loc = ".".join(str(x) for x in item.get("loc", ()) or ())
                parts.append(f"{loc}: {item.get('msg', item)}" if loc else str(item.get("msg", item)))
            else:
                parts.append(str(item))
        return "; ".join(parts)[:500] or "validation error", None
    return ("no detail" if detail is None else str(detail)[:500]), None


def is_refusal(body: Any) -> bool:
    """A 401 body that refuses the call (`Insufficient permissions`) rather than the token."""
    return "insufficient permission" in describe_detail(body)[0].lower()


def error_for_status(
    status: int, body: Any, *, retry_after_header: str | None = None, after_refresh: bool = False, **context: Any
) -> BankError:
    """The typed error for a non-2xx answer. `context`: bank_id, operation, interaction_id."""
    body = plain(body)
    message, code = describe_detail(body)
    detail = body.get("detail", body) if isinstance(body, Mapping) else body
    kw = dict(context, http_status=status, detail=detail)
    if status == 401:
        if is_refusal(body):
            return CallRefused(message, **kw)
        return AuthFailed(message + (" (after a token refresh)" if after_refresh else ""), **kw)
    if status == 403:
        if code or "consent" in message.lower():
            return ConsentRequired(message, code=code, **kw)
        return Forbidden(message, **kw)
    if status == 404:
        return NotFound(message, **kw)
    if status == 429:
        return RateLimited(
            message if isinstance(body, Mapping) else "rate limited",
            retry_after=parse_retry_after(retry_after_header),
            **kw,
        )
    if status >= 500:
        return BankUnavailable(message if isinstance(body, Mapping) else f"bank answered HTTP {status}", **kw)
    return BadRequest(message, **kw)
