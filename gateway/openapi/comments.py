"""Proto comments (leading and trailing) of services, RPCs, messages, fields, enums and enum values,
the descriptions of the OpenAPI document.

The generated modules do not keep comments, so they are read from the descriptor set with source
info that `svclib.protogen` writes next to the generated code.
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Iterable
from typing import Any

from google.protobuf import descriptor_pb2

from gateway.routes import Route
from svclib.protogen import DESCRIPTOR_SET

log = logging.getLogger("gateway")


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
            note(f"{name}.{field.name}", locations, (*path, 2, i))
        for i, oneof in enumerate(desc.oneof_decl):
            note(f"{name}.{oneof.name}", locations, (*path, 8, i))
        for i, nested in enumerate(desc.nested_type):
            message(nested, name, locations, (*path, 3, i))
        for i, nested in enumerate(desc.enum_type):
            enum(nested, name, locations, (*path, 4, i))

    def enum(desc: descriptor_pb2.EnumDescriptorProto, scope: str, locations, path: tuple[int, ...]) -> None:
        name = f"{scope}.{desc.name}"
        note(name, locations, path)
        for i, value in enumerate(desc.value):
            note(f"{name}.{value.name}", locations, (*path, 2, i))

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
        log.warning(
            "no proto descriptor set with source info (run `make gen`): the OpenAPI document has no descriptions",
            extra={"path": str(path)},
        )
        return {}
    return comments_from_files(descriptor_pb2.FileDescriptorSet.FromString(data).file)
