"""Gateway tests: HTTP <-> gRPC translation against in-process fake backends.

Each backend is a `grpc.aio` server on a free port hosting a recording fake of the generated
servicer (every RPC records its request and metadata, then answers a canned reply or aborts) plus
the standard health service. These tests check the gateway's routing, transcoding, error mapping
and plumbing; the real services have their own tests.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from typing import Any

import aiohttp
import grpc
import jwt
import pytest
from aiohttp.test_utils import TestClient, TestServer
from finpulse.consent.v1 import consent_pb2, consent_pb2_grpc
from finpulse.dashboard.v1 import dashboard_pb2, dashboard_pb2_grpc
from finpulse.onboarding.v1 import onboarding_pb2, onboarding_pb2_grpc
from finpulse.sync.v1 import sync_pb2, sync_pb2_grpc
from google.api import annotations_pb2
from google.protobuf import message_factory, timestamp_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gateway import transcode
from gateway.app import DEFAULT_MAX_BODY_BYTES, create_app
from gateway.errors import ApiError
from gateway.routes import (
    SERVICE_MODULES,
    Route,
    RouteError,
    _convert_template,
    build_routes,
    routes_for_services,
    service_descriptors,
)
from gateway.settings import load_gateway_settings
from svclib.clients import ServiceClients
from svclib.internal_auth import Verifier
from tests.conftest import INTERNAL_SECRET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# service key -> (generated servicer base class, add_to_server, service descriptor)
SERVICES = {
    "onboarding": (
        onboarding_pb2_grpc.OnboardingServiceServicer,
        onboarding_pb2_grpc.add_OnboardingServiceServicer_to_server,
        onboarding_pb2.DESCRIPTOR.services_by_name["OnboardingService"],
    ),
    "consent": (
        consent_pb2_grpc.ConsentServiceServicer,
        consent_pb2_grpc.add_ConsentServiceServicer_to_server,
        consent_pb2.DESCRIPTOR.services_by_name["ConsentService"],
    ),
    "sync": (
        sync_pb2_grpc.SyncServiceServicer,
        sync_pb2_grpc.add_SyncServiceServicer_to_server,
        sync_pb2.DESCRIPTOR.services_by_name["SyncService"],
    ),
    "dashboard": (
        dashboard_pb2_grpc.DashboardServiceServicer,
        dashboard_pb2_grpc.add_DashboardServiceServicer_to_server,
        dashboard_pb2.DESCRIPTOR.services_by_name["DashboardService"],
    ),
}


# ---------------------------------------------------------------------------------------------
# Fake backends


@dataclasses.dataclass
class Abort:
    code: grpc.StatusCode
    message: str
    trailing_metadata: tuple = ()


@dataclasses.dataclass
class Sleep:
    seconds: float


@dataclasses.dataclass
class WithTrailers:
    reply: Any
    metadata: tuple


@dataclasses.dataclass
class Call:
    method: str
    request: Any
    metadata: dict[str, str]


class Backend:
    """A grpc.aio server with a recording fake of one service and a health service."""

    def __init__(self, key: str, with_health: bool = True):
        self.key = key
        self.with_health = with_health
        self.calls: list[Call] = []
        self.replies: dict[str, Any] = {}  # method -> message | Abort | Sleep | Exception | callable
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.addr = ""

    def _servicer(self):
        base, _, service = SERVICES[self.key]
        backend = self

        def rpc(method):
            reply_cls = message_factory.GetMessageClass(method.output_type)

            async def handler(self, request, context):
                backend.calls.append(Call(method.name, request, dict(context.invocation_metadata())))
                reply = backend.replies.get(method.name)
                if callable(reply) and not isinstance(reply, type):
                    reply = reply(request)
                if isinstance(reply, Sleep):
                    await asyncio.sleep(reply.seconds)
                    reply = None
                if isinstance(reply, Abort):
                    await context.abort(reply.code, reply.message, trailing_metadata=reply.trailing_metadata)
                if isinstance(reply, Exception):
                    raise reply
                if isinstance(reply, WithTrailers):
                    context.set_trailing_metadata(reply.metadata)
                    reply = reply.reply
                return reply if reply is not None else reply_cls()

            return handler

        return type(f"Fake{service.name}", (base,), {m.name: rpc(m) for m in service.methods})()

    async def start(self) -> None:
        _, add_to_server, _ = SERVICES[self.key]
        self.server = grpc.aio.server()
        add_to_server(self._servicer(), self.server)
        if self.with_health:
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
            await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.addr = f"127.0.0.1:{port}"
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop(None)

    def methods_called(self) -> list[str]:
        return [c.method for c in self.calls]


@pytest.fixture
async def backends():
    started = {key: Backend(key) for key in SERVICES}
    for backend in started.values():
        await backend.start()
    yield started
    for backend in started.values():
        await backend.stop()


@pytest.fixture
async def make_gateway(backends):
    """Factory: a TestClient on a gateway app over the fake backends (env overrides FINPULSE_*)."""
    opened: list[tuple[TestClient, ServiceClients]] = []

    async def make(env: dict[str, str] | None = None, **app_kwargs) -> TestClient:
        environ = {f"FINPULSE_{key.upper()}_ADDR": b.addr for key, b in backends.items()}
        # Transcoding tests act as a trusted local frontend; tests/test_auth.py covers tokens.
        environ.update(
            {
                "FINPULSE_RPC_TIMEOUT": "5",
                "FINPULSE_CORS_ORIGINS": "http://localhost:3000",
                "FINPULSE_AUTH_DEV_TRUST_USER": "1",
                "FINPULSE_INTERNAL_SECRET": INTERNAL_SECRET,
            }
        )
        environ.update(env or {})
        settings = load_gateway_settings(environ)
        clients = ServiceClients(settings, "gateway")
        client = TestClient(TestServer(create_app(settings, clients, **app_kwargs)))
        await client.start_server()
        opened.append((client, clients))
        return client

    yield make
    for client, clients in opened:
        await client.close()
        await clients.close()


@pytest.fixture
async def gw(make_gateway):
    return await make_gateway()


def acting_user(call: Call) -> str | None:
    """The user of the gateway's signed statement on a backend call (svclib.internal_auth)."""
    caller = Verifier(INTERNAL_SECRET).verify(call.metadata["authorization"])
    assert caller.name == "gateway"
    return caller.user


def all_calls(backends) -> list[str]:
    return [f"{key}.{name}" for key, b in backends.items() for name in b.methods_called()]


# ---------------------------------------------------------------------------------------------
# Route table


def annotated_bindings() -> set[tuple[str, str, str]]:
    """(HTTP method, path template, gRPC path) read straight from the annotations."""
    found = set()
    for module_name in SERVICE_MODULES.values():
        module = __import__(module_name, fromlist=["DESCRIPTOR"])
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                if not method.GetOptions().HasExtension(annotations_pb2.http):
                    continue
                rule = method.GetOptions().Extensions[annotations_pb2.http]
                for binding in [rule, *rule.additional_bindings]:
                    kind = binding.WhichOneof("pattern")
                    found.add((kind.upper(), getattr(binding, kind), f"/{service.full_name}/{method.name}"))
    return found


def test_route_table_equals_annotations():
    routes = build_routes()
    assert {(r.http_method, r.path_template, r.grpc_path) for r in routes} == annotated_bindings()
    # The documented endpoints that exist in the protos today, and some internal RPCs that must not be routed.
    table = {(r.http_method, r.path_template): f"{r.service_key}.{r.method_name}" for r in routes}
    for binding, rpc in {
        ("POST", "/api/onboarding/start"): "onboarding.StartOnboarding",
        ("GET", "/api/onboarding/status"): "onboarding.GetOnboardingStatus",
        ("POST", "/api/onboarding/finalize"): "onboarding.FinalizeOnboarding",
        ("POST", "/api/onboarding/consents"): "consent.CreateConsents",
        ("GET", "/api/onboarding/consents/status"): "consent.GetConsentStatus",
        ("GET", "/api/banks"): "sync.ListBanks",
        ("DELETE", "/api/consents/{consent_id}"): "consent.RevokeConsent",
        ("PUT", "/api/users/{user_id}/financial-inputs"): "dashboard.UpdateFinancialInputs",
    }.items():
        assert table[binding] == rpc
    internal_only = {"ListApprovedConsents", "ListUserConsents", "ListTransactions", "GetAggregates"}
    assert not internal_only & {r.method_name for r in routes}
    by_name = {r.method_name: r for r in routes}
    assert by_name["UpdateFinancialInputs"].body == "inputs"
    assert by_name["UpdateFinancialInputs"].path_fields == ("user_id",)
    assert by_name["CreateConsents"].body == "*"
    assert set(by_name["RevokeConsent"].query_fields()) == {"user_id"}


async def test_every_unary_route_is_registered(gw):
    registered = {(r.method, r.resource.canonical) for r in gw.app.router.routes() if r.resource is not None}
    for route in build_routes():
        assert (route.http_method, route.aiohttp_path) in registered or route.is_server_streaming


def test_conflicting_bindings_are_rejected():
    consent = [pair for pair in service_descriptors() if pair[0] == "consent"]
    with pytest.raises(RouteError, match="bound by both"):
        routes_for_services(consent + consent)


def test_path_template_conversion():
    desc = consent_pb2.RevokeConsentRequest.DESCRIPTOR
    assert _convert_template("/api/consents/{consent_id}", "m", desc) == ("/api/consents/{consent_id}", ("consent_id",))
    assert _convert_template("/api/{consent_id=consents/*}:revoke", "m", desc) == (
        "/api/{consent_id:consents/[^/]+}:revoke",
        ("consent_id",),
    )
    assert _convert_template("/u/{user_id}/c/{consent_id=**}", "m", desc) == (
        "/u/{user_id}/c/{consent_id:.+}",
        ("user_id", "consent_id"),
    )
    with pytest.raises(RouteError, match="nope"):
        _convert_template("/api/{nope}", "m", desc)
    with pytest.raises(RouteError, match="unsupported"):
        _convert_template("/api/*/x", "m", desc)
    nested = consent_pb2.BankConsentRequest.DESCRIPTOR
    assert _convert_template("/b/{bank_id}/{consents.account}", "m", nested) == (
        "/b/{bank_id}/{consents__account}",
        ("bank_id", "consents.account"),
    )
    with pytest.raises(RouteError, match="singular scalar"):
        _convert_template("/b/{consents}", "m", nested)


# ---------------------------------------------------------------------------------------------
# Request and response mapping


async def test_body_star_and_nulls_for_unset_presence_fields(gw, backends):
    backends["consent"].replies["CreateConsents"] = consent_pb2.CreateConsentsResponse(
        user_id="team200-1",
        overall_status="in_progress",
        results=[
            consent_pb2.BankConsentResult(
                bank_id="vbank",
                bank_name="VBank",
                account_consent=consent_pb2.ConsentOutcome(
                    status="pending", request_id="req-123", approval_url="https://vbank/approve?req=req-123"
                ),
            )
        ],
    )
    body = {
        "user_id": "team200-1",
        "banks": [{"bank_id": "vbank", "consents": {"account": True, "product": True, "payment": False}}],
    }
    resp = await gw.post("/api/onboarding/consents", json=body)
    assert resp.status == 200, await resp.text()
    data = await resp.json()
    [call] = backends["consent"].calls
    assert call.method == "CreateConsents"
    assert call.request == consent_pb2.CreateConsentsRequest(
        user_id="team200-1",
        banks=[
            consent_pb2.BankConsentRequest(
                bank_id="vbank", consents=consent_pb2.ConsentSelection(account=True, product=True)
            )
        ],
    )
    assert data["user_id"] == "team200-1" and data["overall_status"] == "in_progress"
    result = data["results"][0]
    assert result["bank_id"] == "vbank" and result["bank_name"] == "VBank"
    assert result["product_consent"] is None and result["payment_consent"] is None
    account = result["account_consent"]
    assert account["status"] == "pending" and account["request_id"] == "req-123"
    assert account["consent_id"] is None and account["error_message"] is None
    assert account["reused"] is False and account["expires_at"] is None


async def test_start_onboarding_shape(gw, backends):
    backends["onboarding"].replies["StartOnboarding"] = lambda req: onboarding_pb2.StartOnboardingResponse(
        onboarding_id="1d6305c0",
        user_id=req.user_id,
        status="started",
        **({"user_name": req.user_name} if req.HasField("user_name") else {}),
    )
    resp = await gw.post("/api/onboarding/start", json={"user_id": "team200-1"})
    assert resp.status == 200
    data = await resp.json()
    assert {k: data[k] for k in ("onboarding_id", "user_id", "user_name", "status")} == {
        "onboarding_id": "1d6305c0",
        "user_id": "team200-1",
        "user_name": None,
        "status": "started",
    }
    resp = await gw.post("/api/onboarding/start", json={"user_id": "team200-1", "user_name": "Ann"})
    assert (await resp.json())["user_name"] == "Ann"


async def test_path_field_and_named_body_field(gw, backends):
    backends["dashboard"].replies["UpdateFinancialInputs"] = lambda req: dashboard_pb2.UpdateFinancialInputsResponse(
        user_id=req.user_id, inputs=req.inputs, updated_at=timestamp_pb2.Timestamp(seconds=1764202764)
    )
    resp = await gw.put(
        "/api/users/u1/financial-inputs", json={"salary_amount": "120000.00", "next_salary_date": "2025-12-01"}
    )
    assert resp.status == 200, await resp.text()
    [call] = backends["dashboard"].calls
    assert call.request == dashboard_pb2.UpdateFinancialInputsRequest(
        user_id="u1", inputs=dashboard_pb2.FinancialInputs(salary_amount="120000.00", next_salary_date="2025-12-01")
    )
    assert await resp.json() == {
        "user_id": "u1",
        "updated_at": "2025-11-27T00:19:24Z",
        "inputs": {
            "salary_amount": "120000.00",
            "next_salary_date": "2025-12-01",
            "credit_payment_amount": None,
            "credit_payment_date": None,
        },
    }
    resp = await gw.get("/api/users/u%202/financial-inputs")
    assert resp.status == 200
    assert backends["dashboard"].calls[-1].request == dashboard_pb2.GetFinancialInputsRequest(user_id="u 2")
    assert (await resp.json())["inputs"] is None


async def test_delete_with_path_and_query(gw, backends):
    backends["consent"].replies["RevokeConsent"] = lambda req: consent_pb2.RevokeConsentResponse(
        consent_id=req.consent_id, bank_id="vbank", kind=consent_pb2.CONSENT_KIND_ACCOUNTS, status="REVOKED"
    )
    resp = await gw.delete("/api/consents/c-1?user_id=team200-1")
    assert resp.status == 200
    assert backends["consent"].calls[0].request == consent_pb2.RevokeConsentRequest(
        user_id="team200-1", consent_id="c-1"
    )
    assert await resp.json() == {
        "consent_id": "c-1",
        "bank_id": "vbank",
        "kind": "CONSENT_KIND_ACCOUNTS",
        "status": "REVOKED",
    }


async def test_query_string_get_with_map_response(gw, backends):
    backends["onboarding"].replies["GetOnboardingStatus"] = onboarding_pb2.GetOnboardingStatusResponse(
        onboarding_id="o1",
        current_step=3,
        completed_steps=[1, 2],
        consents_status={"vbank": onboarding_pb2.BankConsentKinds(accounts="APPROVED")},
        session_status=onboarding_pb2.SESSION_STATUS_STARTED,
    )
    resp = await gw.get("/api/onboarding/status", params={"onboarding_id": "o1"})
    assert resp.status == 200
    assert backends["onboarding"].calls[0].request.onboarding_id == "o1"
    data = await resp.json()
    assert data["current_step"] == 3 and data["completed_steps"] == [1, 2]
    assert data["consents_status"] == {"vbank": {"accounts": "APPROVED", "products": None, "payments": None}}
    assert data["session_status"] == "SESSION_STATUS_STARTED" and data["completed_at"] is None
    resp = await gw.get("/api/banks")  # user_id is optional here
    assert resp.status == 200 and await resp.json() == {"banks": []}
    assert not backends["sync"].calls[0].request.HasField("user_id")


def _route(desc, body="", path_fields=()) -> Route:
    """A route over an arbitrary message type, to exercise query typing without a backend."""
    return Route("GET", "/t", "/t", "x", "x.X", "M", desc, desc, body, tuple(path_fields), False)


class MultiDict(dict):
    def getall(self, key):
        value = self[key]
        return value if isinstance(value, list) else [value]


def test_query_typing_bools_ints_enums_repeated_nested():
    sel = transcode.build_request(
        _route(consent_pb2.ConsentSelection.DESCRIPTOR), b"", MultiDict(account="YES", product="off", payment="1"), {}
    )
    assert (sel.account, sel.product, sel.payment) == (True, False, True)
    status = transcode.build_request(
        _route(onboarding_pb2.GetOnboardingStatusResponse.DESCRIPTOR),
        b"",
        MultiDict(
            current_step="3",
            completed_steps=["1", "2"],
            session_status="SESSION_STATUS_COMPLETED",
            completed_at="2025-11-27T00:19:24Z",
        ),
        {},
    )
    assert status.current_step == 3 and list(status.completed_steps) == [1, 2]
    assert status.session_status == onboarding_pb2.SESSION_STATUS_COMPLETED
    assert status.completed_at.seconds == 1764202764
    bank = transcode.build_request(
        _route(consent_pb2.BankConsentRequest.DESCRIPTOR),
        b"",
        MultiDict({"bank_id": "v", "consents.account": "true"}),
        {},
    )
    assert bank.consents.account is True and bank.bank_id == "v"
    for query, expected in [
        ({"account": "maybe"}, 'account: expected a boolean (true/false, 1/0, yes/no, on/off), got "maybe"'),
        ({"consents.account": "2"}, "consents.account: expected a boolean"),
        ({"current_step": "1.5"}, 'current_step: expected an integer, got "1.5"'),
        ({"current_step": "99999999999"}, "current_step: 99999999999 is out of range"),
        ({"session_status": "NOPE"}, "session_status: expected one of SESSION_STATUS_UNSPECIFIED"),
        ({"completed_at": "yesterday"}, "completed_at:"),
        ({"current_step": ["1", "2"]}, "query parameter 'current_step' given more than once"),
        ({"consents_status": "x"}, "unknown query parameter 'consents_status'"),
    ]:
        desc = (
            consent_pb2.ConsentSelection
            if "account" in query
            else consent_pb2.BankConsentRequest
            if "consents.account" in query
            else onboarding_pb2.GetOnboardingStatusResponse
        ).DESCRIPTOR
        with pytest.raises(ApiError) as err:
            transcode.build_request(_route(desc), b"", MultiDict(query), {})
        assert err.value.http_status == 400 and expected in err.value.message, (query, err.value.message)


# ---------------------------------------------------------------------------------------------
# Bad input


BIG = b'{"user_id": "' + b"x" * (DEFAULT_MAX_BODY_BYTES + 10) + b'"}'
DEEP = b'{"user_id": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"

BAD_INPUT = [
    # (id, method, path, raw body, status, text expected in the message, field violation or None)
    ("malformed-json", "POST", "/api/onboarding/consents", b'{"user_id": "u",', 400, "malformed JSON", None),
    (
        "array-body",
        "POST",
        "/api/onboarding/consents",
        b'[{"user_id": "u"}]',
        400,
        "request body must be a JSON object, got an array",
        None,
    ),
    ("not-utf8", "POST", "/api/onboarding/start", b'{"user_id": "\xff"}', 400, "not UTF-8", None),
    ("too-deep", "POST", "/api/onboarding/start", DEEP, 400, "nested too deeply", None),
    ("nan", "POST", "/api/onboarding/start", b'{"user_id": NaN}', 400, "NaN is not valid JSON", None),
    (
        "wrong-type-bool",
        "POST",
        "/api/onboarding/consents",
        b'{"user_id": "u", "banks": [{"bank_id": "vbank", "consents": {"account": "yes"}}]}',
        400,
        'banks[0].consents.account: expected a boolean, got "yes"',
        "banks[0].consents.account",
    ),
    (
        "wrong-type-string",
        "POST",
        "/api/onboarding/start",
        b'{"user_id": 5}',
        400,
        "user_id: expected a string, got 5",
        "user_id",
    ),
    (
        "wrong-type-array",
        "POST",
        "/api/onboarding/consents",
        b'{"user_id": "u", "banks": {}}',
        400,
        "banks: expected an array, got an object",
        "banks",
    ),
    (
        "wrong-type-object",
        "POST",
        "/api/onboarding/consents",
        b'{"user_id": "u", "banks": [{"bank_id": "v", "consents": true}]}',
        400,
        "banks[0].consents: expected an object, got true",
        "banks[0].consents",
    ),
    (
        "wrong-type-named-body",
        "PUT",
        "/api/users/u1/financial-inputs",
        b'{"salary_amount": 100}',
        400,
        "inputs.salary_amount: expected a string, got 100",
        "inputs.salary_amount",
    ),
    (
        "unknown-body-field",
        "POST",
        "/api/onboarding/start",
        b'{"user_id": "u", "bogus": 1}',
        400,
        "bogus: unknown field",
        "bogus",
    ),
    (
        "duplicate-spelling",
        "POST",
        "/api/onboarding/start",
        b'{"user_id": "a", "userId": "b"}',
        400,
        "user_id: given twice (as user_id and userId)",
        "user_id",
    ),
    (
        "unknown-nested-field",
        "POST",
        "/api/onboarding/consents",
        b'{"user_id": "u", "banks": [{"bank_id": "v", "consents": {"account": true, "loans": true}}]}',
        400,
        "banks[0].consents.loans: unknown field",
        "banks[0].consents.loans",
    ),
    ("unknown-query", "GET", "/api/banks?user_id=u&limit=5", b"", 400, "unknown query parameter 'limit'", "limit"),
    (
        "query-on-body-route",
        "POST",
        "/api/onboarding/start?user_id=u",
        b'{"user_id": "u"}',
        400,
        "unknown query parameter 'user_id'",
        "user_id",
    ),
    ("repeated-singular-query", "GET", "/api/banks?user_id=a&user_id=b", b"", 400, "given more than once", "user_id"),
    ("body-on-bodyless-route", "DELETE", "/api/consents/c1?user_id=u", b'{"x": 1}', 400, "takes no request body", None),
    ("missing-required-top", "POST", "/api/onboarding/start", b"{}", 400, "user_id is required", "user_id"),
    (
        "missing-required-empty-body",
        "POST",
        "/api/onboarding/finalize",
        b"",
        400,
        "onboarding_id is required; user_id is required",
        "onboarding_id",
    ),
    ("missing-required-query", "GET", "/api/onboarding/consents/status", b"", 400, "user_id is required", "user_id"),
    (
        "missing-required-nested-repeated",
        "POST",
        "/api/onboarding/consents",
        b'{"user_id": "u", "banks": [{"bank_id": "vbank", "consents": {"account": true}}, {"bank_id": "abank"}]}',
        400,
        "banks[1].consents is required",
        "banks[1].consents",
    ),
    (
        "empty-required-id",
        "POST",
        "/api/onboarding/finalize",
        b'{"onboarding_id": "", "user_id": "u"}',
        400,
        "onboarding_id is required",
        "onboarding_id",
    ),
    (
        "blank-required-nested-id",
        "POST",
        "/api/onboarding/consents",
        b'{"user_id": "u", "banks": [{"bank_id": "  ", "consents": {}}]}',
        400,
        "banks[0].bank_id is required",
        "banks[0].bank_id",
    ),
    ("empty-required-query-id", "DELETE", "/api/consents/c1?user_id=", b"", 400, "user_id is required", "user_id"),
    ("missing-named-body", "PUT", "/api/users/u1/financial-inputs", b"", 400, "inputs is required", "inputs"),
    ("oversized", "POST", "/api/onboarding/start", BIG, 413, "too large", None),
]


@pytest.mark.parametrize("case", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
async def test_bad_input_is_400_naming_the_field(gw, backends, case):
    _, method, path, body, status, text, field = case
    resp = await gw.request(method, path, data=body, headers={"Content-Type": "application/json"})
    assert resp.status == status, await resp.text()
    data = await resp.json()
    assert data["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0] and data["error"] == "INVALID_ARGUMENT"
    assert text in data["message"], data["message"]
    if field is not None:
        [detail, info] = data["details"]
        assert detail["@type"] == "type.googleapis.com/google.rpc.BadRequest"
        assert detail["field_violations"][0]["field"] == field
        assert info["@type"] == "type.googleapis.com/google.rpc.ErrorInfo" and info["domain"] == "finpulse.gateway"
        assert info["reason"] == data["error_code"] and info["metadata"]["field"] == field
    assert "Traceback" not in data["message"]
    assert all_calls(backends) == []


# ---------------------------------------------------------------------------------------------
# Errors


EXPECTED_HTTP = {
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}


@pytest.mark.parametrize("code", [c for c in grpc.StatusCode if c != grpc.StatusCode.OK], ids=lambda c: c.name)
async def test_grpc_code_maps_to_http_status(gw, backends, code):
    backends["sync"].replies["ListBanks"] = Abort(code, f"boom {code.name}")
    resp = await gw.get("/api/banks?user_id=u1")
    assert resp.status == EXPECTED_HTTP[code.name]
    data = await resp.json()
    assert data["code"] == code.value[0] and data["error"] == code.name and data["details"] == []
    if code == grpc.StatusCode.UNKNOWN:
        assert data["message"] == "internal error in the sync service"
    else:
        assert data["message"] == f"boom {code.name}"
    assert resp.headers["X-Request-Id"]


async def test_status_details_are_passed_through(gw, backends):
    violation = error_details_pb2.BadRequest(
        field_violations=[error_details_pb2.BadRequest.FieldViolation(field="user_id", description="unknown user")]
    )
    status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message="bad user")
    status.details.add().Pack(violation)
    backends["sync"].replies["ListBanks"] = Abort(
        grpc.StatusCode.INVALID_ARGUMENT, "bad user", (("grpc-status-details-bin", status.SerializeToString()),)
    )
    resp = await gw.get("/api/banks?user_id=u1")
    assert resp.status == 400
    assert (await resp.json())["details"] == [
        {
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "field_violations": [{"field": "user_id", "description": "unknown user"}],
        }
    ]


async def test_servicer_exception_is_500_without_its_text(gw, backends):
    backends["sync"].replies["ListBanks"] = ValueError("secret database password")
    resp = await gw.get("/api/banks")
    assert resp.status == 500
    text = await resp.text()
    assert "secret" not in text and json.loads(text)["error"] == "UNKNOWN"


async def test_backend_down_is_503(make_gateway, backends, ports):
    gw = await make_gateway({"FINPULSE_SYNC_ADDR": ports.addr()})  # held, listening nowhere: refused
    resp = await gw.get("/api/banks?user_id=u1")
    assert resp.status == 503
    data = await resp.json()
    assert data == {
        "code": 14,
        "error": "UNAVAILABLE",
        "message": "the sync service is unavailable, try again later",
        "error_code": "SERVICE_UNAVAILABLE",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "SERVICE_UNAVAILABLE",
                "domain": "finpulse.gateway",
                "metadata": {"service": "sync"},
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retry_delay": "1s"},
        ],
    }
    assert resp.headers["Retry-After"] == "1"


async def test_a_database_outage_is_503_with_the_services_retry_after(gw, backends):
    backends["dashboard"].replies["GetDashboard"] = Abort(
        grpc.StatusCode.UNAVAILABLE,
        "the service's database is unavailable; retry in a moment",
        trailing_metadata=(("retry-after", "2"),),
    )
    resp = await gw.get("/api/dashboard?user_id=u1")
    assert resp.status == 503 and resp.headers["Retry-After"] == "2"
    assert (await resp.json())["message"] == "the service's database is unavailable; retry in a moment"


async def test_deadline_exceeded_is_504(make_gateway, backends):
    gw = await make_gateway({"FINPULSE_RPC_TIMEOUT": "0.2"})
    backends["sync"].replies["ListBanks"] = Sleep(2)
    resp = await gw.get("/api/banks")
    assert resp.status == 504
    data = await resp.json()
    assert data["error"] == "DEADLINE_EXCEEDED" and data["message"] == "the sync service did not answer in time"


async def test_gateway_bug_is_generic_500_and_logged(gw, backends, monkeypatch, caplog):
    def broken(message, route=None):
        raise RuntimeError("internal secret detail")

    monkeypatch.setattr(transcode, "render", broken)
    with caplog.at_level(logging.ERROR, logger="gateway"):
        resp = await gw.get("/api/banks")
    assert resp.status == 500
    text = await resp.text()
    assert json.loads(text) == {
        "code": 13,
        "error": "INTERNAL",
        "message": "internal error",
        "error_code": "INTERNAL",
        "details": [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "INTERNAL", "domain": "finpulse.gateway"}
        ],
    }
    assert "secret" not in text
    assert any(r.exc_info and "internal secret detail" in str(r.exc_info[1]) for r in caplog.records)


async def test_unknown_path_and_method_are_json(gw):
    resp = await gw.get("/api/nope")
    assert resp.status == 404 and (await resp.json())["error"] == "NOT_FOUND"
    resp = await gw.patch("/api/banks")
    assert resp.status == 405 and (await resp.json())["error"] == "UNIMPLEMENTED"
    assert "GET" in resp.headers["Allow"]


async def test_access_lines_carry_the_request_id_on_every_path(gw, backends):
    """The envelope puts the request id in the logging context only where something may log: the
    access line of an answer that needed no handler (a 404, the cache-first half's 401) still carries it."""
    from svclib.logging import current_request_id

    seen = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append((record.route, record.status, current_request_id()))

    access, capture = logging.getLogger("gateway.access"), Capture()
    level = access.level
    access.addHandler(capture)
    access.setLevel(logging.INFO)
    try:
        for i, (path, status) in enumerate((("/api/nope", 404), ("/api/dashboard?user_id=u1", 401))):
            resp = await gw.get(path, headers={"X-Request-Id": f"req-{i}", "Authorization": "Bearer not-a-jwt"})
            assert resp.status == status and resp.headers["X-Request-Id"] == f"req-{i}"
    finally:
        access.removeHandler(capture)
        access.setLevel(level)
    assert seen == [("<unmatched>", 404, "req-0"), ("/api/dashboard", 401, "req-1")]


# ---------------------------------------------------------------------------------------------
# Request id, access log, CORS, probes


async def test_request_id_propagated_and_echoed(gw, backends, caplog):
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        resp = await gw.get("/api/banks", headers={"X-Request-Id": "req-abc.123"})
    assert resp.status == 200
    assert resp.headers["X-Request-Id"] == "req-abc.123"
    assert backends["sync"].calls[0].metadata["x-request-id"] == "req-abc.123"
    [line] = [r for r in caplog.records if r.name == "gateway.access"]
    assert (line.method, line.route, line.status) == ("GET", "/api/banks", 200)
    assert line.latency_ms >= 0

    resp = await gw.get("/api/banks", headers={"X-Request-Id": "bad id\twith spaces"})
    generated = resp.headers["X-Request-Id"]
    assert generated != "bad id\twith spaces" and len(generated) == 32
    assert backends["sync"].calls[1].metadata["x-request-id"] == generated
    resp = await gw.get("/api/banks")
    assert resp.headers["X-Request-Id"] == backends["sync"].calls[2].metadata["x-request-id"] != generated


async def test_cors(gw, backends):
    preflight = {
        "Origin": "http://localhost:3000",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    resp = await gw.options("/api/onboarding/consents", headers=preflight)
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    assert resp.headers["Access-Control-Allow-Credentials"] == "true"
    assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    assert resp.headers["Access-Control-Allow-Headers"] == "content-type"

    resp = await gw.options("/api/onboarding/consents", headers={**preflight, "Origin": "http://evil.example"})
    assert resp.status == 403
    assert not any(h.startswith("Access-Control-") for h in resp.headers)

    resp = await gw.get("/api/banks", headers={"Origin": "http://localhost:3000"})
    assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    assert resp.headers["Access-Control-Allow-Credentials"] == "true"
    resp = await gw.get("/api/banks", headers={"Origin": "http://evil.example"})
    assert resp.status == 200 and not any(h.startswith("Access-Control-") for h in resp.headers)
    resp = await gw.get("/api/nope", headers={"Origin": "http://localhost:3000"})
    assert resp.status == 404 and resp.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    assert all_calls(backends) == ["sync.ListBanks", "sync.ListBanks"]


async def test_healthz_and_readyz(gw, backends):
    assert (await gw.get("/healthz")).status == 200
    resp = await gw.get("/readyz")
    assert resp.status == 200
    assert await resp.json() == {
        "status": "ready",
        "not_ready": [],
        "services": {k: "SERVING" for k in ("onboarding", "consent", "sync", "dashboard")},
    }
    await backends["consent"].health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    resp = await gw.get("/readyz")
    assert resp.status == 503
    data = await resp.json()
    assert data["not_ready"] == ["consent"] and data["services"]["consent"] == "NOT_SERVING"


async def test_readyz_without_health_service_or_backend(make_gateway, backends, ports):
    bare = Backend("dashboard", with_health=False)
    await bare.start()
    try:
        gw = await make_gateway(
            {"FINPULSE_DASHBOARD_ADDR": bare.addr, "FINPULSE_SYNC_ADDR": ports.addr()}
        )  # listening nowhere
        resp = await gw.get("/readyz")
        assert resp.status == 503
        data = await resp.json()
        assert data["services"] == {
            "onboarding": "SERVING",
            "consent": "SERVING",
            "sync": "UNAVAILABLE",
            "dashboard": "UNIMPLEMENTED",
        }
        assert data["not_ready"] == ["sync", "dashboard"]
    finally:
        await bare.stop()


# ---------------------------------------------------------------------------------------------
# python -m gateway


def _run_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINPULSE_")}
    env.update(extra)
    return env


def test_main_bad_config_exits_2():
    proc = subprocess.run(
        [sys.executable, "-m", "gateway"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=_run_env(FINPULSE_GATEWAY_PORT="not-a-port"),
    )
    assert proc.returncode == 2
    assert "FINPULSE_GATEWAY_PORT" in proc.stderr and "Traceback" not in proc.stderr


async def test_main_serves_and_stops_on_sigterm(ports):
    port = ports.port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
        env=_run_env(
            FINPULSE_GATEWAY_HOST="127.0.0.1",
            FINPULSE_GATEWAY_PORT=str(port),
            FINPULSE_JWT_SECRET="x" * 32,
            **ports.env(),
        ),
    )
    try:
        for _ in range(200):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                await asyncio.sleep(0.05)
        else:
            pytest.fail("gateway did not start listening")
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = await reader.read()
        writer.close()
        assert reply.startswith(b"HTTP/1.1 200") and b"X-Request-Id" in reply
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        lines = [json.loads(line) for line in (await proc.stderr.read()).decode().splitlines() if line.strip()]
        assert any(line["logger"] == "gateway.access" and line["route"] == "/healthz" for line in lines)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# ---------------------------------------------------------------------------------------------
# Authentication, isolation at the gateway, per-user rate limit

SECRET = "test-secret-" + "s" * 32


def _token(sub: str | None = "team200-1", *, key: Any = SECRET, algorithm: str = "HS256", **claims: Any) -> str:
    now = dt.datetime.now(dt.UTC)
    # Valid for hours: these tokens are made when the tests are collected, maybe long before they run.
    body = {"iss": "finpulse", "aud": "finpulse-api", "iat": now, "exp": now + dt.timedelta(hours=6)}
    if sub is not None:
        body["sub"] = sub
    body.update(claims)
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm=algorithm)


def _hs256_by_hand(claims: dict, key: bytes) -> str:
    """An HS256 token built without PyJWT (which refuses a PEM key as an HMAC secret)."""

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    signing_input = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + b64(json.dumps(claims).encode())
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(signature)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def authed(make_gateway):
    return await make_gateway({"FINPULSE_AUTH_DEV_TRUST_USER": "0", "FINPULSE_JWT_SECRET": SECRET})


async def _assert_401(resp, fragment: str) -> None:
    assert resp.status == 401, await resp.text()
    assert resp.headers["WWW-Authenticate"].startswith('Bearer realm="finpulse"')
    body = await resp.json()
    assert body["error"] == "UNAUTHENTICATED" and fragment in body["message"], body


@pytest.mark.parametrize(
    "headers, fragment",
    [
        ({}, "token is required"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "must be 'Bearer <token>'"),
        ({"Authorization": "Bearer"}, "must be 'Bearer <token>'"),
        ({"Authorization": "Bearer not.a.jwt"}, "malformed"),
        (_bearer(_token(key="another-secret-" + "x" * 32)), "signature is not valid"),
        (_bearer(_token(exp=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5))), "expired"),
        (_bearer(_token(aud="someone-else")), "audience"),
        (_bearer(_token(iss="evil")), "issuer"),
        (_bearer(_token(sub=None)), "'sub'"),
        (_bearer(_token(exp=None)), "'exp'"),
        (_bearer(_token(algorithm="none", key=None)), "HS256"),
    ],
    ids=[
        "missing",
        "basic",
        "empty",
        "malformed",
        "bad-signature",
        "expired",
        "audience",
        "issuer",
        "no-sub",
        "no-exp",
        "alg-none",
    ],
)
async def test_bad_or_missing_token_is_401_and_reaches_no_service(authed, backends, headers, fragment):
    await _assert_401(await authed.get("/api/dashboard", headers=headers), fragment)
    await _assert_401(
        await authed.post("/api/onboarding/start", json={"user_id": "team200-1"}, headers=headers), fragment
    )
    assert all_calls(backends) == []


async def test_token_user_fills_user_id_and_travels_as_metadata(authed, backends):
    resp = await authed.get("/api/dashboard", headers=_bearer(_token("team200-7")))
    assert resp.status == 200, await resp.text()
    [call] = backends["dashboard"].calls
    assert call.request.user_id == "team200-7" and acting_user(call) == "team200-7"
    resp = await authed.get("/api/dashboard?user_id=team200-7", headers=_bearer(_token("team200-7")))
    assert resp.status == 200


async def test_naming_another_user_is_403_and_reaches_no_service(authed, backends):
    token = _bearer(_token("team200-1"))
    for method, path, body in [
        ("GET", "/api/dashboard?user_id=team200-2", None),
        ("GET", "/api/users/team200-2/profile", None),
        ("PUT", "/api/users/team200-2/financial-inputs", {"salary_amount": "1.00"}),
        ("POST", "/api/onboarding/start", {"user_id": "team200-2"}),
        ("GET", "/api/sync/events?user_id=team200-2", None),
    ]:
        resp = await authed.request(method, path, json=body, headers=token)
        assert resp.status == 403, (path, await resp.text())
        assert (await resp.json())["error"] == "PERMISSION_DENIED"
    assert all_calls(backends) == []


async def test_rs256_public_key(make_gateway, backends):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    gw = await make_gateway({"FINPULSE_AUTH_DEV_TRUST_USER": "0", "FINPULSE_JWT_PUBLIC_KEY": public_pem})
    resp = await gw.get("/api/dashboard", headers=_bearer(_token("team200-3", key=private, algorithm="RS256")))
    assert resp.status == 200, await resp.text()
    assert backends["dashboard"].calls[-1].request.user_id == "team200-3"
    # Algorithm confusion: an HS256 token "signed" with the public key as its secret is refused.
    forged = _bearer(
        _hs256_by_hand(
            {"sub": "team200-3", "iss": "finpulse", "aud": "finpulse-api", "exp": int(time.time()) + 300},
            public_pem.encode(),
        )
    )
    await _assert_401(await gw.get("/api/dashboard", headers=forged), "RS256")
    await _assert_401(await gw.get("/api/dashboard", headers=_bearer(_token("team200-3"))), "RS256")


async def test_dev_switch_trusts_header_less_requests_only(make_gateway, backends):
    gw = await make_gateway({"FINPULSE_AUTH_DEV_TRUST_USER": "1", "FINPULSE_JWT_SECRET": SECRET})
    resp = await gw.get("/api/dashboard?user_id=team200-4")
    assert resp.status == 200
    assert acting_user(backends["dashboard"].calls[-1]) == "team200-4"
    await _assert_401(
        await gw.get("/api/dashboard?user_id=team200-4", headers=_bearer(_token(key="wrong-secret-" + "w" * 32))),
        "signature",
    )
    resp = await gw.get("/api/dashboard?user_id=team200-5", headers=_bearer(_token("team200-4")))
    assert resp.status == 403, "a token, when sent, still decides the user"


@pytest.mark.parametrize(
    "environ, fragment",
    [
        ({}, "FINPULSE_JWT_SECRET or FINPULSE_JWT_PUBLIC_KEY"),
        ({"FINPULSE_JWT_SECRET": "short"}, "at least 32 characters"),
        ({"FINPULSE_JWT_PUBLIC_KEY": "not a pem"}, "PEM public key"),
        ({"FINPULSE_ENV": "production", "FINPULSE_AUTH_DEV_TRUST_USER": "1"}, "refused when FINPULSE_ENV=production"),
    ],
)
def test_auth_configuration_errors(environ, fragment):
    from gateway.auth import Authenticator
    from svclib.config import ConfigError

    with pytest.raises(ConfigError, match=re.escape(fragment)):
        Authenticator(load_gateway_settings(environ))


async def test_per_user_rate_limit_is_shared_through_redis(make_gateway, backends, redis_url):
    env = {
        "FINPULSE_AUTH_DEV_TRUST_USER": "0",
        "FINPULSE_JWT_SECRET": SECRET,
        "FINPULSE_REDIS_URL": redis_url,
        "FINPULSE_REDIS_PREFIX": f"finpulse-test-{os.getpid()}-{id(backends)}:",
        "FINPULSE_USER_RATE_LIMIT": "0.2",
        "FINPULSE_USER_RATE_BURST": "2",
    }
    first, second = await make_gateway(env), await make_gateway(env)  # two replicas, one Redis
    alice, bob = _bearer(_token("team200-8")), _bearer(_token("team200-9"))
    assert (await first.get("/api/dashboard", headers=alice)).status == 200
    assert (await second.get("/api/dashboard", headers=alice)).status == 200
    refused = await first.get("/api/dashboard", headers=alice)
    assert refused.status == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 5
    assert (await refused.json())["error"] == "RESOURCE_EXHAUSTED"
    assert (await second.get("/api/dashboard", headers=alice)).status == 429, "the other replica shares the budget"
    assert (await second.get("/api/dashboard", headers=bob)).status == 200, "another user has their own budget"
    assert len(backends["dashboard"].calls) == 3


# ---------------------------------------------------------------------------------------------
# Response cache: replies a service marks reusable, dropped on change announcements


def test_response_cache_rules(monkeypatch):
    from gateway.respcache import ResponseCache

    now = [time.time()]
    cache = ResponseCache(size=3, clock=lambda: now[0])
    future = now[0] + 60
    assert not cache.put("k", "u1", b"x", future, cache.stamp()), "nothing is kept without a live change feed"
    cache.feed_state(True)
    stamp = cache.stamp()
    assert cache.put("k", "u1", b"x", future, stamp) and cache.get("k") == b"x"
    cache.changed("u2")
    assert cache.get("k") == b"x", "another user's change keeps u1's replies"
    cache.changed("u1")
    assert cache.get("k") is None, "u1's change drops them"
    assert not cache.put("k", "u1", b"old", future, stamp), "asked before the change: refused"
    assert cache.put("k", "u1", b"new", future, cache.stamp())
    assert not cache.put("p", "u1", b"x", now[0] - 1, cache.stamp()), "already expired"
    assert not cache.put("p", "u1", b"x", now[0], cache.stamp()), "expires now"
    assert cache.put("e", "u1", b"soon", now[0] + 0.05, cache.stamp())
    now[0] += 0.049
    assert cache.get("e") == b"soon"
    now[0] += 0.002
    assert cache.get("e") is None
    for n in range(5):
        cache.put(f"n{n}", "u3", b"n", future, cache.stamp())
    assert len(cache) == 3, "bounded"
    stamp = cache.stamp()
    cache.feed_state(False)
    assert cache.get("n4") is None and len(cache) == 0
    cache.feed_state(True)
    assert not cache.put("k", "u1", b"x", future, stamp), "asked before the feed came back: refused"


async def _wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_gateway_serves_marked_replies_until_a_change_is_announced(make_gateway, backends, redis_url):
    from gateway.app import RESPONSES
    from svclib.cache import CACHE_UNTIL_METADATA, Cache

    prefix = f"finpulse-test-{os.getpid()}-{id(backends)}:"
    gw = await make_gateway(
        {
            "FINPULSE_AUTH_DEV_TRUST_USER": "0",
            "FINPULSE_JWT_SECRET": SECRET,
            "FINPULSE_REDIS_URL": redis_url,
            "FINPULSE_REDIS_PREFIX": prefix,
        }
    )
    responses = gw.server.app[RESPONSES]
    await _wait_for(lambda: responses.enabled)
    until = str(int((time.time() + 60) * 1000))
    versions = iter(range(1, 100))
    backends["dashboard"].replies["GetDashboard"] = lambda req: WithTrailers(
        dashboard_pb2.GetDashboardResponse(
            user_id=req.user_id, cache_info=dashboard_pb2.CacheInfo(is_cached=True, data_version=next(versions))
        ),
        ((CACHE_UNTIL_METADATA, until),),
    )
    alice, bob = _bearer(_token("team200-1")), _bearer(_token("team200-2"))

    from prometheus_client import REGISTRY

    hits_before = (
        REGISTRY.get_sample_value("finpulse_gateway_response_cache_hits_total", {"route": "/api/dashboard"}) or 0.0
    )
    first = await (await gw.get("/api/dashboard", headers=alice)).json()
    again = await (await gw.get("/api/dashboard", headers=alice)).json()
    assert first == again and first["cache_info"]["data_version"] == "1"
    assert len(backends["dashboard"].calls) == 1, "the repeat was answered by the gateway"
    assert (
        REGISTRY.get_sample_value("finpulse_gateway_response_cache_hits_total", {"route": "/api/dashboard"})
        == hits_before + 1
    )
    other = await (await gw.get("/api/dashboard", headers=bob)).json()
    assert other["user_id"] == "team200-2" and len(backends["dashboard"].calls) == 2, "never another user's copy"
    forced = await gw.get("/api/dashboard?force_refresh=true", headers=alice)
    assert (await forced.json())["cache_info"]["data_version"] == "3", "another query is another request"

    cache = Cache(redis_url, prefix=prefix)
    try:
        await cache.announce_change("team200-1")
        # (keys are (method, user, query, language): wait until no reply of alice's is kept)
        await _wait_for(lambda: not any(key[1] == "team200-1" for key in responses._entries))
    finally:
        await cache.close()
    after = await (await gw.get("/api/dashboard", headers=alice)).json()
    assert after["cache_info"]["data_version"] == "4" and len(backends["dashboard"].calls) == 4
    await gw.get("/api/dashboard", headers=bob)
    assert len(backends["dashboard"].calls) == 4, "bob's copy survived alice's change"


async def test_gateway_keeps_nothing_without_a_change_feed(make_gateway, backends, ports):
    from svclib.cache import CACHE_UNTIL_METADATA

    dead_redis = f"redis://127.0.0.1:{ports.port()}/0"  # held, listening nowhere: refused
    gw = await make_gateway(
        {"FINPULSE_AUTH_DEV_TRUST_USER": "0", "FINPULSE_JWT_SECRET": SECRET, "FINPULSE_REDIS_URL": dead_redis}
    )
    until = str(int((time.time() + 60) * 1000))
    backends["dashboard"].replies["GetDashboard"] = lambda req: WithTrailers(
        dashboard_pb2.GetDashboardResponse(user_id=req.user_id), ((CACHE_UNTIL_METADATA, until),)
    )
    for _ in range(3):
        resp = await gw.get("/api/dashboard", headers=_bearer(_token("team200-1")))
        assert resp.status == 200, "Redis down: still answered (rate limit per process)"
    assert len(backends["dashboard"].calls) == 3, "no change feed: every request reaches the service"


def test_verified_tokens_are_remembered_until_they_expire(monkeypatch):
    from gateway import auth

    monkeypatch.setattr(auth, "LEEWAY", dt.timedelta(0))
    now = [time.time()]
    authenticator = auth.Authenticator(load_gateway_settings({"FINPULSE_JWT_SECRET": SECRET}), clock=lambda: now[0])
    exp = int(now[0]) + 60
    token = _token("team200-1", exp=exp)
    assert authenticator.verify(token) == "team200-1"

    def expired(*args, **kwargs):  # what PyJWT (on the wall clock) answers once `exp` has passed
        raise auth.jwt.ExpiredSignatureError("Signature has expired")

    monkeypatch.setattr(auth.jwt, "decode", lambda *a, **k: pytest.fail("a remembered token is not decoded again"))
    now[0] = exp - 0.01
    assert authenticator.verify(token) == "team200-1", "remembered until its expiry"
    monkeypatch.setattr(auth.jwt, "decode", expired)
    now[0] = exp
    with pytest.raises(auth.Unauthenticated, match="expired"):
        authenticator.verify(token)  # past its expiry it is verified again, and refused


async def test_metrics_on_their_own_address_are_not_on_the_public_port(ports):
    port, metrics_port = ports.port(), ports.port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        cwd=ROOT,
        stderr=asyncio.subprocess.DEVNULL,
        env=_run_env(
            FINPULSE_GATEWAY_HOST="127.0.0.1",
            FINPULSE_GATEWAY_PORT=str(port),
            FINPULSE_GATEWAY_METRICS_ADDR=f"127.0.0.1:{metrics_port}",
            FINPULSE_JWT_SECRET="x" * 32,
            **ports.env(),
        ),
    )
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                try:
                    async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                        assert resp.status == 200
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            else:
                pytest.fail("gateway did not start listening")
            async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
                assert resp.status == 404, "not on the public port"
            async with session.get(f"http://127.0.0.1:{metrics_port}/metrics") as resp:
                assert resp.status == 200
                sample = 'finpulse_gateway_requests_total{method="GET",route="/healthz",status="200"}'
                assert sample in await resp.text()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# ---------------------------------------------------------------------------------------------
# Login: where tokens come from, per mode (gateway/login.py)


def _login_reply(request):
    return onboarding_pb2.LoginResponse(
        profile=onboarding_pb2.UserProfile(
            user_id=request.user_id,
            name=request.user_name or f"User {request.user_id}",
            subscription_plan="free",
            is_active=True,
        )
    )


async def test_local_login_signs_a_token_that_works_on_every_route(make_gateway, backends):
    backends["onboarding"].replies["Login"] = _login_reply
    gw = await make_gateway({"FINPULSE_AUTH_DEV_TRUST_USER": "0", "FINPULSE_JWT_SECRET": SECRET})
    resp = await gw.post("/api/auth/login", json={"user_id": "team200-6"})  # the app sends no token
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["profile"] == {
        "user_id": "team200-6",
        "name": "User team200-6",
        "subscription_plan": "free",
        "is_active": True,
    }
    claims = jwt.decode(body["token"], SECRET, algorithms=["HS256"], audience="finpulse-api", issuer="finpulse")
    assert claims["sub"] == "team200-6" and claims["exp"] - claims["iat"] == 12 * 3600
    assert dt.datetime.fromisoformat(body["token_expires_at"].replace("Z", "+00:00")).timestamp() == claims["exp"]
    resp = await gw.get("/api/dashboard", headers=_bearer(body["token"]))
    assert resp.status == 200 and backends["dashboard"].calls[-1].request.user_id == "team200-6"
    # A token that is sent decides the user: it cannot log in as someone else.
    resp = await gw.post("/api/auth/login", json={"user_id": "team200-7"}, headers=_bearer(body["token"]))
    assert resp.status == 403, await resp.text()
    assert [c.request.user_id for c in backends["onboarding"].calls] == ["team200-6"]


async def test_production_login_never_mints_a_token(make_gateway, backends):
    backends["onboarding"].replies["Login"] = _login_reply
    gw = await make_gateway(
        {
            "FINPULSE_ENV": "production",
            "FINPULSE_AUTH_DEV_TRUST_USER": "0",
            "FINPULSE_JWT_SECRET": SECRET,
            "FINPULSE_REDIS_URL": "redis://127.0.0.1:1/0",
        }
    )
    resp = await gw.post("/api/auth/login", json={"user_id": "team200-6"})
    assert resp.status == 401, await resp.text()
    assert "identity provider" in (await resp.json())["message"]
    idp_token = _token("team200-6")  # as the identity provider signed it
    resp = await gw.post("/api/auth/login", json={"user_id": "team200-7"}, headers=_bearer(idp_token))
    assert resp.status == 403, "never another user's session"
    assert backends["onboarding"].calls == []
    resp = await gw.post("/api/auth/login", json={"user_id": "team200-6"}, headers=_bearer(idp_token))
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["token"] == idp_token and body["token_expires_at"] is None, "the provider's own token, echoed"


async def test_language_follows_accept_language(make_gateway, backends):
    gw = await make_gateway({"FINPULSE_DEFAULT_LANGUAGE": "en"})
    for header, expected in [
        (None, "en"),
        ("ru-RU,ru;q=0.9,en;q=0.8", "ru"),
        ("de, en;q=0.5", "en"),
        ("fr", "en"),
        ("en;q=0.2, ru;q=0.8", "ru"),
    ]:
        headers = {"Accept-Language": header} if header else {}
        resp = await gw.get("/api/dashboard?user_id=team200-1", headers=headers)
        assert resp.status == 200
        assert backends["dashboard"].calls[-1].metadata["x-language"] == expected, header


async def test_only_methods_safe_to_repeat_are_retried_by_the_channel(gw, backends):
    """A payment reaches its service once, whatever happens; a read is retried on UNAVAILABLE (the
    contract's idempotency_level decides, svclib.clients.retry_service_config)."""
    unavailable = Abort(grpc.StatusCode.UNAVAILABLE, "try again")
    backends["consent"].replies["CreatePayment"] = unavailable
    backends["consent"].replies["GetPayment"] = unavailable
    body = {
        "user_id": "u1",
        "bank_id": "vbank",
        "account_id": "a",
        "creditor_account": "40817810000000000001",
        "amount": "1.00",
    }
    resp = await gw.post("/api/payments", json=body, headers={"Idempotency-Key": "k1"})
    assert resp.status == 503
    assert "same Idempotency-Key" in (await resp.json())["message"], "the client is told how to retry"
    assert backends["consent"].methods_called() == ["CreatePayment"], "never sent twice by the channel"
    resp = await gw.get("/api/payments/pmt-1?user_id=u1")
    assert resp.status == 503
    assert backends["consent"].methods_called().count("GetPayment") == 3, "a read is retried (3 attempts)"


async def test_bodies_must_be_json_and_fit_the_contracts_limits(gw, backends):
    body = json.dumps({"user_id": "u1", "banks": [{"bank_id": "vbank", "consents": {"account": True}}]})
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"Content-Type": content_type} if content_type else {}
        resp = await gw.post("/api/onboarding/consents", data=body.encode(), headers=headers)
        assert resp.status == 415, (content_type, await resp.text())
        assert "application/json" in (await resp.json())["message"]
    resp = await gw.post(
        "/api/onboarding/consents", data=body, headers={"Content-Type": "application/json; charset=utf-8"}
    )
    assert resp.status == 200
    huge = "x" * ((1 << 20) // 2)
    for method, path, payload in [
        ("POST", "/api/sync", {"user_id": "u1", "bank_ids": [huge]}),
        ("POST", "/api/sync", {"user_id": "u1", "reason": huge}),
        ("PUT", "/api/users/u1/financial-inputs", {"salary_amount": huge}),
        ("PUT", "/api/users/u1/financial-inputs", {"next_salary_date": huge}),
    ]:
        resp = await gw.request(method, path, json=payload)
        text = await resp.text()
        assert resp.status == 400 and len(text) < 1000, (path, resp.status, text[:200])
        assert "at most" in json.loads(text)["message"]
    assert "StartSync" not in all_calls(backends) and "UpdateFinancialInputs" not in all_calls(backends)
