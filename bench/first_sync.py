"""First sync: wall time of a full sync of 3 banks × 4 accounts × 1,000 transactions with 50 ms of
emulator latency per request, ÷ the lower bound that the request dependency chain and the caps imply.
Goal ≤ 1.3.

What runs is the production path of a sync job, in process: `SyncWorkers.process` for three claimed
jobs at once (token, accounts, balances and every page through `bankapi`, the per-bank concurrency
cap and the Redis-shared rate cap, then `write_bank_data` into Postgres), against the bank emulator
on loopback with its latency knob at 50 ms. Only the gRPC hop to consent_svc is left out: the
consent ids are handed over directly.

The lower bound, per bank (the banks run in parallel, so the sync's bound is the largest), with L the
latency, R the bank requests of the job, c the per-job cap on requests in flight and r the rate cap:
- chain: token → accounts → first transaction page → any later page: 4 × L;
- concurrency: token and accounts go one after the other, then R − 2 requests with at most c in
  flight: 2·L + ceil((R − 2) / c) · L;
- rate: (R − burst) / r seconds;
the bound is the largest of the three. The write to Postgres is not in the bound: it is part of
the measured time, so the ratio charges the suite for it.

`python -m bench.first_sync [--latency-ms 50] [--transactions 1000] [--rate N] [--concurrency N]`.
"""
from __future__ import annotations

import argparse
import asyncio
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import aiohttp

from bankapi.client import BankClients
from bankapi.tokens import RedisTokenStore
from svclib import db
from svclib.cache import Cache
from svclib.config import BankConfig, TeamCredentials, load_settings
from svclib.embedded import ensure_backing_services
from svclib.ratelimit import RateLimiter
from sync_svc.__main__ import SPEC
from sync_svc.bank_storage import BankDataStorage
from sync_svc.storage import JobStorage, SyncStorage
from sync_svc.worker import JobConsents, SyncWorkers, WorkerConfig, record_call

BANKS = ("vbank", "abank", "sbank")
TEAM = TeamCredentials("team200", "finpulse-dev-secret")
ACCOUNTS = 4
CUSTOMERS = 60


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _wait_for(urls: dict[str, str]) -> None:
    async with aiohttp.ClientSession() as session:
        for url in urls.values():
            for _ in range(200):
                try:
                    async with session.get(f"{url}/__admin__/faults") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError(f"the bank emulator did not start at {url}")


async def _admin(session: aiohttp.ClientSession, url: str, path: str, body=None):
    method = session.post if body is not None else session.get
    async with method(f"{url}/__admin__/{path}", json=body) as resp:
        resp.raise_for_status()
        return await resp.json()


async def _customer_with_four_accounts(session, url: str, customers: int) -> str:
    for n in range(1, customers + 1):
        counts = await _admin(session, url, f"customers/team200-{n}/counts")
        if counts["accounts"] == ACCOUNTS:
            return f"team200-{n}"
    raise RuntimeError("no emulator customer with four accounts")


async def _top_up(session, urls: dict[str, str], user: str, per_account: int) -> None:
    for url in urls.values():
        counts = await _admin(session, url, f"customers/{user}/counts")
        for account_id, have in counts["transactions_by_account"].items():
            missing = per_account - have
            while missing > 0:
                step = min(missing, 1000)
                await _admin(session, url, f"customers/{user}/transactions", {"account_id": account_id, "count": step})
                missing -= step


class _Consents:
    def __init__(self, ids: dict[str, JobConsents]):
        self.ids = ids

    async def for_bank(self, user_id: str, bank_id: str) -> JobConsents:
        return self.ids[bank_id]


def lower_bound(requests: int, latency: float, concurrency: int, rate: float, burst: int) -> dict[str, float]:
    chain = 4 * latency
    cap = 2 * latency + math.ceil((requests - 2) / concurrency) * latency
    rated = max(requests - burst, 0) / rate
    return {"chain": chain, "concurrency": cap, "rate": rated, "bound": max(chain, cap, rated)}


async def run(latency_ms: float, per_account: int, rate: float, concurrency: int) -> None:
    backing = ensure_backing_services(os.environ.get("FINPULSE_DATABASE_URL") or None,
                                      os.environ.get("FINPULSE_REDIS_URL") or None, tempfile.mkdtemp(prefix="fpb-"))
    import asyncpg
    name = f"finpulse_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(backing.database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = backing.database_url.replace("/postgres?", f"/{name}?") if "/postgres?" in backing.database_url \
        else backing.database_url.rsplit("/", 1)[0] + f"/{name}"
    ports = {b: _free_port() for b in BANKS}
    urls = {b: f"http://127.0.0.1:{p}" for b, p in ports.items()}
    # The banks are other machines: the emulator runs in its own process, not on this event loop.
    emulator = subprocess.Popen(
        [sys.executable, "-m", "bank_sandbox", "--banks", ",".join(f"{b}={p}" for b, p in ports.items()),
         "--customers", str(CUSTOMERS), "--approval", ",".join(f"{b}=auto" for b in BANKS)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cache = Cache(backing.redis_url, prefix=f"finpulse-bench-{uuid.uuid4().hex[:6]}:")
    pool = None
    try:
        await _wait_for(urls)
        await db.migrate(dsn, SPEC.schema, SPEC.migrations)
        pool = await db.create_pool(dsn, SPEC.schema, max_size=10)
        async with aiohttp.ClientSession() as session:
            user = await _customer_with_four_accounts(session, urls["vbank"], CUSTOMERS)
            await _top_up(session, urls, user, per_account)
            bank_configs = [BankConfig(b, b, urls[b], "auto") for b in BANKS]
            setup = BankClients(bank_configs, TEAM)
            consents = {}
            for bank in BANKS:
                client = setup.get(bank)
                account = await client.request_account_consent(user)
                product = await client.request_product_consent(user)
                consents[bank] = JobConsents(account.consent_id, product.consent_id)
            await setup.close()
            for url in urls.values():
                await _admin(session, url, "faults", {"latency_ms": latency_ms})

            limiter = RateLimiter(cache.redis, rate, burst=5, prefix=cache.prefix + "rl:")
            calls = []
            clients = BankClients(bank_configs, TEAM, token_store=RedisTokenStore(cache.redis, prefix=cache.prefix),
                                  on_call=lambda rec: (calls.append(rec), record_call(rec)),
                                  throttle=lambda bank_id: limiter.acquire(f"bank:{bank_id}"))
            jobs = JobStorage(pool)
            workers = SyncWorkers(jobs, BankDataStorage(pool), clients, _Consents(consents), cache,
                                  WorkerConfig(workers=3, concurrency=concurrency))
            for bank in BANKS:
                await SyncStorage(pool).enqueue(user, bank, "bench")
            started = time.perf_counter()
            claimed = [await jobs.claim(workers.worker_id, 60) for _ in BANKS]
            await asyncio.gather(*(workers.process(job) for job in claimed))
            elapsed = time.perf_counter() - started
            await clients.close()
            states = {r["bank_id"]: r["state"] for r in await pool.fetch("SELECT bank_id, state FROM sync_jobs")}
            stored = await pool.fetchval("SELECT count(*) FROM transactions")
        per_bank = {b: sum(1 for c in calls if c.bank_id == b) for b in BANKS}
        bounds = {b: lower_bound(per_bank[b], latency_ms / 1000, concurrency, rate, 5) for b in BANKS}
        worst = max(bounds.values(), key=lambda x: x["bound"])
        print(f"first sync: {len(BANKS)} banks x {ACCOUNTS} accounts x {per_account} transactions, "
              f"latency {latency_ms:.0f} ms, per-job concurrency {concurrency}, rate cap {rate:g} req/s per bank")
        print(f"  jobs: {states}; transactions stored: {stored}")
        print(f"  bank requests per bank: {per_bank}")
        print(f"  lower bound (worst bank): chain {worst['chain']:.3f} s, concurrency {worst['concurrency']:.3f} s, "
              f"rate {worst['rate']:.3f} s -> {worst['bound']:.3f} s")
        print(f"  measured wall time: {elapsed:.3f} s")
        print(f"  ratio measured / lower bound: {elapsed / worst['bound']:.2f} (goal <= 1.3)")
    finally:
        if pool is not None:
            await pool.close()
        emulator.terminate()
        emulator.wait(10)
        await cache.delete_prefix(cache.prefix)
        await cache.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        backing.stop()


def main(argv: list[str] | None = None) -> None:
    defaults = load_settings({})
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--transactions", type=int, default=1000, help="per account")
    parser.add_argument("--rate", type=float, default=defaults.bank_rate_limit, help="requests/s per bank")
    parser.add_argument("--concurrency", type=int, default=defaults.sync_concurrency)
    args = parser.parse_args(argv)
    asyncio.run(run(args.latency_ms, args.transactions, args.rate, args.concurrency))


if __name__ == "__main__":
    main()
