"""Observability end to end against the running suite: Prometheus metrics of the gateway and of every
service (scraped before and after a few calls; the counters must move for exactly those routes and
RPCs), sync's per-bank counters, the dashboard cache's hits and misses, and one request id carried
from the gateway through every service hop into the bank calls (read back from each process's log).

Every test takes its own emulator customers (team200-26 … 28), so its syncs overlap no other test's.
"""

from __future__ import annotations

import json
import os
import uuid

import aiohttp
import grpc
import pytest
from finpulse.dashboard.v1 import dashboard_pb2, dashboard_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from svclib.cache import Cache
from svclib.internal_auth import Signer
from tests.e2e import Http, eventually, set_faults, wait_synced

pytestmark = pytest.mark.timeout(240)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
HEALTH = "grpc.health.v1.Health"


# ------------------------------------------------------------------------------------------- helpers


async def scrape(session: aiohttp.ClientSession, url: str) -> Samples:
    async with session.get(url) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def moved(before: Samples, after: Samples, name: str, keys: tuple[str, ...], **where: str) -> dict[tuple, float]:
    """The series of `name` (whose labels include `where`) that changed, by the values of `keys`."""
    out: dict[tuple, float] = {}
    for (sample, labels), value in after.items():
        labels_d = dict(labels)
        if sample != name or any(labels_d.get(k) != v for k, v in where.items()):
            continue
        change = value - before.get((sample, labels), 0.0)
        if change:
            key = tuple(labels_d[k] for k in keys)
            out[key] = out.get(key, 0.0) + change
    return out


def service_url(suite, name: str) -> str:
    addr = suite.settings.metrics_addrs[name]
    assert addr, f"{name} has no metrics address"
    return f"http://{addr}/metrics"


def log_lines(suite, name: str) -> list[dict]:
    """The JSON lines of one process's log file (other lines, e.g. a C library's, are skipped)."""
    lines = []
    with open(os.path.join(suite.log_dir, f"{name}.log"), encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                lines.append(entry)
    return lines


async def consents(http: Http, user: str, bank: str = "vbank") -> None:
    status, body = await http.post(
        "/api/onboarding/consents",
        {"user_id": user, "banks": [{"bank_id": bank, "consents": {"account": True, "product": True}}]},
    )
    assert status == 200 and body["overall_status"] == "completed", body


# ------------------------------------------------------------------------------------------- tests


async def test_gateway_and_services_count_exactly_the_calls_made(suite, session):
    user = "team200-26"
    http = Http(session, suite.gateway_url, token=suite.token(user))
    gateway_url = f"{suite.gateway_url}/metrics"
    names = ("onboarding", "consent", "sync", "dashboard")
    before = {"gateway": await scrape(session, gateway_url)}
    for name in names:
        before[name] = await scrape(session, service_url(suite, name))

    for _ in range(2):
        status, body = await http.get("/api/banks", user_id=user)
        assert status == 200, body
    status, body = await http.get("/api/banks/nobank/bootstrap", user_id=user)
    assert status == 404, body
    status, body = await http.get("/api/sync/status", user_id=user)
    assert status == 200, body
    status, body = await http.get("/api/no/such/route")
    assert status == 404, body

    after = {"gateway": await scrape(session, gateway_url)}
    for name in names:
        after[name] = await scrape(session, service_url(suite, name))

    requests = moved(
        before["gateway"], after["gateway"], "finpulse_gateway_requests_total", ("route", "method", "status")
    )
    assert requests == {
        ("/api/banks", "GET", "200"): 2,
        ("/api/banks/{bank_id}/bootstrap", "GET", "404"): 1,
        ("/api/sync/status", "GET", "200"): 1,
        ("<unmatched>", "GET", "404"): 1,
        ("/metrics", "GET", "200"): 1,  # the first scrape (a scrape is counted after its body is made)
    }
    latencies = moved(
        before["gateway"], after["gateway"], "finpulse_gateway_request_duration_seconds_count", ("route", "method")
    )
    assert latencies == {(route, method): n for (route, method, _), n in requests.items()}

    def rpcs(name: str) -> dict[tuple, float]:
        counts = moved(before[name], after[name], "finpulse_rpc_requests_total", ("service", "method", "code"))
        return {k: v for k, v in counts.items() if k[0] != HEALTH}

    assert rpcs("sync") == {
        ("finpulse.sync.v1.SyncService", "ListBanks", "OK"): 2,
        ("finpulse.sync.v1.SyncService", "BootstrapBank", "NOT_FOUND"): 1,
        ("finpulse.sync.v1.SyncService", "GetSyncStatus", "OK"): 1,
    }
    sync_latencies = moved(
        before["sync"],
        after["sync"],
        "finpulse_rpc_duration_seconds_count",
        ("method",),
        service="finpulse.sync.v1.SyncService",
    )
    assert sync_latencies == {("ListBanks",): 2, ("BootstrapBank",): 1, ("GetSyncStatus",): 1}
    # ListBanks asks consent_svc which banks the user connected (a sync worker of another test may ask too).
    consent = rpcs("consent")
    assert set(consent) == {("finpulse.consent.v1.ConsentService", "ListApprovedConsents", "OK")}
    assert consent[("finpulse.consent.v1.ConsentService", "ListApprovedConsents", "OK")] >= 2
    assert rpcs("onboarding") == {} and rpcs("dashboard") == {}


async def test_sync_counts_bank_calls_429s_and_rows_per_bank(suite, session, db):
    user = "team200-27"
    http = Http(session, suite.gateway_url, token=suite.token(user))
    bank_url = suite.settings.bank("vbank").base_url
    sync_metrics = service_url(suite, "sync")
    # Counted from before the consents: their approval queues the first sync at once. It is let finish,
    # so the refresh below is a job of its own, made while every bank call is answered 429.
    before = await scrape(session, sync_metrics)
    await consents(http, user)
    await wait_synced(http, user)

    async def rate_limited_seen():
        now = await scrape(session, sync_metrics)
        return moved(before, now, "finpulse_sync_bank_rate_limited_total", ("bank",)).get(("vbank",), 0)

    await set_faults(session, bank_url, rate_limit_rate=1.0)  # every bank call is answered 429 …
    try:
        status, body = await http.post("/api/sync", {"user_id": user})
        assert status == 200, body
        assert await eventually(rate_limited_seen, timeout=30, interval=0.2), "no 429 counted"
    finally:
        await set_faults(session, bank_url, rate_limit_rate=0.0)  # … until the job got some
    status = await wait_synced(http, user)
    assert {b["bank_id"]: b["state"] for b in status["banks"]}["vbank"] == "JOB_STATE_SUCCEEDED"
    after = await scrape(session, sync_metrics)

    calls = moved(before, after, "finpulse_sync_bank_calls_total", ("operation",), bank="vbank")
    failures = moved(before, after, "finpulse_sync_bank_call_failures_total", ("operation", "reason"), bank="vbank")
    limited = moved(before, after, "finpulse_sync_bank_rate_limited_total", ("bank",))
    # Every call this user's jobs made is in bank_status_log (the metrics count every user's).
    logged = await db.fetch(
        "SELECT operation, http_status FROM sync.bank_status_log WHERE user_id = $1 AND bank_id = 'vbank'", user
    )
    assert {"get_accounts", "get_balances", "get_transactions"} <= {r["operation"] for r in logged}
    for operation in {r["operation"] for r in logged}:
        assert calls.get((operation,), 0) >= sum(1 for r in logged if r["operation"] == operation), operation
    user_429s = sum(1 for r in logged if r["http_status"] == 429)
    assert user_429s >= 1
    assert limited[("vbank",)] >= user_429s
    assert sum(n for (_, reason), n in failures.items() if reason == "429") == limited[("vbank",)]
    assert moved(before, after, "finpulse_sync_bank_call_duration_seconds_count", ("bank",))[("vbank",)] == sum(
        calls.values()
    )

    rows = moved(before, after, "finpulse_sync_rows_written_total", ("table", "change"), bank="vbank")
    stored = await db.fetchrow(
        "SELECT (SELECT count(*) FROM sync.accounts WHERE user_id = $1 AND bank_id = 'vbank') AS accounts, "
        "(SELECT count(*) FROM sync.transactions WHERE user_id = $1 AND bank_id = 'vbank') AS transactions",
        user,
    )
    assert stored["transactions"] > 0
    assert rows[("transactions", "inserted")] >= stored["transactions"]
    assert rows[("accounts", "inserted")] >= stored["accounts"]
    jobs = moved(before, after, "finpulse_sync_jobs_total", ("outcome",), bank="vbank")
    assert jobs.get(("succeeded",), 0) >= 1


async def test_dashboard_counts_cache_hits_by_level_and_misses(suite, session):
    user = "team200-28"
    http = Http(session, suite.gateway_url, token=suite.token(user))
    url = service_url(suite, "dashboard")
    cache = Cache(suite.backing.redis_url, prefix=suite.env["FINPULSE_REDIS_PREFIX"])

    # The service's own cache levels, asked directly: through the gateway, repeats of a cached answer
    # are served from the gateway's response cache and never reach the service (counted below).
    channel = grpc.aio.insecure_channel(suite.settings.service_addrs["dashboard"])
    signer = Signer(suite.settings.resolved_internal_secret(), "test")  # as the gateway would sign
    stub = dashboard_pb2_grpc.DashboardServiceStub(channel)

    async def step(force_refresh: bool = False) -> tuple[dict, dict, bool]:
        before = await scrape(session, url)
        reply = await stub.GetDashboard(
            dashboard_pb2.GetDashboardRequest(user_id=user, force_refresh=force_refresh),
            metadata=(signer.metadata(user),),
        )
        after = await scrape(session, url)
        return (
            moved(before, after, "finpulse_dashboard_cache_hits_total", ("level",)),
            moved(before, after, "finpulse_dashboard_cache_misses_total", ("reason",)),
            reply.cache_info.is_cached,
        )

    try:
        assert await step() == ({}, {("stale",): 1}, False)
        assert await step() == ({("redis",): 1}, {}, True)
        await cache.delete(cache.key("dashboard", user))  # Redis lost it: the table still has it
        assert await step() == ({("table",): 1}, {}, True)
        assert await step() == ({("redis",): 1}, {}, True)  # the table's entry went back to Redis
        assert await step(force_refresh=True) == ({}, {("force_refresh",): 1}, False)
        # Through the gateway: the first cached answer is kept there, its repeat is a gateway hit.
        gateway = f"{suite.gateway_url}/metrics"
        before = await scrape(session, gateway)
        for _ in range(3):
            status, body = await http.get("/api/dashboard", user_id=user)
            assert status == 200 and body["cache_info"]["is_cached"], body
        after = await scrape(session, gateway)
        assert moved(before, after, "finpulse_gateway_response_cache_hits_total", ("route",)) == {
            ("/api/dashboard",): 2
        }
    finally:
        await channel.close()
        await cache.close()


async def test_one_request_id_reaches_every_service_and_the_bank(suite, session):
    user = "team200-29"
    http = Http(session, suite.gateway_url, token=suite.token(user))
    request_id = f"metrics-e2e-{uuid.uuid4().hex}"
    # The first sync is queued when the account consent is approved: that request's id follows it.
    status, body = await http.call(
        "POST",
        "/api/onboarding/consents",
        json={"user_id": user, "banks": [{"bank_id": "vbank", "consents": {"account": True, "product": True}}]},
        headers={"X-Request-Id": request_id},
    )
    assert status == 200 and body["overall_status"] == "completed", body
    await wait_synced(http, user)
    status, body = await http.call(
        "POST",
        "/api/onboarding/finalize",
        json={"onboarding_id": user, "user_id": user},
        headers={"X-Request-Id": request_id},
    )
    assert status == 200, body

    def lines(name: str) -> list[dict]:
        return [e for e in log_lines(suite, name) if e.get("request_id") == request_id]

    gateway = lines("gateway")
    assert any(e.get("route") == "/api/onboarding/finalize" and e.get("status") == 200 for e in gateway), gateway
    onboarding = lines("onboarding")
    assert any(e.get("rpc", "").endswith("/FinalizeOnboarding") for e in onboarding), onboarding
    assert any(e.get("rpc", "").startswith("/finpulse.consent.v1.") for e in lines("consent"))

    async def worker_done():  # the worker logs the job's end after the status says succeeded
        return [e for e in lines("sync") if e.get("msg") == "sync job succeeded"]

    assert await eventually(worker_done, timeout=10), "the worker's lines carry the request id"
    sync = lines("sync")
    assert any(e.get("rpc", "").endswith("/StartSync") for e in sync)
    assert any(e.get("msg") == "sync job started" and e.get("bank_id") == "vbank" for e in sync)
    bank_calls = {e["interaction_id"] for e in sync if e.get("logger") == "bankapi"}
    assert bank_calls, "the sync's bank calls are logged under the request id"
    # The bank got it too (X-Request-Id), on exactly the calls the suite logged (X-Fapi-Interaction-Id).
    at_bank = {e.get("x-fapi-interaction-id") for e in lines("bank_sandbox")}
    assert at_bank and bank_calls <= at_bank, bank_calls - at_bank
