"""JSON/HTTP <-> protobuf, by grpc-gateway rules and protobuf's own `json_format`.

Request: the path variables, the JSON body (`body: "*"` is the whole message, `body: "field"` fills
that field) and the query string (every other scalar field, dotted names for nested ones) are merged
into one JSON object, checked against the input descriptor so that a bad value is reported with its
field path (`banks[0].consents.account: expected a boolean, got "yes"`), converted by
`json_format.ParseDict`, checked against the contract's size limits (`svclib.limits`), and then
checked for `(google.api.field_behavior) = REQUIRED` fields (`build_request` does it all;
`parse_request` stops before the required fields, so that the gateway can first bind the caller's
user, which fills the REQUIRED `user_id`, and then `check_required`). An input message with a
top-level `idempotency_key` field takes it from the `Idempotency-Key` header (the body or query may
carry the same value; a different one is a 400).
Every problem is an `ApiError` (400, or 413 for an oversized body); nothing here raises anything else
for bad input.

Response: `json_format.MessageToDict` with proto field names and default values printed, plus `null`
for unset fields that have presence (proto3 `optional` scalars and message fields), so that keys the
seed sent as null stay present.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from google.api import field_behavior_pb2
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from gateway.errors import ApiError, bad_request
from gateway.routes import Route, resolve_field
from svclib import limits

F = FieldDescriptor
_INT_RANGES = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1),
    F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1),
    F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1),
    F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1),
    F.TYPE_FIXED64: (0, 2**64 - 1),
}
_FLOATS = (F.TYPE_DOUBLE, F.TYPE_FLOAT)
_FLOAT_WORDS = ("NaN", "Infinity", "-Infinity")
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_INT_TEXT = re.compile(r"^[+-]?\d+$")
_REQUIRED = field_behavior_pb2.REQUIRED
IDEMPOTENCY_HEADER = "Idempotency-Key"
IDEMPOTENCY_FIELD = "idempotency_key"


# ---------------------------------------------------------------------------------------------
# Request


def build_request(
    route: Route,
    body: bytes,
    query: Mapping[str, str],
    path_params: Mapping[str, str],
    headers: Mapping[str, str] | None = None,
) -> Message:
    """The request message of `route` from the raw body, the query (a multidict) and the path match,
    with its required fields checked (`parse_request`, then `check_required`)."""
    message = parse_request(route, body, query, path_params, headers=headers)
    check_required(message)
    return message


def parse_request(
    route: Route,
    body: bytes,
    query: Mapping[str, str],
    path_params: Mapping[str, str],
    headers: Mapping[str, str] | None = None,
) -> Message:
    """The request message of `route`, typed and within the size limits, its required fields not
    checked yet (`check_required`, once the caller filled in what it knows: the authenticated user).

    `query` must offer `getall(key)` (aiohttp's `MultiDictProxy`) when a key repeats; a plain mapping
    is read as one value per key. Of `headers`, only `Idempotency-Key` is read.
    """
    data = _body_object(route, body)
    for field_path in route.path_fields:
        chain = resolve_field(route.input_descriptor, field_path)
        raw = path_params[Route.path_var(field_path)]
        _set_path(data, chain, _from_text(chain[-1], raw, field_path))
    _merge_query(route, query, data)
    _merge_idempotency_key(route, headers, data)
    _check_message(data, route.input_descriptor, "")
    message = message_factory.GetMessageClass(route.input_descriptor)()
    try:
        json_format.ParseDict(data, message, ignore_unknown_fields=False)
    except json_format.ParseError as exc:  # what the pre-check above does not cover (e.g. timestamps)
        raise _clean_parse_error(str(exc)) from None
    except RecursionError:
        raise bad_request("request JSON is nested too deeply", reason="MALFORMED_JSON") from None
    oversized = limits.problems(message)  # the contract's size limits, as every service checks them too
    if oversized:
        raise bad_request(
            "; ".join(reason for _, reason in oversized),
            violations=oversized,
            reason="LIMIT_EXCEEDED",
            metadata={"limit": oversized[0].limit},
        )
    return message


def check_required(message: Message) -> None:
    """A 400 naming every REQUIRED field left unset or empty (`missing_required`)."""
    missing = missing_required(message)
    if missing:
        raise bad_request(
            "; ".join(f"{path} is required" for path in missing),
            violations=[(path, "is required") for path in missing],
            reason="FIELD_REQUIRED",
        )


def check_content_type(route: Route, body: bytes, headers: Mapping[str, str]) -> None:
    """A request body must say it is JSON (`Content-Type: application/json`, or a `+json` type): 415
    otherwise, so a text/plain or form body is never guessed at."""
    if not body.strip() or not route.body:
        return
    media = (headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        shown = _show(media) if media else "none"
        raise bad_request(
            f"the request body must be JSON (Content-Type: application/json), got {shown}",
            http=415,
            reason="UNSUPPORTED_MEDIA_TYPE",
        )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _body_object(route: Route, body: bytes) -> dict[str, Any]:
    """The request object as the body makes it: all of it (`body: "*"`), one field, or nothing."""
    if not body.strip():
        return {}
    if not route.body:
        raise bad_request(f"{route.http_method} {route.path_template} takes no request body", reason="UNEXPECTED_BODY")
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise bad_request("request body is not UTF-8 text", reason="MALFORMED_JSON") from None
    except RecursionError:
        raise bad_request("request JSON is nested too deeply", reason="MALFORMED_JSON") from None
    except ValueError as exc:  # JSONDecodeError is a ValueError
        raise bad_request(f"malformed JSON in request body: {exc}", reason="MALFORMED_JSON") from None
    if route.body == "*":
        if not isinstance(value, dict):
            raise bad_request(f"request body must be a JSON object, got {_show(value)}", reason="MALFORMED_JSON")
        return value
    return {} if value is None else {route.body: value}


def _merge_idempotency_key(route: Route, headers: Mapping[str, str] | None, data: dict[str, Any]) -> None:
    """The `Idempotency-Key` header into a top-level string `idempotency_key` field, when the input
    message has one; a body or query value that differs from the header is an error."""
    field = route.input_descriptor.fields_by_name.get(IDEMPOTENCY_FIELD)
    if field is None or field.type != F.TYPE_STRING or field.is_repeated or not headers:
        return
    header = headers.get(IDEMPOTENCY_HEADER)
    if header is None:
        return
    given = data.get(IDEMPOTENCY_FIELD, data.get(field.json_name))
    if given is not None and given != header:
        raise _bad(
            IDEMPOTENCY_FIELD,
            f"differs from the {IDEMPOTENCY_HEADER} header ({_show(given)} is not {_show(header)}): send the key once",
            "IDEMPOTENCY_KEY_MISMATCH",
        )
    data.pop(field.json_name, None)
    data[IDEMPOTENCY_FIELD] = header


def _merge_query(route: Route, query: Mapping[str, str], data: dict[str, Any]) -> None:
    allowed = _query_fields(route)
    for name in dict.fromkeys(query):  # distinct keys, in order
        field = allowed.get(name)
        if field is None:
            raise bad_request(f"unknown query parameter {name!r}", name, reason="UNKNOWN_FIELD")
        values = query.getall(name) if hasattr(query, "getall") else [query[name]]
        if not field.is_repeated and len(values) > 1:
            raise bad_request(f"query parameter {name!r} given more than once", name, reason="DUPLICATE_FIELD")
        converted = [_from_text(field, v, name) for v in values]
        chain = resolve_field(route.input_descriptor, name)
        _set_path(data, chain, converted if field.is_repeated else converted[0])


@functools.cache
def _query_fields(route: Route) -> dict[str, FieldDescriptor]:
    return route.query_fields()


def _set_path(data: dict[str, Any], chain: list[FieldDescriptor], value: Any) -> None:
    """Set a (nested) field in the JSON object; a path or query value wins over the body's."""
    node = data
    for depth, field in enumerate(chain):
        path = ".".join(f.name for f in chain[: depth + 1])
        if field.json_name != field.name and field.json_name in node:  # lowerCamelCase spelling
            node.setdefault(field.name, node.pop(field.json_name))
        if depth == len(chain) - 1:
            node[field.name] = value
            return
        child = node.get(field.name)
        if child is None:
            child = node[field.name] = {}
        if not isinstance(child, dict):
            raise _bad(path, f"expected an object, got {_show(child)}")
        node = child


def _from_text(field: FieldDescriptor, text: str, name: str) -> Any:
    """A path or query string as the JSON value `ParseDict` expects for `field`."""
    if field.message_type is not None:  # a scalar-JSON well-known type
        inner = field.message_type.fields_by_name.get("value")
        return _from_text(inner, text, name) if inner is not None else text
    kind = field.type
    if kind == F.TYPE_BOOL:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise _bad(name, f"expected a boolean (true/false, 1/0, yes/no, on/off), got {_show(text)}")
    if kind in _INT_RANGES:
        if not _INT_TEXT.match(text.strip()):
            raise _bad(name, f"expected an integer, got {_show(text)}")
        value = int(text)
        _check_range(field, value, name)
        return value
    if kind in _FLOATS:
        if text in _FLOAT_WORDS:
            return text
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise _bad(name, f"expected a number, got {_show(text)}")
        return value
    if kind == F.TYPE_ENUM:
        if text in field.enum_type.values_by_name:
            return text
        raise _bad_enum(field, text, name)
    return text  # string; bytes as base64, decoded by ParseDict


def _check_range(field: FieldDescriptor, value: int, name: str) -> None:
    lo, hi = _INT_RANGES[field.type]
    if not lo <= value <= hi:
        raise _bad(name, f"{value} is out of range ({lo} to {hi})")


def _bad_enum(field: FieldDescriptor, value: Any, name: str) -> ApiError:
    names = ", ".join(v.name for v in field.enum_type.values)
    return _bad(name, f"expected one of {names}, got {_show(value)}")


def _bad(field: str, reason: str, code: str = "INVALID_VALUE") -> ApiError:
    """A 400 for one field: message `field: reason`, a field violation naming it, ErrorInfo `code`."""
    return bad_request(f"{field}: {reason}", violations=[(field, reason)], reason=code)


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if value is None:
        return "null"
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _check_message(obj: Any, desc: Descriptor, path: str) -> None:
    """Report the first value whose JSON type does not fit its field, or an unknown field."""
    if desc.full_name.startswith("google.protobuf."):
        return  # well-known types have their own JSON forms; ParseDict checks those
    if not isinstance(obj, dict):
        raise _bad(path or "request", f"expected an object, got {_show(obj)}")
    seen: set[str] = set()
    for key, value in obj.items():
        sub = _join(path, key)
        field = desc.fields_by_name.get(key) or _by_json_name(desc, key)
        if field is None:
            raise _bad(sub, "unknown field", "UNKNOWN_FIELD")
        if field.name in seen:
            raise _bad(
                _join(path, field.name), f"given twice (as {field.name} and {field.json_name})", "DUPLICATE_FIELD"
            )
        seen.add(field.name)
        if value is None:
            continue  # JSON null is the field's default
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            if not isinstance(value, dict):
                raise _bad(sub, f"expected an object, got {_show(value)}")
            value_field = field.message_type.fields_by_name["value"]
            for map_key, item in value.items():
                _check_value(item, value_field, f"{sub}[{json.dumps(map_key, ensure_ascii=False)}]")
        elif field.is_repeated:
            if not isinstance(value, list):
                raise _bad(sub, f"expected an array, got {_show(value)}")
            for i, item in enumerate(value):
                _check_value(item, field, f"{sub}[{i}]")
        else:
            _check_value(value, field, sub)


def _by_json_name(desc: Descriptor, key: str) -> FieldDescriptor | None:
    return next((f for f in desc.fields if f.json_name == key), None)


def _check_value(value: Any, field: FieldDescriptor, path: str) -> None:
    """Check one (non-repeated) value of `field`."""
    if field.message_type is not None:
        if value is None and field.message_type.full_name != "google.protobuf.Value":
            raise _bad(path, "expected an object, got null")
        _check_message(value, field.message_type, path)
        return
    kind = field.type
    if value is None:
        raise _bad(path, "null is not allowed here")
    if kind == F.TYPE_BOOL:
        if not isinstance(value, bool):
            raise _bad(path, f"expected a boolean, got {_show(value)}")
    elif kind in _INT_RANGES:
        if isinstance(value, str) and _INT_TEXT.match(value.strip()):
            value = int(value)
        elif isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(path, f"expected an integer, got {_show(value)}")
        _check_range(field, value, path)
    elif kind in _FLOATS:
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)) or value in _FLOAT_WORDS
        if not ok and isinstance(value, str):
            try:
                ok = math.isfinite(float(value))
            except ValueError:
                ok = False
        if not ok:
            raise _bad(path, f"expected a number, got {_show(value)}")
    elif kind in (F.TYPE_STRING, F.TYPE_BYTES):
        if not isinstance(value, str):
            raise _bad(path, f"expected a string, got {_show(value)}")
        if kind == F.TYPE_STRING and "\x00" in value:
            raise _bad(path, "text cannot contain the NUL character (U+0000)", "INVALID_CHARACTER")
    elif kind == F.TYPE_ENUM:
        if isinstance(value, bool) or not (
            (isinstance(value, str) and value in field.enum_type.values_by_name)
            or (isinstance(value, int) and value in field.enum_type.values_by_number)
        ):
            raise _bad_enum(field, value, path)


_PARSE_FIELD_RE = re.compile(r"Failed to parse (\S+) field: ")
_PARSE_AT_RE = re.compile(r"\s+at (?:\"|')?[A-Za-z0-9_]+\.([^\"'\s]+?)(?:\"|')?\.*$", re.DOTALL)


def _clean_parse_error(text: str) -> ApiError:
    """Protobuf's nested 'Failed to parse x field: ...' wording -> `path: reason`."""
    names = _PARSE_FIELD_RE.findall(text)
    reason = _PARSE_FIELD_RE.split(text)[-1].split("\n")[0]
    at = _PARSE_AT_RE.search(reason)
    path = at.group(1) if at else ".".join(names)
    reason = _PARSE_AT_RE.sub("", reason).rstrip(". ")
    if not path:
        return bad_request(f"invalid request: {reason}")
    return _bad(path, f"{reason}")


def missing_required(message: Message, path: str = "") -> list[str]:
    """Paths of REQUIRED fields left unset or empty, in nested and repeated messages too.

    A required string, bytes, repeated or map field must be non-empty (blank strings count as
    empty), a required message or `optional` scalar must be present, and a required enum must not
    be its zero value. Other scalars without presence cannot tell 0/false from unset and are not checked.
    """
    missing: list[str] = []
    for field in message.DESCRIPTOR.fields:
        sub = _join(path, field.name)
        required = _REQUIRED in field.GetOptions().Extensions[field_behavior_pb2.field_behavior]
        value = getattr(message, field.name)
        if required and _is_empty(message, field, value):
            missing.append(sub)
            continue
        if field.message_type is None or field.message_type.full_name.startswith("google.protobuf."):
            continue
        if field.message_type.GetOptions().map_entry:
            if field.message_type.fields_by_name["value"].message_type is not None:
                for key, item in value.items():
                    missing += missing_required(item, f"{sub}[{json.dumps(key, ensure_ascii=False)}]")
        elif field.is_repeated:
            for i, item in enumerate(value):
                missing += missing_required(item, f"{sub}[{i}]")
        elif message.HasField(field.name):
            missing += missing_required(value, sub)
    return missing


def _is_empty(message: Message, field: FieldDescriptor, value: Any) -> bool:
    if field.is_repeated:
        return len(value) == 0
    if field.has_presence and not message.HasField(field.name):
        return True
    if field.type == F.TYPE_STRING:
        return not value.strip()
    if field.type == F.TYPE_BYTES:
        return not value
    return field.type == F.TYPE_ENUM and value == 0


# ---------------------------------------------------------------------------------------------
# Response


def render(message: Message, route: Route | None = None) -> Any:
    """The JSON value of a response: proto field names, defaults printed, null for unset presence."""
    data = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    fill_nulls(message.DESCRIPTOR, data)
    if route is not None and route.response_body:
        return data[route.response_body]
    return data


def fill_nulls(desc: Descriptor, data: dict[str, Any]) -> None:
    """Add `null` for every unset field with presence that is not a member of a real oneof."""
    if desc.full_name.startswith("google.protobuf."):
        return
    for field in desc.fields:
        if field.name not in data:
            if field.has_presence and not _in_real_oneof(field):
                data[field.name] = None
            continue
        if field.message_type is None:
            continue
        value = data[field.name]
        if field.message_type.GetOptions().map_entry:
            value_type = field.message_type.fields_by_name["value"].message_type
            items = value.values() if value_type is not None else ()
        else:
            value_type = field.message_type
            items = value if field.is_repeated else (value,)
        for item in items:
            if isinstance(item, dict):
                fill_nulls(value_type, item)


def _in_real_oneof(field: FieldDescriptor) -> bool:
    oneof = field.containing_oneof
    # proto3 `optional` fields sit in a synthetic one-field oneof named "_<field>".
    return oneof is not None and not (len(oneof.fields) == 1 and oneof.name.startswith("_"))
