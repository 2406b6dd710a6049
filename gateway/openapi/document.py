"""The OpenAPI document of the gateway's routes: a path per route template and an operation per binding
(parameters, request bodies, responses, Server-Sent Events), the bearer security scheme, and the
assembly of the whole document (`build_document`). Schemas come from `gateway.openapi.schemas`,
descriptions from the proto comments (`gateway.openapi.comments`), the error answers from
`gateway.openapi.errors` and the probes from `gateway.openapi.probes`.
"""

from __future__ import annotations

import re
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from gateway.login import LOGIN_METHOD
from gateway.openapi.comments import load_comments
from gateway.openapi.errors import ERROR_RESPONSES, error_response, error_schema
from gateway.openapi.probes import probe_paths, readiness_schema
from gateway.openapi.schemas import (
    _REQUIRED,
    NULL_SCHEMA,
    USER_FIELD,
    SchemaBuilder,
    _behaviors,
    _one_line,
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
                "responses": {name: error_response(status, text) for status, name, text in ERROR_RESPONSES},
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


def build_document(routes: list[Route], comments: dict[str, str] | None = None) -> dict[str, Any]:
    """The OpenAPI document of `routes` (comments: from the generated descriptor set by default)."""
    if comments is None:
        comments = load_comments(routes)
    document = DocumentBuilder(routes, comments).build()
    document["components"]["schemas"]["Readiness"] = readiness_schema()
    return document
