"""A span per HTTP exchange with a bank (OpenTelemetry API: a no-op unless the process installed an SDK,
as svclib.tracing does when tracing is on).

The span (CLIENT, named `{method} {endpoint}`) carries what an operator needs and nothing more:
`finpulse.bank.id`, `finpulse.bank.operation` (the client method), `url.template` (the path with every
id replaced by `{id}`: `/accounts/{id}/transactions`), `http.request.method`, `server.address`,
`http.response.status_code`, `finpulse.bank.attempt` (1, then 2.. for retries) and
`http.request.resend_count`; a failed exchange gets an error status with a short message. Never the
URL itself, its query (the token call's holds the team's secret), headers (tokens, consent ids) or
bodies. The outgoing request carries the span's W3C `traceparent`.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from types import TracebackType
from typing import Self

from opentelemetry import propagate, trace

_tracer = trace.get_tracer("bankapi")

#: Path segments of the bank API that are names, not values (docs/bank-api.md); any other segment is an id.
_NAMES = frozenset(
    {
        "auth",
        "bank-token",
        "accounts",
        "balances",
        "transactions",
        "product-agreements",
        "products",
        "payments",
        "account-consents",
        "product-agreement-consents",
        "payment-consents",
        "request",
    }
)


def endpoint_template(path: str) -> str:
    """`/accounts/acc-1/balances` → `/accounts/{id}/balances`: the path's names kept, every other
    segment (an account, consent, agreement or payment id) replaced; the query is dropped."""
    path = path.split("?", 1)[0]
    return "/".join(segment if not segment or segment in _NAMES else "{id}" for segment in path.split("/"))


class BankSpan:
    """`with BankSpan(...) as span:` around one exchange; `answered(status)` or `failed(message)`."""

    def __init__(self, bank_id: str, host: str, operation: str, method: str, path: str, attempt: int):
        endpoint = endpoint_template(path)
        self._span = _tracer.start_span(
            f"{method} {endpoint}",
            kind=trace.SpanKind.CLIENT,
            attributes={
                "finpulse.bank.id": bank_id,
                "finpulse.bank.operation": operation,
                "finpulse.bank.attempt": attempt,
                "http.request.resend_count": attempt - 1,
                "http.request.method": method,
                "url.template": endpoint,
                "server.address": host,
            },
        )
        # Exceptions are not recorded as they are: their text may hold a URL (and its query).
        self._scope = trace.use_span(
            self._span, end_on_exit=True, record_exception=False, set_status_on_exception=False
        )

    def __enter__(self) -> Self:
        self._scope.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._scope.__exit__(exc_type, exc, tb)

    def inject(self, headers: MutableMapping[str, str]) -> None:
        """Add the span's `traceparent` to the request's headers."""
        propagate.inject(headers)

    def answered(self, status: int) -> None:
        self._span.set_attribute("http.response.status_code", status)
        if status >= 400:
            self._span.set_status(trace.StatusCode.ERROR, f"HTTP {status}")

    def failed(self, what: str) -> None:
        """No answer: `what` names the failure (`timeout`, an exception's class), never its text."""
        self._span.set_status(trace.StatusCode.ERROR, what)
