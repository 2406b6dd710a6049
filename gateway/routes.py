"""The REST route table, derived from the `google.api.http` annotations of the services' protos.

`build_routes()` walks the generated modules of the suite's services and returns one `Route` per
HTTP binding (the rule itself and its `additional_bindings`). The table is plain data: the aiohttp
app registers one generic handler per route, and the OpenAPI document is derived from the same list,
so no route or schema is ever written twice by hand. Methods without an annotation are internal
(service-to-service) and are not routed.

Path templates follow grpc-gateway: `{field}`, `{nested.field}` and `{field=pattern/*/**}` variables
bind path segments to (scalar) request fields.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from collections.abc import Iterable, Iterator

from google.api import annotations_pb2, http_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor, MethodDescriptor, ServiceDescriptor

#: Service key (as used by `Settings.service_addrs` and `svclib.clients.ServiceClients`) -> module.
SERVICE_MODULES: dict[str, str] = {
    "onboarding": "finpulse.onboarding.v1.onboarding_pb2",
    "consent": "finpulse.consent.v1.consent_pb2",
    "sync": "finpulse.sync.v1.sync_pb2",
    "dashboard": "finpulse.dashboard.v1.dashboard_pb2",
}

_HTTP_METHODS = ("get", "put", "post", "delete", "patch")
_VARIABLE_RE = re.compile(r"\{([^{}=]+)(?:=([^{}]*))?\}")
_FIELD_PATH_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")

# Well-known message types whose JSON form is a scalar (string, number or bool): they can be set
# from a path segment or a query parameter like any scalar field.
SCALAR_JSON_MESSAGES = frozenset(
    {
        "google.protobuf.Timestamp",
        "google.protobuf.Duration",
        "google.protobuf.FieldMask",
        "google.protobuf.DoubleValue",
        "google.protobuf.FloatValue",
        "google.protobuf.Int64Value",
        "google.protobuf.UInt64Value",
        "google.protobuf.Int32Value",
        "google.protobuf.UInt32Value",
        "google.protobuf.BoolValue",
        "google.protobuf.StringValue",
        "google.protobuf.BytesValue",
    }
)


class RouteError(Exception):
    """An annotation the gateway cannot serve (bad template, unknown field, duplicate route)."""


@dataclasses.dataclass(frozen=True)
class Route:
    """One HTTP binding of one RPC."""

    http_method: str  # "GET", "POST", ...
    path_template: str  # as annotated, e.g. "/api/consents/{consent_id}"
    aiohttp_path: str  # e.g. "/api/consents/{consent_id}"
    service_key: str  # "consent"
    service_full_name: str  # "finpulse.consent.v1.ConsentService"
    method_name: str  # "RevokeConsent"
    input_descriptor: Descriptor
    output_descriptor: Descriptor
    body: str  # "" (no body), "*" (the whole message) or a top-level field name
    path_fields: tuple[str, ...]  # dotted request field paths bound by the template, in order
    is_server_streaming: bool
    response_body: str = ""  # "" (the whole response message) or a top-level field name
    proto_file: FileDescriptor | None = None  # the .proto file declaring the service

    def stub_class(self) -> type:
        """The generated stub class of the route's service (`<file>_pb2_grpc.<Service>Stub`)."""
        module = importlib.import_module(self.proto_file.name.removesuffix(".proto").replace("/", ".") + "_pb2_grpc")
        return getattr(module, self.service_full_name.rpartition(".")[2] + "Stub")

    @property
    def grpc_path(self) -> str:
        """The gRPC method path, e.g. `/finpulse.consent.v1.ConsentService/RevokeConsent`."""
        return f"/{self.service_full_name}/{self.method_name}"

    @staticmethod
    def path_var(field_path: str) -> str:
        """The aiohttp match_info name of a path field (aiohttp names cannot contain dots)."""
        return field_path.replace(".", "__")

    def query_fields(self) -> dict[str, FieldDescriptor]:
        """Request fields settable from the query string, by dotted path (grpc-gateway rules).

        Every scalar, enum, scalar-JSON well-known type and repeated of those that is neither the
        body, inside the body, nor bound by the path. Nothing when the body is "*".
        """
        if self.body == "*":
            return {}
        excluded = set(self.path_fields) | ({self.body} if self.body else set())
        return dict(_leaf_fields(self.input_descriptor, "", excluded, ()))


def _leaf_fields(
    desc: Descriptor, prefix: str, excluded: set[str], seen: tuple[str, ...]
) -> Iterator[tuple[str, FieldDescriptor]]:
    for field in desc.fields:
        path = prefix + field.name
        if path in excluded:
            continue
        if field.message_type is None or field.message_type.full_name in SCALAR_JSON_MESSAGES:
            yield path, field
        elif (
            not field.is_repeated
            and not field.message_type.GetOptions().map_entry
            and field.message_type.full_name not in (*seen, desc.full_name)
        ):  # stop at cycles
            yield from _leaf_fields(field.message_type, path + ".", excluded, (*seen, desc.full_name))


def resolve_field(desc: Descriptor, field_path: str) -> list[FieldDescriptor]:
    """The chain of fields a dotted path walks through, or `KeyError` naming the bad segment."""
    chain: list[FieldDescriptor] = []
    for i, name in enumerate(field_path.split(".")):
        field = desc.fields_by_name.get(name) if desc is not None else None
        if field is None:
            raise KeyError(".".join(field_path.split(".")[: i + 1]))
        chain.append(field)
        desc = field.message_type
    return chain


def _convert_template(template: str, method_id: str, input_desc: Descriptor) -> tuple[str, tuple[str, ...]]:
    """grpc-gateway path template -> (aiohttp path, bound field paths)."""
    if not template.startswith("/"):
        raise RouteError(f"{method_id}: path template {template!r} must start with '/'")
    fields: list[str] = []
    out: list[str] = []
    pos = 0
    for match in _VARIABLE_RE.finditer(template):
        literal = template[pos : match.start()]
        if "*" in literal or "{" in literal or "}" in literal:
            raise RouteError(f"{method_id}: unsupported path template {template!r}")
        out.append(literal)
        field_path, pattern = match.group(1).strip(), match.group(2)
        if not _FIELD_PATH_RE.match(field_path):
            raise RouteError(f"{method_id}: bad variable {field_path!r} in {template!r}")
        try:
            chain = resolve_field(input_desc, field_path)
        except KeyError as exc:
            raise RouteError(
                f"{method_id}: path variable {exc.args[0]!r} is not a field of {input_desc.full_name}"
            ) from None
        leaf = chain[-1]
        if leaf.is_repeated or (
            leaf.message_type is not None and leaf.message_type.full_name not in SCALAR_JSON_MESSAGES
        ):
            raise RouteError(f"{method_id}: path variable {field_path!r} must be a singular scalar field")
        if field_path in fields:
            raise RouteError(f"{method_id}: path variable {field_path!r} bound twice in {template!r}")
        fields.append(field_path)
        var = Route.path_var(field_path)
        if pattern is None or pattern == "*":
            out.append(f"{{{var}}}")
        else:
            regex = "/".join(
                "[^/]+" if seg == "*" else ".+" if seg == "**" else re.escape(seg) for seg in pattern.split("/")
            )
            out.append(f"{{{var}:{regex}}}")
        pos = match.end()
    tail = template[pos:]
    if "*" in tail or "{" in tail or "}" in tail:
        raise RouteError(f"{method_id}: unsupported path template {template!r}")
    out.append(tail)
    return "".join(out), tuple(fields)


def _bindings(rule: http_pb2.HttpRule) -> Iterator[http_pb2.HttpRule]:
    yield rule
    yield from rule.additional_bindings


def _method_routes(service_key: str, service: ServiceDescriptor, method: MethodDescriptor) -> Iterator[Route]:
    options = method.GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        return  # internal RPC: not part of the REST surface
    method_id = f"{service.full_name}/{method.name}"
    for rule in _bindings(options.Extensions[annotations_pb2.http]):
        kind = rule.WhichOneof("pattern")
        if kind is None:
            raise RouteError(f"{method_id}: google.api.http rule without a method and path")
        if kind == "custom":
            http_method, template = rule.custom.kind.upper(), rule.custom.path
        else:
            http_method, template = kind.upper(), getattr(rule, kind)
        aiohttp_path, path_fields = _convert_template(template, method_id, method.input_type)
        for attr, desc in (("body", method.input_type), ("response_body", method.output_type)):
            name = getattr(rule, attr)
            if name not in ("", "*") and name not in desc.fields_by_name:
                raise RouteError(f"{method_id}: {attr} {name!r} is not a field of {desc.full_name}")
        if rule.response_body == "*":
            raise RouteError(f"{method_id}: response_body must name a field (or be omitted)")
        if rule.body in path_fields:
            raise RouteError(f"{method_id}: body field {rule.body!r} is also bound by the path")
        yield Route(
            http_method=http_method,
            path_template=template,
            aiohttp_path=aiohttp_path,
            service_key=service_key,
            service_full_name=service.full_name,
            method_name=method.name,
            input_descriptor=method.input_type,
            output_descriptor=method.output_type,
            body=rule.body,
            path_fields=path_fields,
            is_server_streaming=method.server_streaming,
            response_body=rule.response_body,
            proto_file=service.file,
        )


def routes_for_services(services: Iterable[tuple[str, ServiceDescriptor]]) -> list[Route]:
    """Routes of the given (service key, service descriptor) pairs; raises `RouteError` on conflicts.

    Client-streaming RPCs cannot be driven by a single HTTP request and are rejected if annotated.
    """
    routes: list[Route] = []
    seen: dict[tuple[str, str], str] = {}
    for service_key, service in services:
        for method in service.methods:
            for route in _method_routes(service_key, service, method):
                if method.client_streaming:
                    raise RouteError(f"{route.grpc_path}: client-streaming RPCs cannot be routed")
                key = (route.http_method, route.aiohttp_path)
                if key in seen:
                    raise RouteError(
                        f"{route.http_method} {route.path_template} is bound by both {seen[key]} and {route.grpc_path}"
                    )
                seen[key] = route.grpc_path
                routes.append(route)
    return routes


def service_descriptors(modules: dict[str, str] | None = None) -> list[tuple[str, ServiceDescriptor]]:
    """(service key, descriptor) of every service declared in the generated modules."""
    found = []
    for service_key, module_name in (modules or SERVICE_MODULES).items():
        module = importlib.import_module(module_name)
        for service in module.DESCRIPTOR.services_by_name.values():
            found.append((service_key, service))
    return found


def build_routes(modules: dict[str, str] | None = None) -> list[Route]:
    """The gateway's route table: every annotated RPC of the suite's services."""
    return routes_for_services(service_descriptors(modules))
