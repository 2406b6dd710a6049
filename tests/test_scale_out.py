"""Scale-out: two replicas of every service and of the gateway, one Postgres database, one Redis.

The suite runs as a cluster would: each service replica on a port of its own, every caller reaching a
service through one target that names both replicas (`ipv4:a,b`, spread round robin by
svclib.clients), and each service connected as its own Postgres role (per-service roles, created by
the migrations). The end-to-end flow goes through both gateways in turn: onboarding, consents at
three banks, the customer's approval at the bank that approves manually, finalize, the sync, the
dashboard. Then: every sync job ran once (one job per bank, one claim, one accounts call per job,
jobs spread over both sync replicas), nothing was lost (stored rows == the emulator's), concurrent
requests through both gateways joined the same jobs and computed the dashboard once.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter

import aiohttp
import asyncpg
import pytest

from deploy.suite import SERVICES, Suite
from svclib.config import load_settings
from svclib.ports import PortReservations
from tests.e2e import Http, customer_signs, eventually, suite_env
from tests.test_db_roles import as_role
from tests.test_e2e_sync import assert_counts_exact, emulator_counts

pytestmark = pytest.mark.timeout(300)

BANKS = ("vbank", "abank", "sbank")
USER = "team200-1"


@pytest.fixture(scope="module")
def scaled(fresh_database, tmp_path_factory):
    """The suite with two replicas of each service and two gateways, each service as its own role."""
    backing = fresh_database("scale")
    log_dir = str(tmp_path_factory.mktemp("scale-logs"))
    prefix = f"fpt_{uuid.uuid4().hex[:8]}"
    ports = PortReservations()  # held until the end (svclib.ports); the suite reserves its replicas' own
    env = suite_env(
        ports,
        log_dir,
        redis_prefix=f"finpulse-test-{uuid.uuid4().hex[:8]}:",
        metrics=False,
        FINPULSE_SYNC_LEASE="10",
        # One job at a time per sync replica: three banks' jobs need both replicas at once.
        FINPULSE_SYNC_WORKERS="1",
    )
    for name in SERVICES:
        env[f"FINPULSE_{name.upper()}_DATABASE_URL"] = as_role(
            backing.database_url, f"{prefix}_{name}", f"pw-{uuid.uuid4().hex[:10]}"
        )
    settings = load_settings(env)
    suite = Suite(
        settings,
        backing,
        base_env=env,
        log_dir=log_dir,
        emulator_args=["--customers", "3", "--latency-ms", "30"],
        replicas={**{name: 2 for name in SERVICES}, "gateway": 2},
        ports=ports,
    )
    try:
        asyncio.run(suite.migrate())
        suite.start()
        asyncio.run(suite.wait_healthy(timeout=120))
        yield suite
    finally:
        suite.close()
        ports.close()
        asyncio.run(_drop_roles(backing.database_url, prefix))


async def _drop_roles(admin_url: str, prefix: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        names = [
            r["rolname"] for r in await conn.fetch("SELECT rolname FROM pg_roles WHERE rolname LIKE $1", prefix + "%")
        ]
        if names:
            quoted = ", ".join(f'"{n}"' for n in names)
            await conn.execute(f"DROP OWNED BY {quoted}")
            await conn.execute(f"DROP ROLE {quoted}")
    finally:
        await conn.close()


def _bank(body: dict, bank_id: str) -> dict:
    return next(r for r in body["results"] if r["bank_id"] == bank_id)


def _rpcs_served(suite: Suite, child: str) -> int:
    """Calls (other than health checks) that one replica's access log shows."""
    count = 0
    with open(suite.children[child].log_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("rpc") and not entry["rpc"].startswith("/grpc.health"):
                count += 1
    return count


async def test_two_replicas_of_everything_run_the_flow_once_and_lose_nothing(scaled):
    suite = scaled
    assert len(suite.gateway_urls) == 2
    assert sorted(suite.children) == sorted(
        ["bank_sandbox", "gateway", "gateway-2", *SERVICES, *(f"{name}-2" for name in SERVICES)]
    )
    banks = {bank.id: bank.base_url for bank in suite.settings.banks}
    async with aiohttp.ClientSession() as session:
        gw = [Http(session, url, token=suite.token(USER)) for url in suite.gateway_urls]

        status, started = await gw[0].post("/api/onboarding/start", {"user_id": USER})
        assert status == 200, started
        request = {
            "user_id": USER,
            "banks": [{"bank_id": bank, "consents": {"account": True, "product": True}} for bank in BANKS],
        }
        status, created = await gw[1].post("/api/onboarding/consents", request)
        assert status == 200 and created["overall_status"] == "in_progress", created
        sbank = _bank(created, "sbank")
        await customer_signs(session, banks["sbank"], USER, sbank["account_consent"]["request_id"])
        await customer_signs(
            session, banks["sbank"], USER, sbank["product_consent"]["request_id"], "product-agreement-consents"
        )
        turn = iter(range(10_000))

        async def approved():
            _, body = await gw[next(turn) % 2].get("/api/onboarding/consents/status", user_id=USER)
            return body if _bank(body, "sbank")["account_consent"]["status"] == "approved" else None

        assert await eventually(approved), "sbank's approval was not picked up"

        status, finalized = await gw[1].post(
            "/api/onboarding/finalize", {"onboarding_id": started["onboarding_id"], "user_id": USER}
        )
        assert status == 200 and finalized["ready"], finalized
        assert sorted(r["bank_id"] for r in finalized["bootstrap_results"]) == sorted(BANKS)

        # The same refresh asked through both gateways at once: both join the same job per bank. A bank's
        # first sync starts at its consent's approval, so a fast one may be over by now: then (and only
        # then) the refresh is a second job for that bank; otherwise it joined the first.
        (s1, again1), (s2, again2) = await asyncio.gather(
            gw[0].post("/api/sync", {"user_id": USER}), gw[1].post("/api/sync", {"user_id": USER})
        )
        assert s1 == s2 == 200, (again1, again2)
        first_jobs = {r["bank_id"]: r["job_id"] for r in finalized["bootstrap_results"]}
        refresh_jobs = {j["bank_id"]: j["job_id"] for j in again1["jobs"]}
        assert {j["bank_id"]: j["job_id"] for j in again2["jobs"]} == refresh_jobs, "joined, not queued twice"
        assert sorted(refresh_jobs) == sorted(BANKS), refresh_jobs

        async def synced():
            _, body = await gw[next(turn) % 2].get("/api/sync/status", user_id=USER)
            return body if body["status"] == "completed" else None

        body = await eventually(synced, timeout=120, interval=0.5)
        assert body, "the sync did not finish"
        assert {b["bank_id"]: b["state"] for b in body["banks"]} == {b: "JOB_STATE_SUCCEEDED" for b in BANKS}

        # One computation of the dashboard for six requests at once through both gateways.
        answers = await asyncio.gather(*(gw[i % 2].get("/api/dashboard", user_id=USER) for i in range(6)))
        assert all(status == 200 for status, _ in answers), answers
        infos = [a["cache_info"] for _, a in answers]
        assert len({i["calculated_at"] for i in infos}) == 1, infos
        assert sum(not i["is_cached"] for i in infos) == 1, infos
        assert {b["bank_id"] for b in answers[0][1]["bank_statuses"]} == set(BANKS)
        for i in range(4):  # then one after another (over both replicas): the shared cache answers
            status, cached = await gw[i % 2].get("/api/dashboard", user_id=USER)
            assert status == 200 and cached["cache_info"]["is_cached"], cached["cache_info"]
            assert cached["cache_info"]["calculated_at"] == infos[0]["calculated_at"]
        for i in range(4):  # the session, read back through either gateway from either replica
            status, progress = await gw[i % 2].get("/api/onboarding/status", onboarding_id=started["onboarding_id"])
            assert status == 200 and progress["status"] == "completed", progress

        # Every replica of every service takes calls. Round robin spreads a gateway's calls over the
        # replicas it is connected to, so a replica whose connection came up late (a loaded machine) may
        # have missed the flow above, whose dashboard reads the gateway's cache mostly answers: calls no
        # cache answers, one of each service per round through both gateways, reach it.
        async def every_replica_served():
            served = {child: _rpcs_served(suite, child) for child in suite.grpc_addrs}
            if all(served.values()):
                return served
            for g in gw:
                for path, query in (
                    ("/api/onboarding/status", {"onboarding_id": started["onboarding_id"]}),
                    ("/api/onboarding/consents/status", {"user_id": USER}),
                    ("/api/sync/status", {"user_id": USER}),
                    ("/api/loans", {"user_id": USER}),
                ):
                    status, answer = await g.get(path, **query)
                    assert status == 200, (path, answer)
            return None

        assert await eventually(every_replica_served, timeout=60), (
            f"a replica served no call: { ({child: _rpcs_served(suite, child) for child in suite.grpc_addrs}) }"
        )

    conn = await asyncpg.connect(suite.backing.database_url)
    try:
        jobs = await conn.fetch(
            "SELECT bank_id, job_id::text, state, attempts, worker_id, created_at, finished_at "
            "FROM sync.sync_jobs WHERE user_id = $1",
            USER,
        )
        calls = await conn.fetch("SELECT bank_id, operation FROM sync.bank_status_log WHERE user_id = $1", USER)
        # No lost data: every account, balance, transaction and agreement the banks hold is stored.
        await assert_counts_exact(conn, banks, USER, BANKS)
    finally:
        await conn.close()
    # No duplicated work: per bank, its first job and (when the first was over before the refresh) the
    # refresh's; each claimed once, and one accounts call per job.
    by_id = {j["job_id"]: j for j in jobs}
    for bank in BANKS:
        expected = {first_jobs[bank], refresh_jobs[bank]}
        assert {j["job_id"] for j in jobs if j["bank_id"] == bank} == expected, [dict(j) for j in jobs]
        if refresh_jobs[bank] != first_jobs[bank]:
            first, refresh = by_id[first_jobs[bank]], by_id[refresh_jobs[bank]]
            assert first["finished_at"] <= refresh["created_at"], "a second job only after the first was over"
    assert all(j["state"] == "succeeded" and j["attempts"] == 1 for j in jobs), [dict(j) for j in jobs]
    per_bank = Counter((c["bank_id"], c["operation"]) for c in calls)
    for bank in BANKS:
        held = await emulator_counts(banks[bank], USER)
        runs = len({first_jobs[bank], refresh_jobs[bank]})
        assert per_bank[bank, "get_accounts"] == per_bank[bank, "get_product_agreements"] == runs, per_bank
        assert per_bank[bank, "get_balances"] == held["accounts"] * runs, per_bank  # once per account
        assert per_bank[bank, "get_product_agreement"] == held["agreements"] * runs, per_bank  # per agreement
    # The jobs ran on both sync replicas (one worker each), and every replica of every service served calls.
    assert len({j["worker_id"] for j in jobs}) == 2, [dict(j) for j in jobs]
    assert not suite.exited()
