"""`google.rpc.Status` rich errors: what a service sends besides its status code and message.

Every error a service answers carries, in the `grpc-status-details-bin` trailer (grpcio-status's
`rpc_status.to_status`), a `google.rpc.Status` whose details are, in this order:
- a `google.rpc.BadRequest` with one field violation per bad field (invalid input only),
- a `google.rpc.ErrorInfo`: `reason` (a stable UPPER_SNAKE code), `domain` (`finpulse.<service>`)
  and `metadata` (short string facts: `field`, `bank_id`, `limit`, ...),
- a `google.rpc.RetryInfo` when a retry after a delay may succeed (unavailable, rate limited).

The gateway decodes them into the JSON error body's `details` (gateway/errors.py). Sizes are
bounded: the trailer travels in HTTP/2 headers, which have a size limit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

DETAILS_KEY = "grpc-status-details-bin"
MAX_TEXT = 200  # longest metadata value or violation description sent
MAX_ITEMS = 10  # most violations / metadata entries sent
#: Budget of the serialized google.rpc.Status (before base64): with the grpc-message it stays well under
#: the 8 KiB of headers a gRPC client accepts by default.
MAX_DETAILS_BYTES = 3000


def _short(text: object) -> str:
    text = str(text)
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def error_info(reason: str, domain: str, metadata: Mapping[str, object] | None = None) -> error_details_pb2.ErrorInfo:
    items = list((metadata or {}).items())[:MAX_ITEMS]
    return error_details_pb2.ErrorInfo(reason=reason, domain=domain, metadata={_short(k): _short(v) for k, v in items})


def bad_request(violations: Iterable[tuple[str, str]]) -> error_details_pb2.BadRequest | None:
    pairs = [
        error_details_pb2.BadRequest.FieldViolation(field=_short(f), description=_short(d))
        for f, d in list(violations)[:MAX_ITEMS]
    ]
    return error_details_pb2.BadRequest(field_violations=pairs) if pairs else None


def retry_info(seconds: float) -> error_details_pb2.RetryInfo:
    return error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=max(0, math.ceil(seconds))))


def status(
    code: grpc.StatusCode,
    message: str,
    *,
    reason: str | None,
    domain: str,
    metadata: Mapping[str, object] | None = None,
    violations: Iterable[tuple[str, str]] = (),
    retry_after: float | None = None,
    details: Iterable[any_pb2.Any] = (),
) -> status_pb2.Status:
    """The `google.rpc.Status` of an error (see the module doc for its details). `details` are passed
    on as they are (a downstream service's own, say) and replace the ErrorInfo made here."""
    result = status_pb2.Status(code=code.value[0], message=message)
    given = list(details)
    if given:
        result.details.extend(given)
        return result
    violation = bad_request(violations)
    if violation is not None:
        _fit(violation, result.ByteSize())
        result.details.add().Pack(violation)
    if reason:
        result.details.add().Pack(error_info(reason, domain, metadata))
    if retry_after is not None:
        result.details.add().Pack(retry_info(retry_after))
    return result


def _fit(violation: error_details_pb2.BadRequest, used: int) -> None:
    """Keep the BadRequest within MAX_DETAILS_BYTES together with the rest: fewer violations, then
    shorter descriptions (the first field is always named)."""
    while used + violation.ByteSize() > MAX_DETAILS_BYTES and len(violation.field_violations) > 1:
        del violation.field_violations[-1]
    for item in violation.field_violations:
        if used + violation.ByteSize() > MAX_DETAILS_BYTES:
            item.description = item.description[:60]


def trailing_metadata(rich: status_pb2.Status, extra: Iterable[tuple[str, str]] = ()) -> tuple:
    """The trailing metadata that carries `rich` (plus `extra` pairs) with `context.abort`."""
    return (*rpc_status.to_status(rich).trailing_metadata, *extra)


def details_of(err: grpc.aio.AioRpcError) -> list[any_pb2.Any]:
    """The `google.rpc.Status.details` a failed call came back with ([] when it had none)."""
    for key, value in err.trailing_metadata() or ():
        if key == DETAILS_KEY and isinstance(value, bytes):
            try:
                return list(status_pb2.Status.FromString(value).details)
            except Exception:  # noqa: BLE001 - a malformed trailer is dropped
                return []
    return []


def unpack(details: Iterable[any_pb2.Any]) -> dict[str, object]:
    """{message full name: message} of the detail types this module knows (tests and tools)."""
    found: dict[str, object] = {}
    for detail in details:
        for cls in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.RetryInfo):
            if detail.Is(cls.DESCRIPTOR):
                message = cls()
                detail.Unpack(message)
                found[cls.DESCRIPTOR.full_name] = message
    return found
