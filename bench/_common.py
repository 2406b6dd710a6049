"""What the benchmarks share: free ports and a scratch database on the configured or embedded server."""
from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import uuid
from typing import AsyncIterator
from urllib.parse import urlparse, urlunparse

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
