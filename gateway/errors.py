"""Errors of the gateway: gRPC status codes -> HTTP statuses, and the JSON error body.

Every error response is a `google.rpc.Status`-shaped object plus the code's name and reason:
`{"code": 5, "error": "NOT_FOUND", "error_code": "PAYMENT_NOT_FOUND", "message": "...", "details": [...]}`,
where `code` is the gRPC code number, `details` holds `google.rpc` detail messages in their JSON form
as grpc-gateway writes them (`{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": ...,
"domain": ..., "metadata": {...}}`, a `google.rpc.BadRequest` with `field_violations` for bad input,
a `google.rpc.RetryInfo` with `retry_delay`), and `error_code` repeats the `ErrorInfo.reason` (the
code's name for an error without an ErrorInfo).
A service's details are passed on as it sent them (`svclib.rich_status`); errors the gateway makes
itself (401, 413, 415, 400 bad JSON, 404 route, 429 ...) carry an ErrorInfo of domain
`finpulse.gateway`. Messages are meant for people; they never carry a traceback or gRPC's internal
debug strings.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
from collections.abc import Iterable
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import duration_pb2, json_format
from google.rpc import error_details_pb2, status_pb2

log = logging.getLogger("gateway")

#: gRPC code -> HTTP status, as grpc-gateway maps them. Codes not listed map to 500.
GRPC_TO_HTTP: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}

# Wording of gRPC's own transport failures (as opposed to a service choosing UNAVAILABLE itself).
_TRANSPORT_FAILURE_RE = re.compile(
    r"failed to connect|connection refused|connections to all backends failing|socket closed|"
    r"connection reset|broken pipe|dns resolution failed|no route to host|goaway|endpoint closing|"
    r"empty address list|connection attempt timed out|handshake",
    re.IGNORECASE,
)
_STATUS_DETAILS_KEY = "grpc-status-details-bin"
#: Retry-After (seconds) of a 503 whose service gave no hint.
DEFAULT_RETRY_AFTER = 1
_dumps = functools.partial(json.dumps, ensure_ascii=False)


def http_status(code: grpc.StatusCode) -> int:
    """The HTTP status of a gRPC code (500 for codes without a specific mapping)."""
    return GRPC_TO_HTTP.get(code, 500)


#: The ErrorInfo domain of the errors the gateway makes itself.
DOMAIN = "finpulse.gateway"
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
_DEFAULT = object()


class ApiError(Exception):
    """An error answered to the client as a JSON `google.rpc.Status` body.

    `details` are detail messages already in JSON form (a service's own, or a BadRequest); unless
    they hold an ErrorInfo, one is added with `reason` (by default the code's name; None adds none)
    and `metadata`, and a RetryInfo when `retry_after` (seconds) is given."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        http: int | None = None,
        details: Iterable[dict[str, Any]] = (),
        headers: dict[str, str] | None = None,
        reason: Any = _DEFAULT,
        metadata: dict[str, object] | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http if http is not None else http_status(code)
        self.details = list(details)
        if reason is _DEFAULT:
            reason = code.name
        if reason and not any(d.get("@type") == _ERROR_INFO for d in self.details):
            self.details.append(
                _any_to_dict(
                    error_details_pb2.ErrorInfo(
                        reason=reason,
                        domain=DOMAIN,
                        metadata={k: str(v) for k, v in (metadata or {}).items() if v is not None},
                    )
                )
            )
        if retry_after is not None and not any(d.get("@type") == _RETRY_INFO for d in self.details):
            self.details.append(
                _any_to_dict(
                    error_details_pb2.RetryInfo(
                        retry_delay=duration_pb2.Duration(seconds=max(0, math.ceil(retry_after)))
                    )
                )
            )
        self.headers = dict(headers or {})

    @property
    def error_code(self) -> str:
        """The reason of the error's ErrorInfo; the code's name when it has none (a backend that sent no
        details, or an error gRPC itself made)."""
        reason = next((d.get("reason") for d in self.details if d.get("@type") == _ERROR_INFO), None)
        return reason or self.code.name

    def body(self) -> dict[str, Any]:
        return {
            "code": self.code.value[0],
            "error": self.code.name,
            "error_code": self.error_code,
            "message": self.message,
            "details": self.details,
        }

    def response(self) -> web.Response:
        return web.json_response(self.body(), status=self.http_status, dumps=_dumps, headers=self.headers)


def bad_request(
    message: str,
    field: str | None = None,
    *,
    http: int = 400,
    violations: Iterable[tuple[str, str]] | None = None,
    reason: str = "INVALID_ARGUMENT",
    metadata: dict[str, object] | None = None,
) -> ApiError:
    """An INVALID_ARGUMENT error; a `google.rpc.BadRequest` detail names the offending field(s), and an
    ErrorInfo gives `reason` with the (first) field in its metadata.

    `violations` lists (field, description) pairs; by default it is `field` with `message`.
    """
    if violations is None:
        violations = [(field, message)] if field is not None else []
    pairs = [error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in violations]
    details = [_any_to_dict(error_details_pb2.BadRequest(field_violations=pairs))] if pairs else []
    metadata = dict(metadata or {})
    if pairs:
        metadata.setdefault("field", pairs[0].field)
    return ApiError(
        grpc.StatusCode.INVALID_ARGUMENT, message, http=http, details=details, reason=reason, metadata=metadata
    )


def internal_error() -> ApiError:
    """The answer to an unexpected failure inside the gateway (the cause is logged, not sent)."""
    return ApiError(grpc.StatusCode.INTERNAL, "internal error", reason="INTERNAL")


def _any_to_dict(message) -> dict[str, Any]:
    return {
        "@type": f"type.googleapis.com/{message.DESCRIPTOR.full_name}",
        **json_format.MessageToDict(message, preserving_proto_field_name=True),
    }


def _status_details(err: grpc.aio.AioRpcError) -> list[dict[str, Any]]:
    """The `google.rpc.Status.details` a service attached to its error, in JSON form."""
    for key, value in err.trailing_metadata() or ():
        if key != _STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except Exception:  # noqa: BLE001 - a malformed trailer is dropped, not fatal
            return []
        details = []
        for detail in status.details:
            try:
                details.append(json_format.MessageToDict(detail, preserving_proto_field_name=True))
            except Exception:  # noqa: BLE001 - a detail type this process does not know
                details.append({"@type": detail.type_url})
        return details
    return []


def from_rpc_error(err: grpc.aio.AioRpcError, service_key: str) -> ApiError:
    """Translate a failed backend call; gRPC's transport wording is replaced by a clean message.

    The service's rich details are passed on as they are; a failure of the call itself (the service
    unreachable, or not answering in time) gets the gateway's own ErrorInfo."""
    code = err.code()
    message = err.details() or code.name.lower().replace("_", " ")
    reason, metadata, retry_after = None, None, None
    if code == grpc.StatusCode.UNAVAILABLE and _TRANSPORT_FAILURE_RE.search(message):
        log.warning("backend unavailable", extra={"backend": service_key, "grpc_details": message})
        message = f"the {service_key} service is unavailable, try again later"
        reason, metadata = "SERVICE_UNAVAILABLE", {"service": service_key}
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED and message == "Deadline Exceeded":
        message = f"the {service_key} service did not answer in time"
        reason, metadata = "SERVICE_TIMEOUT", {"service": service_key}
    elif code == grpc.StatusCode.UNKNOWN:
        # An exception escaped the servicer; grpc puts its repr here, which is not for clients.
        log.error("backend failed", extra={"backend": service_key, "grpc_details": message})
        message = f"internal error in the {service_key} service"
    headers = None
    if code == grpc.StatusCode.UNAVAILABLE:
        # 503 always says when to come back: the service's own hint (a database restarting), else soon.
        headers = {"Retry-After": _retry_after(err)}
        if reason is not None:
            retry_after = int(headers["Retry-After"])
    return ApiError(
        code,
        message,
        details=_status_details(err),
        headers=headers,
        reason=reason,
        metadata=metadata,
        retry_after=retry_after,
    )


def _retry_after(err: grpc.aio.AioRpcError) -> str:
    for key, value in err.trailing_metadata() or ():
        if key == "retry-after" and isinstance(value, str) and value.isdigit() and 0 < int(value) <= 3600:
            return value
    return str(DEFAULT_RETRY_AFTER)
