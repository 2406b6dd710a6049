"""What the benchmarks share: free ports, a scratch database on the configured or embedded server, the
suite's environment, the emulator's admin API, a bare aiohttp server and an HTTP load generator."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlparse, urlunparse

import aiohttp
import asyncpg

from svclib.config import KNOWN_BANKS, SERVICE_PORTS
from svclib.embedded import BackingServices, ensure_backing_services
from svclib.ports import PortReservations

#: Every port a benchmark's child processes serve on: from the OS, held until the benchmark exits
#: (svclib.ports); the children bind them with SO_REUSEPORT because `reserved_env()` names them.
PORTS = PortReservations()


def reserved_port() -> int:
    """A port from the OS, held for a child process until this benchmark exits (pass `reserved_env()`)."""
    return PORTS.port()


def reserved_env() -> dict[str, str]:
    """FINPULSE_RESERVED_PORTS for a child process: it may bind the ports `reserved_port()` gave."""
    return PORTS.env()


def with_database(url: str, name: str) -> str:
    return urlunparse(urlparse(url)._replace(path=f"/{name}"))


@contextlib.asynccontextmanager
async def scratch_database(label: str) -> AsyncIterator[BackingServices]:
    """A new database (dropped afterwards) on FINPULSE_DATABASE_URL's server, or on an embedded
    Postgres in a temporary folder; Redis likewise."""
    servers = ensure_backing_services(
        os.environ.get("FINPULSE_DATABASE_URL") or None,
        os.environ.get("FINPULSE_REDIS_URL") or None,
        tempfile.mkdtemp(prefix="fpb-"),
    )
    name = f"finpulse_bench_{label}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(servers.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield BackingServices(with_database(servers.database_url, name), servers.redis_url)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
        servers.stop()


async def emulator_admin(session: aiohttp.ClientSession, url: str, path: str, body=None):
    """Call the bank emulator's admin API (`/__admin__/…`): GET without a body, POST with one."""
    method = session.post if body is not None else session.get
    async with method(f"{url}/__admin__/{path}", json=body) as resp:
        resp.raise_for_status()
        return await resp.json()


async def customer_with_accounts(session: aiohttp.ClientSession, url: str, customers: int, accounts: int = 4) -> str:
    """An emulator customer with exactly `accounts` accounts (the same at every bank)."""
    for n in range(1, customers + 1):
        if (await emulator_admin(session, url, f"customers/team200-{n}/counts"))["accounts"] == accounts:
            return f"team200-{n}"
    raise RuntimeError(f"no emulator customer with {accounts} accounts among {customers}")


async def top_up(session: aiohttp.ClientSession, urls: dict[str, str], user: str, per_account: int) -> None:
    """Append transactions until every account of `user` at every bank holds `per_account`."""
    for url in urls.values():
        counts = await emulator_admin(session, url, f"customers/{user}/counts")
        for account_id, have in counts["transactions_by_account"].items():
            missing = per_account - have
            while missing > 0:
                step = min(missing, 1000)
                await emulator_admin(
                    session, url, f"customers/{user}/transactions", {"account_id": account_id, "count": step}
                )
                missing -= step


def suite_env(log_dir: str, **settings: str) -> dict[str, str]:
    """The environment of a benchmark's suite: this machine's variables without FINPULSE_*, every
    process on a free loopback port, logs at WARNING, its own Redis prefix, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINPULSE_")}
    env.update(
        FINPULSE_ENV="local",
        FINPULSE_GRPC_HOST="127.0.0.1",
        FINPULSE_GATEWAY_HOST="127.0.0.1",
        FINPULSE_GATEWAY_PORT=str(reserved_port()),
        FINPULSE_DATA_DIR=log_dir,
        FINPULSE_LOG_LEVEL="WARNING",
        FINPULSE_REDIS_PREFIX=f"finpulse-bench-{uuid.uuid4().hex[:8]}:",
    )
    for service in SERVICE_PORTS:
        env[f"FINPULSE_{service.upper()}_ADDR"] = f"127.0.0.1:{reserved_port()}"
    for bank in KNOWN_BANKS:
        env[f"FINPULSE_BANK_{bank.upper()}_URL"] = f"http://127.0.0.1:{reserved_port()}"
    env.update(settings)
    env.update(reserved_env())
    return env


_BARE_SERVER = """
import sys
from aiohttp import web
body = open(sys.argv[1], "rb").read()
async def handle(request):
    return web.Response(body=body, content_type="application/json")
app = web.Application()
app.router.add_get(sys.argv[3], handle)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[2]), print=None, access_log=None, reuse_port=True)
"""


@contextlib.contextmanager
def bare_server(body: bytes, path: str, work_dir: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """A bare aiohttp handler answering GET `path` with `body`, in its own process: (base URL, process)."""
    body_file = os.path.join(work_dir, "bare-body.json")
    with open(body_file, "wb") as f:
        f.write(body)
    port = reserved_port()
    proc = subprocess.Popen([sys.executable, "-c", _BARE_SERVER, body_file, str(port), path])
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", proc
    finally:
        proc.terminate()
        proc.wait(5)


# argv: url, seconds, connections, token ("" for none)
_HTTP_LOOP = """
import asyncio, sys, time
import aiohttp
url, seconds, connections, token = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

async def main():
    done = 0
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections), headers=headers) as session:
        deadline = time.perf_counter() + seconds
        async def worker():
            nonlocal done
            while time.perf_counter() < deadline:
                async with session.get(url) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise SystemExit(f"HTTP {resp.status}")
                done += 1
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        return done, time.perf_counter() - started

print(*asyncio.run(main()))
"""

#: wrk as `make bench-tools` installs it (tools/wrk.sh), else on PATH.
_REPO_WRK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "wrk", "wrk")
#: A load generator busier than this (CPU seconds per second, one process is one core at most) is
#: taken to be the bottleneck: it cannot send faster, so the rate says more about it than the server.
SATURATED = 0.9


def wrk_path() -> str | None:
    """wrk from `make bench-tools` (tools/wrk), else from PATH, else None."""
    if os.access(_REPO_WRK, os.X_OK):
        return _REPO_WRK
    return shutil.which("wrk")


def http_tool() -> str:
    return "wrk -t1" if wrk_path() else "aiohttp client loop"


@dataclasses.dataclass(frozen=True)
class Load:
    """One load run: what sent it, how many requests were answered in how long, and the CPU the load
    generator itself used (its processes' utime + stime)."""

    tool: str
    requests: int
    seconds: float
    tool_cpu: float
    processes: int = 1
    server_cpu: float = 0.0  # CPU seconds of the serving processes, when measured (`http_turns`)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def tool_busy(self) -> float:
        """The load generator's CPU per second per process (1.0: a core kept busy)."""
        return self.tool_cpu / self.seconds / self.processes

    @property
    def saturated(self) -> bool:
        return self.tool_busy >= SATURATED

    @property
    def server_cpu_per_request(self) -> float:
        return self.server_cpu / self.requests

    def describe(self) -> str:
        return f"{self.tool} at {self.tool_busy:.0%} of a core"


def measured_run(cmd: list[str], env: dict[str, str] | None = None) -> tuple[str, float]:
    """`cmd` to the end with its CPU: (stdout, utime + stime of it and its children). Failing is an error."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    out = proc.stdout.read() if proc.stdout else ""
    err = proc.stderr.read() if proc.stderr else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {err.strip()[-2000:]}")
    return out, usage.ru_utime + usage.ru_stime


def http_load(url: str, seconds: float, connections: int, token: str = "") -> Load:
    """GET `url` with `connections` requests in flight for `seconds` from another process: wrk (one
    thread) when installed (`make bench-tools`, or on PATH), else an aiohttp client loop. Any non-200
    answer is an error. The Load says how busy the load generator was (`saturated`: it, not the
    server, set the rate)."""
    wrk = wrk_path()
    if wrk is None:
        out, cpu = measured_run([sys.executable, "-c", _HTTP_LOOP, url, str(seconds), str(connections), token])
        requests, elapsed = out.split()
        return Load("aiohttp client loop", int(requests), float(elapsed), cpu)
    cmd = [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    if token:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    out, cpu = measured_run([*cmd, url])
    if "Non-2xx or 3xx responses" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw failed requests on {url}:\n{out}")
    match = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)\b", out)
    if match is None:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[match.group(3)]
    return Load("wrk -t1", int(match.group(1)), float(match.group(2)) * scale, cpu)


def process_cpu(pids: list[int]) -> float:
    """utime + stime of the processes (all their threads), from /proc/<pid>/stat."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5), after pid and comm
    return total / os.sysconf("SC_CLK_TCK")


def http_turns(
    targets: list[tuple[str, list[int]]], seconds: float, connections: int, token: str = "", rounds: int = 5
) -> list[Load]:
    """`http_load` on each (url, serving pids) for `seconds` in all, in `rounds` turns taken one after the
    other (so that the machine's other load falls on every target alike), each warmed up first: one Load
    per target, summed over its turns, with the CPU its serving processes used."""
    for url, _ in targets:
        http_load(url, 1, connections, token)
    sums = [[0, 0.0, 0.0, 0.0] for _ in targets]
    tool = ""
    for turn in range(rounds):
        order = list(enumerate(targets))
        for i, (url, pids) in order if turn % 2 == 0 else order[::-1]:
            before = process_cpu(pids)
            done = http_load(url, seconds / rounds, connections, token)
            total = sums[i]
            total[0] += done.requests
            total[1] += done.seconds
            total[2] += done.tool_cpu
            total[3] += process_cpu(pids) - before
            tool = done.tool
    return [Load(tool, int(t[0]), t[1], t[2], server_cpu=t[3]) for t in sums]


def ratio(a: Load, b: Load, goal: float | None = None) -> str:
    """`a ÷ b` in requests/s, or why no ratio is given: a load generator that kept its core busy set
    its own rate, and a ratio of two such rates measures the load tools, not the servers."""
    busy = [load for load in (a, b) if load.saturated]
    if busy:
        return "no ratio: the load generator is the bottleneck (" + "; ".join(x.describe() for x in busy) + ")"
    text = f"{a.rps / b.rps:.2f}"
    return text + (f" (goal >= {goal:g})" if goal is not None else "")
