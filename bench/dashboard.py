"""Dashboard: (1) cached GET /api/dashboard requests/s through the gateway ÷ a bare aiohttp handler
returning the same JSON body (same machine, same load tool, same concurrency; goal ≥ 0.8), and
(2) uncached ("cold") dashboard latency (p50, p99) for users with 3 banks × 4 accounts × N transactions,
one user per N given (`--transactions 1000,20000`), with the SQL alone: the reads the dashboard's data
comes from as sync_svc runs them (aggregates from the rollups, sync_svc/rollups.py) and, for
comparison, the same reads with the aggregates scanned from every stored transaction as before the
rollups (sync_svc/aggregate_scan.py). With several N it prints cold p50 at the largest ÷ at the
smallest (goal ≤ 1.5), and for each N the cold dashboard ÷ the old aggregate scan.

The whole suite runs as `make up` runs it (emulator, four services, gateway, each its own process)
on a scratch database (on FINPULSE_DATABASE_URL when set, else embedded Postgres and Redis). The user
is synced through the real flow (consents, finalize, sync jobs). The load tool is wrk when it is on
PATH (`make bench-tools`), else a small aiohttp load loop; a ratio is printed only when the load tool
was not the bottleneck (`bench._common.ratio`).
"SQL alone" is the time of the sync storage queries the dashboard's data comes from (accounts, latest
balances, credits, last transactions, monthly cash flow, spending by category, spending today, loan
repayments, income by day, data version), run concurrently on one pool, as sync_svc runs them, with no
gRPC and no calculation.

`python -m bench.dashboard [--transactions 5000[,N…]] [--seconds 10] [--connections 32] [--samples 30]
[--cold-only]` (`--cold-only`: no cached leg)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import tempfile
import time

import aiohttp

from bench._common import (
    bare_server,
    customer_with_accounts,
    emulator_admin,
    http_turns,
    ratio,
    scratch_database,
    suite_env,
    top_up,
)
from deploy.suite import Suite
from svclib import db
from svclib.config import KNOWN_BANKS, load_settings
from svclib.embedded import BackingServices
from sync_svc.__main__ import SPEC as SYNC_SPEC
from sync_svc.aggregate_scan import AggregateScan
from sync_svc.bank_storage import BankDataStorage

BANKS = tuple(KNOWN_BANKS)
CUSTOMERS = 200  # emulator customers: a few in a hundred have exactly 4 accounts, one user per history size


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _prepare_user(session, suite: Suite, per_account: int, user: str | None = None) -> str:
    urls = {b.id: b.base_url for b in suite.settings.banks}
    user = user or await customer_with_accounts(session, urls["vbank"], 60)
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
        if status["status"] == "completed" and all(b["state"] == "JOB_STATE_SUCCEEDED" for b in status["banks"]):
            break  # (a job retried after a slow bank answer leaves the status "completed" meanwhile)
        await asyncio.sleep(0.5)
    assert all(b["state"] == "JOB_STATE_SUCCEEDED" for b in status["banks"]), status
    return user


async def _sql_alone(dsn: str, user: str, samples: int, scan: bool = False) -> list[float]:
    """The reads behind one dashboard, concurrently on one pool; `scan`: the aggregates scanned from the
    raw rows as before the rollups."""
    pool = await db.create_pool(dsn, SYNC_SPEC.schema, max_size=10)
    storage = BankDataStorage(pool)
    aggregates: BankDataStorage | AggregateScan = AggregateScan(pool) if scan else storage
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
                aggregates.monthly_cash_flow(user, 12),
                aggregates.spending_by_category(user, now - dt.timedelta(days=30)),
                aggregates.spending_by_category(user, today),
                aggregates.loan_repayments(user),
                aggregates.income_by_day(user, now - dt.timedelta(days=180)),
                storage.data_version(user),
            )
            timings.append(time.perf_counter() - started)
    finally:
        await pool.close()
    return timings


@dataclasses.dataclass
class Cold:
    """The cold leg of one user: latencies of the uncached dashboard, of its SQL, of the old scan."""

    per_account: int
    dashboard: list[float]
    sql: list[float]
    scan: list[float]


async def _customers(session, url: str, count: int) -> list[str]:
    """`count` emulator customers with 4 accounts (one per history size)."""
    found = []
    for n in range(1, CUSTOMERS + 1):
        if (await emulator_admin(session, url, f"customers/team200-{n}/counts"))["accounts"] == 4:
            found.append(f"team200-{n}")
            if len(found) == count:
                return found
    raise RuntimeError(f"fewer than {count} emulator customers with 4 accounts")


async def _cold_legs(session, suite: Suite, dsn: str, users: dict[int, str], samples: int) -> list[Cold]:
    """The cold leg of every user, the users taking turns call by call (a load that comes and goes on
    the machine then weighs on every history size alike)."""
    latencies: dict[int, list[float]] = {n: [] for n in users}
    for _ in range(samples):
        for n, user in users.items():
            auth = {"Authorization": f"Bearer {suite.token(user)}"}
            started = time.perf_counter()
            async with session.get(
                f"{suite.gateway_url}/api/dashboard?user_id={user}&force_refresh=true", headers=auth
            ) as resp:
                assert resp.status == 200, await resp.text()
                await resp.read()
            latencies[n].append(time.perf_counter() - started)
    return [
        Cold(n, latencies[n], await _sql_alone(dsn, user, samples), await _sql_alone(dsn, user, samples, True))
        for n, user in users.items()
    ]


def _cold_report(legs: list[Cold], samples: int) -> None:
    ms = 1000
    for leg in legs:
        d50, s50, o50 = (_percentile(x, 0.5) for x in (leg.dashboard, leg.sql, leg.scan))
        print(
            f"  {leg.per_account} tx/account: uncached dashboard (force_refresh, {samples} calls) "
            f"p50 {d50 * ms:.1f} ms, p99 {_percentile(leg.dashboard, 0.99) * ms:.1f} ms; "
            f"SQL alone p50 {s50 * ms:.1f} ms; "
            f"old aggregate scan alone p50 {o50 * ms:.1f} ms"
        )
        print(f"    ratio uncached / SQL alone: p50 {d50 / s50:.2f}; uncached / old scan: p50 {d50 / o50:.2f}")
    if len(legs) > 1:
        small, large = min(legs, key=lambda c: c.per_account), max(legs, key=lambda c: c.per_account)
        ratio = _percentile(large.dashboard, 0.5) / _percentile(small.dashboard, 0.5)
        print(
            f"  cold dashboard p50 at {large.per_account} / at {small.per_account} tx/account: {ratio:.2f} "
            "(goal <= 1.5)"
        )


async def run(sizes: list[int], seconds: float, connections: int, samples: int, cached: bool = True) -> None:
    async with scratch_database("dashboard") as backing:
        await _run(backing, sizes, seconds, connections, samples, cached)


async def _run(
    backing: BackingServices, sizes: list[int], seconds: float, connections: int, samples: int, cached: bool
) -> None:
    log_dir = tempfile.mkdtemp(prefix="fpd-logs-")
    # The load comes from one user: its request cap must not be what is measured.
    env = suite_env(
        log_dir,
        FINPULSE_BANK_RATE_LIMIT="99",
        FINPULSE_RPC_TIMEOUT="60",
        FINPULSE_BANK_TIMEOUT="60",  # the emulator serving 20,000 transactions per account on a busy machine
        FINPULSE_USER_RATE_LIMIT="100000",
        FINPULSE_USER_RATE_BURST="100000",
    )
    suite = Suite(
        load_settings(env),
        backing,
        base_env=env,
        log_dir=log_dir,
        emulator_args=["--customers", str(CUSTOMERS), "--approval", ",".join(f"{b}=auto" for b in BANKS)],
    )
    try:
        await suite.migrate()
        suite.start()
        await suite.wait_healthy()
        async with aiohttp.ClientSession() as session:
            customers = await _customers(session, suite.settings.banks[0].base_url, len(sizes))
            users = [await _prepare_user(session, suite, n, c) for n, c in zip(sizes, customers, strict=True)]
            legs = await _cold_legs(session, suite, backing.database_url, dict(zip(sizes, users, strict=True)), samples)
            user, per_account = users[0], sizes[0]
            auth = {"Authorization": f"Bearer {suite.token(user)}"}
            url = f"{suite.gateway_url}/api/dashboard?user_id={user}"
            async with session.get(url, headers=auth) as resp:
                body = await resp.read()
                assert (await resp.json())["cache_info"]["is_cached"], "the dashboard should be cached now"
        if cached:
            await _cached_leg(suite, user, url, body, log_dir, per_account, seconds, connections)
        print(f"cold dashboard: users with {len(BANKS)} banks x 4 accounts x N transactions")
        _cold_report(legs, samples)
    finally:
        suite.stop()


async def _cached_leg(
    suite: Suite, user: str, url: str, body: bytes, log_dir: str, per_account: int, seconds: float, connections: int
) -> None:
    token = suite.token(user)
    with bare_server(body, "/api/dashboard", log_dir) as (bare_url, bare_proc):
        targets = [
            (url, [suite.children["gateway"].proc.pid]),
            (f"{bare_url}/api/dashboard?user_id={user}", [bare_proc.pid]),
        ]
        gateway, bare = http_turns(targets, seconds, connections, token)

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


def _sizes(text: str) -> list[int]:
    sizes = [int(part) for part in text.split(",") if part.strip()]
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("transactions per account: positive numbers, comma-separated")
    return sizes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--transactions", type=_sizes, default=[5000], help="per account; several (1000,20000): one user each"
    )
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--cold-only", action="store_true", help="only the uncached dashboard (no load tool)")
    args = parser.parse_args(argv)
    asyncio.run(run(args.transactions, args.seconds, args.connections, args.samples, not args.cold_only))


if __name__ == "__main__":
    main()
