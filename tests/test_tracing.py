"""Distributed tracing (svclib.tracing) across the suite's real processes.

The suite here is a second one, started with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at an OTLP/HTTP
receiver this test process runs (`OtlpReceiver`: an aiohttp server on a port from the OS that decodes
`ExportTraceServiceRequest` protobufs into a list): the in-memory span exporter of the issue, across
processes. The session's shared suite keeps tracing off, as every other test expects.

- One dashboard request (`GET /api/dashboard`, sent with a W3C `traceparent`) is ONE trace: the
  gateway's server span, its gRPC client span, dashboard_svc's server span, dashboard_svc's client
  spans and sync_svc's server spans, each in its process's `service.name`, each the child of the one
  before; the log lines written for the request carry its trace id.
- One sync (`POST /api/sync`) runs as a job whose span starts a trace of its own, linked to the span
  of the request that queued it; the job's bank calls (bank id, endpoint template, status, attempt)
  and SQL are its descendants.
- No attribute of any span carries the team's secret, a token, a consent id or the user's id.
- Without OTEL_* variables, a process installs nothing (no SDK provider, no instrumentation).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import secrets
import subprocess
import sys
import threading
import uuid

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from bankapi.tracing import endpoint_template
from deploy.suite import Suite
from svclib.config import load_settings
from svclib.ports import PortReservations
from tests.e2e import Http, eventually, onboard, wait_synced
from tests.e2e import suite_env as e2e_suite_env

pytestmark = pytest.mark.timeout(300)

USER = "team200-1"  # of this module's own emulator
SERVER, CLIENT, CONSUMER = 2, 3, 5  # SpanKind in OTLP


def _value(any_value):
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in any_value.kvlist_value.values}
    return getattr(any_value, kind) if kind else None


def _attributes(key_values) -> dict:
    return {kv.key: _value(kv.value) for kv in key_values}


class OtlpReceiver:
    """An OTLP/HTTP trace receiver in a thread of its own: `POST /v1/traces` (protobuf, gzip or not),
    every span flattened into `spans` (dicts: trace_id, span_id, parent, name, kind, service,
    attributes, links, events)."""

    def __init__(self):
        self.spans: list[dict] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="otlp-receiver", daemon=True)
        self.url = ""

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        assert self._ready.wait(10), "the OTLP receiver did not start"
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _serve(self) -> None:
        self._loop = loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_post("/v1/traces", self._export)
        runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
        self.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    async def _export(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        export = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
        spans = []
        for resource_spans in export.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append(
                        {
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent": span.parent_span_id.hex(),
                            "name": span.name,
                            "kind": span.kind,
                            "service": resource.get("service.name"),
                            "scope": scope_spans.scope.name,
                            "attributes": _attributes(span.attributes),
                            "links": [
                                {"trace_id": link.trace_id.hex(), "span_id": link.span_id.hex()} for link in span.links
                            ],
                            "events": [_attributes(event.attributes) for event in span.events],
                        }
                    )
        with self._lock:
            self.spans.extend(spans)
        response = trace_service_pb2.ExportTraceServiceResponse()
        return web.Response(body=response.SerializeToString(), content_type="application/x-protobuf")

    def snapshot(self) -> list[dict]:
        with self._lock:
            return list(self.spans)

    def trace(self, trace_id: str) -> list[dict]:
        return [s for s in self.snapshot() if s["trace_id"] == trace_id]


@pytest.fixture(scope="module")
def traced(fresh_database, tmp_path_factory):
    """(suite, receiver): a suite of its own whose every process exports its spans to `receiver`."""
    log_dir = str(tmp_path_factory.mktemp("traced-logs"))
    with OtlpReceiver() as receiver, PortReservations() as ports:
        env = e2e_suite_env(
            ports,
            log_dir,
            redis_prefix=f"finpulse-test-{uuid.uuid4().hex[:8]}:",
            metrics=False,
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
            OTEL_BSP_SCHEDULE_DELAY="100",  # ms: spans reach the receiver at once
        )
        for name in list(env):
            if name.startswith("OTEL_") and name not in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_BSP_SCHEDULE_DELAY"):
                del env[name]  # this machine's own settings, if any, stay out
        suite = Suite(
            load_settings(env),
            fresh_database("traced"),
            base_env=env,
            log_dir=log_dir,
            emulator_args=["--customers", "3"],
            ports=ports,
        )
        try:
            asyncio.run(suite.migrate())
            suite.start()
            asyncio.run(suite.wait_healthy(timeout=120))
            yield suite, receiver
        finally:
            suite.close()


def _traceparent() -> tuple[str, str, str]:
    """(traceparent header, its trace id, its span id): the caller's own span, as a browser SDK sends it."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def _by_id(spans: list[dict]) -> dict[str, dict]:
    return {s["span_id"]: s for s in spans}


def _connected(spans: list[dict], root_parent: str) -> bool:
    """Every span's parent is in `spans`, except the one whose parent is the caller's (`root_parent`)."""
    ids = _by_id(spans)
    return all(s["parent"] in ids or s["parent"] == root_parent for s in spans)


def _log_lines(suite: Suite, child: str) -> list[dict]:
    lines = []
    with open(suite.children[child].log_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
    return lines


async def _onboarded(session: aiohttp.ClientSession, suite: Suite) -> Http:
    http = Http(session, suite.gateway_url, token=suite.token(USER))
    await onboard(http, USER, wait=True)  # consents at vbank and abank, their first syncs done
    return http


async def test_a_dashboard_request_is_one_trace_through_gateway_dashboard_and_sync(traced):
    suite, receiver = traced
    async with aiohttp.ClientSession() as session:
        http = await _onboarded(session, suite)
        header, trace_id, caller_span = _traceparent()
        request_id = f"trace-test-{uuid.uuid4().hex}"
        status, body = await http.call(
            "GET",
            "/api/dashboard",
            params={"force_refresh": "true"},
            headers={"traceparent": header, "X-Request-Id": request_id},
        )
        assert status == 200, body

    dashboard_rpc = "/finpulse.dashboard.v1.DashboardService/GetDashboard"

    async def whole_trace():
        spans = receiver.trace(trace_id)
        services = {s["service"] for s in spans if s["kind"] == SERVER}
        if {"gateway", "dashboard_svc", "sync_svc"} <= services and _connected(spans, caller_span):
            return spans
        return None

    spans = await eventually(whole_trace, timeout=30)
    assert spans, f"no connected trace through the three processes: {receiver.trace(trace_id)}"
    ids = _by_id(spans)
    # The gateway's span continues the caller's trace; its route is the template, the URL holds no value.
    (gateway,) = [s for s in spans if s["service"] == "gateway" and s["kind"] == SERVER]
    assert gateway["parent"] == caller_span
    assert gateway["name"] == "GET /api/dashboard"
    assert gateway["attributes"]["http.route"] == "/api/dashboard"
    assert "force_refresh" not in json.dumps(gateway["attributes"])
    # gateway -> dashboard_svc: the gateway's client span is the parent of dashboard_svc's server span.
    (to_dashboard,) = [s for s in spans if s["service"] == "gateway" and s["kind"] == CLIENT]
    assert to_dashboard["name"] == dashboard_rpc and to_dashboard["parent"] == gateway["span_id"]
    (dashboard,) = [s for s in spans if s["service"] == "dashboard_svc" and s["kind"] == SERVER]
    assert dashboard["name"] == dashboard_rpc and dashboard["parent"] == to_dashboard["span_id"]
    # dashboard_svc -> sync_svc: each of sync_svc's server spans is the child of a client span in dashboard_svc,
    # itself a descendant of dashboard_svc's server span.
    sync_servers = [s for s in spans if s["service"] == "sync_svc" and s["kind"] == SERVER]
    assert sync_servers
    for server in sync_servers:
        client = ids[server["parent"]]
        assert client["service"] == "dashboard_svc" and client["kind"] == CLIENT and client["name"] == server["name"]
        assert _ancestors(client, ids)[-1] is gateway
        assert dashboard in _ancestors(client, ids)
    # SQL inside the services is in the same trace (asyncpg), under the span of its RPC.
    sql = [s for s in spans if s["attributes"].get("db.system") == "postgresql"]
    assert "sync_svc" in {s["service"] for s in sql}
    _assert_nothing_secret(receiver.snapshot(), await _consent_ids(suite))

    # The log lines of the request in the three processes carry its trace id (and its request id).
    async def logged():
        found = {}
        for child in ("gateway", "dashboard", "sync"):
            lines = [line for line in _log_lines(suite, child) if line.get("trace_id") == trace_id]
            if not lines:
                return None
            found[child] = lines
        return found

    found = await eventually(logged)
    assert found, "no log line of the request carries its trace id in every process"
    (access,) = [line for line in found["gateway"] if line["logger"] == "gateway.access"]
    assert access["route"] == "/api/dashboard" and access["request_id"] == request_id
    assert access["span_id"] == gateway["span_id"]
    rpc_lines = [line for line in found["dashboard"] if line.get("rpc") == dashboard_rpc]
    assert rpc_lines and rpc_lines[0]["span_id"] == dashboard["span_id"]
    assert all(line["request_id"] == request_id for lines in found.values() for line in lines)
    assert {line["span_id"] for line in found["sync"] if line.get("rpc")} <= {s["span_id"] for s in sync_servers}


def _ancestors(span: dict, ids: dict[str, dict]) -> list[dict]:
    chain = []
    while span["parent"] in ids:
        span = ids[span["parent"]]
        chain.append(span)
    return chain


async def test_a_sync_job_has_its_own_trace_linked_to_the_request_with_bank_calls_inside(traced):
    suite, receiver = traced
    async with aiohttp.ClientSession() as session:
        http = await _onboarded(session, suite)
        header, trace_id, _ = _traceparent()
        status, body = await http.call(
            "POST",
            "/api/sync",
            json={"user_id": USER, "bank_ids": ["vbank"], "force": True},
            headers={"traceparent": header},
        )
        assert status == 200, body
        (job,) = body["jobs"]
        assert not job.get("joined"), body
        await wait_synced(http, USER)

    async def job_span():
        for span in receiver.snapshot():
            if span["kind"] == CONSUMER and span["attributes"].get("finpulse.job.id") == job["job_id"]:
                return span
        return None

    job_root = await eventually(job_span, timeout=30)
    assert job_root, f"no span of sync job {job['job_id']}"
    assert job_root["service"] == "sync_svc" and job_root["name"] == "sync job"
    assert job_root["parent"] == "" and job_root["trace_id"] != trace_id  # a trace of its own...
    assert job_root["attributes"]["finpulse.bank.id"] == "vbank"
    assert job_root["attributes"]["finpulse.job.outcome"] == "succeeded"
    # ... linked to the span of the request that queued it: sync_svc's StartSync, in the request's trace.
    request_spans = _by_id(receiver.trace(trace_id))
    assert len(job_root["links"]) == 1, job_root
    (link,) = job_root["links"]
    assert link["trace_id"] == trace_id
    queued_by = request_spans[link["span_id"]]
    assert queued_by["service"] == "sync_svc" and queued_by["name"].endswith("/StartSync")
    assert queued_by["kind"] == SERVER

    # The job's bank calls and SQL are its descendants.
    async def job_trace():
        spans = receiver.trace(job_root["trace_id"])
        calls = [s for s in spans if "finpulse.bank.id" in s["attributes"] and s["kind"] == CLIENT]
        templates = {s["attributes"]["url.template"] for s in calls}
        if {"/accounts", "/accounts/{id}/transactions"} <= templates and _connected(spans, ""):
            return spans, calls
        return None

    found = await eventually(job_trace, timeout=30)
    assert found, f"the job's trace lacks its bank calls: {receiver.trace(job_root['trace_id'])}"
    spans, calls = found
    ids = _by_id(spans)
    for call in calls:
        attributes = call["attributes"]
        assert job_root in _ancestors(call, ids)
        assert attributes["finpulse.bank.id"] == "vbank"
        assert attributes["http.response.status_code"] == 200
        assert attributes["finpulse.bank.attempt"] >= 1
        assert call["name"] == f"{attributes['http.request.method']} {attributes['url.template']}"
        assert "{id}" in attributes["url.template"] or attributes["url.template"].count("/") == 1
    sql = [s for s in spans if s["attributes"].get("db.system") == "postgresql"]
    assert sql and all(job_root in _ancestors(s, ids) for s in sql)
    _assert_nothing_secret(receiver.snapshot(), await _consent_ids(suite))


async def _consent_ids(suite: Suite) -> set[str]:
    conn = await asyncpg.connect(suite.backing.database_url)
    try:
        rows = await conn.fetch("SELECT consent_id FROM consent.consents WHERE consent_id IS NOT NULL")
    finally:
        await conn.close()
    found = {r["consent_id"] for r in rows}
    assert found, "the user has consents"
    return found


def _assert_nothing_secret(spans: list[dict], consent_ids: set[str]) -> None:
    """No attribute (nor event attribute) of any span holds the team's secret, a bearer token, a consent
    id or the user's id."""
    secret = load_settings({"FINPULSE_ENV": "local"}).team.client_secret
    assert secret
    forbidden = {secret, USER, "Bearer ", "client_secret", *consent_ids}
    for span in spans:
        text = json.dumps([span["name"], span["attributes"], span["events"]])
        leaked = [word for word in forbidden if word in text]
        assert not leaked, f"{leaked} in {span}"
        assert not any("authorization" in key.lower() for key in span["attributes"])


def test_endpoint_templates_keep_names_and_drop_ids():
    assert endpoint_template("/accounts") == "/accounts"
    assert endpoint_template("/accounts/acc%2F1/transactions") == "/accounts/{id}/transactions"
    assert endpoint_template("/account-consents/c-9f2/") == "/account-consents/{id}/"
    assert endpoint_template("/payment-consents/request") == "/payment-consents/request"
    assert endpoint_template("/auth/bank-token?client_secret=x") == "/auth/bank-token"


_PROBE = """
import json, grpc.aio, aiohttp.web
from opentelemetry import trace
from svclib import logging as svc_logging
from svclib.tracing import setup_tracing
def patchable():
    return (grpc.aio.server, grpc.aio.insecure_channel, aiohttp.web.Application)
original = patchable()
on = setup_tracing("probe_svc")
provider = trace.get_tracer_provider()
print(json.dumps({
    "on": on,
    "provider": type(provider).__name__,
    "service": provider.resource.attributes.get("service.name") if hasattr(provider, "resource") else None,
    "patched": [a is not b for a, b in zip(original, patchable())],
    "log_hook": svc_logging.trace_ids is not None,
}))
"""


def _probe(**otel: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(otel)
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_without_otel_variables_nothing_is_installed():
    off = _probe()
    assert off == {
        "on": False,
        "provider": "ProxyTracerProvider",
        "service": None,
        "patched": [False] * 3,
        "log_hook": False,
    }
    # The standard switches: disabled, or no exporter, win over an endpoint.
    assert _probe(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9", OTEL_SDK_DISABLED="true") == off
    assert _probe(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9", OTEL_TRACES_EXPORTER="none") == off


def test_an_otlp_endpoint_installs_the_sdk_and_the_instrumentations():
    on = _probe(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="http://127.0.0.1:9/v1/traces")
    assert on == {
        "on": True,
        "provider": "TracerProvider",
        "service": "probe_svc",
        "patched": [True] * 3,
        "log_hook": True,
    }
    named = _probe(OTEL_TRACES_EXPORTER="otlp", OTEL_SERVICE_NAME="sync-eu-1")
    assert named["on"] and named["service"] == "sync-eu-1"
    assert _probe(OTEL_TRACES_EXPORTER="console")["on"]
