"""What the benchmarks share: free ports, a scratch database on the configured or embedded server, the
suite's environment, the emulator's admin API, a bare aiohttp server and an HTTP load generator."""

from __future__ import annotations

import contextlib
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


def http_tool() -> str:
    return "wrk -t1" if shutil.which("wrk") else "aiohttp client loop"


def http_load(url: str, seconds: float, connections: int, token: str = "") -> tuple[int, float]:
    """GET `url` with `connections` requests in flight for `seconds` from another process: wrk when it is
    on PATH (`apt-get install wrk`), else an aiohttp client loop. (requests answered, seconds taken);
    any non-200 answer is an error."""
    if not shutil.which("wrk"):
        out = subprocess.run(
            [sys.executable, "-c", _HTTP_LOOP, url, str(seconds), str(connections), token],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        return int(out[0]), float(out[1])
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    if token:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    if "Non-2xx or 3xx responses" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw failed requests on {url}:\n{out}")
    match = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)\b", out)
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[match.group(3)]
    return int(match.group(1)), float(match.group(2)) * scale
