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

Load: wrk (one thread) for HTTP when it is on PATH (`apt-get install wrk`), else an aiohttp client
loop; a grpc.aio client loop for gRPC; each in its own process, `--connections` requests in flight.
The suite runs as `make up` runs it (each service its own process, logs at WARNING), on a scratch
database (FINPULSE_DATABASE_URL's server when set, else embedded Postgres and Redis).

`python -m bench.transcode [--seconds 10] [--connections 32] [--warmup 2]`
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import subprocess
import sys
import tempfile

import aiohttp

from bench._common import bare_server, http_load, http_tool, scratch_database, suite_env
from deploy.suite import Suite
from svclib.config import load_settings
from svclib.embedded import BackingServices

PATH = "/api/banks"
USER = "bench-transcode-user"

# The gRPC load (HTTP load is bench._common.http_load).
# argv: target (host:port), seconds, connections, user ("" for none)
_GRPC_LOOP = """
import asyncio, sys, time
target, seconds, connections, user = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

async def run_grpc():
    import grpc
    from finpulse.sync.v1 import sync_pb2, sync_pb2_grpc
    request = sync_pb2.ListBanksRequest(user_id=user) if user else sync_pb2.ListBanksRequest()
    metadata = (("x-user-id", user),) if user else None
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


def load(
    kind: str, target: str, seconds: float, connections: int, user: str = "", token: str = ""
) -> tuple[int, float]:
    if kind == "http":
        return http_load(target, seconds, connections, token)
    out = subprocess.run(
        [sys.executable, "-c", _GRPC_LOOP, target, str(seconds), str(connections), user],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return int(out[0]), float(out[1])


def measure(label: str, pids: list[int], kind: str, target: str, args, **auth: str) -> Result:
    load(kind, target, args.warmup, args.connections, **auth)  # warm caches, connections and JITs alike
    before = cpu_seconds(pids)
    requests, elapsed = load(kind, target, args.seconds, args.connections, **auth)
    return Result(label, requests, elapsed, cpu_seconds(pids) - before)


def _line(result: Result, what: str) -> str:
    return (
        f"  {result.label:<34} {result.rps:>9,.0f} req/s  {result.cpu_per_request * 1e6:>7,.0f} µs CPU/request"
        f"  ({what})"
    )


def _ratios(a: Result, other: Result, name: str) -> str:
    return f"  ratio {name}: req/s {a.rps / other.rps:.2f}, CPU/request {a.cpu_per_request / other.cpu_per_request:.2f}"


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
            plain = measure("(c) bare aiohttp, same body", [bare.pid], "http", bare_url + PATH, args)

        idle_before = {name: cpu_seconds([pid[name]]) for name in ("gateway", "sync", "consent")}
        await asyncio.sleep(args.warmup)
        idle = {name: (cpu_seconds([pid[name]]) - cpu) / args.warmup for name, cpu in idle_before.items()}
        rest = measure("(a) REST via the gateway", [pid["gateway"], pid["sync"]], "http", url, args)
        direct = measure("(b) grpc.aio, ListBanks directly", [pid["sync"]], "grpc", sync_addr, args)
        rest_user = measure(
            "(a) REST via the gateway, token",
            [pid["gateway"], pid["sync"], pid["consent"]],
            "http",
            url,
            args,
            token=token,
        )
        direct_user = measure(
            "(b) grpc.aio, ListBanks(user)", [pid["sync"], pid["consent"]], "grpc", sync_addr, args, user=USER
        )

        print(
            f"transcode: GET {PATH} -> SyncService.ListBanks ({len(body)} bytes of JSON); load: {http_tool()} "
            f"(HTTP), grpc.aio client loop (gRPC); {args.connections} in flight, {args.seconds:g} s each; "
            f"CPU of the serving processes"
        )
        print("  no user (no database work):")
        print(_line(rest, "gateway + sync_svc"))
        print(_line(direct, "sync_svc"))
        print(_line(plain, "bare server"))
        print(_ratios(rest, direct, "a/b"))
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
    asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
