"""Bank data sync end to end: finalize → durable jobs → Postgres, through the gateway and the emulator.

Every test takes its own emulator customers (the suite's emulator has 30), so jobs never overlap.
"""

from __future__ import annotations

import asyncio
import json
import signal

import aiohttp
import pytest

from deploy.children import Child, grpc_serving
from tests.e2e import Http, eventually, onboard, set_faults, wait_synced

pytestmark = pytest.mark.timeout(300)

AUTO_BANKS = ("vbank", "abank")


async def emulator_counts(bank_url: str, user: str) -> dict:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{bank_url}/__admin__/customers/{user}/counts") as resp:
            assert resp.status == 200
            return await resp.json()


async def stored_counts(db, user: str, bank_id: str) -> dict:
    row = await db.fetchrow(
        """SELECT (SELECT count(*) FROM sync.accounts WHERE user_id = $1 AND bank_id = $2) AS accounts,
                  (SELECT count(*) FROM sync.transactions WHERE user_id = $1 AND bank_id = $2) AS transactions,
                  (SELECT count(*) FROM sync.credits WHERE user_id = $1 AND bank_id = $2) AS agreements,
                  (SELECT count(*) FROM (SELECT DISTINCT account_id, balance_type FROM sync.balances
                                         WHERE user_id = $1 AND bank_id = $2) b) AS balances""",
        user,
        bank_id,
    )
    return dict(row)


async def assert_counts_exact(db, bank_urls, user: str, banks=AUTO_BANKS) -> None:
    for bank in banks:
        expected = await emulator_counts(bank_urls[bank], user)
        stored = await stored_counts(db, user, bank)
        assert stored == {k: expected[k] for k in ("accounts", "transactions", "agreements", "balances")}, bank


async def test_finalize_syncs_every_bank_into_postgres_and_survives_restart(suite, http, db, bank_urls):
    user = "team200-11"
    await onboard(http, user)
    status = await wait_synced(http, user)
    assert {b["bank_id"]: b["state"] for b in status["banks"] if b["bank_id"] in AUTO_BANKS} == {
        "vbank": "JOB_STATE_SUCCEEDED",
        "abank": "JOB_STATE_SUCCEEDED",
    }
    assert status["synced_at"]
    await assert_counts_exact(db, bank_urls, user)
    calls = await db.fetch(
        "SELECT operation, interaction_id, http_status FROM sync.bank_status_log WHERE user_id = $1", user
    )
    assert {"get_accounts", "get_balances", "get_transactions", "get_product_agreements"} <= {
        c["operation"] for c in calls
    }, "every bank call is logged"
    assert all(c["interaction_id"] for c in calls)

    _, banks = await http.get("/api/banks", user_id=user)
    vbank = next(b for b in banks["banks"] if b["id"] == "vbank")
    assert vbank["connected"] and vbank["sync"]["last_success_at"] and vbank["transactions_count"] > 0

    # Every process of the suite restarts (the banks, played by the emulator, stay up as real ones do).
    ours = [name for name in suite.children if name != "bank_sandbox"]
    suite.stop(ours)
    suite.start(ours)
    await suite.wait_healthy(ours)
    status, boot = await http.get("/api/banks/vbank/bootstrap", user_id=user, page_size=50)
    assert status == 200, boot
    expected = await emulator_counts(bank_urls["vbank"], user)
    assert len(boot["accounts"]) == expected["accounts"]
    assert len(boot["balances"]) == expected["balances"]
    assert len(boot["credits"]) == expected["agreements"]
    assert len(boot["transactions"]) == min(50, expected["transactions"])
    assert boot["status"]["accounts"]["state"] == "ok" and boot["from_cache"] is False
    times = [t["booking_time"] for t in boot["transactions"]]
    assert times == sorted(times, reverse=True)
    # Paging through every stored transaction returns each once.
    seen, token = [t["transaction_id"] for t in boot["transactions"]], boot["next_page_token"]
    while token:
        _, page = await http.get("/api/banks/vbank/bootstrap", user_id=user, page_size=500, page_token=token)
        seen += [t["transaction_id"] for t in page["transactions"]]
        token = page["next_page_token"]
    assert len(seen) == len(set(seen)) == expected["transactions"]


async def test_second_sync_writes_nothing_and_new_transactions_arrive(http, db, bank_urls):
    user = "team200-12"
    await onboard(http, user, ("vbank",))
    await wait_synced(http, user)
    version = await db.fetchval("SELECT version FROM sync.user_data_version WHERE user_id = $1", user)

    status, started = await http.post("/api/sync", {"user_id": user})
    assert status == 200 and started["status"] == "queued" and started["sync_id"]
    await wait_synced(http, user)
    job = await db.fetchrow("SELECT progress FROM sync.sync_jobs WHERE job_id = $1", started["sync_id"])
    assert json.loads(job["progress"])["rows_written"] == 0
    assert await db.fetchval("SELECT version FROM sync.user_data_version WHERE user_id = $1", user) == version

    account = await db.fetchval(
        "SELECT account_id FROM sync.accounts WHERE user_id = $1 AND bank_id = 'vbank' "
        "AND account_sub_type = 'Checking' LIMIT 1",
        user,
    )
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{bank_urls['vbank']}/__admin__/customers/{user}/transactions", json={"account_id": account, "count": 3}
        ) as resp:
            assert resp.status == 200
            added = await resp.json()
    new_ids = {t["transactionId"] for t in added["data"]["transaction"]}
    assert len(new_ids) == 3
    # The seed frontend's refresh: POST /api/sync/start?user_id=…&force=true, no body.
    status, started = await http.call("POST", "/api/sync/start", params={"user_id": user})
    assert status == 200, started
    await wait_synced(http, user)
    stored = {
        r["transaction_id"]
        for r in await db.fetch(
            "SELECT transaction_id FROM sync.transactions WHERE user_id = $1 AND transaction_id = ANY($2::text[])",
            user,
            list(new_ids),
        )
    }
    assert stored == new_ids
    await assert_counts_exact(db, bank_urls, user, ("vbank",))
    assert await db.fetchval("SELECT version FROM sync.user_data_version WHERE user_id = $1", user) > version


async def test_flaky_banks_still_sync_exactly(http, db, bank_urls):
    user = "team200-13"
    async with aiohttp.ClientSession() as session:
        try:
            for bank in AUTO_BANKS:
                await onboard_consents_only(http, user, bank)  # each bank's first sync starts here
                await set_faults(session, bank_urls[bank], error_rate=0.2, rate_limit_rate=0.05)
            status, body = await http.post("/api/onboarding/finalize", {"onboarding_id": user, "user_id": user})
            assert status == 200, body
            await wait_synced(http, user, timeout=180)
            # A first sync can finish before its bank turns flaky: a full refresh runs every bank under the faults.
            status, body = await http.post("/api/sync", {"user_id": user, "force": True})
            assert status == 200, body
            await wait_synced(http, user, timeout=180)
        finally:
            for bank in AUTO_BANKS:
                await set_faults(session, bank_urls[bank], error_rate=0.0, rate_limit_rate=0.0)
    await assert_counts_exact(db, bank_urls, user)
    failures = await db.fetchval(
        "SELECT count(*) FROM sync.bank_status_log WHERE user_id = $1 AND outcome <> 'ok'", user
    )
    assert failures > 0, "the faults really happened"


async def onboard_consents_only(http: Http, user: str, bank: str) -> None:
    status, body = await http.post(
        "/api/onboarding/consents",
        {"user_id": user, "banks": [{"bank_id": bank, "consents": {"account": True, "product": True}}]},
    )
    assert status == 200 and body["overall_status"] == "completed", body


async def test_one_bank_down_others_sync_and_it_is_retried(http, db, bank_urls):
    user = "team200-14"
    for bank in AUTO_BANKS:
        await onboard_consents_only(http, user, bank)
    await wait_synced(http, user)  # the first syncs ran when the consents were approved
    async with aiohttp.ClientSession() as session:
        # New transactions at both banks, then abank goes down and the user refreshes.
        for bank in AUTO_BANKS:
            account = await db.fetchval(
                "SELECT account_id FROM sync.accounts WHERE user_id = $1 AND bank_id = $2 "
                "AND account_sub_type = 'Checking' LIMIT 1",
                user,
                bank,
            )
            async with session.post(
                f"{bank_urls[bank]}/__admin__/customers/{user}/transactions", json={"account_id": account, "count": 2}
            ) as resp:
                assert resp.status == 200
        async with session.post(f"{bank_urls['abank']}/__admin__/down", json={"down": True}) as resp:
            assert resp.status == 200
        try:
            status, _ = await http.post("/api/sync", {"user_id": user})
            assert status == 200

            async def abank_failed_once():
                _, body = await http.get("/api/sync/status", user_id=user)
                states = {b["bank_id"]: b for b in body["banks"]}
                ok = states["vbank"]["state"] == "JOB_STATE_SUCCEEDED"
                return states if ok and states["abank"].get("last_error") and states["abank"]["attempts"] >= 1 else None

            states = await eventually(abank_failed_once, timeout=60)
            status_now = (await http.get("/api/sync/status", user_id=user))[1] if not states else None
            assert states, f"vbank should sync while abank is down: {status_now}"
            assert states["abank"]["state"] in ("JOB_STATE_QUEUED", "JOB_STATE_RUNNING")
            await assert_counts_exact(db, bank_urls, user, ("vbank",))
        finally:
            async with session.post(f"{bank_urls['abank']}/__admin__/down", json={"down": False}) as resp:
                assert resp.status == 200
    await wait_synced(http, user, timeout=120)
    await assert_counts_exact(db, bank_urls, user)


async def test_kill_9_mid_sync_then_restart_completes(suite, http, db, bank_urls):
    user = "team200-15"
    async with aiohttp.ClientSession() as session:
        # Slow banks before the consents: the first sync starts at approval and must still be running when killed.
        for bank in AUTO_BANKS:
            await set_faults(session, bank_urls[bank], latency_ms=400)  # a sync of several seconds
        try:
            for bank in AUTO_BANKS:
                await onboard_consents_only(http, user, bank)
            await http.post("/api/onboarding/finalize", {"onboarding_id": user, "user_id": user})

            async def running():
                return await db.fetchval(
                    "SELECT count(*) FROM sync.sync_jobs WHERE user_id = $1 AND state = 'running' "
                    "AND (progress->>'pages_fetched')::int > 0",
                    user,
                )

            assert await eventually(running, timeout=30, interval=0.1)
            suite.children["sync"].signal(signal.SIGKILL)
            suite.children["sync"].wait(10)
        finally:
            for bank in AUTO_BANKS:
                await set_faults(session, bank_urls[bank], latency_ms=0)
    suite.start(["sync"])
    await suite.wait_healthy(["sync"])
    await wait_synced(http, user, timeout=120)
    await assert_counts_exact(db, bank_urls, user)
    attempts = await db.fetchval("SELECT max(attempts) FROM sync.sync_jobs WHERE user_id = $1", user)
    assert attempts >= 2, "the killed worker's job was taken over"


async def test_two_sync_processes_run_every_job_once(suite, http, db, bank_urls, ports):
    users = [f"team200-{n}" for n in range(16, 20)]
    port = ports.port()
    env = {**suite.children["sync"].env, "FINPULSE_GRPC_PORT": str(port), "FINPULSE_SYNC_METRICS_ADDR": ports.addr()}
    env.update(ports.env(env))  # it binds the ports this test holds for it (svclib.ports)
    second = Child(
        "sync-2", suite.children["sync"].argv, env, suite.children["sync"].log_path.replace("sync.log", "sync-2.log")
    )
    second.start()
    try:
        assert await eventually(lambda: grpc_serving(f"127.0.0.1:{port}"), timeout=30)
        await asyncio.gather(*(onboard(http, user) for user in users))
        for user in users:
            await wait_synced(http, user, timeout=120)
        jobs = await db.fetch(
            "SELECT user_id, bank_id, attempts, worker_id FROM sync.sync_jobs WHERE user_id = ANY($1::text[])", users
        )
        assert len(jobs) == len(users) * len(AUTO_BANKS)
        assert all(j["attempts"] == 1 for j in jobs), "no job was claimed twice"
        assert len({j["worker_id"] for j in jobs}) == 2, "both processes took jobs"
        account_fetches = await db.fetchval(
            "SELECT count(*) FROM sync.bank_status_log WHERE user_id = ANY($1::text[]) AND operation = 'get_accounts'",
            users,
        )
        assert account_fetches == len(jobs)
        for user in users:
            await assert_counts_exact(db, bank_urls, user)
    finally:
        second.signal(signal.SIGTERM)
        second.wait(15)


async def test_sync_events_stream_progress(http, bank_urls):
    user = "team200-20"
    async with aiohttp.ClientSession() as session:
        await set_faults(
            session, bank_urls["vbank"], latency_ms=200
        )  # before the consent: its approval starts the sync
        try:
            await onboard_consents_only(http, user, "vbank")
            await http.post("/api/onboarding/finalize", {"onboarding_id": user, "user_id": user})
            events = []
            async with session.get(
                f"{http.base}/api/sync/events",
                params={"user_id": user},
                headers={"Authorization": f"Bearer {http.tokens(user)}"},
            ) as resp:
                assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
                async for raw in resp.content:
                    line = raw.decode().strip()
                    if line.startswith("data: ") and line != "data: {}":
                        events.append(json.loads(line[6:]))
        finally:
            await set_faults(session, bank_urls["vbank"], latency_ms=0)
    assert events and events[-1]["state"] == "JOB_STATE_SUCCEEDED"
    assert events[-1]["progress"]["pages_fetched"] > 0 and events[-1]["progress"]["rows_written"] > 0
    assert len(events) >= 2


async def test_sync_bad_requests(http):
    status, body = await http.post("/api/sync", {"user_id": "team200-21", "bank_ids": ["nobank"]})
    assert status == 404
    status, body = await http.post("/api/sync", {"user_id": "team200-21"})
    assert status == 400 and "no connected bank" in body["message"]
    status, body = await http.get("/api/banks/nobank/bootstrap", user_id="team200-21")
    assert status == 404
    status, body = await http.get("/api/banks/vbank/bootstrap", user_id="team200-21", page_token="garbage")
    assert status == 400 and "page_token" in body["message"]
    status, body = await http.get("/api/sync/events", user_id="team200-21", bank_id="nobank")
    assert status == 404
