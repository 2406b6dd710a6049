"""Size limits of every request, declared in the contract and checked in one place.

Every string field of a request has a maximum length, every repeated field and map a maximum count:
the field's `(finpulse.options.v1.max_length)` option in the protos, else `DEFAULT_TEXT` characters
or `DEFAULT_ITEMS` items. `problems(message)` walks a request (nested messages, repeated and map
values included) and names each field over its limit by its path, without echoing the value. The
gateway checks a request before it calls a service (400 with the field violations) and every
service's interceptor checks it again before the servicer runs (INVALID_ARGUMENT), so no handler
ever sees an oversized value and no error message ever carries one.
"""

from __future__ import annotations

import functools

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

DEFAULT_TEXT = 256
DEFAULT_ITEMS = 100
_OPTION = "finpulse.options.v1.max_length"


@functools.cache
def _declared(field: FieldDescriptor) -> int | None:
    options = field.GetOptions()
    for extension, value in options.ListFields():
        if extension.full_name == _OPTION:
            return int(value)
    return None


def field_limit(field: FieldDescriptor) -> int | None:
    """The limit `problems` applies to `field` itself: entries of a map or items of a repeated field,
    characters of a string, bytes of a bytes field (declared, else the default); None for other fields.
    Strings and bytes inside repeated fields and maps, and map keys, are held to `DEFAULT_TEXT`."""
    if field.is_repeated:  # a map is a repeated field of entries
        return _declared(field) or DEFAULT_ITEMS
    if field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        return _declared(field) or DEFAULT_TEXT
    return None


@functools.cache
def _plan(desc: Descriptor) -> tuple:
    """(field, kind, limit) of every field worth checking: strings, bytes, repeated, maps, messages."""
    plan = []
    for field in desc.fields:
        declared = _declared(field)
        is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
        if is_map or field.is_repeated:
            plan.append((field, "map" if is_map else "repeated", declared or DEFAULT_ITEMS))
        elif field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
            plan.append((field, "text", declared or DEFAULT_TEXT))
        elif field.message_type is not None and not field.message_type.full_name.startswith("google.protobuf."):
            plan.append((field, "message", None))
    return tuple(plan)


class Problem(tuple):
    """A (field path, description) pair, as `problems` lists them, that also knows the `limit` broken."""

    limit: int

    def __new__(cls, field: str, description: str, limit: int):
        self = super().__new__(cls, (field, description))
        self.limit = limit
        return self

    @property
    def field(self) -> str:
        return self[0]


def _text_limit_problem(path: str, value, limit: int) -> str | None:
    if len(value) > limit:
        unit = "characters" if isinstance(value, str) else "bytes"
        return f"{path}: at most {limit} {unit} (got {len(value)})"
    return None


def problems(message: Message, path: str = "") -> list[Problem]:
    """(field path, reason) for every value over its limit (a `Problem`, which also has the `limit`);
    [] when the request fits."""
    found: list[Problem] = []
    for field, kind, limit in _plan(message.DESCRIPTOR):
        name = f"{path}.{field.name}" if path else field.name
        value = getattr(message, field.name)
        if kind == "text":
            problem = _text_limit_problem(name, value, limit)
            if problem:
                found.append(Problem(name, problem, limit))
        elif kind == "message":
            if message.HasField(field.name):
                found += problems(value, name)
        elif kind == "map":
            if len(value) > limit:
                found.append(Problem(name, f"{name}: at most {limit} entries (got {len(value)})", limit))
                continue
            value_field = field.message_type.fields_by_name["value"]
            for key in value:
                key_problem = _text_limit_problem(f"{name}[key]", key, DEFAULT_TEXT) if isinstance(key, str) else None
                if key_problem:
                    found.append(Problem(name, key_problem, DEFAULT_TEXT))
                if value_field.message_type is not None:
                    found += problems(value[key], f"{name}[{str(key)[:40]}]")
                elif value_field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
                    item_problem = _text_limit_problem(f"{name}[{str(key)[:40]}]", value[key], DEFAULT_TEXT)
                    if item_problem:
                        found.append(Problem(name, item_problem, DEFAULT_TEXT))
        else:  # repeated
            if len(value) > limit:
                found.append(Problem(name, f"{name}: at most {limit} items (got {len(value)})", limit))
                continue
            for i, item in enumerate(value):
                item_path = f"{name}[{i}]"
                if isinstance(item, Message):
                    found += problems(item, item_path)
                elif isinstance(item, (str, bytes)):
                    problem = _text_limit_problem(item_path, item, DEFAULT_TEXT)
                    if problem:
                        found.append(Problem(item_path, problem, DEFAULT_TEXT))
        if len(found) >= 10:
            break
    return found
