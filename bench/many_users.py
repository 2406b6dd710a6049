"""Many users: N users onboard through the gateway and first-sync at once against the bank emulator
(fixed latency per request) under the suite's per-bank rate cap; the wall time ÷ the bound the rate
cap allows, with 1 and with 2 sync_svc replicas in the same invocation. Goal ≤ 1.2 with one replica.

Each replica count gets a fresh database and a fresh suite (deploy.suite.Suite: gateway, the four
services, sync_svc in `--replicas` processes sharing one Redis-held rate budget per bank) and a bank
emulator of its own, in memory, at `--latency-ms` per request. The load is the onboarding flow
itself, driven by an aiohttp client in this process: for each user team200-1 … team200-N,
`POST /api/onboarding/start`, `POST /api/onboarding/consents` (account and product consents at the two
auto-approving banks, vbank and abank), `POST /api/onboarding/finalize`, with at most `--in-flight`
users onboarding at once. The approvals queue each bank's first sync; the suite's own sync workers run
them. The end of the run is read from the database (sync.sync_jobs, polled), not through the gateway,
so the waiting adds no load.

Figures, per replica count:
- wall: from the first onboarding request to the last sync job's `finished_at`;
- bound: per bank, the requests that pass the sync's rate cap (every request the emulator counted at
  that bank except the consent calls, which consent_svc makes uncapped) less the limiter's burst of
  5, ÷ the cap; the largest over the banks. No run can be faster while the cap holds; the ratio
  wall ÷ bound charges the suite for everything else (onboarding before the first sync, the tail of
  the last job, a bank left idle while the other one still has work, CPU);
- bank calls per user: every request the emulator counted (consents included) ÷ N, and the sync's
  share of them (sync.bank_status_log agrees with the emulator's count, or the output says so);
- Postgres time per transaction written: the server's time executing statements in the benchmark's
  database ÷ the transactions stored, from pg_stat_statements when the server loads it, else from
  pg_stat_database.active_time (the elapsed time of every statement of every service, waits for
  locks and for a busy CPU included: an upper bound of the writes' share); and, from the sync's own
  timings, the commit tail after each job's fetch ÷ the rows it wrote.
Then, per bank, from the emulator's request log: the capped requests' rate while users still
onboarded and after, the most that reached the bank in one second (the limiter spaces the slots;
a stalled event loop can still bunch the requests it releases), and the tail after the last answer;
and the CPU seconds each process of the suite spent (the machine's cores are shared by all of them).

`python -m bench.many_users [--users 200] [--replicas 1 2] [--latency-ms 40] [--rate N]
[--sync-workers N] [--in-flight 50]` (`--sync-workers`: FINPULSE_SYNC_WORKERS, jobs at once per
sync process; default the suite's).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter

import aiohttp
import asyncpg

from bench._common import emulator_admin, reserved_env, scratch_database, suite_env
from bench.first_sync import _cpu_seconds, _wait_for
from deploy.suite import Suite
from svclib.config import load_section, load_settings
from sync_svc.settings import read_sync_section

BANKS = ("vbank", "abank")  # the auto-approving banks
BURST = 5  # the sync's rate limiter (sync_svc.wiring)
GOAL = 1.2


@dataclasses.dataclass
class Run:
    replicas: int
    users: int
    wall: float = 0.0
    onboarding: float = 0.0  # first request → last finalize answered
    requests: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)  # bank → path → count
    logged_calls: dict[str, int] = dataclasses.field(default_factory=dict)  # bank → sync.bank_status_log rows
    jobs: dict[str, int] = dataclasses.field(default_factory=dict)  # final state → count
    jobs_per_replica: list[int] = dataclasses.field(default_factory=list)
    transactions: int = 0
    pg_ms: float | None = None
    pg_source: str = ""
    commit_ms: float = 0.0  # the sync's commit tails, summed
    rows_committed: int = 0
    cpu: dict[str, float] = dataclasses.field(default_factory=dict)
    failures: list[str] = dataclasses.field(default_factory=list)
    # bank → (arrived, answered) of each capped request, seconds since the start (the emulator's log)
    timeline: dict[str, list[tuple[float, float]]] = dataclasses.field(default_factory=dict)

    def capped(self, bank: str) -> int:
        """The requests at `bank` that pass the sync's rate cap: all but consent_svc's consent calls."""
        return sum(n for path, n in self.requests.get(bank, {}).items() if "consent" not in path)

    def bound(self, rate: float) -> tuple[float, str]:
        bank = max(BANKS, key=self.capped)
        return max(self.capped(bank) - BURST, 0) / rate, bank

    @property
    def all_requests(self) -> int:
        return sum(sum(paths.values()) for paths in self.requests.values())


async def _onboard(session: aiohttp.ClientSession, gateway: str, user: str, token: str) -> None:
    headers = {"Authorization": f"Bearer {token}"}

    async def post(path: str, body: dict) -> dict:
        async with session.post(gateway + path, json=body, headers=headers) as resp:
            answer = await resp.json(content_type=None)
            if resp.status != 200:
                raise RuntimeError(f"{user}: {path} answered {resp.status}: {answer}")
            return answer

    started = await post("/api/onboarding/start", {"user_id": user})
    banks = [{"bank_id": b, "consents": {"account": True, "product": True}} for b in BANKS]
    created = await post("/api/onboarding/consents", {"user_id": user, "banks": banks})
    if created.get("overall_status") != "completed":
        raise RuntimeError(f"{user}: consents not approved at once: {created}")
    await post("/api/onboarding/finalize", {"onboarding_id": started["onboarding_id"], "user_id": user})


async def _wait_synced(conn: asyncpg.Connection, users: int, timeout: float) -> asyncpg.Record:
    """Until every (user, bank) has a job and none is queued or running; the final counts."""
    deadline = time.monotonic() + timeout
    while True:
        row = await conn.fetchrow(
            """SELECT count(DISTINCT (user_id, bank_id)) AS pairs,
                      count(*) FILTER (WHERE state IN ('queued', 'running')) AS active,
                      extract(epoch FROM max(finished_at)) AS last_finished
               FROM sync.sync_jobs"""
        )
        if row["pairs"] >= users * len(BANKS) and row["active"] == 0:
            return row
        if time.monotonic() > deadline:
            raise RuntimeError(f"the syncs did not finish within {timeout:.0f} s: {dict(row)}")
        await asyncio.sleep(0.2)


async def _pg_time(conn: asyncpg.Connection) -> tuple[float | None, str]:
    """Milliseconds the server spent executing statements in this database so far, and the source."""
    try:
        ms = await conn.fetchval(
            "SELECT sum(total_exec_time) FROM pg_stat_statements WHERE dbid = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        return float(ms or 0.0), "pg_stat_statements, every statement in the database"
    except asyncpg.PostgresError:
        pass
    try:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        ms = await conn.fetchval("SELECT active_time FROM pg_stat_database WHERE datname = current_database()")
        return float(
            ms or 0.0
        ), "pg_stat_database.active_time: every statement of every service (pg_stat_statements not loaded)"
    except asyncpg.PostgresError:
        return None, "unavailable"


def _commit_tails(log_dir: str) -> tuple[float, int]:
    """The sync's own write timings: the commit tails (ms) and rows written of its succeeded jobs."""
    total_ms, rows = 0.0, 0
    for name in os.listdir(log_dir):
        if not name.startswith("sync") or not name.endswith(".log"):
            continue
        with open(os.path.join(log_dir, name), encoding="utf-8", errors="replace") as f:
            for line in f:
                if '"sync job succeeded"' not in line:
                    continue
                entry = json.loads(line)
                total_ms += entry.get("commit_ms", 0.0)
                rows += entry.get("inserted", 0) + entry.get("updated", 0)
    return total_ms, rows


def _timeline(path: str, started: float) -> dict[str, list[tuple[float, float]]]:
    """Per bank, when each request through the sync's cap reached the bank's handler and when it was
    answered (seconds after `started`), from the emulator's log, in order of answer."""
    seen: dict[str, list[tuple[float, float]]] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if '"request"' not in line:
                continue
            try:
                entry = json.loads(line)
                answered = dt.datetime.fromisoformat(entry["ts"]).timestamp() - started
                arrived = answered - float(entry["latency_ms"]) / 1000
            except (ValueError, KeyError, TypeError):
                continue
            path = entry.get("path", "")
            if entry.get("msg") == "request" and entry.get("bank") and "consent" not in path:
                if not path.startswith("/__admin__/"):
                    seen.setdefault(entry["bank"], []).append((arrived, answered))
    return {bank: sorted(times, key=lambda t: t[1]) for bank, times in seen.items()}


def _phases(times: list[tuple[float, float]], wall: float, onboarding: float, rate: float) -> str:
    """Where a bank's capped requests fell in the run: the rate while users still onboarded and after,
    the most that arrived in one second, the tail after the last answer."""
    if len(times) < 2:
        return "no timeline"
    first, last = times[0][1], times[-1][1]
    during = sum(1 for _, t in times if t <= onboarding)
    after = len(times) - during
    per_second = Counter(int(arrived) for arrived, _ in times)
    return (
        f"capped requests answered from {first:.2f} s to {last:.2f} s: {during / max(onboarding - first, 1e-9):.1f} "
        f"req/s while users onboarded, {after / max(last - onboarding, 1e-9):.1f} req/s after (cap {rate:g}; "
        f"most arrived in one second {max(per_second.values())}); last job done {wall - last:.2f} s after the "
        "last answer"
    )


async def run_once(users: int, replicas: int, args) -> Run:
    async with scratch_database(f"many_users_{replicas}") as backing:
        return await _run(backing, users, replicas, args)


async def _run(backing, users: int, replicas: int, args) -> Run:
    result = Run(replicas, users)
    log_dir = tempfile.mkdtemp(prefix="fpb-many-")
    env = suite_env(
        log_dir,
        FINPULSE_BANK_EMULATOR="off",  # our own below: in memory, no state file written per consent
        FINPULSE_BANK_RATE_LIMIT=f"{args.rate:g}",
        FINPULSE_USER_RATE_LIMIT="100000",
        FINPULSE_USER_RATE_BURST="100000",
        FINPULSE_LOG_LEVEL=args.log_level,
        FINPULSE_SYNC_WORKERS=str(args.sync_workers),
    )
    settings = load_settings(env)
    urls = {b.id: b.base_url for b in settings.banks}
    suite = Suite(settings, backing, base_env=env, log_dir=log_dir, replicas={"sync": replicas})
    sync_children = [name for name, kind in suite.kinds.items() if kind == "sync"]
    for name in sync_children:  # the "sync job succeeded" lines carry the sync's write timings
        if args.log_level not in ("DEBUG", "INFO"):
            suite.children[name].env["FINPULSE_LOG_LEVEL"] = "INFO"
    emulator_log = open(os.path.join(log_dir, "bank_sandbox.log"), "wb")  # one line per request: the timeline
    emulator = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bank_sandbox",
            "--banks",
            ",".join(f"{b}={u.rsplit(':', 1)[1]}" for b, u in urls.items()),
            "--customers",
            str(users),
            "--latency-ms",
            f"{args.latency_ms:g}",
            "--approval",
            ",".join(f"{b}=auto" for b in BANKS),
        ],
        env={**os.environ, **reserved_env()},
        stdout=emulator_log,
        stderr=subprocess.STDOUT,
    )
    conn = None
    try:
        await _wait_for(urls)
        await suite.migrate()
        suite.start()
        await suite.wait_healthy(timeout=120)
        conn = await asyncpg.connect(backing.database_url)
        pg_before, _ = await _pg_time(conn)
        pids = {name: child.proc.pid for name, child in suite.children.items() if child.proc is not None}
        pids["bank emulator"] = emulator.pid
        cpu_before = {name: _cpu_seconds(pid) for name, pid in pids.items()}
        cpu_before["this process"] = time.process_time()
        tokens = {f"team200-{i}": suite.token(f"team200-{i}") for i in range(1, users + 1)}
        gate = asyncio.Semaphore(args.in_flight)
        connector = aiohttp.TCPConnector(limit=args.in_flight)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:

            async def one(user: str) -> None:
                async with gate:
                    try:
                        await _onboard(session, suite.gateway_url, user, tokens[user])
                    except Exception as exc:  # noqa: BLE001 - reported with the figures
                        result.failures.append(str(exc)[:300])

            started = time.time()
            await asyncio.gather(*(one(user) for user in tokens))
            result.onboarding = time.time() - started
            if len(result.failures) == users:
                raise RuntimeError(f"every onboarding failed; first: {result.failures[0]}")
            done = await _wait_synced(conn, users - len(result.failures), args.timeout)
            result.wall = float(done["last_finished"]) - started
            cpu_after = {name: _cpu_seconds(pid) for name, pid in pids.items()}
            cpu_after["this process"] = time.process_time()
            result.cpu = {name: cpu_after[name] - cpu_before[name] for name in cpu_before}
            for bank, url in urls.items():
                if bank in BANKS:
                    result.requests[bank] = (await emulator_admin(session, url, "requests"))["by_path"]
        result.jobs = dict(
            Counter(
                {
                    r["state"]: r["n"]
                    for r in await conn.fetch("SELECT state, count(*) n FROM sync.sync_jobs GROUP BY 1")
                }
            )
        )
        result.jobs_per_replica = [
            r["n"]
            for r in await conn.fetch("SELECT worker_id, count(*) n FROM sync.sync_jobs GROUP BY 1 ORDER BY 2 DESC")
        ]
        result.logged_calls = {
            r["bank_id"]: r["n"]
            for r in await conn.fetch("SELECT bank_id, count(*) n FROM sync.bank_status_log GROUP BY 1")
        }
        result.transactions = await conn.fetchval("SELECT count(*) FROM sync.transactions")
    finally:
        suite.stop()  # the services' backends exit: their statistics reach pg_stat_database
        emulator.terminate()
        emulator.wait(10)
        emulator_log.close()
    if conn is not None:
        try:
            await asyncio.sleep(0.5)
            pg_after, result.pg_source = await _pg_time(conn)
            if pg_before is not None and pg_after is not None:
                result.pg_ms = pg_after - pg_before
        finally:
            await conn.close()
    result.commit_ms, result.rows_committed = _commit_tails(log_dir)
    result.timeline = _timeline(os.path.join(log_dir, "bank_sandbox.log"), started)
    return result


def report(runs: list[Run], args) -> None:
    print(
        f"many users: {args.users} users onboard (account + product consents at {', '.join(BANKS)}) and "
        f"first-sync; bank latency {args.latency_ms:g} ms, rate cap {args.rate:g} req/s per bank "
        f"(FINPULSE_BANK_RATE_LIMIT), {args.sync_workers} jobs at once per sync process (FINPULSE_SYNC_WORKERS), "
        f"at most {args.in_flight} users onboarding at once"
    )
    print("  load tool: the onboarding flow itself, driven by an aiohttp client in this process")
    header = (
        f"  {'sync replicas':>13} | {'wall s':>7} | {'bound s':>7} | {'wall/bound':>10} | {'onboarding s':>12} | "
        f"{'bank calls/user':>15} | {'pg ms/tx':>8}"
    )
    print(header)
    print("  " + "-" * (len(header) - 2))
    for r in runs:
        bound, _ = r.bound(args.rate)
        ok = r.users - len(r.failures)
        per_user = r.all_requests / max(ok, 1)
        pg = f"{r.pg_ms / r.transactions:.3f}" if r.pg_ms is not None and r.transactions else "n/a"
        ratio = f"{r.wall / bound:.2f}" if bound > 0 else "n/a"
        print(
            f"  {r.replicas:>13} | {r.wall:>7.2f} | {bound:>7.2f} | {ratio:>10} | {r.onboarding:>12.2f} | "
            f"{per_user:>15.1f} | {pg:>8}"
        )
    for r in runs:
        bound, bank = r.bound(args.rate)
        ok = r.users - len(r.failures)
        print(f"  {r.replicas} sync replica(s):")
        if r.failures:
            print(f"    {len(r.failures)} onboarding(s) FAILED (left out of the figures); first: {r.failures[0]}")
        capped = {b: r.capped(b) for b in BANKS}
        print(
            f"    bank requests: {r.all_requests} in all ({r.all_requests / max(ok, 1):.1f} per user), through the "
            f"sync's cap per bank {capped} ({sum(capped.values()) / max(ok, 1):.1f} per user); "
            f"sync.bank_status_log rows {dict(sorted(r.logged_calls.items()))}"
        )
        paths = Counter()
        for by_path in r.requests.values():
            paths.update(by_path)
        print("    by path (both banks): " + ", ".join(f"{p} {n}" for p, n in paths.most_common()))
        print(
            f"    bound: ({capped[bank]} - burst {BURST}) / {args.rate:g} req/s at {bank} = {bound:.2f} s; "
            f"every request at {bank} (consents too) / cap = {sum(r.requests[bank].values()) / args.rate:.2f} s"
        )
        if bound > 0:
            ratio = r.wall / bound
            verdict = "meets" if ratio <= GOAL else "MISSES"
            goal = f"goal <= {GOAL} with one replica" if r.replicas == 1 else f"the goal is {GOAL} for one replica"
            print(f"    wall / bound = {r.wall:.2f} / {bound:.2f} = {ratio:.2f}: {verdict} {GOAL} ({goal})")
            rate = sum(capped.values()) / r.wall
            print(f"    achieved: {rate:.1f} capped req/s over both banks (the caps allow {args.rate * len(BANKS):g})")
        for bank in BANKS:
            print(f"    {bank}: " + _phases(r.timeline.get(bank, []), r.wall, r.onboarding, args.rate))
        print(f"    jobs: {r.jobs}; jobs per sync process: {r.jobs_per_replica}; transactions stored {r.transactions}")
        if r.pg_ms is not None and r.transactions:
            print(
                f"    Postgres: {r.pg_ms / 1000:.2f} s executing statements / {r.transactions} transactions = "
                f"{r.pg_ms / r.transactions * 1000:.0f} us per transaction ({r.pg_source})"
            )
        else:
            print(f"    Postgres time: {r.pg_source or 'unavailable'}")
        if r.rows_committed:
            print(
                f"    the sync's own timings: commit tails after the fetches {r.commit_ms / 1000:.2f} s / "
                f"{r.rows_committed} rows written = {r.commit_ms / r.rows_committed * 1000:.0f} us per row "
                "(the pages' COPY while fetching is not in it)"
            )
        cores = os.cpu_count() or 1
        total = sum(r.cpu.values())
        busiest = sorted(r.cpu.items(), key=lambda kv: -kv[1])
        print(
            "    CPU s of the suite's processes during the run (Postgres: its time above; the machine is shared): "
            + ", ".join(f"{name} {s:.1f}" for name, s in busiest if s >= 0.05)
            + f" = {total:.1f} s of {cores} cores x {r.wall:.1f} s ({total / (cores * max(r.wall, 1e-9)):.0%})"
        )


async def run(args) -> None:
    runs = []
    for replicas in args.replicas:
        runs.append(await run_once(args.users, replicas, args))
    report(runs, args)


def main(argv: list[str] | None = None) -> None:
    defaults = load_section(read_sync_section, {})
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2], help="sync_svc replicas, one run each")
    parser.add_argument("--latency-ms", type=float, default=40.0, help="the emulator's latency per request")
    parser.add_argument("--rate", type=float, default=defaults.bank_rate_limit, help="requests/s per bank")
    parser.add_argument("--sync-workers", type=int, default=defaults.workers, help="jobs at once per sync process")
    parser.add_argument("--in-flight", type=int, default=50, help="users onboarding at once")
    parser.add_argument("--log-level", default="WARNING", help="the suite's (sync_svc logs at INFO at least)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the syncs")
    asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
