"""The OpenAPI document of the gateway's routes: paths and operations (parameters, request bodies,
responses, Server-Sent Events), the error answers of `gateway.errors`, the bearer security scheme and
the probes. Schemas come from `gateway.openapi.schemas`, descriptions from the proto comments
(`gateway.openapi.comments`).
"""

from __future__ import annotations

import re
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from gateway.login import LOGIN_METHOD
from gateway.openapi.comments import load_comments
from gateway.openapi.schemas import (
    _REQUIRED,
    NULL_SCHEMA,
    USER_FIELD,
    SchemaBuilder,
    _behaviors,
    _one_line,
    _ref,
    schema_name,
    user_id_note,
)
from gateway.routes import Route, resolve_field

OPENAPI_VERSION = "3.0.3"
TITLE = "FinPulse API"
API_VERSION = "v1"
RESPONSE_PREFIX = "#/components/responses/"
SECURITY_SCHEME = "bearerAuth"
IDEMPOTENCY_FIELD = "idempotency_key"
IDEMPOTENCY_HEADER = "Idempotency-Key"

F = FieldDescriptor
_VARIABLE_RE = re.compile(r"\{([^{}=]+)(?:=[^{}]*)?\}")


def _first_sentence(text: str) -> str:
    paragraph = _one_line(text.split("\n\n")[0])
    match = re.match(r"(.+?[.!?])(\s|$)", paragraph)
    return match.group(1) if match else paragraph


# ---------------------------------------------------------------------------------------------
# Errors

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


def _error_response(status: int, description: str) -> dict[str, Any]:
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


# ---------------------------------------------------------------------------------------------
# Operations


def _sse_event_schema() -> dict[str, Any]:
    """One Server-Sent Event, as OpenAPI 3.2 models events (`event` is `message` when the line is absent)."""
    return {
        "type": "object",
        "required": ["data"],
        "additionalProperties": False,
        "description": "One event of the stream.",
        "properties": {
            "event": {
                "type": "string",
                "enum": ["message", "error", "end"],
                "description": "`message`: a reply; `error`: the stream failed; `end`: the stream is over.",
            },
            "data": {
                "type": "string",
                "description": "JSON text: the reply (`message`), an `Error` (`error`) or `{}` (`end`).",
            },
        },
    }


def openapi_path(template: str) -> str:
    """A grpc-gateway path template as an OpenAPI path: `{name=pattern}` -> `{name}`."""
    return _VARIABLE_RE.sub(lambda m: f"{{{m.group(1).strip()}}}", template)


def idempotency_key_field(desc: Descriptor) -> FieldDescriptor | None:
    """The request's top-level string `idempotency_key`, documented as the `Idempotency-Key` header."""
    field = desc.fields_by_name.get(IDEMPOTENCY_FIELD)
    if field is not None and field.type == F.TYPE_STRING and not field.is_repeated:
        return field
    return None


def security(route: Route) -> list[dict[str, list[str]]]:
    """Every `/api` operation needs the bearer token, but the login's is optional (`gateway.login`): in
    local mode a request without one is signed a token, in production it is answered 401."""
    if route.grpc_path == LOGIN_METHOD:
        return [{SECURITY_SCHEME: []}, {}]
    return [{SECURITY_SCHEME: []}]


def _all_required(desc: Descriptor, field_path: str) -> bool:
    return all(_REQUIRED in _behaviors(f) for f in resolve_field(desc, field_path))


class DocumentBuilder:
    def __init__(self, routes: list[Route], comments: dict[str, str]):
        self.routes = routes
        self.comments = comments
        self.schemas = SchemaBuilder(comments, (r.input_descriptor for r in routes))

    def parameter_schema(self, field: FieldDescriptor, *, optional: bool = False) -> dict[str, Any]:
        return self.schemas.field(field, describe=False, presence=False, optional=optional)

    def operation(self, route: Route, operation_id: str) -> dict[str, Any]:
        desc = route.input_descriptor
        rpc_comment = self.comments.get(f"{route.service_full_name}.{route.method_name}", "")
        idempotency = idempotency_key_field(desc)
        parameters: list[dict[str, Any]] = []
        for field_path in route.path_fields:
            leaf = resolve_field(desc, field_path)[-1]
            parameters.append(
                self._parameter(
                    field_path,
                    "path",
                    leaf,
                    required=True,
                    extra=(user_id_note(path=True) if field_path == USER_FIELD else None),
                )
            )
        for name, field in route.query_fields().items():
            if idempotency is not None and name == IDEMPOTENCY_FIELD:
                continue
            top_user = name == USER_FIELD
            parameters.append(
                self._parameter(
                    name,
                    "query",
                    field,
                    required=_all_required(desc, name) and not top_user,
                    extra=user_id_note() if top_user else None,
                )
            )
        if idempotency is not None:
            parameters.append(
                self._parameter(
                    IDEMPOTENCY_HEADER,
                    "header",
                    idempotency,
                    required=_REQUIRED in _behaviors(idempotency),
                    extra=f"Sets the request's `{IDEMPOTENCY_FIELD}`: a retry with the same key returns the first "
                    f"answer instead of acting twice.",
                )
            )
        op: dict[str, Any] = {
            "operationId": operation_id,
            "tags": [route.service_full_name.rsplit(".", 1)[-1]],
            "summary": _first_sentence(rpc_comment) if rpc_comment else route.method_name,
            "x-grpc-method": f"{route.service_full_name}/{route.method_name}",
            "security": security(route),
        }
        if rpc_comment:
            op["description"] = rpc_comment
        if parameters:
            op["parameters"] = parameters
        body = self.request_body(route, idempotency)
        if body is not None:
            op["requestBody"] = body
        op["responses"] = self.responses(route, has_body=body is not None)
        return op

    def _parameter(
        self, name: str, where: str, field: FieldDescriptor, *, required: bool, extra: str | None
    ) -> dict[str, Any]:
        description = self.comments.get(field.full_name)
        if extra:
            description = f"{description}\n\n{extra}" if description else extra
        parameter: dict[str, Any] = {
            "name": name,
            "in": where,
            "required": required,
            "schema": self.parameter_schema(field, optional=not required),
        }
        if description:
            parameter["description"] = description
        if field.is_repeated and where == "query":
            parameter.update(style="form", explode=True)  # ?name=a&name=b, as transcode reads it
        return parameter

    def request_body(self, route: Route, idempotency: FieldDescriptor | None) -> dict[str, Any] | None:
        desc = route.input_descriptor
        if not route.body:
            return None
        if route.body == "*":
            # The whole message, less what the path and the Idempotency-Key header set.
            exclude = {p for p in route.path_fields if "." not in p}
            if idempotency is not None:
                exclude.add(IDEMPOTENCY_FIELD)
            inline = self.schemas.message_schema(desc, exclude=exclude, request=True)
            required = bool(inline.get("required"))
            schema = inline if exclude else self.schemas.message_ref(desc)
            description = self.comments.get(desc.full_name)
        else:
            field = desc.fields_by_name[route.body]
            schema = self.schemas.field(field, describe=False, presence=False)  # a null body sets nothing
            required = _REQUIRED in _behaviors(field)
            description = self.comments.get(field.full_name)
        body: dict[str, Any] = {"required": required, "content": {"application/json": {"schema": schema}}}
        if description:
            body["description"] = description
        return body

    def responses(self, route: Route, *, has_body: bool) -> dict[str, Any]:
        out_desc = route.output_descriptor
        if route.response_body:
            field = out_desc.fields_by_name[route.response_body]
            schema = self.schemas.field(field, describe=False)
            description = self.comments.get(field.full_name) or f"The `{route.response_body}` of the reply."
        else:
            schema = self.schemas.message_ref(out_desc)
            description = self.comments.get(out_desc.full_name) or "The reply."
        if route.is_server_streaming:
            ok = {
                "description": (
                    f"Server-Sent Events. {description} Each message is a `message` event whose `data` is its "
                    f"JSON (`{schema_name(out_desc.full_name)}`, in `x-event-schema`); an `error` event, whose "
                    "`data` is an `Error`, ends a stream that fails after it started; an `end` event (data `{}`) "
                    "ends the others. Errors before the stream starts are answered with their status and JSON "
                    "body, as for other operations."
                ),
                "content": {"text/event-stream": {"schema": _sse_event_schema()}},
                "x-event-schema": schema,
            }
        else:
            ok = {"description": description, "content": {"application/json": {"schema": schema}}}
        responses: dict[str, Any] = {"200": ok}
        for status, name, _ in ERROR_RESPONSES:
            if status == 413 and not has_body:
                continue
            responses[str(status)] = {"$ref": RESPONSE_PREFIX + name}
        return responses

    def build(self) -> dict[str, Any]:
        paths: dict[str, dict[str, Any]] = {}
        bindings: dict[str, int] = {}
        for route in self.routes:
            service = route.service_full_name.rsplit(".", 1)[-1]
            key = f"{service}_{route.method_name}"
            bindings[key] = bindings.get(key, 0) + 1
            operation_id = key if bindings[key] == 1 else f"{key}{bindings[key]}"
            path = paths.setdefault(openapi_path(route.path_template), {})
            path[route.http_method.lower()] = self.operation(route, operation_id)
        paths.update(probe_paths())
        tags = []
        for service in dict.fromkeys(r.service_full_name for r in self.routes):
            tag = {"name": service.rsplit(".", 1)[-1]}
            if self.comments.get(service):
                tag["description"] = self.comments[service]
            tags.append(tag)
        tags.append({"name": "Probes", "description": "Liveness and readiness of the gateway and its backends."})
        schemas = {
            "Error": error_schema(),
            NULL_SCHEMA: {
                "type": "object",
                "nullable": True,
                "enum": [None],
                "description": "JSON `null`: the field is unset (fields with presence only).",
            },
            **dict(sorted(self.schemas.schemas.items())),
        }
        return {
            "openapi": OPENAPI_VERSION,
            "info": {"title": TITLE, "version": API_VERSION, "description": API_DESCRIPTION},
            "tags": tags,
            "paths": dict(sorted(paths.items())),
            "components": {
                "schemas": schemas,
                "responses": {name: _error_response(status, text) for status, name, text in ERROR_RESPONSES},
                "securitySchemes": {
                    SECURITY_SCHEME: {
                        "type": "http",
                        "scheme": "bearer",
                        "bearerFormat": "JWT",
                        "description": "A JWT whose `sub` is the user; issuer, audience and expiry are checked.",
                    }
                },
            },
        }


API_DESCRIPTION = """\
The REST API of FinPulse, derived from the `google.api.http` annotations of its gRPC services
(grpc-gateway's rules): this document and the gateway's routes come from the same protos.

- Every `/api` operation needs `Authorization: Bearer <JWT>`; the user is the token's `sub`. A
  request's `user_id` defaults to that user, and naming another one is refused with 403.
- JSON uses the proto field names; 64-bit integers are strings, enums their value names, times
  RFC 3339 strings in UTC. Fields that may be unset are `null` in replies.
- Errors are `{"code", "error", "error_code", "message", "details"}` (a `google.rpc.Status` with the
  gRPC code's name), with the HTTP status grpc-gateway maps the gRPC code to; `details` holds a
  `google.rpc.ErrorInfo` (its `reason` is `error_code`, a stable code such as `INSUFFICIENT_FUNDS`),
  a `google.rpc.BadRequest` naming the bad fields, a `google.rpc.RetryInfo` when a retry may succeed.
"""


def probe_paths() -> dict[str, Any]:
    """`/healthz` and `/readyz` (plain aiohttp handlers of `gateway.app`, not RPCs)."""
    return {
        "/healthz": {
            "get": {
                "operationId": "Probes_Healthz",
                "tags": ["Probes"],
                "security": [],
                "summary": "Liveness: the gateway process serves HTTP.",
                "responses": {
                    "200": {
                        "description": "Alive.",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["status"],
                                    "additionalProperties": False,
                                    "properties": {"status": {"type": "string", "enum": ["ok"]}},
                                }
                            }
                        },
                    }
                },
            }
        },
        "/readyz": {
            "get": {
                "operationId": "Probes_Readyz",
                "tags": ["Probes"],
                "security": [],
                "summary": "Readiness: every backend service reports SERVING on its gRPC health check.",
                "responses": {
                    "200": {
                        "description": "Every backend is SERVING.",
                        "content": {"application/json": {"schema": _ref("Readiness")}},
                    },
                    "503": {
                        "description": "Some backend is not SERVING; `not_ready` names them.",
                        "content": {"application/json": {"schema": _ref("Readiness")}},
                    },
                },
            }
        },
    }


def _readiness_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["status", "services", "not_ready"],
        "additionalProperties": False,
        "description": "Health of the gateway's backends.",
        "properties": {
            "status": {"type": "string", "enum": ["ready", "not_ready"]},
            "services": {
                "type": "object",
                "description": "Service -> its health status (`SERVING`, "
                "`NOT_SERVING`, or the gRPC code of a failed check).",
                "additionalProperties": {"type": "string"},
            },
            "not_ready": {
                "type": "array",
                "items": {"type": "string"},
                "description": "Services that are not SERVING.",
            },
        },
    }


def build_document(routes: list[Route], comments: dict[str, str] | None = None) -> dict[str, Any]:
    """The OpenAPI document of `routes` (comments: from the generated descriptor set by default)."""
    if comments is None:
        comments = load_comments(routes)
    document = DocumentBuilder(routes, comments).build()
    document["components"]["schemas"]["Readiness"] = _readiness_schema()
    return document
