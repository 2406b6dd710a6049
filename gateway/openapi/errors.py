"""The error answers in the OpenAPI document: the one `Error` body of `gateway.errors.ApiError` (a
`google.rpc.Status` with `error_code` and the `google.rpc` details ErrorInfo, BadRequest, RetryInfo),
the HTTP statuses the gateway maps gRPC codes to (`ERROR_RESPONSES`, the `components/responses` every
operation refers to) and one example body per gRPC code the suite answers with, filed under its status.
`gateway.openapi.document` puts them in the document.
"""

from __future__ import annotations

from typing import Any

import grpc

from gateway.openapi.schemas import _ref

#: gRPC code -> (HTTP status, component response name, when it happens). Mirrors gateway.errors.
ERROR_RESPONSES: list[tuple[int, str, str]] = [
    (
        400,
        "BadRequest",
        "Bad input: a malformed body, an unknown field or query parameter, a value of the wrong "
        "type, a missing required field (`INVALID_ARGUMENT`, with a `google.rpc.BadRequest` "
        "detail naming the fields), or a request the current state refuses "
        "(`FAILED_PRECONDITION`, `OUT_OF_RANGE`).",
    ),
    (
        401,
        "Unauthorized",
        "No bearer token, or a malformed, badly signed or expired one (`UNAUTHENTICATED`); "
        "`WWW-Authenticate` says why.",
    ),
    (403, "Forbidden", "The request names another user than the token's (`PERMISSION_DENIED`)."),
    (404, "NotFound", "The resource does not exist, or belongs to another user (`NOT_FOUND`)."),
    (409, "Conflict", "The resource exists already, or a concurrent change won (`ALREADY_EXISTS`, `ABORTED`)."),
    (413, "PayloadTooLarge", "The request body is over the gateway's limit (`INVALID_ARGUMENT`)."),
    (
        429,
        "TooManyRequests",
        "Over the per-user request rate (`RESOURCE_EXHAUSTED`); retry after `Retry-After` seconds.",
    ),
    (
        500,
        "InternalError",
        "An unexpected failure (`INTERNAL`, `UNKNOWN`, `DATA_LOSS`); the cause is logged, not sent.",
    ),
    (503, "Unavailable", "A backend service is down or overloaded (`UNAVAILABLE`); retry later."),
    (504, "GatewayTimeout", "A backend service did not answer within the deadline (`DEADLINE_EXCEEDED`)."),
]


def error_schema() -> dict[str, Any]:
    """The body of every error answer (`gateway.errors.ApiError.body`)."""
    return {
        "type": "object",
        "description": "A `google.rpc.Status` with the gRPC code's name and the error's reason: every error "
        "answer of the gateway.",
        "required": ["code", "error", "error_code", "message", "details"],
        "additionalProperties": False,
        "example": ERROR_EXAMPLES["INVALID_ARGUMENT"][1],
        "properties": {
            "code": {
                "type": "integer",
                "format": "int32",
                "minimum": 0,
                "maximum": 16,
                "description": "The gRPC status code number.",
            },
            "error": {
                "type": "string",
                "enum": [code.name for code in grpc.StatusCode],
                "description": "The gRPC status code's name.",
            },
            "error_code": {
                "type": "string",
                "pattern": "^[A-Z][A-Z0-9_]*$",
                "description": "A stable code for programs: the `reason` of the `google.rpc.ErrorInfo` "
                "detail (e.g. `INSUFFICIENT_FUNDS`, `PAYMENT_NOT_FOUND`, "
                "`LIMIT_EXCEEDED`), or the gRPC code's name when there is none.",
            },
            "message": {"type": "string", "description": "What went wrong, for people."},
            "details": {
                "type": "array",
                "description": "`google.rpc` detail messages in their JSON form (as grpc-gateway writes a "
                "`google.rpc.Status`): a `google.rpc.BadRequest` with `field_violations` for bad "
                "input, a `google.rpc.ErrorInfo` (`reason`, `domain` `finpulse.<service>`, "
                "`metadata`), a `google.rpc.RetryInfo` with `retry_delay` when a retry may succeed.",
                "items": _error_detail_schema(),
            },
        },
    }


def _error_detail_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["@type"],
        "additionalProperties": True,
        "properties": {
            "@type": {"type": "string", "example": _INFO},
            "reason": {"type": "string", "description": "ErrorInfo: the stable UPPER_SNAKE reason code."},
            "domain": {
                "type": "string",
                "description": "ErrorInfo: who made the error, `finpulse.<service>` "
                "(`finpulse.gateway` for the gateway's own).",
            },
            "metadata": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "ErrorInfo: facts about the error (`field`, `limit`, `bank_id`, ...).",
            },
            "field_violations": {
                "type": "array",
                "description": "BadRequest: one entry per bad field.",
                "items": {
                    "type": "object",
                    "additionalProperties": True,
                    "properties": {
                        "field": {"type": "string", "description": "The field's path, e.g. `banks[0].bank_id`."},
                        "description": {"type": "string"},
                    },
                },
            },
            "retry_delay": {"type": "string", "description": 'RetryInfo: how long to wait, e.g. `"2s"`.'},
        },
    }


_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
_BAD = "type.googleapis.com/google.rpc.BadRequest"
_RETRY = "type.googleapis.com/google.rpc.RetryInfo"


def _example(
    code: grpc.StatusCode,
    message: str,
    reason: str,
    domain: str,
    metadata: dict[str, str] | None = None,
    violations: list[tuple[str, str]] | None = None,
    retry: str | None = None,
) -> dict[str, Any]:
    details: list[dict[str, Any]] = []
    if violations:
        details.append({"@type": _BAD, "field_violations": [{"field": f, "description": d} for f, d in violations]})
    info: dict[str, Any] = {"@type": _INFO, "reason": reason, "domain": domain}
    if metadata:
        info["metadata"] = metadata
    details.append(info)
    if retry:
        details.append({"@type": _RETRY, "retry_delay": retry})
    return {"code": code.value[0], "error": code.name, "error_code": reason, "message": message, "details": details}


_C = grpc.StatusCode
#: One example error body per gRPC code the services and the gateway answer with (and the 413), true to
#: what they send: name -> (HTTP status, body). (No code of this suite answers OUT_OF_RANGE or DATA_LOSS.)
ERROR_EXAMPLES: dict[str, tuple[int, dict[str, Any]]] = {
    "INVALID_ARGUMENT": (
        400,
        _example(
            _C.INVALID_ARGUMENT,
            'page_size: expected an integer, got "ten"',
            "INVALID_VALUE",
            "finpulse.gateway",
            {"field": "page_size"},
            [("page_size", 'expected an integer, got "ten"')],
        ),
    ),
    "FAILED_PRECONDITION": (
        400,
        _example(
            _C.FAILED_PRECONDITION,
            "Payment pmt-5f1c failed at vbank: Insufficient funds",
            "INSUFFICIENT_FUNDS",
            "finpulse.consent",
            {"payment_id": "pmt-5f1c", "bank_id": "vbank"},
        ),
    ),
    "UNAUTHENTICATED": (
        401,
        _example(_C.UNAUTHENTICATED, "the token has expired", "TOKEN_EXPIRED", "finpulse.gateway"),
    ),
    "PERMISSION_DENIED": (
        403,
        _example(
            _C.PERMISSION_DENIED,
            "this token's user may not act for another user (user_id does not match the token)",
            "USER_MISMATCH",
            "finpulse.gateway",
            {"field": "user_id"},
        ),
    ),
    "NOT_FOUND": (
        404,
        _example(
            _C.NOT_FOUND, "Bank 'nobank' is not supported.", "BANK_NOT_FOUND", "finpulse.sync", {"bank_id": "nobank"}
        ),
    ),
    "ALREADY_EXISTS": (
        409,
        _example(
            _C.ALREADY_EXISTS,
            "Idempotency-Key 'k-1' was already used for another request (payment pmt-5f1c): use a "
            "new key for a new payment",
            "IDEMPOTENCY_KEY_REUSED",
            "finpulse.consent",
            {"payment_id": "pmt-5f1c"},
        ),
    ),
    "ABORTED": (
        409,
        _example(
            _C.ABORTED,
            "A request with Idempotency-Key 'k-1' is still in progress (payment pmt-5f1c): retry in a moment",
            "IDEMPOTENCY_KEY_IN_USE",
            "finpulse.consent",
            {"payment_id": "pmt-5f1c"},
            retry="1s",
        ),
    ),
    "REQUEST_TOO_LARGE": (
        413,
        _example(
            _C.INVALID_ARGUMENT,
            "request body is too large (limit 1048576 bytes)",
            "REQUEST_TOO_LARGE",
            "finpulse.gateway",
            {"limit": "1048576"},
        ),
    ),
    "RESOURCE_EXHAUSTED": (
        429,
        _example(
            _C.RESOURCE_EXHAUSTED, "too many requests; retry after 2 s", "RATE_LIMITED", "finpulse.gateway", retry="2s"
        ),
    ),
    "INTERNAL": (500, _example(_C.INTERNAL, "internal error", "INTERNAL", "finpulse.gateway")),
    "UNAVAILABLE": (
        503,
        _example(
            _C.UNAVAILABLE,
            "the sync service is unavailable, try again later",
            "SERVICE_UNAVAILABLE",
            "finpulse.gateway",
            {"service": "sync"},
            retry="1s",
        ),
    ),
    "DEADLINE_EXCEEDED": (
        504,
        _example(
            _C.DEADLINE_EXCEEDED,
            "the sync service did not answer in time",
            "SERVICE_TIMEOUT",
            "finpulse.gateway",
            {"service": "sync"},
        ),
    ),
}


def error_response(status: int, description: str) -> dict[str, Any]:
    examples = {
        name: {"summary": f"{body['error']} ({body['error_code']})", "value": body}
        for name, (http, body) in ERROR_EXAMPLES.items()
        if http == status
    }
    media: dict[str, Any] = {"schema": _ref("Error")}
    if examples:
        media["examples"] = examples
    response: dict[str, Any] = {"description": description, "content": {"application/json": media}}
    if status == 401:
        response["headers"] = {
            "WWW-Authenticate": {
                "description": "The `Bearer` challenge (RFC 6750), with `error` and `error_description` when a "
                "token was sent.",
                "schema": {"type": "string"},
            }
        }
    elif status == 429:
        response["headers"] = {
            "Retry-After": {
                "description": "Seconds to wait before the next request.",
                "schema": {"type": "integer", "minimum": 1},
            }
        }
    return response
