"""asyncpg pool pinned to a service's schema, and the SQL migration runner.

Migrations are numbered plain-SQL files (`NNN_name.sql`) in a service's `migrations/` folder. The
runner keeps a `schema_migrations` table inside that schema, applies each pending file in its own
transaction, and holds a Postgres advisory lock for the whole run so two replicas never migrate at
once (the second waits, then finds nothing to do).

Per-service roles: given a `ServiceRole` (taken from `FINPULSE_<SVC>_DATABASE_URL`), the runner
also makes sure that role exists, may log in (with the URL's password, stored as a SCRAM verifier)
and may use its own schema and nothing else: USAGE on the schema, read/write on its tables and
sequences (read-only on `schema_migrations`), no CREATE, no access to any other service's schema.
Roles are cluster-global while the advisory lock is per database, so that step tolerates another
migration creating or altering the same role at the same moment (it retries).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import gc
import hashlib
import hmac
import logging
import pathlib
import random
import re
import secrets
import time
from urllib.parse import unquote, urlparse

import asyncpg

from svclib.resilience import connection_lost

log = logging.getLogger("svclib.db")

_MIGRATION_RE = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


def _quote_ident(name: str) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise ValueError(f"bad schema name {name!r}")
    return f'"{name}"'


async def create_pool(
    dsn: str, schema: str, *, min_size: int = 1, max_size: int = 10, application_name: str = "finpulse"
) -> asyncpg.Pool:
    """A pool whose connections resolve unqualified names in `schema` (and nowhere else)."""
    _quote_ident(schema)
    return await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
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


async def migrate(dsn: str, schema: str, folder: pathlib.Path, role: ServiceRole | None = None) -> list[str]:
    """Apply pending migrations of `schema`; returns the names applied now. With `role`, then give
    that role (created if missing) the use of `schema` and nothing else (see the module docstring)."""
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
                        log.warning(
                            "applied migration changed since it ran", extra={"schema": schema, "migration": name}
                        )
                    continue
                async with conn.transaction():
                    await conn.execute(f"SET LOCAL search_path TO {qschema}")
                    await conn.execute(sql)
                    await conn.execute(
                        f"INSERT INTO {qschema}.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                        version,
                        name,
                        checksum,
                    )
                applied_now.append(name)
                log.info("migration applied", extra={"schema": schema, "migration": name})
            if role is not None:
                await grant_schema_role(conn, schema, role)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _lock_key(schema))
    finally:
        await conn.close()
    return applied_now


@dataclasses.dataclass(frozen=True)
class ServiceRole:
    """The Postgres role a service connects as; `password` None leaves its password as it is."""

    name: str
    password: str | None = None

    @classmethod
    def from_url(cls, url: str) -> ServiceRole:
        parsed = urlparse(url)
        if not parsed.username:
            raise ValueError("a service's database URL must name its role (postgresql://ROLE:PASSWORD@host/db)")
        password = unquote(parsed.password) if parsed.password else None
        return cls(unquote(parsed.username), password)

    def __repr__(self) -> str:  # never print the password
        return f"ServiceRole({self.name!r})"


def _quote_role(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def scram_verifier(password: str, iterations: int = 4096, salt: bytes | None = None) -> str:
    """The SCRAM-SHA-256 verifier Postgres stores for an ASCII `password` (RFC 5802/7677, as libpq's
    PQencryptPasswordConn makes it): ALTER ROLE gets this, so the clear password never reaches the
    server or its statement log."""
    salt = secrets.token_bytes(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


# Another migration (of another database on the same server, or another schema of this one) may be
# creating the same role or granting on the same database row at this moment: duplicate role,
# "tuple concurrently updated", serialization failure, deadlock. Each is worth another try.
_RETRYABLE_ROLE_ERRORS = {"23505", "42710", "XX000", "40001", "40P01"}
ROLE_ATTEMPTS = 8


async def grant_schema_role(conn: asyncpg.Connection, schema: str, role: ServiceRole) -> None:
    """Create `role` if missing, let it log in, and give it `schema`'s tables and sequences (read-only
    `schema_migrations`). Idempotent; safe while other migrations do the same (they retry)."""
    qschema, qrole = _quote_ident(schema), _quote_role(role.name)
    me = await conn.fetchval("SELECT current_user")
    if role.name == me:
        raise ValueError(
            f"the {schema} service's role {role.name!r} is the migration's own role: give the service a role of its own"
        )
    for attempt in range(1, ROLE_ATTEMPTS + 1):
        try:
            async with conn.transaction():
                if not await conn.fetchval("SELECT true FROM pg_roles WHERE rolname = $1", role.name):
                    async with conn.transaction():  # a savepoint: losing the race is fine
                        try:
                            await conn.execute(f"CREATE ROLE {qrole} NOLOGIN")
                        except (asyncpg.DuplicateObjectError, asyncpg.UniqueViolationError):
                            pass
                if await conn.fetchval("SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = $1", role.name):
                    raise ValueError(
                        f"role {role.name!r} is a superuser or bypasses row security: "
                        f"it could read every schema, not only {schema!r}"
                    )
                if role.password is not None:
                    # ASCII passwords need no SASLprep; any other is left to the server to hash.
                    secret = scram_verifier(role.password) if role.password.isascii() else role.password
                    literal = await conn.fetchval("SELECT quote_literal($1::text)", secret)
                    await conn.execute(f"ALTER ROLE {qrole} WITH LOGIN PASSWORD {literal}")
                else:
                    await conn.execute(f"ALTER ROLE {qrole} WITH LOGIN")
                database = await conn.fetchval("SELECT current_database()")
                await conn.execute(f"GRANT CONNECT, TEMPORARY ON DATABASE {_quote_role(database)} TO {qrole}")
                await conn.execute(f"GRANT USAGE ON SCHEMA {qschema} TO {qrole}")
                await conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {qschema} TO {qrole}")
                await conn.execute(f"REVOKE INSERT, UPDATE, DELETE ON {qschema}.schema_migrations FROM {qrole}")
                await conn.execute(f"GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {qschema} TO {qrole}")
                await conn.execute(f"GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {qschema} TO {qrole}")
            log.info("schema role granted", extra={"schema": schema, "role": role.name})
            return
        except asyncpg.PostgresError as exc:
            if exc.sqlstate not in _RETRYABLE_ROLE_ERRORS or attempt == ROLE_ATTEMPTS:
                raise
            log.info(
                "role setup raced another migration; retrying",
                extra={"schema": schema, "role": role.name, "error": str(exc)},
            )
            await asyncio.sleep(random.uniform(0.05, 0.2) * attempt)


async def pending_migrations(dsn: str, schema: str, folder: pathlib.Path) -> list[str]:
    """Names of `folder`'s migrations not yet applied to `schema` (every one while the schema or its
    `schema_migrations` table does not exist, or cannot be read yet by this URL's role)."""
    migrations = discover_migrations(folder)
    conn = await asyncpg.connect(dsn, server_settings={"application_name": f"finpulse-check-{schema}"})
    try:
        try:
            rows = await conn.fetch(f"SELECT version FROM {_quote_ident(schema)}.schema_migrations")
        except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError, asyncpg.InsufficientPrivilegeError):
            return [name for _, name, _ in migrations]
    finally:
        await conn.close()
    done = {r["version"] for r in rows}
    return [name for version, name, _ in migrations if version not in done]


async def wait_migrated(
    dsn: str, schema: str, folder: pathlib.Path, timeout: float, interval: float = 2.0
) -> list[str]:
    """Wait until every migration in `folder` is applied to `schema` (by a migration job). Returns
    [] then, or the migrations still pending when `timeout` ran out. A database that cannot be
    reached yet, or a role that does not exist yet, counts as "not yet"."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            pending = await pending_migrations(dsn, schema, folder)
        # not up yet, or the role is not created yet
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            pending = [f"(database not ready: {exc.__class__.__name__})"]
        if not pending or time.monotonic() >= deadline:
            return pending
        log.info("waiting for migrations", extra={"schema": schema, "pending": pending})
        await asyncio.sleep(interval)


async def copy_records(conn, table: str, *, records, columns) -> str:
    """`conn.copy_records_to_table(table, records=..., columns=...)` that fails at once, with
    `ConnectionDoesNotExistError`, when the connection is lost while the COPY waits to send.

    asyncpg's COPY waits on the transport's flow control once the server stops reading (a large COPY
    to a server that is shutting down); a connection dropped then never resumes it, so the COPY, and
    whoever awaits it (a sync job's commit), would wait forever, holding its job's lease with every
    heartbeat. A termination listener ends that wait."""
    lost = asyncio.Event()

    def on_lost(_conn) -> None:
        lost.set()

    conn.add_termination_listener(on_lost)
    protocol = conn._protocol

    async def run_copy() -> str:
        try:
            return await conn.copy_records_to_table(table, records=records, columns=columns)
        except asyncpg.InternalClientError:
            _forget_orphaned_waiter(protocol)  # at once: the connection's end would report it first
            raise

    copy = asyncio.ensure_future(run_copy())
    watch = asyncio.ensure_future(lost.wait())
    try:
        await asyncio.wait({copy, watch}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # cancelled: the COPY must not outlive us (our caller releases the connection next)
        if not copy.done() and (lost.is_set() or connection_lost(conn)):
            # Dropped in the same moment: the COPY has its error already and ends with it by itself.
            # Cancelling it now would leave that error unread in asyncpg's own future ("Future exception
            # was never retrieved"), unless it waits to send (then nothing ends it but a cancel).
            await asyncio.wait([copy], timeout=1)
        if not copy.done():
            copy.cancel()
            await asyncio.wait([copy])
        _retrieve(copy)
        raise
    finally:
        watch.cancel()
        if not connection_lost(conn):
            conn.remove_termination_listener(on_lost)
    if copy.done():
        return copy.result()
    copy.cancel()  # it would wait forever
    await asyncio.wait([copy], timeout=5)
    copy.add_done_callback(_retrieve)
    raise asyncpg.ConnectionDoesNotExistError(f"the connection was lost during COPY to {table}")


def _forget_orphaned_waiter(protocol) -> None:
    """asyncpg's COPY creates its protocol's waiter before it switches the protocol's state, outside its
    error handling: on a connection whose server has just sent its FATAL goodbye ("cannot switch to
    state 21; another operation (2) is in progress") the waiter is left behind, gets the connection's
    loss a moment later, and asyncio reports "Future exception was never retrieved". Mark it as seen:
    the COPY's own error has reached our caller already. (asyncpg 0.29-0.32, protocol.pyx `copy_in`;
    the protocol keeps the waiter in a private attribute, reached here as one of its references.)"""
    for item in gc.get_referents(protocol):
        if isinstance(item, asyncio.Future):
            item.add_done_callback(_retrieve)


def _retrieve(task: asyncio.Future) -> None:
    """Mark a finished task's exception as seen (its caller has reported the failure another way)."""
    if task.done() and not task.cancelled():
        task.exception()


class LockBusy(Exception):
    """`AdvisoryLock(..., wait=False)`: another session holds the lock."""


class AdvisoryLock:
    """`async with AdvisoryLock(pool, name)`: a session-level Postgres advisory lock, held on its own
    pooled connection, that serialises work on `name` across processes and replicas. With
    `wait=False` it does not queue: entering raises `LockBusy` while another session holds it. A
    process that dies releases its locks with its connections."""

    def __init__(self, pool: asyncpg.Pool, name: str, *, wait: bool = True):
        self.pool = pool
        self.name = name
        self.wait = wait
        self.conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> None:
        self.conn = await self.pool.acquire()
        try:
            if self.wait:
                # Waiting may end in a cancellation (the caller's deadline) or a lost connection: the
                # connection must go back to the pool either way (its reset drops a lock granted late).
                await self.conn.execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", self.name)
                return
            taken = await self.conn.fetchval("SELECT pg_try_advisory_lock(hashtextextended($1, 0))", self.name)
        except BaseException:
            await self.pool.release(self.conn)
            self.conn = None
            raise
        if not taken:
            await self.pool.release(self.conn)
            self.conn = None
            raise LockBusy(self.name)

    async def __aexit__(self, *exc: object) -> None:
        assert self.conn is not None
        conn, self.conn = self.conn, None
        try:
            if connection_lost(conn):
                return  # the server dropped the session, and its locks with it
            try:
                await conn.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", self.name)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError):
                # The connection broke under the lock (the database restarting): no session, no lock.
                # The block's own error, if any, is what the caller should see, not this one.
                if not connection_lost(conn):
                    conn.terminate()
                if exc[1] is None:
                    raise
        finally:
            await self.pool.release(conn)
