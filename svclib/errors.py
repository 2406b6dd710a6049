"""Domain errors: raised by service logic, mapped to gRPC codes by the server interceptor.

No grpc import here: domain code raises these; `svclib.server` owns the mapping to a status code and
a `google.rpc.Status` (`svclib.rich_status`), and the gateway maps those to HTTP as grpc-gateway does.

Every error carries what a program needs besides the human message:
- `reason`: a stable UPPER_SNAKE code (`google.rpc.ErrorInfo.reason`), a default per class
  (`NOT_FOUND`, `INVALID_ARGUMENT`, ...) or a specific one where the code knows it
  (`PAYMENT_NOT_FOUND`, `INSUFFICIENT_FUNDS`, `IDEMPOTENCY_KEY_REUSED`, `LIMIT_EXCEEDED`, ...);
- `metadata`: short string facts about it (`ErrorInfo.metadata`: `field`, `bank_id`, `limit`, ...);
- `violations`: (field path, description) pairs of bad input (`google.rpc.BadRequest`), by default
  the `field` of an `InvalidArgument` with its message;
- `retry_after`: seconds after which a retry may succeed (`google.rpc.RetryInfo`), or None.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


class DomainError(Exception):
    """Base class. `code` names the gRPC status code (by name) the error maps to; `reason` is the
    default `ErrorInfo.reason` of the class."""

    code = "UNKNOWN"
    reason = "UNKNOWN"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, object] | None = None,
        violations: Iterable[tuple[str, str]] = (),
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata = {k: str(v) for k, v in (metadata or {}).items() if v is not None}
        self.violations = list(violations)
        self.retry_after = retry_after


class InvalidArgument(DomainError):
    code = "INVALID_ARGUMENT"
    reason = "INVALID_ARGUMENT"

    def __init__(self, message: str, field: str | None = None, **kw):
        super().__init__(message, **kw)
        self.field = field
        if field is not None:
            self.metadata.setdefault("field", field)
            if not self.violations:
                self.violations = [(field, message)]


class NotFound(DomainError):
    code = "NOT_FOUND"
    reason = "NOT_FOUND"


class AlreadyExists(DomainError):
    code = "ALREADY_EXISTS"
    reason = "ALREADY_EXISTS"


class FailedPrecondition(DomainError):
    code = "FAILED_PRECONDITION"
    reason = "FAILED_PRECONDITION"


class Aborted(DomainError):
    code = "ABORTED"
    reason = "ABORTED"


class PermissionDenied(DomainError):
    code = "PERMISSION_DENIED"
    reason = "PERMISSION_DENIED"


class Unauthenticated(DomainError):
    code = "UNAUTHENTICATED"
    reason = "UNAUTHENTICATED"


class ResourceExhausted(DomainError):
    code = "RESOURCE_EXHAUSTED"
    reason = "RESOURCE_EXHAUSTED"


class Unavailable(DomainError):
    code = "UNAVAILABLE"
    reason = "UNAVAILABLE"


def require(value: str | None, field: str, max_len: int = 128) -> str:
    """A required, bounded, non-blank string argument, stripped."""
    if value is None or not value.strip():
        raise InvalidArgument(f"{field} is required", field, reason="FIELD_REQUIRED")
    value = value.strip()
    if "\x00" in value:
        raise InvalidArgument(f"{field} cannot contain the NUL character (U+0000)", field, reason="INVALID_CHARACTER")
    if len(value) > max_len:
        raise InvalidArgument(
            f"{field} is too long ({len(value)} characters, at most {max_len})",
            field,
            reason="LIMIT_EXCEEDED",
            metadata={"limit": max_len},
        )
    return value
