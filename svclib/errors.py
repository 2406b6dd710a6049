"""Domain errors: raised by service logic, mapped to gRPC codes by the server interceptor.

No grpc import here: domain code raises these; `svclib.server` owns the mapping to status codes and
the gateway maps those to HTTP as grpc-gateway does.
"""
from __future__ import annotations


class DomainError(Exception):
    """Base class. `code` names the gRPC status code (by name) the error maps to."""

    code = "UNKNOWN"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidArgument(DomainError):
    code = "INVALID_ARGUMENT"

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class NotFound(DomainError):
    code = "NOT_FOUND"


class AlreadyExists(DomainError):
    code = "ALREADY_EXISTS"


class FailedPrecondition(DomainError):
    code = "FAILED_PRECONDITION"


class Aborted(DomainError):
    code = "ABORTED"


class PermissionDenied(DomainError):
    code = "PERMISSION_DENIED"


class Unauthenticated(DomainError):
    code = "UNAUTHENTICATED"


class ResourceExhausted(DomainError):
    code = "RESOURCE_EXHAUSTED"


class Unavailable(DomainError):
    code = "UNAVAILABLE"


def require(value: str | None, field: str, max_len: int = 128) -> str:
    """A required, bounded, non-blank string argument, stripped."""
    if value is None or not value.strip():
        raise InvalidArgument(f"{field} is required", field)
    value = value.strip()
    if "\x00" in value:
        raise InvalidArgument(f"{field} cannot contain the NUL character (U+0000)", field)
    if len(value) > max_len:
        raise InvalidArgument(f"{field} is too long ({len(value)} characters, at most {max_len})", field)
    return value
