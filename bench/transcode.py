"""Transcoding: what a REST call through the gateway costs next to the same RPC over gRPC, and next
to a bare aiohttp handler serving the same JSON. In one run, with the same concurrency:

(a) `GET /api/banks` through the gateway (aiohttp, JSON <-> protobuf, one gRPC hop) to sync_svc's
    ListBanks;
(b) the same RPC called directly with a `grpc.aio` client;
(c) a bare aiohttp handler returning the body (a) returns.

For each: requests per second, and CPU seconds per request of the serving processes (utime + stime
of every thread, from /proc/<pid>/stat): gateway + sync_svc for (a), sync_svc for (b), the bare
server for (c); the load generators are separate processes and are not counted. Printed: the ratios
a/b and a/c of both, and the processes' idle CPU (nothing is subtracted: it is small next to load).

The RPC: ListBanks without a user does no database work (it lists the configured banks), so the
gateway runs with its documented development switch (FINPULSE_AUTH_DEV_TRUST_USER=1) and the calls
send no token: the gateway then fills no user. A second pair of lines measures the production path,
a bearer token on every request (verified, its user set on the request): ListBanks then also reads
the user's sync state (a consent_svc call and two queries), in (a) and (b) alike, and the CPU of
consent_svc is counted too (Postgres is not). The per-user rate limit is raised out of the way; its
Redis round trip stays on the path.

Load: wrk (one thread) for HTTP when installed (`make bench-tools`, or on PATH), else an aiohttp client
loop; a grpc.aio client loop for gRPC, signing its calls as the gateway does (svclib.internal_auth);
each in its own process, `--connections` requests in flight. The legs compared take turns
(`--rounds`, the time split over them), so that the machine's other load falls on both alike. A
req/s ratio is printed only when no load generator kept its core busy (`bench._common.ratio`).
The suite runs as `make up` runs it (each service its own process, logs at WARNING), on a scratch
database (FINPULSE_DATABASE_URL's server when set, else embedded Postgres and Redis).

`python -m bench.transcode [--seconds 10] [--connections 32] [--warmup 2] [--rounds 5]`
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
import tempfile

import aiohttp

from bench._common import Load, bare_server, http_load, http_tool, measured_run, ratio, scratch_database, suite_env
from deploy.suite import Suite
from svclib.config import load_settings
from svclib.embedded import BackingServices
from svclib.internal_auth import Signer

PATH = "/api/banks"
#: The suite's internal secret, once it is known (the direct gRPC calls sign their statements with it).
SECRET: list[str] = []
USER = "bench-transcode-user"

# The gRPC load (HTTP load is bench._common.http_load).
# argv: target (host:port), seconds, connections, user ("" for none), the internal statement (svclib.internal_auth)
_GRPC_LOOP = """
import asyncio, sys, time
target, seconds, connections, user, statement = sys.argv[1:]
seconds, connections = float(seconds), int(connections)

async def run_grpc():
    import grpc
    from finpulse.sync.v1 import sync_pb2, sync_pb2_grpc
    request = sync_pb2.ListBanksRequest(user_id=user) if user else sync_pb2.ListBanksRequest()
    metadata = (("authorization", "Bearer " + statement),)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = sync_pb2_grpc.SyncServiceStub(channel)
        await stub.ListBanks(request, metadata=metadata, timeout=10)
        async def call():
            await stub.ListBanks(request, metadata=metadata, timeout=10)
        return await drive(call)

async def drive(call):
    done = 0
    deadline = time.perf_counter() + seconds
    async def worker():
        nonlocal done
        while time.perf_counter() < deadline:
            await call()
            done += 1
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return done, time.perf_counter() - started

done, elapsed = asyncio.run(run_grpc())
print(done, elapsed)
"""


@dataclasses.dataclass
class Result:
    label: str
    requests: int
    elapsed: float
    cpu: float  # CPU seconds of the serving processes
    load: Load

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed

    @property
    def cpu_per_request(self) -> float:
        return self.cpu / self.requests


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the processes (all their threads), from /proc/<pid>/stat."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5), after pid and comm
    return total / ticks


def load(kind: str, target: str, seconds: float, connections: int, user: str = "", token: str = "") -> Load:
    if kind == "http":
        return http_load(target, seconds, connections, token)
    # The statement a process of the suite signs for this user (the gateway's, cached by its signer
    # likewise): the services accept only signed calls. Valid for a minute, longer than one run.
    statement = Signer(SECRET[0], "gateway").statement(user or None)
    cmd = [sys.executable, "-c", _GRPC_LOOP, target, str(seconds), str(connections), user, statement]
    out, cpu = measured_run(cmd)
    requests, elapsed = out.split()
    return Load("grpc.aio client loop", int(requests), float(elapsed), cpu)


def family(pid: int) -> list[int]:
    """`pid` and its descendants (a gateway with several workers), from /proc/<pid>/task/*/children."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in os.listdir(f"/proc/{current}/task"):
            with open(f"/proc/{current}/task/{task}/children") as f:
                todo += [int(child) for child in f.read().split()]
    return found


@dataclasses.dataclass
class Leg:
    label: str
    pids: list[int]
    kind: str  # "http" or "grpc"
    target: str
    auth: dict[str, str] = dataclasses.field(default_factory=dict)


def measure(legs: list[Leg], args) -> list[Result]:
    """Each leg warmed up, then run `--rounds` times for `--seconds` ÷ rounds, the legs taking turns, so
    that a change in the machine's other load falls on all of them alike; sums over the rounds."""
    for leg in legs:
        load(leg.kind, leg.target, args.warmup, args.connections, **leg.auth)  # caches, connections, JITs
    totals: dict[str, list] = {leg.label: [0, 0.0, 0.0, 0.0, ""] for leg in legs}
    for _ in range(args.rounds):
        for leg in legs:
            before = cpu_seconds(leg.pids)
            done = load(leg.kind, leg.target, args.seconds / args.rounds, args.connections, **leg.auth)
            total = totals[leg.label]
            total[0] += done.requests
            total[1] += done.seconds
            total[2] += cpu_seconds(leg.pids) - before
            total[3] += done.tool_cpu
            total[4] = done.tool
    return [
        Result(leg.label, t[0], t[1], t[2], Load(t[4], t[0], t[1], t[3]))
        for leg, t in ((leg, totals[leg.label]) for leg in legs)
    ]


def _line(result: Result, what: str) -> str:
    return (
        f"  {result.label:<34} {result.rps:>9,.0f} req/s  {result.cpu_per_request * 1e6:>7,.0f} µs CPU/request"
        f"  ({what}; {result.load.describe()})"
    )


def _ratios(a: Result, other: Result, name: str, goal: float | None = None) -> str:
    return (
        f"  ratio {name}: req/s {ratio(a.load, other.load, goal)}, "
        f"CPU/request {a.cpu_per_request / other.cpu_per_request:.2f}"
    )


async def run(args) -> None:
    async with scratch_database("transcode") as backing:
        await _run(backing, args)


async def _run(backing: BackingServices, args) -> None:
    log_dir = tempfile.mkdtemp(prefix="fpt-logs-")
    env = suite_env(
        log_dir,
        FINPULSE_AUTH_DEV_TRUST_USER="1",
        FINPULSE_USER_RATE_LIMIT="100000",
        FINPULSE_USER_RATE_BURST="100000",
        FINPULSE_BANK_EMULATOR="off",
    )
    suite = Suite(load_settings(env), backing, base_env=env, log_dir=log_dir)
    try:
        SECRET[:] = [suite.settings.resolved_internal_secret()]
        await suite.migrate()
        suite.start()
        await suite.wait_healthy()
        pid = {name: child.proc.pid for name, child in suite.children.items()}
        url = suite.gateway_url + PATH
        sync_addr = suite.settings.service_addrs["sync"]
        token = suite.token(USER)
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as resp:
                assert resp.status == 200, await resp.text()
                body = await resp.read()
        with bare_server(body, PATH, log_dir) as (bare_url, bare):
            [plain] = measure([Leg("(c) bare aiohttp, same body", [bare.pid], "http", bare_url + PATH)], args)

        load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
        idle_before = {name: cpu_seconds([pid[name]]) for name in ("gateway", "sync", "consent")}
        await asyncio.sleep(args.warmup)
        idle = {name: (cpu_seconds([pid[name]]) - cpu) / args.warmup for name, cpu in idle_before.items()}
        gateway = family(pid["gateway"])
        rest, direct = measure(
            [
                Leg("(a) REST via the gateway", [*gateway, pid["sync"]], "http", url),
                Leg("(b) grpc.aio, ListBanks directly", [pid["sync"]], "grpc", sync_addr),
            ],
            args,
        )
        backends = [pid["sync"], pid["consent"]]
        rest_user, direct_user = measure(
            [
                Leg("(a) REST via the gateway, token", [*gateway, *backends], "http", url, {"token": token}),
                Leg("(b) grpc.aio, ListBanks(user)", backends, "grpc", sync_addr, {"user": USER}),
            ],
            args,
        )

        print(
            f"transcode: GET {PATH} -> SyncService.ListBanks ({len(body)} bytes of JSON); load: {http_tool()} "
            f"(HTTP), grpc.aio client loop (gRPC); {args.connections} in flight, {args.seconds:g} s each in "
            f"{args.rounds} turns; gateway processes {len(gateway)}; "
            f"CPU of the serving processes; load average before {load_before}"
        )
        print("  no user (no database work):")
        print(_line(rest, "gateway + sync_svc"))
        print(_line(direct, "sync_svc"))
        print(_line(plain, "bare server"))
        print(_ratios(rest, direct, "a/b", 0.8))
        print(_ratios(rest, plain, "a/c"))
        print("  bearer token (JWT verified; ListBanks reads the user's sync state: consent_svc call + SQL):")
        print(_line(rest_user, "gateway + sync_svc + consent_svc"))
        print(_line(direct_user, "sync_svc + consent_svc"))
        print(_ratios(rest_user, direct_user, "a/b"))
        print(
            "  idle CPU of the processes (counted above as it comes; sync_svc's workers poll for jobs): "
            + ", ".join(f"{name} {rate * 1000:.0f} ms/s" for name, rate in idle.items())
        )
    finally:
        suite.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="turns the legs take, --seconds split over them")
    asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
