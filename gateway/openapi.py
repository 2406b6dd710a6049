"""The gateway's OpenAPI 3.0 document, derived at start-up from the route table and the protos.

Nothing here is written per endpoint: `build_document(routes)` walks the same `Route` list the
gateway serves (`gateway.routes.build_routes()`) and the message descriptors, by grpc-gateway's
mapping rules and the proto3 JSON mapping exactly as `gateway.transcode` implements it:

- a path per route template (`{field=pattern}` becomes `{field}`), one operation per binding
  (`operationId` `<Service>_<Method>`, `2`, `3`, … for additional bindings), tagged with its
  service; `x-grpc-method` names the RPC it calls;
- path parameters from the template, query parameters for the remaining scalar fields
  (`Route.query_fields()`, dotted names for nested ones), the request body per `body` (`*`: the
  whole message less the fields bound elsewhere; a field name: that field), the response per
  `response_body`; server-streaming RPCs answer `text/event-stream`;
- messages are `components/schemas` named `<service>.v1.<Message>` and referenced with `$ref`;
  fields keep their proto names (as `transcode.render` emits them), 64-bit integers are strings,
  enums their value names, well-known types their JSON forms (Timestamp an RFC 3339 string,
  Duration `"1.5s"`, wrappers the wrapped value); fields with presence (`optional` scalars and
  messages) are nullable, since replies carry `null` for them when unset (a reference: `anyOf`
  it and `Null`); members of a oneof are absent instead, and at most one of them may be set; maps
  are objects, repeated fields arrays;
- `(google.api.field_behavior) = REQUIRED` makes a field required (a required string must not be
  blank), `OUTPUT_ONLY` read-only and `INPUT_ONLY` write-only; the top-level `user_id` of a
  request is optional, since the gateway fills it with the token's user (`gateway.auth`);
- a top-level string `idempotency_key` of a request is the `Idempotency-Key` header instead;
- every `/api` operation requires the `bearerAuth` scheme and documents its error answers
  (`components/responses`, all with the one `Error` body of `gateway.errors`).

Proto comments (leading and trailing) of services, RPCs, messages, fields, enums and enum values
become the descriptions. The generated modules do not keep comments, so they are read from the
descriptor set with source info that `svclib.protogen` writes next to the generated code.

`setup(app, routes)` serves the document at `GET /openapi.json` (built once, when the app is
created) and Swagger UI at `GET /docs`, with its assets from the `swagger-ui-bundle` package.
"""
from __future__ import annotations

import copy
import functools
import json
import logging
import pathlib
import re
from typing import Any, Iterable

import grpc
from aiohttp import web
from google.api import field_behavior_pb2
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from gateway.routes import SCALAR_JSON_MESSAGES, Route, resolve_field
from svclib.protogen import DESCRIPTOR_SET

log = logging.getLogger("gateway")

OPENAPI_VERSION = "3.0.3"
TITLE = "FinPulse API"
API_VERSION = "v1"
SCHEMA_PREFIX = "#/components/schemas/"
RESPONSE_PREFIX = "#/components/responses/"
SECURITY_SCHEME = "bearerAuth"
IDEMPOTENCY_FIELD = "idempotency_key"
IDEMPOTENCY_HEADER = "Idempotency-Key"
USER_FIELD = "user_id"

F = FieldDescriptor
_REQUIRED = field_behavior_pb2.REQUIRED
_OUTPUT_ONLY = field_behavior_pb2.OUTPUT_ONLY
_INPUT_ONLY = field_behavior_pb2.INPUT_ONLY
_VARIABLE_RE = re.compile(r"\{([^{}=]+)(?:=[^{}]*)?\}")

_INT32 = {"type": "integer", "format": "int32"}
_UINT32 = {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**32 - 1}
# 64-bit integers are JSON strings (proto3 JSON mapping); requests may also send numbers.
_INT64 = {"type": "string", "format": "int64", "pattern": r"^-?[0-9]+$"}
_UINT64 = {"type": "string", "format": "uint64", "pattern": r"^[0-9]+$"}
_SCALARS: dict[int, dict[str, Any]] = {
    F.TYPE_INT32: _INT32, F.TYPE_SINT32: _INT32, F.TYPE_SFIXED32: _INT32,
    F.TYPE_UINT32: _UINT32, F.TYPE_FIXED32: _UINT32,
    F.TYPE_INT64: _INT64, F.TYPE_SINT64: _INT64, F.TYPE_SFIXED64: _INT64,
    F.TYPE_UINT64: _UINT64, F.TYPE_FIXED64: _UINT64,
    F.TYPE_DOUBLE: {"type": "number", "format": "double"},
    F.TYPE_FLOAT: {"type": "number", "format": "float"},
    F.TYPE_BOOL: {"type": "boolean"},
    F.TYPE_STRING: {"type": "string"},
    F.TYPE_BYTES: {"type": "string", "format": "byte"},
}
# Well-known types, in their JSON forms (wrappers: the wrapped value, as json_format writes it).
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time",
                                  "description": "RFC 3339 time in UTC, e.g. `2025-01-31T12:00:00Z`."},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$",
                                 "description": "Seconds with an `s` suffix, e.g. `1.5s`."},
    "google.protobuf.FieldMask": {"type": "string", "description": "Comma-separated field paths."},
    "google.protobuf.DoubleValue": {"type": "number", "format": "double"},
    "google.protobuf.FloatValue": {"type": "number", "format": "float"},
    "google.protobuf.Int64Value": _INT64,
    "google.protobuf.UInt64Value": _UINT64,
    "google.protobuf.Int32Value": _INT32,
    "google.protobuf.UInt32Value": _UINT32,
    "google.protobuf.BoolValue": {"type": "boolean"},
    "google.protobuf.StringValue": {"type": "string"},
    "google.protobuf.BytesValue": {"type": "string", "format": "byte"},
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {"description": "Any JSON value."},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False},
    "google.protobuf.Any": {"type": "object", "required": ["@type"], "additionalProperties": True,
                            "properties": {"@type": {"type": "string"}}},
}
assert SCALAR_JSON_MESSAGES <= _WELL_KNOWN.keys()


# ---------------------------------------------------------------------------------------------
# Comments


def _clean_comment(text: str) -> str:
    """A proto comment as text: the one space after `//` and trailing blanks removed, lines kept."""
    lines = [line[1:] if line.startswith(" ") else line for line in text.rstrip().split("\n")]
    return "\n".join(line.rstrip() for line in lines).strip("\n")


def comments_from_files(files: Iterable[descriptor_pb2.FileDescriptorProto]) -> dict[str, str]:
    """Full name -> comment of every service, RPC, message, field, oneof, enum and enum value.

    Names are the descriptors' full names, except enum values: `<enum full name>.<VALUE>`.
    Leading and trailing comments are joined; detached comments are not documentation.
    """
    found: dict[str, str] = {}

    def note(name: str, locations: dict[tuple[int, ...], Any], path: tuple[int, ...]) -> None:
        location = locations.get(path)
        if location is None:
            return
        parts = [_clean_comment(c) for c in (location.leading_comments, location.trailing_comments) if c.strip()]
        if parts:
            found[name] = "\n".join(parts)

    def message(desc: descriptor_pb2.DescriptorProto, scope: str, locations, path: tuple[int, ...]) -> None:
        name = f"{scope}.{desc.name}"
        note(name, locations, path)
        for i, field in enumerate(desc.field):
            note(f"{name}.{field.name}", locations, path + (2, i))
        for i, oneof in enumerate(desc.oneof_decl):
            note(f"{name}.{oneof.name}", locations, path + (8, i))
        for i, nested in enumerate(desc.nested_type):
            message(nested, name, locations, path + (3, i))
        for i, nested in enumerate(desc.enum_type):
            enum(nested, name, locations, path + (4, i))

    def enum(desc: descriptor_pb2.EnumDescriptorProto, scope: str, locations, path: tuple[int, ...]) -> None:
        name = f"{scope}.{desc.name}"
        note(name, locations, path)
        for i, value in enumerate(desc.value):
            note(f"{name}.{value.name}", locations, path + (2, i))

    for file in files:
        locations = {tuple(loc.path): loc for loc in file.source_code_info.location}
        scope = file.package
        for i, desc in enumerate(file.message_type):
            message(desc, scope, locations, (4, i))
        for i, desc in enumerate(file.enum_type):
            enum(desc, scope, locations, (5, i))
        for i, service in enumerate(file.service):
            name = f"{scope}.{service.name}"
            note(name, locations, (6, i))
            for j, method in enumerate(service.method):
                note(f"{name}.{method.name}", locations, (6, i, 2, j))
    return found


def descriptor_set_path(routes: list[Route]) -> pathlib.Path | None:
    """Where `svclib.protogen` wrote the descriptor set: the root of the routes' generated modules."""
    import importlib

    for route in routes:
        proto_name = route.input_descriptor.file.name  # e.g. finpulse/sync/v1/sync.proto
        module_name = proto_name[: -len(".proto")].replace("/", ".").replace("-", "_") + "_pb2"
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        root = pathlib.Path(module.__file__).resolve().parents[len(proto_name.split("/")) - 1]
        return root / DESCRIPTOR_SET
    return None


def load_comments(routes: list[Route], path: pathlib.Path | str | None = None) -> dict[str, str]:
    """The comments of the protos behind `routes` (empty, with a warning, without a descriptor set)."""
    path = pathlib.Path(path) if path is not None else descriptor_set_path(routes)
    try:
        data = path.read_bytes() if path is not None else None
    except OSError:
        data = None
    if data is None:
        log.warning("no proto descriptor set with source info (run `make gen`): the OpenAPI document "
                    "has no descriptions", extra={"path": str(path)})
        return {}
    return comments_from_files(descriptor_pb2.FileDescriptorSet.FromString(data).file)


# ---------------------------------------------------------------------------------------------
# Schemas


def schema_name(full_name: str) -> str:
    """Component name of a message or enum: its full name without the `finpulse.` prefix."""
    return full_name.removeprefix("finpulse.")


def _behaviors(field: FieldDescriptor) -> list[int]:
    return list(field.GetOptions().Extensions[field_behavior_pb2.field_behavior])


def _in_real_oneof(field: FieldDescriptor) -> bool:
    oneof = field.containing_oneof
    return oneof is not None and not (len(oneof.fields) == 1 and oneof.name.startswith("_"))


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _ref(target: str) -> dict[str, Any]:
    return {"$ref": SCHEMA_PREFIX + target}


#: Component of JSON null alone. OpenAPI 3.0's `nullable` adds null only to a `type` in the same
#: schema, so a nullable reference is `anyOf: [<ref>, Null]`.
NULL_SCHEMA = "Null"


def _with(schema: dict[str, Any], *, nullable: bool = False, **extra: Any) -> dict[str, Any]:
    """`schema` with extra keywords (a `$ref` is wrapped, since 3.0 ignores its siblings), and null
    allowed when `nullable`."""
    extra = {k: v for k, v in extra.items() if v is not None}
    if "$ref" in schema:
        if nullable:
            return {"anyOf": [schema, _ref(NULL_SCHEMA)], **extra}
        return {"allOf": [schema], **extra} if extra else schema
    if nullable and "type" in schema:
        extra["nullable"] = True
    return {**schema, **extra}


class SchemaBuilder:
    """Component schemas of messages and enums, added as they are referenced."""

    def __init__(self, comments: dict[str, str], request_messages: Iterable[str] = ()):
        self.comments = comments
        self.request_messages = frozenset(request_messages)  # full names of the RPCs' input messages
        self.schemas: dict[str, dict[str, Any]] = {}

    def describe(self, full_name: str) -> str | None:
        return self.comments.get(full_name) or None

    # -- single values

    def value(self, field: FieldDescriptor) -> dict[str, Any]:
        """The schema of one value of `field` (an element, for repeated fields)."""
        if field.message_type is not None:
            return self.message_ref(field.message_type)
        if field.enum_type is not None:
            return self.enum_ref(field.enum_type)
        return dict(_SCALARS[field.type])

    def message_ref(self, desc: Descriptor) -> dict[str, Any]:
        well_known = _WELL_KNOWN.get(desc.full_name)
        if well_known is not None:
            return copy.deepcopy(well_known)
        name = schema_name(desc.full_name)
        if name not in self.schemas:
            self.schemas[name] = {}  # placeholder: recursive messages refer to themselves
            self.schemas[name] = self.message_schema(desc, request=desc.full_name in self.request_messages)
        return _ref(name)

    def enum_ref(self, desc: EnumDescriptor) -> dict[str, Any]:
        name = schema_name(desc.full_name)
        if name not in self.schemas:
            lines = [self.describe(desc.full_name) or f"`{desc.name}`."]
            values = []
            for value in desc.values:
                text = self.describe(f"{desc.full_name}.{value.name}")
                values.append(f"- `{value.name}`" + (f": {_one_line(text)}" if text else ""))
            self.schemas[name] = {"type": "string", "enum": [v.name for v in desc.values],
                                  "description": "\n\n".join([*lines, "\n".join(values)])}
        return _ref(name)

    # -- fields and messages

    def field(self, field: FieldDescriptor, *, describe: bool = True, extra_description: str | None = None,
              presence: bool = True, optional: bool = False) -> dict[str, Any]:
        """The property schema of `field` as it appears in JSON (`optional`: even if REQUIRED)."""
        behaviors = [b for b in _behaviors(field) if not (optional and b == _REQUIRED)]
        if _is_map(field):
            value_field = field.message_type.fields_by_name["value"]
            schema: dict[str, Any] = {"type": "object", "additionalProperties": self.value(value_field)}
        elif field.is_repeated:
            schema = {"type": "array", "items": self.value(field)}
            if _REQUIRED in behaviors:
                schema["minItems"] = 1
        else:
            schema = self.value(field)
            if _REQUIRED in behaviors and field.type == F.TYPE_STRING and field.message_type is None:
                schema.update(minLength=1, pattern=r"\S")  # transcode: a blank required string is missing
        description = self.describe(field.full_name) if describe else None
        if extra_description:
            description = f"{description}\n\n{extra_description}" if description else extra_description
        nullable = presence and field.has_presence and not field.is_repeated and not _in_real_oneof(field)
        return _with(schema, description=description, nullable=nullable,
                     readOnly=True if _OUTPUT_ONLY in behaviors else None,
                     writeOnly=True if _INPUT_ONLY in behaviors else None)

    def message_schema(self, desc: Descriptor, *, exclude: Iterable[str] = (),
                       request: bool = False) -> dict[str, Any]:
        """The object schema of a message; `request`: the input message of an RPC (its `user_id` is
        optional: the gateway fills it with the token's user)."""
        excluded = set(exclude)
        properties: dict[str, Any] = {}
        required: list[str] = []
        for field in desc.fields:
            if field.name in excluded:
                continue
            extra = None
            is_required = _REQUIRED in _behaviors(field)
            if request and field.name == USER_FIELD:  # the gateway fills it in (gateway.auth)
                extra = user_id_note()
                is_required = False
            properties[field.name] = self.field(field, extra_description=extra, optional=not is_required)
            if is_required:
                required.append(field.name)
        schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
        if required:
            schema["required"] = required
        oneofs = [o for o in desc.oneofs if len(o.fields) > 1 or not o.name.startswith("_")]
        exclusive: list[dict[str, Any]] = []
        notes = []
        for oneof in oneofs:
            members = [f.name for f in oneof.fields if f.name not in excluded]
            notes.append(f"At most one of {', '.join(f'`{m}`' for m in members)} is set (oneof `{oneof.name}`).")
            exclusive += [{"required": [a, b]} for i, a in enumerate(members) for b in members[i + 1:]]
        if exclusive:
            schema["not"] = {"anyOf": exclusive}
        description = "\n\n".join(filter(None, [self.describe(desc.full_name), *notes]))
        if description:
            schema["description"] = description
        return schema


def _one_line(text: str) -> str:
    return " ".join(text.split())


def user_id_note(*, path: bool = False) -> str:
    if path:
        return "Must be the authenticated user (the bearer token's `sub`); another user is refused with 403."
    return ("Defaults to the authenticated user (the bearer token's `sub`); naming another user is "
            "refused with 403.")


def _first_sentence(text: str) -> str:
    paragraph = _one_line(text.split("\n\n")[0])
    match = re.match(r"(.+?[.!?])(\s|$)", paragraph)
    return match.group(1) if match else paragraph


# ---------------------------------------------------------------------------------------------
# Errors

#: gRPC code -> (HTTP status, component response name, when it happens). Mirrors gateway.errors.
ERROR_RESPONSES: list[tuple[int, str, str]] = [
    (400, "BadRequest", "Bad input: a malformed body, an unknown field or query parameter, a value of the wrong "
                        "type, a missing required field (`INVALID_ARGUMENT`, with a `google.rpc.BadRequest` "
                        "detail naming the fields), or a request the current state refuses "
                        "(`FAILED_PRECONDITION`, `OUT_OF_RANGE`)."),
    (401, "Unauthorized", "No bearer token, or a malformed, badly signed or expired one (`UNAUTHENTICATED`); "
                          "`WWW-Authenticate` says why."),
    (403, "Forbidden", "The request names another user than the token's (`PERMISSION_DENIED`)."),
    (404, "NotFound", "The resource does not exist, or belongs to another user (`NOT_FOUND`)."),
    (409, "Conflict", "The resource exists already, or a concurrent change won (`ALREADY_EXISTS`, `ABORTED`)."),
    (413, "PayloadTooLarge", "The request body is over the gateway's limit (`INVALID_ARGUMENT`)."),
    (429, "TooManyRequests", "Over the per-user request rate (`RESOURCE_EXHAUSTED`); retry after `Retry-After` "
                             "seconds."),
    (500, "InternalError", "An unexpected failure (`INTERNAL`, `UNKNOWN`, `DATA_LOSS`); the cause is logged, "
                           "not sent."),
    (503, "Unavailable", "A backend service is down or overloaded (`UNAVAILABLE`); retry later."),
    (504, "GatewayTimeout", "A backend service did not answer within the deadline (`DEADLINE_EXCEEDED`)."),
]


def error_schema() -> dict[str, Any]:
    """The body of every error answer (`gateway.errors.ApiError.body`)."""
    return {
        "type": "object",
        "description": "A `google.rpc.Status` with the gRPC code's name: every error answer of the gateway.",
        "required": ["code", "error", "message", "details"],
        "additionalProperties": False,
        "example": {"code": 3, "error": "INVALID_ARGUMENT", "message": "page_size: expected an integer, got \"ten\"",
                    "details": [{"@type": "type.googleapis.com/google.rpc.BadRequest", "field_violations": [
                        {"field": "page_size", "description": "expected an integer, got \"ten\""}]}]},
        "properties": {
            "code": {"type": "integer", "format": "int32", "minimum": 0, "maximum": 16,
                     "description": "The gRPC status code number."},
            "error": {"type": "string", "enum": [code.name for code in grpc.StatusCode],
                      "description": "The gRPC status code's name."},
            "message": {"type": "string", "description": "What went wrong, for people."},
            "details": {
                "type": "array",
                "description": "`google.rpc` detail messages in their JSON form, e.g. a `google.rpc.BadRequest` "
                               "with `field_violations`.",
                "items": {"type": "object", "required": ["@type"], "additionalProperties": True,
                          "properties": {"@type": {"type": "string"}}},
            },
        },
    }


def _error_response(status: int, description: str) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description,
                                "content": {"application/json": {"schema": _ref("Error")}}}
    if status == 401:
        response["headers"] = {"WWW-Authenticate": {
            "description": "The `Bearer` challenge (RFC 6750), with `error` and `error_description` when a "
                           "token was sent.", "schema": {"type": "string"}}}
    elif status == 429:
        response["headers"] = {"Retry-After": {"description": "Seconds to wait before the next request.",
                                               "schema": {"type": "integer", "minimum": 1}}}
    return response


# ---------------------------------------------------------------------------------------------
# Operations


def _sse_event_schema() -> dict[str, Any]:
    """One Server-Sent Event, as OpenAPI 3.2 models events (`event` is `message` when the line is absent)."""
    return {
        "type": "object", "required": ["data"], "additionalProperties": False,
        "description": "One event of the stream.",
        "properties": {
            "event": {"type": "string", "enum": ["message", "error", "end"],
                      "description": "`message`: a reply; `error`: the stream failed; `end`: the stream is over."},
            "data": {"type": "string", "description": "JSON text: the reply (`message`), an `Error` (`error`) "
                                                      "or `{}` (`end`)."},
        },
    }


def openapi_path(template: str) -> str:
    """A grpc-gateway path template as an OpenAPI path: `{name=pattern}` -> `{name}`."""
    return _VARIABLE_RE.sub(lambda m: "{%s}" % m.group(1).strip(), template)


def idempotency_key_field(desc: Descriptor) -> FieldDescriptor | None:
    """The request's top-level string `idempotency_key`, documented as the `Idempotency-Key` header."""
    field = desc.fields_by_name.get(IDEMPOTENCY_FIELD)
    if field is not None and field.type == F.TYPE_STRING and not field.is_repeated:
        return field
    return None


def _all_required(desc: Descriptor, field_path: str) -> bool:
    return all(_REQUIRED in _behaviors(f) for f in resolve_field(desc, field_path))


class DocumentBuilder:
    def __init__(self, routes: list[Route], comments: dict[str, str]):
        self.routes = routes
        self.comments = comments
        self.schemas = SchemaBuilder(comments, (r.input_descriptor.full_name for r in routes))

    def parameter_schema(self, field: FieldDescriptor, *, optional: bool = False) -> dict[str, Any]:
        return self.schemas.field(field, describe=False, presence=False, optional=optional)

    def operation(self, route: Route, operation_id: str) -> dict[str, Any]:
        desc = route.input_descriptor
        rpc_comment = self.comments.get(f"{route.service_full_name}.{route.method_name}", "")
        idempotency = idempotency_key_field(desc)
        parameters: list[dict[str, Any]] = []
        for field_path in route.path_fields:
            leaf = resolve_field(desc, field_path)[-1]
            parameters.append(self._parameter(field_path, "path", leaf, required=True,
                                              extra=(user_id_note(path=True) if field_path == USER_FIELD else None)))
        for name, field in route.query_fields().items():
            if idempotency is not None and name == IDEMPOTENCY_FIELD:
                continue
            top_user = name == USER_FIELD
            parameters.append(self._parameter(name, "query", field,
                                              required=_all_required(desc, name) and not top_user,
                                              extra=user_id_note() if top_user else None))
        if idempotency is not None:
            parameters.append(self._parameter(
                IDEMPOTENCY_HEADER, "header", idempotency, required=_REQUIRED in _behaviors(idempotency),
                extra=f"Sets the request's `{IDEMPOTENCY_FIELD}`: a retry with the same key returns the first "
                      f"answer instead of acting twice."))
        op: dict[str, Any] = {
            "operationId": operation_id,
            "tags": [route.service_full_name.rsplit(".", 1)[-1]],
            "summary": _first_sentence(rpc_comment) if rpc_comment else route.method_name,
            "x-grpc-method": f"{route.service_full_name}/{route.method_name}",
            "security": [{SECURITY_SCHEME: []}],
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

    def _parameter(self, name: str, where: str, field: FieldDescriptor, *, required: bool,
                   extra: str | None) -> dict[str, Any]:
        description = self.comments.get(field.full_name)
        if extra:
            description = f"{description}\n\n{extra}" if description else extra
        parameter: dict[str, Any] = {"name": name, "in": where, "required": required,
                                     "schema": self.parameter_schema(field, optional=not required)}
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
                    "body, as for other operations."),
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
        schemas = {"Error": error_schema(), NULL_SCHEMA: {
            "type": "object", "nullable": True, "enum": [None],
            "description": "JSON `null`: the field is unset (fields with presence only)."},
            **dict(sorted(self.schemas.schemas.items()))}
        return {
            "openapi": OPENAPI_VERSION,
            "info": {"title": TITLE, "version": API_VERSION, "description": API_DESCRIPTION},
            "tags": tags,
            "paths": dict(sorted(paths.items())),
            "components": {
                "schemas": schemas,
                "responses": {name: _error_response(status, text) for status, name, text in ERROR_RESPONSES},
                "securitySchemes": {SECURITY_SCHEME: {
                    "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                    "description": "A JWT whose `sub` is the user; issuer, audience and expiry are checked."}},
            },
        }


API_DESCRIPTION = """\
The REST API of FinPulse, derived from the `google.api.http` annotations of its gRPC services
(grpc-gateway's rules): this document and the gateway's routes come from the same protos.

- Every `/api` operation needs `Authorization: Bearer <JWT>`; the user is the token's `sub`. A
  request's `user_id` defaults to that user, and naming another one is refused with 403.
- JSON uses the proto field names; 64-bit integers are strings, enums their value names, times
  RFC 3339 strings in UTC. Fields that may be unset are `null` in replies.
- Errors are `{"code", "error", "message", "details"}` (a `google.rpc.Status` with the gRPC code's
  name), with the HTTP status grpc-gateway maps the gRPC code to.
"""


def probe_paths() -> dict[str, Any]:
    """`/healthz` and `/readyz` (plain aiohttp handlers of `gateway.app`, not RPCs)."""
    return {
        "/healthz": {"get": {
            "operationId": "Probes_Healthz", "tags": ["Probes"], "security": [],
            "summary": "Liveness: the gateway process serves HTTP.",
            "responses": {"200": {"description": "Alive.", "content": {"application/json": {"schema": {
                "type": "object", "required": ["status"], "additionalProperties": False,
                "properties": {"status": {"type": "string", "enum": ["ok"]}}}}}}},
        }},
        "/readyz": {"get": {
            "operationId": "Probes_Readyz", "tags": ["Probes"], "security": [],
            "summary": "Readiness: every backend service reports SERVING on its gRPC health check.",
            "responses": {
                "200": {"description": "Every backend is SERVING.",
                        "content": {"application/json": {"schema": _ref("Readiness")}}},
                "503": {"description": "Some backend is not SERVING; `not_ready` names them.",
                        "content": {"application/json": {"schema": _ref("Readiness")}}},
            },
        }},
    }


def _readiness_schema() -> dict[str, Any]:
    return {
        "type": "object", "required": ["status", "services", "not_ready"], "additionalProperties": False,
        "description": "Health of the gateway's backends.",
        "properties": {
            "status": {"type": "string", "enum": ["ready", "not_ready"]},
            "services": {"type": "object", "description": "Service -> its health status (`SERVING`, "
                                                          "`NOT_SERVING`, or the gRPC code of a failed check).",
                         "additionalProperties": {"type": "string"}},
            "not_ready": {"type": "array", "items": {"type": "string"},
                          "description": "Services that are not SERVING."},
        },
    }


def build_document(routes: list[Route], comments: dict[str, str] | None = None) -> dict[str, Any]:
    """The OpenAPI document of `routes` (comments: from the generated descriptor set by default)."""
    if comments is None:
        comments = load_comments(routes)
    document = DocumentBuilder(routes, comments).build()
    document["components"]["schemas"]["Readiness"] = _readiness_schema()
    return document


# ---------------------------------------------------------------------------------------------
# Serving

OPENAPI_JSON = web.AppKey("openapi_json", bytes)

DOCS_HTML = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>FinPulse API</title>
  <link rel="stylesheet" href="docs/static/swagger-ui.css">
  <link rel="icon" type="image/png" href="docs/static/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="docs/static/swagger-ui-bundle.js"></script>
  <script src="docs/static/swagger-ui-standalone-preset.js"></script>
  <script>
    window.ui = SwaggerUIBundle({
      url: "openapi.json",
      dom_id: "#swagger-ui",
      deepLinking: true,
      persistAuthorization: true,
      presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
      layout: "StandaloneLayout"
    });
  </script>
</body>
</html>
"""


@functools.cache
def swagger_ui_dir() -> pathlib.Path:
    """Swagger UI's assets, as the `swagger-ui-bundle` package ships them (no CDN)."""
    from swagger_ui_bundle import swagger_ui_path

    return pathlib.Path(str(swagger_ui_path))


async def openapi_json(request: web.Request) -> web.Response:
    """The OpenAPI document of this gateway."""
    return web.Response(body=request.app[OPENAPI_JSON], content_type="application/json")


async def docs(request: web.Request) -> web.Response:
    """Swagger UI on `/openapi.json`."""
    return web.Response(text=DOCS_HTML, content_type="text/html")


def setup(app: web.Application, routes: list[Route]) -> None:
    """Serve the document of `routes` at `/openapi.json` (built now, once) and Swagger UI at `/docs`."""
    app[OPENAPI_JSON] = json.dumps(build_document(routes), ensure_ascii=False).encode()
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/docs", docs)
    app.router.add_static("/docs/static/", swagger_ui_dir(), append_version=False)
