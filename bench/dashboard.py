"""Dashboard: (1) cached GET /api/dashboard requests/s through the gateway ÷ a bare aiohttp handler
returning the same JSON body (same machine, same load tool, same concurrency; goal ≥ 0.8), and
(2) uncached dashboard latency (p50, p99) for a user with 3 banks × 4 accounts × 5,000 transactions,
and its ratio to the SQL aggregates alone.

The whole suite runs as `make up` runs it (emulator, four services, gateway, each its own process)
on a scratch database (on FINPULSE_DATABASE_URL when set, else embedded Postgres and Redis). The user
is synced through the real flow (consents, finalize, sync jobs). The load tool is wrk when it is on
PATH (`make bench-tools`), else a small aiohttp load loop; a ratio is printed only when the load tool
was not the bottleneck (`bench._common.ratio`).
"SQL aggregates alone" is the time of the sync storage queries the dashboard's data comes from
(accounts, latest balances, credits, last transactions, monthly cash flow, spending by category,
spending today, loan repayments, income by day, data version), run concurrently on one pool, as
sync_svc runs them, with no gRPC and no calculation.

`python -m bench.dashboard [--transactions 5000] [--seconds 10] [--connections 32] [--samples 30]`
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import tempfile
import time

import aiohttp

from bench._common import bare_server, customer_with_accounts, http_turns, ratio, scratch_database, suite_env, top_up
from deploy.suite import Suite
from svclib import db
from svclib.config import KNOWN_BANKS, load_settings
from svclib.embedded import BackingServices
from sync_svc.__main__ import SPEC as SYNC_SPEC
from sync_svc.bank_storage import BankDataStorage

BANKS = tuple(KNOWN_BANKS)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _prepare_user(session, suite: Suite, per_account: int) -> str:
    urls = {b.id: b.base_url for b in suite.settings.banks}
    user = await customer_with_accounts(session, urls["vbank"], 60)
    await top_up(session, urls, user, per_account)
    gateway = suite.gateway_url
    auth = {"Authorization": f"Bearer {suite.token(user)}"}
    body = {"user_id": user, "banks": [{"bank_id": b, "consents": {"account": True, "product": True}} for b in BANKS]}
    async with session.post(f"{gateway}/api/onboarding/consents", json=body, headers=auth) as resp:
        assert resp.status == 200, await resp.text()
    async with session.post(
        f"{gateway}/api/onboarding/finalize", json={"onboarding_id": user, "user_id": user}, headers=auth
    ) as r:
        assert r.status == 200, await r.text()
    for _ in range(1200):
        async with session.get(f"{gateway}/api/sync/status", params={"user_id": user}, headers=auth) as resp:
            status = await resp.json()
        if status["status"] == "completed":
            break
        await asyncio.sleep(0.5)
    assert all(b["state"] == "JOB_STATE_SUCCEEDED" for b in status["banks"]), status
    return user


async def _sql_alone(dsn: str, user: str, samples: int) -> list[float]:
    pool = await db.create_pool(dsn, SYNC_SPEC.schema, max_size=10)
    storage = BankDataStorage(pool)
    now = dt.datetime.now(dt.UTC)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    timings = []
    try:
        for _ in range(samples):
            started = time.perf_counter()
            await asyncio.gather(
                storage.accounts(user),
                storage.latest_balances(user),
                storage.credits(user),
                storage.transactions(user, limit=10),
                storage.monthly_cash_flow(user, 12),
                storage.spending_by_category(user, now - dt.timedelta(days=30)),
                storage.spending_by_category(user, today),
                storage.loan_repayments(user),
                storage.income_by_day(user, now - dt.timedelta(days=180)),
                storage.data_version(user),
            )
            timings.append(time.perf_counter() - started)
    finally:
        await pool.close()
    return timings


async def run(per_account: int, seconds: float, connections: int, samples: int) -> None:
    async with scratch_database("dashboard") as backing:
        await _run(backing, per_account, seconds, connections, samples)


async def _run(backing: BackingServices, per_account: int, seconds: float, connections: int, samples: int) -> None:
    log_dir = tempfile.mkdtemp(prefix="fpd-logs-")
    # The load comes from one user: its request cap must not be what is measured.
    env = suite_env(
        log_dir,
        FINPULSE_BANK_RATE_LIMIT="99",
        FINPULSE_RPC_TIMEOUT="60",
        FINPULSE_USER_RATE_LIMIT="100000",
        FINPULSE_USER_RATE_BURST="100000",
    )
    suite = Suite(
        load_settings(env),
        backing,
        base_env=env,
        log_dir=log_dir,
        emulator_args=["--customers", "60", "--approval", ",".join(f"{b}=auto" for b in BANKS)],
    )
    try:
        await suite.migrate()
        suite.start()
        await suite.wait_healthy()
        async with aiohttp.ClientSession() as session:
            user = await _prepare_user(session, suite, per_account)
            auth = {"Authorization": f"Bearer {suite.token(user)}"}
            url = f"{suite.gateway_url}/api/dashboard?user_id={user}"
            latencies = []
            for _ in range(samples):
                started = time.perf_counter()
                async with session.get(url + "&force_refresh=true", headers=auth) as resp:
                    assert resp.status == 200, await resp.text()
                    await resp.read()
                latencies.append(time.perf_counter() - started)
            async with session.get(url, headers=auth) as resp:
                body = await resp.read()
                assert (await resp.json())["cache_info"]["is_cached"], "the dashboard should be cached now"
        sql = await _sql_alone(backing.database_url, user, samples)

        token = suite.token(user)
        with bare_server(body, "/api/dashboard", log_dir) as (bare_url, bare_proc):
            targets = [
                (url, [suite.children["gateway"].proc.pid]),
                (f"{bare_url}/api/dashboard?user_id={user}", [bare_proc.pid]),
            ]
            gateway, bare = http_turns(targets, seconds, connections, token)

        p50, p99 = _percentile(latencies, 0.5), _percentile(latencies, 0.99)
        s50, s99 = _percentile(sql, 0.5), _percentile(sql, 0.99)
        print(
            f"dashboard: user with {len(BANKS)} banks x 4 accounts x {per_account} transactions "
            f"({len(body)} bytes of JSON); load tool {gateway.tool}, {connections} connections, {seconds:g} s each "
            "in 5 turns taken in alternation"
        )
        for name, done in (("cached GET /api/dashboard via gateway:", gateway), ("bare aiohttp, same body:", bare)):
            print(
                f"  {name:<38} {done.rps:,.0f} req/s, {done.server_cpu_per_request * 1e6:.0f} µs CPU/request "
                f"({done.describe()})"
            )
        cpu = bare.server_cpu_per_request / gateway.server_cpu_per_request
        print(f"  ratio gateway / bare: req/s {ratio(gateway, bare, 0.8)}; bare ÷ gateway CPU/request {cpu:.2f}")
        print(
            f"  uncached dashboard (force_refresh) over {samples} calls: p50 {p50 * 1000:.1f} ms, "
            f"p99 {p99 * 1000:.1f} ms"
        )
        print(f"  SQL aggregates alone:                     p50 {s50 * 1000:.1f} ms, p99 {s99 * 1000:.1f} ms")
        print(f"  ratio uncached / SQL alone: p50 {p50 / s50:.2f}, p99 {p99 / s99:.2f}")
    finally:
        suite.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=5000, help="per account")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--samples", type=int, default=30)
    args = parser.parse_args(argv)
    asyncio.run(run(args.transactions, args.seconds, args.connections, args.samples))


if __name__ == "__main__":
    main()
