"""The OpenAPI document (`gateway/openapi/`): valid OpenAPI, exactly the routes the protos annotate,
request/response/error schemas for every operation, schemas that match what the gateway renders,
the contract's size limits on request fields, descriptions from the proto comments, and served at
/openapi.json with Swagger UI at /docs.

The annotations and comments are read here on their own, from a descriptor set compiled from the
current protos/ (not from the generated code), so a proto change that did not reach the document,
or a stale `gen/`, fails these tests.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from aiohttp.test_utils import TestClient, TestServer
from finpulse.sync.v1 import sync_pb2
from google.api import annotations_pb2, field_behavior_pb2
from google.protobuf import descriptor_pb2, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate

from gateway import openapi, transcode
from gateway.app import create_app
from gateway.errors import ApiError, bad_request
from gateway.routes import Route, build_routes, service_descriptors
from gateway.settings import load_gateway_settings
from svclib import limits
from svclib.protogen import compile_descriptor_set

F = FieldDescriptor
ERROR_STATUSES = {"400", "401", "403", "404", "409", "429", "500", "503", "504"}
PROBES = {("GET", "/healthz"), ("GET", "/readyz")}


@pytest.fixture(scope="module")
def routes() -> list[Route]:
    return build_routes()


@pytest.fixture(scope="module")
def document(routes) -> dict[str, Any]:
    return openapi.build_document(routes)


@pytest.fixture(scope="module")
def protos(tmp_path_factory) -> list[descriptor_pb2.FileDescriptorProto]:
    """The suite's protos as they are now, compiled with their comments."""
    path = tmp_path_factory.mktemp("protos") / "protos.binpb"
    assert compile_descriptor_set(path) == 0, "protoc failed on protos/"
    return list(descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes()).file)


def operations(document) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, op in item.items():
            yield method.upper(), path, op


def api_operations(document) -> Iterator[tuple[str, str, dict[str, Any]]]:
    return ((m, p, op) for m, p, op in operations(document) if p.startswith("/api/"))


def resolve(document, ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def normalized(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------
# One contract


def test_document_is_valid_openapi(document):
    validate(document)
    assert document["openapi"].startswith("3.")


def annotated_operations(protos) -> set[tuple[str, str, str]]:
    """(HTTP method, OpenAPI path, gRPC method) straight from the compiled protos' annotations."""
    found = set()
    for file in protos:
        for service in file.service:
            for method in service.method:
                if not method.options.HasExtension(annotations_pb2.http):
                    continue
                rule = method.options.Extensions[annotations_pb2.http]
                for binding in [rule, *rule.additional_bindings]:
                    kind = binding.WhichOneof("pattern")
                    verb, template = (
                        (binding.custom.kind, binding.custom.path)
                        if kind == "custom"
                        else (kind, getattr(binding, kind))
                    )
                    path = re.sub(r"\{([^}=]+)(=[^}]*)?\}", r"{\1}", template)
                    found.add((verb.upper(), path, f"{file.package}.{service.name}/{method.name}"))
    return found


def test_operations_are_exactly_the_annotated_routes(document, routes, protos):
    documented = {(m, p, op.get("x-grpc-method")) for m, p, op in operations(document) if (m, p) not in PROBES}
    annotated = annotated_operations(protos)
    served = {(r.http_method, openapi.openapi_path(r.path_template), r.grpc_path.lstrip("/")) for r in routes}
    assert annotated, "no google.api.http annotation found in protos/"
    assert documented == annotated
    assert served == annotated, "the generated code is stale: run `make gen`"
    assert {(m, p) for m, p, _ in operations(document)} - {(m, p) for m, p, _ in annotated} == PROBES
    ids = [op["operationId"] for _, _, op in operations(document)]
    assert len(ids) == len(set(ids))


def _comparable(file: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """The file without what protoc's Python generator leaves out (source info, json names)."""
    copy = descriptor_pb2.FileDescriptorProto()
    copy.CopyFrom(file)
    copy.ClearField("source_code_info")

    def strip(message: descriptor_pb2.DescriptorProto) -> None:
        for field in message.field:
            field.ClearField("json_name")
        for nested in message.nested_type:
            strip(nested)

    for message in copy.message_type:
        strip(message)
    return copy


def test_generated_code_matches_the_protos(protos):
    """What the gateway serves (the generated modules) is what protos/ says now."""
    generated = {}
    for _, service in service_descriptors():
        proto = descriptor_pb2.FileDescriptorProto.FromString(service.file.serialized_pb)
        generated[proto.name] = _comparable(proto)
    assert generated
    for file in protos:
        if file.name in generated:
            assert generated[file.name] == _comparable(file), f"{file.name} changed since `make gen`: run it"
    assert generated.keys() <= {f.name for f in protos}


def test_every_ref_resolves(document):
    found = list(refs(document))
    assert found
    for ref in found:
        target = resolve(document, ref)
        assert isinstance(target, dict) and target, ref


# ---------------------------------------------------------------------------------------------
# Operations


def _route_of(routes, method: str, path: str) -> Route:
    return next(r for r in routes if r.http_method == method and openapi.openapi_path(r.path_template) == path)


def test_every_api_operation_documents_request_response_and_errors(document, routes):
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    for method, path, op in api_operations(document):
        route = _route_of(routes, method, path)
        where = f"{method} {path}"
        # The login takes a token but needs none (gateway/login.py: local mode signs one).
        login = route.grpc_path == "/finpulse.onboarding.v1.OnboardingService/Login"
        assert op["security"] == [{"bearerAuth": []}] + ([{}] if login else []), where
        ok = op["responses"]["200"]
        if route.is_server_streaming:
            assert set(ok["content"]) == {"text/event-stream"}, where
            assert resolve(document, ok["x-event-schema"]["$ref"])
        else:
            assert set(ok["content"]) == {"application/json"}, where
            assert ok["content"]["application/json"]["schema"], where
        errors = {status for status in op["responses"] if status != "200"}
        assert errors == ERROR_STATUSES | ({"413"} if route.body else set()), where
        for status in errors:
            response = resolve(document, op["responses"][status]["$ref"])
            assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
        assert "Retry-After" in resolve(document, op["responses"]["429"]["$ref"])["headers"]
        assert "WWW-Authenticate" in resolve(document, op["responses"]["401"]["$ref"])["headers"]

        # Every field of the request can be sent: path, query, body or header.
        params = {(p["in"], p["name"]) for p in op.get("parameters", [])}
        assert {name for where_, name in params if where_ == "path"} == set(route.path_fields), where
        assert re.findall(r"\{([^}]+)\}", path) == list(route.path_fields)
        body = op.get("requestBody")
        assert (body is not None) == bool(route.body), where
        if body is not None:
            assert body["content"]["application/json"]["schema"], where
        covered = set(route.path_fields) | {name.split(".")[0] for w, name in params if w == "query"}
        if ("header", "Idempotency-Key") in params:
            covered.add("idempotency_key")
        if route.body == "*":
            schema = body["content"]["application/json"]["schema"]
            schema = resolve(document, schema["$ref"]) if "$ref" in schema else schema
            covered |= set(schema["properties"])
            assert "idempotency_key" not in schema["properties"] or ("header", "Idempotency-Key") not in params
        elif route.body:
            covered.add(route.body)
        settable = {
            f.name
            for f in route.input_descriptor.fields
            if not (
                f.message_type is not None
                and (f.is_repeated or f.message_type.GetOptions().map_entry)
                and f.message_type.full_name not in openapi.SCALAR_JSON_MESSAGES
            )
        }
        assert settable <= covered, f"{where}: {settable - covered} cannot be sent"


def test_error_schema_is_the_gateways_error_body(document):
    error = document["components"]["schemas"]["Error"]
    validator = OAS30Validator(error)
    body = bad_request("x: bad", violations=[("x", "bad")]).body()
    validator.validate(json.loads(json.dumps(body)))
    assert set(error["required"]) == set(body)
    validator.validate(ApiError(grpc.StatusCode.UNAVAILABLE, "down").body())
    validator.validate(error["example"])
    assert not validator.is_valid({**body, "extra": 1})
    assert not validator.is_valid({**body, "error": "NOT_A_CODE"})


def test_required_fields_user_id_and_idempotency_key(document, routes):
    """REQUIRED -> required (but `user_id`, which the token supplies); `idempotency_key` is a header."""
    with_key = 0
    for route in routes:
        op = document["paths"][openapi.openapi_path(route.path_template)][route.http_method.lower()]
        params = {(p["in"], p["name"]): p for p in op.get("parameters", [])}
        for name, field in route.query_fields().items():
            behaviors = field.GetOptions().Extensions[field_behavior_pb2.field_behavior]
            if name == "user_id":
                assert params[("query", name)]["required"] is False
            elif name != "idempotency_key" and "." not in name:
                assert params[("query", name)]["required"] == (field_behavior_pb2.REQUIRED in behaviors), name
        key = route.input_descriptor.fields_by_name.get("idempotency_key")
        if key is not None:
            with_key += 1
            header = params[("header", "Idempotency-Key")]
            assert header["schema"]["type"] == "string"
            assert ("query", "idempotency_key") not in params
        if route.body == "*":
            schema = op["requestBody"]["content"]["application/json"]["schema"]
            schema = resolve(document, schema["$ref"]) if "$ref" in schema else schema
            required = {
                f.name
                for f in route.input_descriptor.fields
                if field_behavior_pb2.REQUIRED in f.GetOptions().Extensions[field_behavior_pb2.field_behavior]
            }
            assert set(schema.get("required", [])) == required - {"user_id", "idempotency_key"} - set(route.path_fields)
    # No proto has an idempotency_key any more? Then this part of the document is untested: say so.
    assert with_key, "no request has an idempotency_key: nothing to check the header mapping on"


# ---------------------------------------------------------------------------------------------
# Schemas are what transcode renders


def _sample(desc: Descriptor, depth: int = 0):
    """A message with every field set (one element in repeated fields and maps)."""
    message = message_factory.GetMessageClass(desc)()
    if desc.full_name.startswith("google.protobuf."):
        if desc.full_name == "google.protobuf.Timestamp":
            message.FromJsonString("2025-01-31T12:00:00.250Z")
        return message
    for field in desc.fields:
        if field.containing_oneof is not None and field.containing_oneof.fields[0] is not field:
            continue  # one member per oneof
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            entry_fields = field.message_type.fields_by_name
            key_field, value_field = entry_fields["key"], entry_fields["value"]
            key = _scalar(key_field)
            target = getattr(message, field.name)
            if value_field.message_type is not None:
                if depth < 3:
                    target[key].CopyFrom(_sample(value_field.message_type, depth + 1))
            else:
                target[key] = _scalar(value_field)
        elif field.message_type is not None:
            if depth >= 3:
                continue
            value = _sample(field.message_type, depth + 1)
            if field.is_repeated:
                getattr(message, field.name).add().CopyFrom(value)
            else:
                getattr(message, field.name).CopyFrom(value)
        elif field.is_repeated:
            getattr(message, field.name).append(_scalar(field))
        else:
            setattr(message, field.name, _scalar(field))
    return message


def _scalar(field: FieldDescriptor):
    if field.type == F.TYPE_ENUM:
        return field.enum_type.values[-1].number
    if field.type == F.TYPE_BOOL:
        return True
    if field.type in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return 1.5
    if field.type == F.TYPE_STRING:
        return "text"
    if field.type == F.TYPE_BYTES:
        return b"\x00\xff"
    if field.type in (F.TYPE_UINT32, F.TYPE_FIXED32, F.TYPE_UINT64, F.TYPE_FIXED64):
        return 2**32 - 1 if field.type in (F.TYPE_UINT32, F.TYPE_FIXED32) else 2**63
    return -7


def _validator(document, schema) -> OAS30Validator:
    return OAS30Validator({**schema, "components": document["components"]})


def test_response_schemas_match_rendered_replies(document, routes):
    """Every reply, fully set and fully empty, rendered by transcode, validates against its schema."""
    checked = 0
    for route in routes:
        op = document["paths"][openapi.openapi_path(route.path_template)][route.http_method.lower()]
        ok = op["responses"]["200"]
        schema = ok["x-event-schema"] if route.is_server_streaming else ok["content"]["application/json"]["schema"]
        validator = _validator(document, schema)
        empty = message_factory.GetMessageClass(route.output_descriptor)()
        for reply in (_sample(route.output_descriptor), empty):
            rendered = json.loads(json.dumps(transcode.render(reply, route)))
            errors = sorted(validator.iter_errors(rendered), key=str)
            assert not errors, f"{route.grpc_path}: {errors[0]}"
            checked += 1
    assert checked == 2 * len(routes)


def test_schemas_reject_what_transcode_never_renders(document):
    """The mapping is exact: int64 as strings, enums by name, no unknown keys, null only with presence."""
    sync_event = _validator(document, {"$ref": "#/components/schemas/sync.v1.SyncEvent"})
    valid = json.loads(json.dumps(transcode.render(_sample(sync_pb2.SyncEvent.DESCRIPTOR))))
    assert sync_event.is_valid(valid)
    assert not sync_event.is_valid({**valid, "unknown": 1})
    assert not sync_event.is_valid({**valid, "state": 2})  # enums are names
    assert not sync_event.is_valid({**valid, "job_id": None})  # no presence: never null
    assert sync_event.is_valid({**valid, "error": None, "progress": None, "at": None})  # presence: null when unset
    cache = _validator(document, {"$ref": "#/components/schemas/dashboard.v1.CacheInfo"})
    assert cache.is_valid({"data_version": "12"})
    assert not cache.is_valid({"data_version": 12})  # int64 is a string


# ---------------------------------------------------------------------------------------------
# Request size limits

LIMIT_KEYS = ("maxLength", "maxItems", "maxProperties")


def _declared_max(field: FieldDescriptor) -> int | None:
    """The field's `(finpulse.options.v1.max_length)`, read here from its options."""
    return next(
        (int(v) for ext, v in field.GetOptions().ListFields() if ext.full_name == "finpulse.options.v1.max_length"),
        None,
    )


def _text(field: FieldDescriptor, limit: int) -> dict[str, int]:
    if field.message_type is None and field.type == F.TYPE_STRING:
        return {"maxLength": limit}
    if field.message_type is None and field.type == F.TYPE_BYTES:
        return {"maxLength": 4 * -(-limit // 3)}  # base64
    return {}


def expected_limits(field: FieldDescriptor) -> tuple[dict[str, int], dict[str, int]]:
    """(limits of the field's value, limits of each element / map value), as svclib.limits checks them."""
    declared = _declared_max(field)
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        return (
            {"maxProperties": declared or limits.DEFAULT_ITEMS},
            _text(field.message_type.fields_by_name["value"], limits.DEFAULT_TEXT),
        )
    if field.is_repeated:
        return {"maxItems": declared or limits.DEFAULT_ITEMS}, _text(field, limits.DEFAULT_TEXT)
    return _text(field, declared or limits.DEFAULT_TEXT), {}


def documented_limits(schema: dict[str, Any]) -> tuple[dict[str, int], dict[str, int]]:
    inner = schema.get("items", schema.get("additionalProperties"))
    inner = inner if isinstance(inner, dict) else {}
    return ({k: schema[k] for k in LIMIT_KEYS if k in schema}, {k: inner[k] for k in LIMIT_KEYS if k in inner})


def reachable(roots) -> dict[str, Descriptor]:
    found: dict[str, Descriptor] = {}
    stack = list(roots)
    while stack:
        desc = stack.pop()
        if desc.full_name not in found and not desc.full_name.startswith("google."):
            found[desc.full_name] = desc
            stack += [f.message_type for f in desc.fields if f.message_type is not None]
    return found


def test_request_fields_document_the_size_limits(document, routes):
    """Every field of a request message (and of the messages it carries) has svclib.limits' limit in its
    schema, in the components, the inline bodies and the parameters; messages only replies carry have none."""
    schemas = document["components"]["schemas"]
    requests = reachable(r.input_descriptor for r in routes)
    replies = reachable(r.output_descriptor for r in routes)
    assert requests["finpulse.sync.v1.StartSyncRequest"].fields_by_name["reason"]  # a declared limit is covered
    checked = 0
    for full_name, desc in requests.items():
        if desc.GetOptions().map_entry or openapi.schema_name(full_name) not in schemas:
            continue
        properties = schemas[openapi.schema_name(full_name)]["properties"]
        for field in desc.fields:
            assert documented_limits(properties[field.name]) == expected_limits(field), field.full_name
            checked += 1
    assert checked
    assert documented_limits(schemas["sync.v1.StartSyncRequest"]["properties"]["reason"])[0] == {"maxLength": 64}
    for full_name in replies.keys() - requests.keys():
        schema = schemas.get(openapi.schema_name(full_name))
        if schema is not None:
            assert not [key for key in LIMIT_KEYS if key in json.dumps(schema)], full_name
    for route in routes:
        op = document["paths"][openapi.openapi_path(route.path_template)][route.http_method.lower()]
        for parameter in op.get("parameters", []):
            name = "idempotency_key" if parameter["in"] == "header" else parameter["name"]
            leaf = route.input_descriptor.fields_by_name[name] if "." not in name else None
            if leaf is not None:
                assert documented_limits(parameter["schema"]) == expected_limits(leaf), (route.grpc_path, name)
        body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
        for name, prop in body.get("properties", {}).items():
            assert documented_limits(prop) == expected_limits(route.input_descriptor.fields_by_name[name]), name


# ---------------------------------------------------------------------------------------------
# Descriptions from the proto comments


def raw_comments(protos) -> dict[str, str]:
    """Full name -> leading comment, read from the source info here (not with gateway.openapi)."""
    found: dict[str, str] = {}
    for file in protos:
        locations = {tuple(loc.path): loc.leading_comments for loc in file.source_code_info.location}
        for i, message in enumerate(file.message_type):
            name = f"{file.package}.{message.name}"
            found[name] = locations.get((4, i), "")
            for j, field in enumerate(message.field):
                found[f"{name}.{field.name}"] = locations.get((4, i, 2, j), "")
        for i, enum in enumerate(file.enum_type):
            name = f"{file.package}.{enum.name}"
            found[name] = locations.get((5, i), "")
            for j, value in enumerate(enum.value):
                found[f"{name}.{value.name}"] = locations.get((5, i, 2, j), "")
        for i, service in enumerate(file.service):
            name = f"{file.package}.{service.name}"
            found[name] = locations.get((6, i), "")
            for j, method in enumerate(service.method):
                found[f"{name}.{method.name}"] = locations.get((6, i, 2, j), "")
    return {k: normalized(v) for k, v in found.items()}


def exposed_messages(routes) -> dict[str, Descriptor]:
    found: dict[str, Descriptor] = {}

    def walk(desc: Descriptor) -> None:
        if desc.full_name in found or desc.full_name.startswith("google."):
            return
        if desc.GetOptions().map_entry:
            value = desc.fields_by_name["value"]
            if value.message_type is not None:
                walk(value.message_type)
            return
        found[desc.full_name] = desc
        for field in desc.fields:
            if field.message_type is not None:
                walk(field.message_type)

    for route in routes:
        walk(route.input_descriptor)
        walk(route.output_descriptor)
    return found


def test_descriptions_come_from_proto_comments(document, routes, protos):
    comments = raw_comments(protos)
    schemas = document["components"]["schemas"]
    for _method, _path, op in api_operations(document):
        grpc_method = op["x-grpc-method"].replace("/", ".")
        assert comments[grpc_method], f"{grpc_method} has no comment"
        assert normalized(op["description"]) == comments[grpc_method]
        assert comments[grpc_method].startswith(op["summary"])
    tags = {t["name"]: t.get("description", "") for t in document["tags"]}
    for route in routes:
        assert normalized(tags[route.service_full_name.rsplit(".", 1)[1]]) == comments[route.service_full_name]
    for full_name, desc in exposed_messages(routes).items():
        schema = schemas.get(openapi.schema_name(full_name))
        if schema is None:  # a request message documented inline (fields bound to the path or headers)
            continue
        assert comments[full_name], f"message {full_name} has no comment"
        assert normalized(schema["description"]).startswith(comments[full_name]), full_name
        for field in desc.fields:
            assert comments[field.full_name], f"field {field.full_name} has no comment"
            prop = schema["properties"][field.name]
            assert normalized(prop["description"]).startswith(comments[field.full_name]), field.full_name
        for field in desc.fields:
            enum = field.enum_type
            if enum is None:
                continue
            text = normalized(schemas[openapi.schema_name(enum.full_name)]["description"])
            assert comments[enum.full_name] and text.startswith(comments[enum.full_name])
            for value in enum.values:
                if value.number:
                    assert comments[f"{enum.full_name}.{value.name}"], f"{enum.full_name}.{value.name}: no comment"
                    assert comments[f"{enum.full_name}.{value.name}"] in text


def test_parameters_are_described(document):
    for method, path, op in api_operations(document):
        for parameter in op.get("parameters", []):
            assert parameter.get("description"), f"{method} {path}: {parameter['name']} has no description"


# ---------------------------------------------------------------------------------------------
# Served by the gateway


@pytest.fixture
async def gateway_client():
    settings = load_gateway_settings({"FINPULSE_ENV": "local", "FINPULSE_JWT_SECRET": "s" * 40})
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    yield client
    await client.close()


async def test_openapi_json_and_docs_are_served(gateway_client, document):
    resp = await gateway_client.get("/openapi.json")
    assert resp.status == 200 and resp.content_type == "application/json"
    assert await resp.json() == json.loads(json.dumps(document))

    resp = await gateway_client.get("/docs")
    assert resp.status == 200 and resp.content_type == "text/html"
    page = await resp.text()
    assert "openapi.json" in page
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert assets and not [a for a in assets if "//" in a], "Swagger UI must come from the gateway, not a CDN"
    for asset in assets:
        resp = await gateway_client.get("/" + asset)
        assert resp.status == 200, asset
        assert len(await resp.read()) > 0
    # Not behind authentication: documentation is public.
    resp = await gateway_client.get("/api/banks")
    assert resp.status == 401
    # Only Swagger UI's own files: a name that is not one of them is the gateway's JSON 404.
    for name in ("nope.js", "..", ".%2e", "%2e%2e%2fREADME.md"):
        resp = await gateway_client.get("/docs/static/" + name)
        assert resp.status == 404 and (await resp.json())["error_code"] == "ROUTE_NOT_FOUND", name
