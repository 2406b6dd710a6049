"""asyncpg pool pinned to a service's schema, and the SQL migration runner.

Migrations are numbered plain-SQL files (`NNN_name.sql`) in a service's `migrations/` folder. The
runner keeps a `schema_migrations` table inside that schema, applies each pending file in its own
transaction, and holds a Postgres advisory lock for the whole run so two replicas never migrate at
once (the second waits, then finds nothing to do).
"""
from __future__ import annotations

import hashlib
import logging
import pathlib
import re

import asyncpg

log = logging.getLogger("svclib.db")

_MIGRATION_RE = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


def _quote_ident(name: str) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise ValueError(f"bad schema name {name!r}")
    return f'"{name}"'


async def create_pool(dsn: str, schema: str, *, min_size: int = 1, max_size: int = 10,
                      application_name: str = "finpulse") -> asyncpg.Pool:
    """A pool whose connections resolve unqualified names in `schema` (and nowhere else)."""
    _quote_ident(schema)
    return await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size,
        server_settings={"search_path": schema, "application_name": application_name, "timezone": "UTC"},
    )


def _lock_key(schema: str) -> int:
    digest = hashlib.sha256(f"finpulse:migrate:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def discover_migrations(folder: pathlib.Path) -> list[tuple[int, str, str]]:
    """(version, file name, SQL) for every migration file, in order; rejects duplicate numbers."""
    found: dict[int, tuple[int, str, str]] = {}
    for path in sorted(folder.glob("*.sql")):
        match = _MIGRATION_RE.match(path.name)
        if not match:
            raise ValueError(f"migration file name {path.name!r} is not NNN_lowercase_name.sql")
        version = int(match.group(1))
        if version in found:
            raise ValueError(f"two migrations numbered {version:03d} in {folder}")
        found[version] = (version, path.name, path.read_text())
    return [found[v] for v in sorted(found)]


async def migrate(dsn: str, schema: str, folder: pathlib.Path) -> list[str]:
    """Apply pending migrations of `schema`; returns the names applied now."""
    migrations = discover_migrations(folder)
    qschema = _quote_ident(schema)
    conn = await asyncpg.connect(dsn, server_settings={"application_name": f"finpulse-migrate-{schema}"})
    applied_now: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _lock_key(schema))
        try:
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {qschema}")
            await conn.execute(f"""
                CREATE TABLE IF NOT EXISTS {qschema}.schema_migrations (
                    version    integer PRIMARY KEY,
                    name       text NOT NULL,
                    checksum   text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )""")
            rows = await conn.fetch(f"SELECT version, name, checksum FROM {qschema}.schema_migrations")
            done = {r["version"]: r for r in rows}
            for version, name, sql in migrations:
                checksum = hashlib.sha256(sql.encode()).hexdigest()
                if version in done:
                    if done[version]["checksum"] != checksum:
                        log.warning("applied migration changed since it ran",
                                    extra={"schema": schema, "migration": name})
                    continue
                async with conn.transaction():
                    await conn.execute(f"SET LOCAL search_path TO {qschema}")
                    await conn.execute(sql)
                    await conn.execute(
                        f"INSERT INTO {qschema}.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                        version, name, checksum)
                applied_now.append(name)
                log.info("migration applied", extra={"schema": schema, "migration": name})
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _lock_key(schema))
    finally:
        await conn.close()
    return applied_now


class AdvisoryLock:
    """`async with AdvisoryLock(pool, name)`: a session-level Postgres advisory lock, held on its own
    pooled connection, that serialises work on `name` across processes and replicas."""

    def __init__(self, pool: asyncpg.Pool, name: str):
        self.pool = pool
        self.name = name
        self.conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> None:
        self.conn = await self.pool.acquire()
        await self.conn.execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", self.name)

    async def __aexit__(self, *exc: object) -> None:
        assert self.conn is not None
        try:
            await self.conn.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", self.name)
        finally:
            await self.pool.release(self.conn)
            self.conn = None
