"""schemathesis against the running suite's `/openapi.json`: every operation, generated requests
(valid and invalid ones), and every answer must be documented: no 5xx, a documented status code and
content type, a body (Server-Sent Events too) and headers that conform to the documented schema, and
requests without a token refused.

Not checked: that every schema-invalid request is refused (schemathesis' `negative_data_rejection`).
The document describes the canonical proto3 JSON form, and the gateway also takes what the proto3
JSON mapping allows besides it (`null` for any field, numbers as strings, enum numbers, lowerCamelCase
names), so such requests are rightly accepted.

Each generated request acts as a user of its own (a fresh bearer token from `suite.token`), so the
per-user rate limit of one user does not shape what the others see. In valid requests the `user_id`
(path, query or body) is that user, so the calls get past the 403 of a foreign user and reach the
services; invalid requests are sent as generated. The run is bounded (`MAX_EXAMPLES` per operation
and mode) and deterministic (derandomized, no example database).

One test per operation of the document the gateway builds from the protos (`gateway.openapi`); the
operation itself, with the schemas schemathesis generates from, is read from the running gateway.
"""

from __future__ import annotations

import itertools

import hypothesis
import pytest
import requests
import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.openapi import build_document
from gateway.routes import build_routes

MAX_EXAMPLES = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    ignored_auth,
]
OPERATIONS = sorted(
    (method.upper(), path) for path, item in build_document(build_routes(), {})["paths"].items() for method in item
)


@pytest.fixture(scope="module")
def api_schema(suite):
    config = schemathesis.Config.from_dict(
        {
            "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
            "request-timeout": 30,
        }
    )
    return schemathesis.openapi.from_url(f"{suite.gateway_url}/openapi.json", config=config)


@pytest.fixture(scope="module")
def http():
    with requests.Session() as session:
        yield session


_users = itertools.count(1)


def _act_as(case, user: str) -> None:
    """A valid request names the token's user wherever it names a user."""
    if case.path_parameters and "user_id" in case.path_parameters:
        case.path_parameters["user_id"] = user
    if case.query and "user_id" in case.query:
        case.query["user_id"] = user
    if isinstance(case.body, dict) and "user_id" in case.body:
        case.body["user_id"] = user


def test_the_served_document_has_every_operation(api_schema):
    served = sorted((method.upper(), path) for path, item in api_schema.raw_schema["paths"].items() for method in item)
    assert served == OPERATIONS


# Every operation with valid data, and with invalid data where it takes any input (the probes take none).
CASES = [
    (method, path, mode)
    for method, path in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or path.startswith("/api/")
]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("method, path, mode", CASES, ids=[f"{mode.value}-{m} {p}" for m, p, mode in CASES])
def test_every_answer_is_documented(api_schema, suite, http, method, path, mode):
    operation = api_schema[path][method]
    if mode is GenerationMode.NEGATIVE:
        assert operation.path_parameters or operation.query or operation.headers or operation.body, (
            f"{method} {path} takes no input: list it with the probes"
        )

    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    def check(case):
        user = f"schemathesis-{next(_users)}"
        if mode is GenerationMode.POSITIVE:
            _act_as(case, user)
        headers = {"Authorization": f"Bearer {suite.token(user)}"} if path.startswith("/api/") else {}
        response = case.call(session=http, headers=headers, timeout=30)
        case.validate_response(response, checks=CHECKS, headers=headers)

    check()
