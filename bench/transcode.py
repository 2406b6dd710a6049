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
import re
import shutil
import subprocess
import sys
import tempfile

import aiohttp

from bench._common import free_port, scratch_database
from deploy.launcher import Suite
from svclib.config import KNOWN_BANKS, load_settings
from svclib.embedded import BackingServices

PATH = "/api/banks"
USER = "bench-transcode-user"

_BARE_SERVER = """
import sys
from aiohttp import web
body = open(sys.argv[1], "rb").read()
async def handle(request):
    return web.Response(body=body, content_type="application/json")
app = web.Application()
app.router.add_get(sys.argv[3], handle)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[2]), print=None, access_log=None)
"""

# argv: kind (http|grpc), target (URL | host:port), seconds, connections, user ("" for none), token ("" for none)
_LOAD = """
import asyncio, sys, time
kind, target, seconds, connections, user, token = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]

async def run_http():
    import aiohttp
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections), headers=headers) as session:
        async def call():
            async with session.get(target) as resp:
                await resp.read()
                if resp.status != 200:
                    raise SystemExit(f"HTTP {resp.status}")
        return await drive(call)

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

done, elapsed = asyncio.run(run_http() if kind == "http" else run_grpc())
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


def _wrk(url: str, seconds: float, connections: int, token: str) -> tuple[int, float]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    if token:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    if "Non-2xx or 3xx responses" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw failed requests on {url}:\n{out}")
    match = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)\b", out)
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[match.group(3)]
    return int(match.group(1)), float(match.group(2)) * scale


def _loop(kind: str, target: str, seconds: float, connections: int, user: str, token: str) -> tuple[int, float]:
    out = subprocess.run([sys.executable, "-c", _LOAD, kind, target, str(seconds), str(connections), user, token],
                         capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]), float(out[1])


def load(kind: str, target: str, seconds: float, connections: int, user: str = "", token: str = "") -> tuple[int, float]:
    if kind == "http" and shutil.which("wrk"):
        return _wrk(target, seconds, connections, token)
    return _loop(kind, target, seconds, connections, user, token)


def measure(label: str, pids: list[int], kind: str, target: str, args, **auth: str) -> Result:
    load(kind, target, args.warmup, args.connections, **auth)  # warm caches, connections and JITs alike
    before = cpu_seconds(pids)
    requests, elapsed = load(kind, target, args.seconds, args.connections, **auth)
    return Result(label, requests, elapsed, cpu_seconds(pids) - before)


def _line(result: Result, what: str) -> str:
    return (f"  {result.label:<34} {result.rps:>9,.0f} req/s  {result.cpu_per_request * 1e6:>7,.0f} µs CPU/request"
            f"  ({what})")


def _ratios(a: Result, other: Result, name: str) -> str:
    return (f"  ratio {name}: req/s {a.rps / other.rps:.2f}, CPU/request {a.cpu_per_request / other.cpu_per_request:.2f}")


async def run(args) -> None:
    async with scratch_database("transcode") as backing:
        await _run(backing, args)


async def _run(backing: BackingServices, args) -> None:
    log_dir = tempfile.mkdtemp(prefix="fpt-logs-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINPULSE_")}
    env.update(FINPULSE_ENV="local", FINPULSE_GRPC_HOST="127.0.0.1", FINPULSE_GATEWAY_HOST="127.0.0.1",
               FINPULSE_GATEWAY_PORT=str(free_port()), FINPULSE_DATA_DIR=log_dir, FINPULSE_LOG_LEVEL="WARNING",
               FINPULSE_AUTH_DEV_TRUST_USER="1", FINPULSE_USER_RATE_LIMIT="100000",
               FINPULSE_USER_RATE_BURST="100000", FINPULSE_BANK_EMULATOR="off",
               FINPULSE_REDIS_PREFIX=f"finpulse-bench-{free_port()}:")
    for service in ("onboarding", "consent", "sync", "dashboard"):
        env[f"FINPULSE_{service.upper()}_ADDR"] = f"127.0.0.1:{free_port()}"
    for bank in KNOWN_BANKS:
        env[f"FINPULSE_BANK_{bank.upper()}_URL"] = f"http://127.0.0.1:{free_port()}"
    suite = Suite(load_settings(env), backing, base_env=env, log_dir=log_dir)
    bare = None
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
        body_file = os.path.join(log_dir, "body.json")
        with open(body_file, "wb") as f:
            f.write(body)
        bare_port = free_port()
        bare = subprocess.Popen([sys.executable, "-c", _BARE_SERVER, body_file, str(bare_port), PATH])
        await asyncio.sleep(1.0)

        idle_before = {name: cpu_seconds([pid[name]]) for name in ("gateway", "sync", "consent")}
        await asyncio.sleep(args.warmup)
        idle = {name: (cpu_seconds([pid[name]]) - cpu) / args.warmup for name, cpu in idle_before.items()}
        rest = measure("(a) REST via the gateway", [pid["gateway"], pid["sync"]], "http", url, args)
        direct = measure("(b) grpc.aio, ListBanks directly", [pid["sync"]], "grpc", sync_addr, args)
        plain = measure("(c) bare aiohttp, same body", [bare.pid], "http", f"http://127.0.0.1:{bare_port}{PATH}", args)
        rest_user = measure("(a) REST via the gateway, token", [pid["gateway"], pid["sync"], pid["consent"]],
                            "http", url, args, token=token)
        direct_user = measure("(b) grpc.aio, ListBanks(user)", [pid["sync"], pid["consent"]], "grpc", sync_addr,
                              args, user=USER)

        http_tool = "wrk -t1" if shutil.which("wrk") else "aiohttp client loop"
        print(f"transcode: GET {PATH} -> SyncService.ListBanks ({len(body)} bytes of JSON); load: {http_tool} "
              f"(HTTP), grpc.aio client loop (gRPC); {args.connections} in flight, {args.seconds:g} s each; "
              f"CPU of the serving processes")
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
        print("  idle CPU of the processes (counted above as it comes; sync_svc's workers poll for jobs): "
              + ", ".join(f"{name} {rate * 1000:.0f} ms/s" for name, rate in idle.items()))
    finally:
        if bare is not None:
            bare.terminate()
            bare.wait(5)
        suite.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--warmup", type=float, default=2)
    asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
