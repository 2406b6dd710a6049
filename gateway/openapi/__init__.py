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
- fields of request messages (the RPCs' input messages and every message reachable from them) carry
  the contract's size limits (`svclib.limits`): `maxLength`, `maxItems`, `maxProperties`;
- a top-level string `idempotency_key` of a request is the `Idempotency-Key` header instead;
- every `/api` operation requires the `bearerAuth` scheme and documents its error answers
  (`components/responses`, all with the one `Error` body of `gateway.errors`: `error_code` and the
  `google.rpc` details ErrorInfo, BadRequest, RetryInfo; an example per gRPC code under its status).

Proto comments (leading and trailing) of services, RPCs, messages, fields, enums and enum values
become the descriptions. The generated modules do not keep comments, so they are read from the
descriptor set with source info that `svclib.protogen` writes next to the generated code.

`setup(app, routes)` serves the document at `GET /openapi.json` (built once, when the app is
created) and Swagger UI at `GET /docs`, with its assets from the `swagger-ui-bundle` package.

Modules, along those seams: `comments` (the proto comments from the descriptor set), `schemas`
(JSON schemas of messages, enums and fields), `errors` (the `Error` body, the error responses and
their examples), `probes` (`/healthz`, `/readyz`), `document` (paths, operations, security and the
whole document: `build_document`), `serving` (`/openapi.json`, the `/docs` page, `setup`).
"""

from __future__ import annotations

from gateway.openapi.comments import comments_from_files, descriptor_set_path, load_comments
from gateway.openapi.document import (
    API_DESCRIPTION,
    DocumentBuilder,
    build_document,
    idempotency_key_field,
    openapi_path,
)
from gateway.openapi.errors import ERROR_RESPONSES, error_schema
from gateway.openapi.probes import probe_paths
from gateway.openapi.schemas import NULL_SCHEMA, SCALAR_JSON_MESSAGES, SchemaBuilder, schema_name, user_id_note
from gateway.openapi.serving import DOCS_HTML, OPENAPI_JSON, setup, swagger_ui_dir

__all__ = [
    "API_DESCRIPTION",
    "DOCS_HTML",
    "ERROR_RESPONSES",
    "NULL_SCHEMA",
    "OPENAPI_JSON",
    "SCALAR_JSON_MESSAGES",
    "DocumentBuilder",
    "SchemaBuilder",
    "build_document",
    "comments_from_files",
    "descriptor_set_path",
    "error_schema",
    "idempotency_key_field",
    "load_comments",
    "openapi_path",
    "probe_paths",
    "schema_name",
    "setup",
    "swagger_ui_dir",
    "user_id_note",
]
