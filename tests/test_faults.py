"""Faults under load, on real processes with real stores (tests/faults.py): the suite must ride them out.

The suite runs as `make up` runs it (every service its own process, supervised by the launcher's
machinery) on a Postgres and a Redis of this module's own, so they can be restarted and stopped; the
machine's servers are never touched. A load generator sends a mix of requests through the gateway as
several users (dashboard, banks, sync start and status, consents status, bootstrap, financial inputs,
profile) and records every answer with its time; each test asserts on those records:

a. Postgres restarted 5 times under the load (4 × `pg_ctl restart -m fast`, once stopped for
   `PG_STOP_SECONDS` then started): the only failed answers are 503s, all within an outage window
   (+ `MARGIN` seconds after it); every route answers 200 again within `RECOVERY_LIMIT` seconds of
   Postgres being back; no sync job is left held by nobody (running with an expired lease, or queued
   and due) after a recovery; once the load stops, every job ends, succeeded, with what is stored equal to
   the emulator's data; no service restarted; none of the asyncpg misuse messages of the issue.
a'. At its root, the stuck sync of the issue: a large COPY whose connection is dropped while it waits to
   send fails at once (asyncpg alone waited forever), on a private cluster whose backend is stopped.
b. Redis stopped `REDIS_STOP_SECONDS` under the load: every request answers 200; once Redis is back,
   the caches are used again (the dashboard's and the bootstrap's entries reappear in Redis, and the
   dashboard is served from its Redis level).
c. kill -9 of each service and of the gateway under the load, each while a sync job runs: the launcher's
   supervision restarts it; the running job finishes, succeeded, with stored counts equal to the
   emulator's (nothing lost, nothing twice); failed answers only inside the kill window; acknowledged
   writes are stored.
d. Every service's gRPC port refuses calls without a statement or with a badly signed one
   (UNAUTHENTICATED) and a statement for user A naming user B's data (PERMISSION_DENIED / NOT_FOUND,
   never B's data), while health and reflection answer without one.

Figures of each test (requests, statuses, outage windows, recovery times, restarts) go to
`fault-figures.json` in the test's tmp dir and to one summary line on the terminal.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from typing import ClassVar

import aiohttp
import asyncpg
import grpc
import pytest
import redis.asyncio as aioredis

from tests.e2e import Http, onboard, set_faults, wait_synced
from tests.faults import (
    Load,
    PrivatePostgres,
    PrivateRedis,
    Reports,
    Window,
    connect,
    count_mismatches,
    describe,
    start_suite,
    stuck_jobs,
    until,
    write_figures,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

#: Users of the load; the kill test's sync runs for KILL_USER; AUTH_A / AUTH_B for the gRPC checks.
LOAD_USERS = [f"team200-{n}" for n in range(1, 5)]
KILL_USER = "team200-5"
AUTH_A, AUTH_B = "team200-6", "team200-7"
BANKS = ("vbank", "abank")
PG_RESTARTS = 5
PG_STOP_SECONDS = 6.0
REDIS_STOP_SECONDS = 60.0
#: After Postgres is back, every route answers 200 within this many seconds.
RECOVERY_LIMIT = 5.0
#: A failed request counts as part of an outage if it overlapped the outage or ended within MARGIN s after.
MARGIN = 5.0
#: Bank latency while a process is killed: every bank call takes this long, so a sync lasts seconds.
KILL_BANK_LATENCY_MS = 1000
#: Load between two faults, so every route is seen working before the next one.
STEADY_SECONDS = 3.0
#: What asyncpg logged around every restart in the issue: each means a connection was misused.
ASYNCPG_MISUSE = (
    "released back to the pool",
    "Future exception was never retrieved",
    "Task exception was never retrieved",
    "unhandled error",
)
#: asyncpg handing out a pooled connection whose server has just said goodbye (before its socket's end
#: arrives): answered UNAVAILABLE (and retried by the caller's gRPC channel), counted, not a failure.
ASYNCPG_RACE = ("cannot switch to state",)


# ------------------------------------------------------------------------------------------ fixtures


class Faulty:
    """The module's suite on its private stores, with supervision and its reports."""

    def __init__(self, suite, supervision, reports: Reports, postgres: PrivatePostgres, redis: PrivateRedis):
        self.suite = suite
        self.supervision = supervision
        self.reports = reports
        self.postgres = postgres
        self.redis = redis
        self.bank_urls = {bank.id: bank.base_url for bank in suite.settings.banks}

    def log_text(self, name: str) -> str:
        path = self.suite.children[name].log_path
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except OSError:
            return ""

    def log_sizes(self) -> dict[str, int]:
        return {name: len(self.log_text(name)) for name in self.suite.children}

    def log_matches(self, since: dict[str, int], needles=ASYNCPG_MISUSE, errors_only: bool = True) -> dict[str, int]:
        """Lines with each needle in the children's logs written after `since` (log_sizes()); with
        `errors_only`, only lines logged as errors (or written outside the JSON log): a warning that
        names a lost connection it handled is no failure."""
        found: dict[str, int] = {}
        for name in self.suite.children:
            for line in self.log_text(name)[since.get(name, 0) :].splitlines():
                if (
                    errors_only
                    and line.startswith("{")
                    and not any(f'"level": "{level}"' in line for level in ("ERROR", "CRITICAL"))
                ):
                    continue
                for needle in needles:
                    if needle in line:
                        found[f"{name}: {needle}"] = found.get(f"{name}: {needle}", 0) + 1
        return found

    def exits(self) -> int:
        return self.reports.count(" exited with ")


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    postgres, redis = PrivatePostgres(), PrivateRedis()
    postgres.start()
    redis.start()
    log_dir = str(tmp_path_factory.mktemp("fault-suite"))
    reports = Reports()
    suite, supervision = start_suite(postgres.url, redis.url, log_dir, customers=10, reports=reports)
    try:
        env = Faulty(suite, supervision, reports, postgres, redis)
        asyncio.run(_onboard_everyone(env))
        yield env
    finally:
        supervision.stop()
        suite.close()
        redis.destroy()
        postgres.destroy()


async def _onboard_everyone(env: Faulty) -> None:
    async with aiohttp.ClientSession() as session:
        http = Http(session, env.suite.gateway_url, tokens=env.suite.token)
        for user in [*LOAD_USERS, KILL_USER, AUTH_B]:
            await onboard(http, user, BANKS)
        for user in [*LOAD_USERS, KILL_USER, AUTH_B]:
            await wait_synced(http, user, timeout=120)


@pytest.fixture
def figures(request, tmp_path):
    """A dict the test fills with its figures: written to `fault-figures.json` in its tmp dir and
    summarized on the terminal (whether the test passed or not)."""
    data: dict = {}
    yield data
    path = tmp_path / "fault-figures.json"
    write_figures(path, data)
    summary = data.get("summary", "")
    line = f"\n[fault figures] {request.node.name}: {summary}\n  full figures: {path}"
    capture = request.config.pluginmanager.getplugin("capturemanager")
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    if capture is not None:
        with capture.global_and_fixture_disabled():
            print(line, file=sys.stderr, flush=True)
    else:
        print(line, file=sys.stderr, flush=True)
    if reporter is not None:  # again in the run's final summary
        _FiguresSummary.lines.append(line.strip())
        if not request.config.pluginmanager.has_plugin("fault-figures"):
            request.config.pluginmanager.register(_FiguresSummary(), "fault-figures")


class _FiguresSummary:
    """A plugin registered by `figures`: the figures' summary lines at the end of the run."""

    lines: ClassVar[list[str]] = []  # one list for the run, shared by every instance

    def pytest_terminal_summary(self, terminalreporter):
        terminalreporter.section("fault figures")
        for line in self.lines:
            terminalreporter.write_line(line)


async def _wait_healthy(env: Faulty) -> None:
    await env.suite.wait_healthy(timeout=90)


#: Once the load stops, every job must have ended within this many seconds.
SETTLE_SECONDS = 60.0


async def _settle_jobs(env: Faulty, conn, timeout: float = SETTLE_SECONDS) -> list[dict]:
    """Wait until no job is queued or running (at most `timeout` s); every job row of the suite, those
    still queued or running included (the callers' assertions on states name them)."""

    async def idle():
        return await conn.fetchval("SELECT count(*) = 0 FROM sync.sync_jobs WHERE state IN ('queued', 'running')")

    await until(idle, timeout, 0.5)
    return [
        dict(r)
        for r in await conn.fetch(
            "SELECT job_id::text, user_id, bank_id, state, attempts, last_error, lease_until, run_after "
            "FROM sync.sync_jobs ORDER BY created_at"
        )
    ]


def _states(rows: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    return counts


def _unfinished(rows: list[dict]) -> list[dict]:
    """Jobs that did not end well: still queued or running after the settle time, failed, given up."""
    return [{k: str(v) for k, v in r.items()} for r in rows if r["state"] != "succeeded"][:20]


def _latency(samples) -> dict[str, float]:
    spans = sorted(s.end - s.start for s in samples)
    if not spans:
        return {}
    return {
        "p50_s": round(spans[len(spans) // 2], 3),
        "p95_s": round(spans[int(len(spans) * 0.95)], 3),
        "max_s": round(spans[-1], 3),
    }


# ------------------------------------------------------------------------------------- d. gRPC auth


async def test_every_grpc_port_refuses_unauthenticated_and_forged_user_calls(faulty, figures):
    from finpulse.consent.v1 import consent_pb2, consent_pb2_grpc
    from finpulse.dashboard.v1 import dashboard_pb2, dashboard_pb2_grpc
    from finpulse.onboarding.v1 import onboarding_pb2, onboarding_pb2_grpc
    from finpulse.sync.v1 import sync_pb2, sync_pb2_grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    from svclib.internal_auth import Signer

    suite = faulty.suite
    await _wait_healthy(faulty)
    good = Signer(suite.settings.internal_secret, "gateway")
    forged_secret = Signer("not-the-suite-secret-" + "x" * 32, "gateway")
    expired = Signer(suite.settings.internal_secret, "gateway", clock=lambda: time.time() - 600)
    as_a = (good.metadata(AUTH_A), ("x-user-id", AUTH_B))  # a valid statement for A; a header naming B
    # Per service: calls naming B's data (B onboarded and synced, so each has data to leak).
    calls = {
        "onboarding": (
            onboarding_pb2_grpc.OnboardingServiceStub,
            [
                ("GetProfile", onboarding_pb2.GetProfileRequest(user_id=AUTH_B)),
                ("GetOnboardingStatus", onboarding_pb2.GetOnboardingStatusRequest(onboarding_id=AUTH_B)),
            ],
        ),
        "consent": (
            consent_pb2_grpc.ConsentServiceStub,
            [
                ("ListApprovedConsents", consent_pb2.ListApprovedConsentsRequest(user_id=AUTH_B)),
                ("ListUserConsents", consent_pb2.ListUserConsentsRequest(user_id=AUTH_B)),
                ("GetConsentStatus", consent_pb2.GetConsentStatusRequest(user_id=AUTH_B)),
            ],
        ),
        "sync": (
            sync_pb2_grpc.SyncServiceStub,
            [
                ("ListAccounts", sync_pb2.ListAccountsRequest(user_id=AUTH_B)),
                ("GetSyncStatus", sync_pb2.GetSyncStatusRequest(user_id=AUTH_B)),
                ("BootstrapBank", sync_pb2.BootstrapBankRequest(user_id=AUTH_B, bank_id="vbank", skip_sync=True)),
            ],
        ),
        "dashboard": (
            dashboard_pb2_grpc.DashboardServiceStub,
            [
                ("GetFinancialInputs", dashboard_pb2.GetFinancialInputsRequest(user_id=AUTH_B)),
                ("GetDashboard", dashboard_pb2.GetDashboardRequest(user_id=AUTH_B)),
            ],
        ),
    }
    outcomes: dict[str, dict[str, str]] = {}
    problems: list[str] = []
    for service, (stub_cls, requests) in calls.items():
        addr = suite.grpc_addrs[service]
        async with grpc.aio.insecure_channel(addr) as channel:
            health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING, service
            listed = [
                reply
                async for reply in reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
                )
            ]
            names = {s.name for s in listed[0].list_services_response.service}
            assert any(name.startswith("finpulse.") for name in names), (service, names)
            outcomes[service] = {"health": "SERVING", "reflection": f"{len(names)} services"}
            stub = stub_cls(channel)
            for method, request in requests:
                for label, metadata, allowed in (
                    ("none", (("x-user-id", AUTH_B),), {grpc.StatusCode.UNAUTHENTICATED}),
                    ("forged-secret", (forged_secret.metadata(AUTH_B),), {grpc.StatusCode.UNAUTHENTICATED}),
                    ("bad-scheme", (("authorization", "Basic abc"),), {grpc.StatusCode.UNAUTHENTICATED}),
                    ("expired", (expired.metadata(AUTH_B),), {grpc.StatusCode.UNAUTHENTICATED}),
                    ("user-A-for-B", as_a, {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND}),
                ):
                    try:
                        reply = await getattr(stub, method)(request, metadata=metadata, timeout=10)
                    except grpc.aio.AioRpcError as exc:
                        code = exc.code()
                        outcomes[service][f"{method}/{label}"] = code.name
                        if code not in allowed:
                            problems.append(f"{service}.{method} {label}: {code.name} {exc.details()}")
                        continue
                    outcomes[service][f"{method}/{label}"] = "OK"
                    problems.append(f"{service}.{method} {label}: answered {str(reply)[:200]!r}")
            if service == "sync":  # a server-streaming method goes through the same checks
                for label, metadata, code in (
                    ("none", (), grpc.StatusCode.UNAUTHENTICATED),
                    ("user-A-for-B", as_a, grpc.StatusCode.PERMISSION_DENIED),
                ):
                    stream = stub.WatchSync(sync_pb2.WatchSyncRequest(user_id=AUTH_B), metadata=metadata, timeout=10)
                    try:
                        leaked = [event async for event in stream]
                        problems.append(f"sync.WatchSync {label}: streamed {len(leaked)} events")
                        outcomes[service][f"WatchSync/{label}"] = "OK"
                    except grpc.aio.AioRpcError as exc:
                        outcomes[service][f"WatchSync/{label}"] = exc.code().name
                        if exc.code() != code:
                            problems.append(f"sync.WatchSync {label}: {exc.code().name} {exc.details()}")
            # The same statement for A, asking for A's own data, is served (the refusals are about B).
            reply = await getattr(stub, requests[0][0])(
                type(requests[0][1])(
                    **({"onboarding_id": AUTH_A} if requests[0][0] == "GetOnboardingStatus" else {"user_id": AUTH_A})
                ),
                metadata=(good.metadata(AUTH_A),),
                timeout=10,
            )
            assert AUTH_B not in str(reply)
    figures.update(outcomes=outcomes, problems=problems)
    figures["summary"] = (
        f"{sum(len(v) - 2 for v in outcomes.values())} refused calls checked on "
        f"{len(outcomes)} gRPC ports; problems: {len(problems)}"
    )
    assert not problems, problems


# ------------------------------------------------------------- a'. a large COPY when Postgres goes away


def _transaction(n: int, text: str):
    from bankapi.models import Transaction

    when = f"2025-03-{1 + n % 28:02d}T12:00:00+00:00"
    return Transaction.from_api(
        {
            "accountId": "acc-1",
            "transactionId": f"tx-{n}",
            "amount": {"amount": "10.00", "currency": "RUB"},
            "creditDebitIndicator": "Debit",
            "status": "completed",
            "bookingDateTime": when,
            "valueDateTime": when,
            "transactionInformation": text,
        }
    )


async def test_a_copy_cut_off_while_waiting_to_send_fails_instead_of_hanging():
    """The stuck sync of the issue, at its root: a sync job streams pages into Postgres with COPY; when
    the server stops reading (a shutdown under load) the COPY waits on the socket's flow control, and
    asyncpg never resumes that wait once the connection is dropped, so the job's commit waited forever
    while its heartbeat kept the lease fresh. Reproduced on a private cluster: the write's backend is
    stopped (SIGSTOP) while a page of ~10 MB is sent, then terminated as a shutdown does."""
    from svclib import db
    from sync_svc.__main__ import SPEC
    from sync_svc.bank_storage import BankDataStorage

    postgres = PrivatePostgres()
    await asyncio.to_thread(postgres.start)
    pool = admin = None
    try:
        await db.migrate(postgres.url, SPEC.schema, SPEC.migrations)
        pool = await db.create_pool(postgres.url, SPEC.schema, max_size=2)
        admin = await connect(postgres.url)
        storage = BankDataStorage(pool)
        page = [_transaction(n, "x" * 20_000) for n in range(1, 501)]  # more than the socket buffers hold
        started = time.monotonic()
        with pytest.raises(asyncpg.ConnectionDoesNotExistError):
            async with storage.bank_write("copy-user", "vbank") as write:
                pid = write._conn.get_server_pid()
                await write.add_transactions([_transaction(0, "first")])

                async def copied():  # the first COPY is done: the session waits for the next statement
                    return (
                        await admin.fetchval("SELECT state FROM pg_stat_activity WHERE pid = $1", pid)
                        == "idle in transaction"
                    )

                assert await until(copied, 10, 0.05)
                os.kill(pid, signal.SIGSTOP)  # the server stops reading
                try:
                    await write.add_transactions(page)
                    transport = write._conn._transport

                    async def waits_to_send():
                        return transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]

                    assert await until(waits_to_send, 10, 0.05), "the COPY should be waiting to send"
                    os.kill(pid, signal.SIGTERM)  # the session is terminated, as a fast shutdown does
                finally:
                    os.kill(pid, signal.SIGCONT)
                await asyncio.wait_for(write.commit(), 15)
        assert time.monotonic() - started < 15
        # Nothing was written, and the pool serves the next job.
        assert await asyncio.wait_for(pool.fetchval("SELECT count(*) FROM transactions"), 5) == 0
    finally:
        if admin is not None:
            await admin.close()
        if pool is not None:
            pool.terminate()
        await asyncio.to_thread(postgres.destroy)


# -------------------------------------------------------------------------------- a. Postgres restarts


async def test_postgres_restarted_five_times_under_load(faulty, figures):
    env, suite = faulty, faulty.suite
    await _wait_healthy(env)
    conn = await connect(env.postgres.url)
    logs_before, exits_before = env.log_sizes(), env.exits()
    windows: list[Window] = []
    stuck_after: dict[str, list] = {}
    routes_seen: set[str] = set()
    async with aiohttp.ClientSession() as session:
        for bank in BANKS:  # jobs of a second or two, so restarts land in the middle of some
            await set_faults(session, env.bank_urls[bank], latency_ms=40)
        try:
            async with Load(suite.gateway_url, suite.token, LOAD_USERS, loops=6) as load:
                await asyncio.sleep(STEADY_SECONDS)  # the load's steady state before the first fault
                routes_seen = {s.route for s in load.samples}
                for number in range(1, PG_RESTARTS + 1):
                    stop = number == 3
                    window = Window(
                        f"#{number} " + (f"stop {PG_STOP_SECONDS:g} s + start" if stop else "pg_ctl restart -m fast"),
                        time.monotonic(),
                    )
                    if stop:
                        await asyncio.to_thread(env.postgres.stop, "fast")
                        await asyncio.sleep(PG_STOP_SECONDS)  # the outage itself
                        await asyncio.to_thread(env.postgres.start)
                    else:
                        await asyncio.to_thread(env.postgres.restart, "fast")
                    window.end = time.monotonic()
                    windows.append(window)
                    conn = await connect(env.postgres.url)

                    def recovered(back=window.end):
                        return load.recovery(back, routes_seen)

                    async def every_route_ok(back=window.end):
                        now = time.monotonic()
                        return now - back > RECOVERY_LIMIT + 1 and all(v is not None for v in recovered(back).values())

                    await until(every_route_ok, 30, 0.2)
                    await asyncio.sleep(STEADY_SECONDS)
                    # By now any job a restart interrupted has been taken over (its lease is 4 s).
                    # A queued job may wait its turn for a while under this load, not 10 s.
                    stuck_after[window.name] = [
                        {k: str(v) for k, v in job.items()}
                        for job in await stuck_jobs(conn, grace=3.0)
                        if job["state"] == "running" or (job["now"] - job["run_after"]).total_seconds() > 10
                    ]
        finally:
            for bank in BANKS:
                await set_faults(session, env.bank_urls[bank], latency_ms=0)
        load_end = time.monotonic()
        rows = await _settle_jobs(env, conn)
        mismatches = await count_mismatches(conn, env.bank_urls, LOAD_USERS, BANKS)
        http = Http(session, suite.gateway_url, tokens=suite.token)
        statuses = {}
        for user in LOAD_USERS:
            status, body = await http.get("/api/sync/status", user_id=user)
            statuses[user] = body.get("status") if status == 200 else status
    await conn.close()
    misuse = env.log_matches(logs_before)
    races = env.log_matches(logs_before, ASYNCPG_RACE, errors_only=False)
    interrupted = env.log_matches(
        logs_before, ("sync job interrupted: the database is unavailable",), errors_only=False
    )

    t0 = load.samples[0].start
    per_outage = []
    for number, window in enumerate(windows):
        inside = [s for s in load.samples if window.contains(s, MARGIN)]
        recovery = load.recovery(
            window.end, routes_seen, windows[number + 1].start if number + 1 < len(windows) else load_end
        )
        until_next = windows[number + 1].start if number + 1 < len(windows) else load_end
        per_outage.append(
            {
                "outage": window.name,
                "from_s": round(window.start - t0, 2),
                "to_s": round(window.end - t0, 2),
                "duration_s": round(window.end - window.start, 2),
                "requests": len(inside),
                "by_status": Load.by_status(inside),
                "recovery_s": recovery,
                "max_recovery_s": max((v for v in recovery.values() if v is not None), default=None),
                "slowest_s": _latency(inside).get("max_s"),
                # what the routes that did not recover answered, request by request
                "unrecovered": {
                    route: [
                        (round(x.start - t0, 2), round(x.end - x.start, 2), x.status, x.error[:120])
                        for x in load.samples
                        if x.route == route and window.start - 1 <= x.start < until_next
                    ]
                    for route, value in recovery.items()
                    if value is None or value > RECOVERY_LIMIT
                },
            }
        )
    unexplained = load.unexplained(windows, MARGIN, {503})
    figures.update(
        requests=len(load.samples),
        duration_s=round(load_end - t0, 1),
        by_status=Load.by_status(load.samples),
        by_route={route: Load.by_status(s for s in load.samples if s.route == route) for route in sorted(routes_seen)},
        outages=per_outage,
        margin_s=MARGIN,
        unexplained_errors=[vars(s) for s in unexplained[:20]],
        jobs={
            "total": len(rows),
            "by_state": _states(rows),
            "max_attempts": max((r["attempts"] for r in rows), default=0),
        },
        stuck_after_recovery=stuck_after,
        count_mismatches=mismatches,
        sync_status_after=statuses,
        service_exits=env.exits() - exits_before,
        asyncpg_misuse_in_logs=misuse,
        asyncpg_races_in_logs=races,
        jobs_interrupted_by_outages=sum(interrupted.values()),
        retry_after_of_503s=sorted({s.retry_after for s in load.samples if s.status == 503}, key=str),
    )
    figures["summary"] = (
        f"{len(load.samples)} requests, statuses {Load.by_status(load.samples)}; 503s per outage "
        f"{[o['by_status'].get('503', 0) for o in per_outage]}; outage durations "
        f"{[o['duration_s'] for o in per_outage]} s; max recovery per outage "
        f"{[o['max_recovery_s'] for o in per_outage]} s; jobs {_states(rows)}, max attempts "
        f"{figures['jobs']['max_attempts']} ({figures['jobs_interrupted_by_outages']} attempts cut short by an "
        f"outage, run again); service restarts {figures['service_exits']}"
    )

    assert not [s for s in load.samples if s.status == 500], describe([s for s in load.samples if s.status == 500])
    no_hint = [s for s in load.samples if s.status == 503 and not (s.retry_after or "").isdigit()]
    assert not no_hint, f"503s without Retry-After: {describe(no_hint)}"
    assert not unexplained, f"errors that are not 503 inside an outage (+{MARGIN:g} s): {describe(unexplained)}"
    for outage in per_outage:
        late = {r: v for r, v in outage["recovery_s"].items() if v is None or v > RECOVERY_LIMIT}
        assert not late, f"{outage['outage']}: routes not answering 200 within {RECOVERY_LIMIT:g} s: {late}"
    assert not any(stuck_after.values()), f"jobs held by nobody after a recovery: {stuck_after}"
    assert _states(rows) == {"succeeded": len(rows)}, (
        f"jobs not succeeded {SETTLE_SECONDS:g} s after the load stopped: {_unfinished(rows)}"
    )
    assert not mismatches, mismatches
    assert all(v == "completed" for v in statuses.values()), statuses
    assert figures["service_exits"] == 0, [line for _, line in env.reports.lines]
    assert not misuse, misuse


# ------------------------------------------------------------------------------------ b. Redis stopped


async def _redis_keys(url: str, pattern: str) -> list[str]:
    client = aioredis.from_url(url, decode_responses=True)
    try:
        return [key async for key in client.scan_iter(match=pattern, count=500)]
    finally:
        await client.aclose()


async def _dashboard_redis_hits(env: Faulty) -> float:
    addr = env.suite.settings.metrics_addrs["dashboard"]
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://{addr}/metrics") as resp:
            text = await resp.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("finpulse_dashboard_cache_hits_total") and 'level="redis"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_redis_stopped_for_a_minute_under_load(faulty, figures):
    env, suite = faulty, faulty.suite
    await _wait_healthy(env)
    prefix = suite.settings.redis_prefix
    exits_before = env.exits()
    async with Load(suite.gateway_url, suite.token, LOAD_USERS, loops=6) as load:
        await asyncio.sleep(STEADY_SECONDS)
        window = Window(f"redis stopped {REDIS_STOP_SECONDS:g} s", time.monotonic())
        await asyncio.to_thread(env.redis.stop)
        await asyncio.sleep(REDIS_STOP_SECONDS)  # the outage itself
        await asyncio.to_thread(env.redis.start)
        window.end = time.monotonic()
        await asyncio.sleep(STEADY_SECONDS)
    samples = load.samples
    routes = sorted({s.route for s in samples})
    during = [s for s in samples if s.start >= window.start and s.end <= window.end]
    before = [s for s in samples if s.end < window.start]

    # Caches again: the dashboard's entry comes back to Redis and is served from there; the bootstrap's too.
    user = LOAD_USERS[0]
    async with aiohttp.ClientSession() as session:
        http = Http(session, suite.gateway_url, tokens=suite.token)

        async def dashboard_cached():
            hits = await _dashboard_redis_hits(env)
            status, _ = await http.get("/api/dashboard", user_id=user)
            assert status == 200
            keys = await _redis_keys(env.redis.url, f"{prefix}dashboard:{user}")
            return keys and await _dashboard_redis_hits(env) > hits

        async def bootstrap_cached():
            status, _ = await http.get("/api/banks/vbank/bootstrap", user_id=user, skip_sync="true")
            assert status == 200
            return await _redis_keys(env.redis.url, f"{prefix}data:{user}:vbank:*")

        dashboard_ok = bool(await until(dashboard_cached, 20, 0.5))
        bootstrap_ok = bool(await until(bootstrap_cached, 20, 0.5))

    conn = await connect(env.postgres.url)
    try:
        rows = await _settle_jobs(env, conn)
        jobs_during = await conn.fetch(
            "SELECT state, count(*) AS n FROM sync.sync_jobs WHERE created_at >= now() - make_interval(secs => $1) "
            "GROUP BY state",
            time.monotonic() - window.start,
        )
        mismatches = await count_mismatches(conn, env.bank_urls, LOAD_USERS, BANKS)
    finally:
        await conn.close()
    failed = [s for s in samples if s.status != 200]
    figures.update(
        jobs_since_outage_start={r["state"]: r["n"] for r in jobs_during},
        jobs_total=_states(rows),
        count_mismatches=mismatches,
        requests=len(samples),
        by_status=Load.by_status(samples),
        outage={
            "from_s": round(window.start - samples[0].start, 2),
            "to_s": round(window.end - samples[0].start, 2),
            "requests": len(during),
            "by_status": Load.by_status(during),
        },
        by_route_during={r: Load.by_status(s for s in during if s.route == r) for r in routes},
        latency_before={r: _latency([s for s in before if s.route == r]) for r in routes},
        latency_during={r: _latency([s for s in during if s.route == r]) for r in routes},
        caches_after={"dashboard_in_redis_and_hit": dashboard_ok, "bootstrap_snapshot_in_redis": bootstrap_ok},
        service_exits=env.exits() - exits_before,
        failed=[vars(s) for s in failed[:20]],
    )
    figures["summary"] = (
        f"{len(samples)} requests ({len(during)} while Redis was down {REDIS_STOP_SECONDS:g} s), statuses "
        f"{Load.by_status(samples)}; "
        f"p95 during {max((v.get('p95_s', 0) for v in figures['latency_during'].values()), default=0)} s; "
        f"caches after: {figures['caches_after']}; jobs since the outage began "
        f"{figures['jobs_since_outage_start']}; service restarts {figures['service_exits']}"
    )

    assert not failed, describe(failed)
    assert all(any(s.route == r for s in during) for r in routes), "every route was asked while Redis was down"
    assert _states(rows) == {"succeeded": len(rows)}, (
        f"jobs not succeeded {SETTLE_SECONDS:g} s after the load stopped: {_unfinished(rows)}"
    )
    assert not mismatches, mismatches
    assert dashboard_ok and bootstrap_ok, figures["caches_after"]
    assert figures["service_exits"] == 0


# -------------------------------------------------------------------------------------- c. kill -9


async def _running_job(conn, user: str) -> str | None:
    return await conn.fetchval(
        "SELECT job_id::text FROM sync.sync_jobs WHERE user_id = $1 AND state = 'running' LIMIT 1", user
    )


async def test_kill_9_of_each_process_under_load(faulty, figures):
    env, suite = faulty, faulty.suite
    await _wait_healthy(env)
    conn = await connect(env.postgres.url)
    kills = []
    windows: list[Window] = []
    allowed: dict[str, set[int]] = {}
    async with aiohttp.ClientSession() as session:
        http = Http(session, suite.gateway_url, tokens=suite.token)
        async with Load(suite.gateway_url, suite.token, LOAD_USERS, loops=6) as load:
            await asyncio.sleep(STEADY_SECONDS)
            for name in ("onboarding", "consent", "sync", "dashboard", "gateway"):
                # A sync of several seconds, running when the process dies.
                for bank in BANKS:
                    await set_faults(session, env.bank_urls[bank], latency_ms=250)
                try:
                    status, started = await http.post("/api/sync", {"user_id": KILL_USER, "force": True})
                    assert status == 200, started
                    job_id = await until(lambda: _running_job(conn, KILL_USER), 30, 0.1)
                    assert job_id, f"no sync of {KILL_USER} running before killing {name}: {started}; jobs: " + str(
                        [
                            dict(r)
                            for r in await conn.fetch(
                                "SELECT job_id, state, attempts, progress, last_error, run_after, "
                                "created_at, finished_at FROM sync.sync_jobs "
                                "WHERE user_id = $1 ORDER BY created_at DESC LIMIT 3",
                                KILL_USER,
                            )
                        ]
                    )
                    child = suite.children[name]
                    old_pid = child.proc.pid
                    window = Window(f"kill -9 {name}", time.monotonic())
                    child.proc.send_signal(signal.SIGKILL)
                    healthy_at = await env.reports.async_wait_for(f"{name} is healthy again", 60, window.start)
                    window.end = healthy_at
                    windows.append(window)
                    allowed[name] = {503, 0} if name == "gateway" else {503}
                finally:
                    for bank in BANKS:
                        await set_faults(session, env.bank_urls[bank], latency_ms=0)

                async def finished(job=job_id):
                    return await conn.fetchval(
                        "SELECT state FROM sync.sync_jobs WHERE job_id = $1 AND state NOT IN ('queued', 'running')", job
                    )

                state = await until(finished, 90, 0.25)
                kills.append(
                    {
                        "process": name,
                        "old_pid": old_pid,
                        "new_pid": suite.children[name].proc.pid,
                        "restart_s": round(window.end - window.start, 2),
                        "job": job_id,
                        "job_state": state,
                        "job_attempts": await conn.fetchval(
                            "SELECT attempts FROM sync.sync_jobs WHERE job_id = $1", job_id
                        ),
                    }
                )
                await asyncio.sleep(STEADY_SECONDS)
        rows = await _settle_jobs(env, conn)
        mismatches = await count_mismatches(conn, env.bank_urls, [KILL_USER, *LOAD_USERS], BANKS)
        stored_inputs = {}
        for user in LOAD_USERS:
            status, body = await http.get(f"/api/users/{user}/financial-inputs")
            assert status == 200, body
            stored_inputs[user] = (
                int(str(body["inputs"]["salary_amount"]).split(".")[0])
                if body.get("inputs", {}).get("salary_amount")
                else None
            )
    await conn.close()

    t0 = load.samples[0].start
    per_kill = []

    def kill_of(sample) -> Window | None:
        """The kill a request met: the last one that began before it ended, if it overlapped it."""
        met = [w for w in windows if w.start <= sample.end and w.contains(sample, MARGIN)]
        return met[-1] if met else None

    for kill, window in zip(kills, windows, strict=False):
        inside = [s for s in load.samples if kill_of(s) is window]
        per_kill.append(
            {
                **kill,
                "from_s": round(window.start - t0, 2),
                "to_s": round(window.end - t0, 2),
                "requests": len(inside),
                "by_status": Load.by_status(inside),
            }
        )
    unexplained = [
        s
        for s in load.errors()
        if not any(w.contains(s, MARGIN) and s.status in allowed[w.name.split()[-1]] for w in windows)
    ]
    lost_writes = {
        u: {"acknowledged": load.acknowledged_salary.get(u), "stored": stored_inputs.get(u)}
        for u in LOAD_USERS
        if load.acknowledged_salary.get(u) is not None
        and (stored_inputs.get(u) is None or stored_inputs[u] < load.acknowledged_salary[u])
    }
    figures.update(
        requests=len(load.samples),
        by_status=Load.by_status(load.samples),
        kills=per_kill,
        margin_s=MARGIN,
        unexplained_errors=[vars(s) for s in unexplained[:20]],
        jobs={"total": len(rows), "by_state": _states(rows)},
        count_mismatches=mismatches,
        lost_writes=lost_writes,
        restarts={name: env.suite.supervisor.restarts(name) for name in suite.children},
    )
    figures["summary"] = (
        f"{len(load.samples)} requests, statuses {Load.by_status(load.samples)}; restart after kill -9 "
        f"{ {k['process']: k['restart_s'] for k in per_kill} } s; failed per kill "
        f"{ {k['process']: sum(v for s, v in k['by_status'].items() if s != '200') for k in per_kill} }; "
        f"running jobs {[k['job_state'] for k in per_kill]}; jobs {_states(rows)}"
    )

    assert all(k["job_state"] == "succeeded" for k in kills), kills
    assert all(k["new_pid"] != k["old_pid"] for k in kills), kills
    assert not unexplained, f"failed requests outside a kill window (+{MARGIN:g} s): {describe(unexplained)}"
    assert _states(rows) == {"succeeded": len(rows)}, (
        f"jobs not succeeded {SETTLE_SECONDS:g} s after the load stopped: {_unfinished(rows)}"
    )
    assert not mismatches, mismatches
    assert not lost_writes, lost_writes
