"""JSON schemas of the protos' messages, enums and fields, by the proto3 JSON mapping exactly as
`gateway.transcode` implements it (see the package docstring), as `components/schemas`.

Fields of request messages (the RPCs' input messages and every message reachable from them) carry
the contract's size limits, as `svclib.limits` checks them at the gateway and in every service: a
string's `maxLength`, a repeated field's `maxItems`, a map's `maxProperties`, from the field's
`(finpulse.options.v1.max_length)` option, else `DEFAULT_TEXT` characters / `DEFAULT_ITEMS` items.
Messages only replies carry have no such limits (their texts may be longer).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from typing import Any

from google.api import field_behavior_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from gateway.routes import SCALAR_JSON_MESSAGES
from svclib import limits

SCHEMA_PREFIX = "#/components/schemas/"
USER_FIELD = "user_id"

F = FieldDescriptor
_REQUIRED = field_behavior_pb2.REQUIRED
_OUTPUT_ONLY = field_behavior_pb2.OUTPUT_ONLY
_INPUT_ONLY = field_behavior_pb2.INPUT_ONLY

_INT32 = {"type": "integer", "format": "int32"}
_UINT32 = {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**32 - 1}
# 64-bit integers are JSON strings (proto3 JSON mapping); requests may also send numbers.
_INT64 = {"type": "string", "format": "int64", "pattern": r"^-?[0-9]+$"}
_UINT64 = {"type": "string", "format": "uint64", "pattern": r"^[0-9]+$"}
_SCALARS: dict[int, dict[str, Any]] = {
    F.TYPE_INT32: _INT32,
    F.TYPE_SINT32: _INT32,
    F.TYPE_SFIXED32: _INT32,
    F.TYPE_UINT32: _UINT32,
    F.TYPE_FIXED32: _UINT32,
    F.TYPE_INT64: _INT64,
    F.TYPE_SINT64: _INT64,
    F.TYPE_SFIXED64: _INT64,
    F.TYPE_UINT64: _UINT64,
    F.TYPE_FIXED64: _UINT64,
    F.TYPE_DOUBLE: {"type": "number", "format": "double"},
    F.TYPE_FLOAT: {"type": "number", "format": "float"},
    F.TYPE_BOOL: {"type": "boolean"},
    F.TYPE_STRING: {"type": "string"},
    F.TYPE_BYTES: {"type": "string", "format": "byte"},
}
# Well-known types, in their JSON forms (wrappers: the wrapped value, as json_format writes it).
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {
        "type": "string",
        "format": "date-time",
        "description": "RFC 3339 time in UTC, e.g. `2025-01-31T12:00:00Z`.",
    },
    "google.protobuf.Duration": {
        "type": "string",
        "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$",
        "description": "Seconds with an `s` suffix, e.g. `1.5s`.",
    },
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
    "google.protobuf.Any": {
        "type": "object",
        "required": ["@type"],
        "additionalProperties": True,
        "properties": {"@type": {"type": "string"}},
    },
}
assert SCALAR_JSON_MESSAGES <= _WELL_KNOWN.keys()


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

    def __init__(self, comments: dict[str, str], request_messages: Iterable[Descriptor] = ()):
        self.comments = comments
        inputs = list(request_messages)
        self.request_messages = frozenset(d.full_name for d in inputs)  # full names of the RPCs' input messages
        self.limited = reachable_messages(inputs)  # messages whose fields carry the request size limits
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
            self.schemas[name] = {
                "type": "string",
                "enum": [v.name for v in desc.values],
                "description": "\n\n".join([*lines, "\n".join(values)]),
            }
        return _ref(name)

    # -- fields and messages

    def field(
        self,
        field: FieldDescriptor,
        *,
        describe: bool = True,
        extra_description: str | None = None,
        presence: bool = True,
        optional: bool = False,
    ) -> dict[str, Any]:
        """The property schema of `field` as it appears in JSON (`optional`: even if REQUIRED)."""
        behaviors = [b for b in _behaviors(field) if not (optional and b == _REQUIRED)]
        limit = limits.field_limit(field) if field.containing_type.full_name in self.limited else None
        if _is_map(field):
            value_field = field.message_type.fields_by_name["value"]
            schema: dict[str, Any] = {"type": "object", "additionalProperties": self.value(value_field)}
            if limit is not None:
                schema["maxProperties"] = limit
                _limit_text(schema["additionalProperties"], value_field, limits.DEFAULT_TEXT)
        elif field.is_repeated:
            schema = {"type": "array", "items": self.value(field)}
            if _REQUIRED in behaviors:
                schema["minItems"] = 1
            if limit is not None:
                schema["maxItems"] = limit
                _limit_text(schema["items"], field, limits.DEFAULT_TEXT)
        else:
            schema = self.value(field)
            if _REQUIRED in behaviors and field.type == F.TYPE_STRING and field.message_type is None:
                schema.update(minLength=1, pattern=r"\S")  # transcode: a blank required string is missing
            if limit is not None:
                _limit_text(schema, field, limit)
        description = self.describe(field.full_name) if describe else None
        if extra_description:
            description = f"{description}\n\n{extra_description}" if description else extra_description
        nullable = presence and field.has_presence and not field.is_repeated and not _in_real_oneof(field)
        return _with(
            schema,
            description=description,
            nullable=nullable,
            readOnly=True if _OUTPUT_ONLY in behaviors else None,
            writeOnly=True if _INPUT_ONLY in behaviors else None,
        )

    def message_schema(self, desc: Descriptor, *, exclude: Iterable[str] = (), request: bool = False) -> dict[str, Any]:
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
            exclusive += [{"required": [a, b]} for i, a in enumerate(members) for b in members[i + 1 :]]
        if exclusive:
            schema["not"] = {"anyOf": exclusive}
        description = "\n\n".join(filter(None, [self.describe(desc.full_name), *notes]))
        if description:
            schema["description"] = description
        return schema


def reachable_messages(inputs: Iterable[Descriptor]) -> frozenset[str]:
    """Full names of the messages a request may carry: `inputs` and every message reachable from them
    (through message, repeated and map fields)."""
    found: set[str] = set()
    stack = list(inputs)
    while stack:
        desc = stack.pop()
        if desc.full_name not in found:
            found.add(desc.full_name)
            stack += [f.message_type for f in desc.fields if f.message_type is not None]
    return frozenset(found)


def _limit_text(schema: dict[str, Any], field: FieldDescriptor, limit: int) -> None:
    """`maxLength` of a string or bytes value of `field` (`svclib.limits`: `limit` characters, or bytes,
    which JSON carries in base64: 4 characters per 3 bytes)."""
    if field.message_type is not None:
        return
    if field.type == F.TYPE_STRING:
        schema["maxLength"] = limit
    elif field.type == F.TYPE_BYTES:
        schema["maxLength"] = 4 * math.ceil(limit / 3)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def user_id_note(*, path: bool = False) -> str:
    if path:
        return "Must be the authenticated user (the bearer token's `sub`); another user is refused with 403."
    return "Defaults to the authenticated user (the bearer token's `sub`); naming another user is refused with 403."
