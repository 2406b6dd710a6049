"""What the benchmarks share: free ports and a scratch database on the configured or embedded server."""
from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import uuid
from typing import AsyncIterator
from urllib.parse import urlparse, urlunparse

import aiohttp
import asyncpg

from svclib.embedded import BackingServices, ensure_backing_services


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def with_database(url: str, name: str) -> str:
    return urlunparse(urlparse(url)._replace(path=f"/{name}"))


@contextlib.asynccontextmanager
async def scratch_database(label: str) -> AsyncIterator[BackingServices]:
    """A new database (dropped afterwards) on FINPULSE_DATABASE_URL's server, or on an embedded
    Postgres in a temporary folder; Redis likewise."""
    servers = ensure_backing_services(os.environ.get("FINPULSE_DATABASE_URL") or None,
                                      os.environ.get("FINPULSE_REDIS_URL") or None, tempfile.mkdtemp(prefix="fpb-"))
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
                await emulator_admin(session, url, f"customers/{user}/transactions",
                                     {"account_id": account_id, "count": step})
                missing -= step
