"""Shared fixtures: real Postgres and Redis, pytest-grpc's contract on grpc.aio, the running suite.

Stores: with FINPULSE_DATABASE_URL / FINPULSE_REDIS_URL set (CI sets the machine's servers), the tests
create a fresh database on that server for the session and drop it afterwards; without them, they
start the embedded Postgres and Redis in a temporary folder, exactly as `make up` does on a fresh
machine. Nothing is mocked.

Ports: nothing here picks a port by binding and releasing it (another process could take it in
between). A server in the test process binds port 0 and the test reads the port back (`grpc_server`,
`start_banks(..., {"vbank": 0})`, aiohttp's `runner.addresses`); a server in a child process gets a
port the test reserved from the OS and holds until the end (`ports`, svclib.ports).

pytest-grpc: tests declare `grpc_add_to_server`, `grpc_servicer` and `grpc_stub_cls` as the plugin
documents. The plugin's own `grpc_server` is a thread-pool `grpc.server`, which cannot host
`grpc.aio` servicers (their methods are coroutines and need the server's event loop), so the
`grpc_server`, `grpc_create_channel`, `grpc_channel` and `grpc_stub` fixtures are overridden below
with asyncio ones; the contract the tests see is unchanged.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from urllib.parse import urlparse, urlunparse

import asyncpg
import grpc
import pytest
import pytest_asyncio

from svclib import db
from svclib.cache import Cache
from svclib.embedded import BackingServices, ensure_backing_services
from svclib.ports import PortReservations


@pytest.fixture
def ports():
    """Ports reserved from the OS for this test's child processes (svclib.ports), released after it.
    Children learn they may bind them from `ports.env()` (FINPULSE_RESERVED_PORTS)."""
    with PortReservations() as reserved:
        yield reserved


def _with_database(url: str, name: str) -> str:
    parsed = urlparse(url)
    return urlunparse(parsed._replace(path=f"/{name}"))


async def _create_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def servers() -> BackingServices:
    """The Postgres and Redis servers of this run: configured, or embedded in a temporary folder."""
    configured_db = os.environ.get("FINPULSE_DATABASE_URL") or None
    configured_redis = os.environ.get("FINPULSE_REDIS_URL") or None
    data_dir = tempfile.mkdtemp(prefix="fpt-")  # short: unix socket paths are length-limited
    services = ensure_backing_services(configured_db, configured_redis, data_dir)
    yield services
    services.stop()


@pytest.fixture(scope="session")
def fresh_database(servers):
    """Factory: a new database on the test server, dropped at the end of the session."""
    created: list[str] = []

    def make(label: str) -> BackingServices:
        name = f"finpulse_test_{label}_{uuid.uuid4().hex[:8]}"
        asyncio.run(_create_database(servers.database_url, name))
        created.append(name)
        return BackingServices(_with_database(servers.database_url, name), servers.redis_url)

    yield make
    for name in created:
        asyncio.run(_drop_database(servers.database_url, name))


@pytest.fixture(scope="session")
def backing(fresh_database) -> BackingServices:
    """Postgres (a fresh database for the unit and gRPC tests of this session) and Redis."""
    return fresh_database("unit")


@pytest.fixture(scope="session")
def database_url(backing) -> str:
    return backing.database_url


@pytest.fixture(scope="session")
def redis_url(backing) -> str:
    return backing.redis_url


@pytest_asyncio.fixture
async def cache(redis_url):
    c = Cache(redis_url, prefix=f"finpulse-test-{uuid.uuid4().hex[:8]}:")
    yield c
    await c.delete_prefix(c.prefix)
    await c.close()


@pytest_asyncio.fixture
async def schema_pool(database_url):
    """Factory: a pool on a service's migrated schema, closed after the test."""
    pools: list[asyncpg.Pool] = []

    async def make(spec) -> asyncpg.Pool:
        await db.migrate(database_url, spec.schema, spec.migrations)
        pool = await db.create_pool(database_url, spec.schema, max_size=5)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.close()


#: The internal secret of the in-process servers and channels below (svclib.internal_auth).
INTERNAL_SECRET = "test-internal-secret-" + "i" * 32


class _SignedCalls(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    """Test channels sign their calls as the services do (caller `test`); the user a test names with
    `x-user-id` metadata becomes the statement's user (the servers ignore the header itself)."""

    def __init__(self):
        from svclib.internal_auth import Signer

        self.signer = Signer(INTERNAL_SECRET, "test")

    def _details(self, details):
        metadata = list(details.metadata or ())
        if not any(key == "authorization" for key, _ in metadata):
            user = next((value for key, value in metadata if key == "x-user-id"), None)
            metadata.append(self.signer.metadata(user))
        return details._replace(metadata=grpc.aio.Metadata(*metadata))

    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(self._details(details), request)

    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(self._details(details), request)


@pytest_asyncio.fixture
async def grpc_server(grpc_add_to_server, grpc_servicer):
    """pytest-grpc's server fixture, on grpc.aio (see the module docstring), on a port of its own from
    the OS (`server.port`; pytest-grpc's is one per module)."""
    from svclib.internal_auth import Verifier
    from svclib.server import ServiceInterceptor

    server = grpc.aio.server(interceptors=[ServiceInterceptor(Verifier(INTERNAL_SECRET))])
    grpc_add_to_server(grpc_servicer, server)
    server.port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield server
    await server.stop(None)


@pytest.fixture
def grpc_addr(grpc_server) -> str:
    """Where `grpc_server` listens."""
    return f"127.0.0.1:{grpc_server.port}"


@pytest_asyncio.fixture
async def grpc_create_channel(grpc_addr):
    channels: list[grpc.aio.Channel] = []

    def create(credentials=None, options=None) -> grpc.aio.Channel:
        interceptors = [_SignedCalls()]
        channel = (
            grpc.aio.secure_channel(grpc_addr, credentials, options, interceptors=interceptors)
            if credentials is not None
            else grpc.aio.insecure_channel(grpc_addr, options, interceptors=interceptors)
        )
        channels.append(channel)
        return channel

    yield create
    for channel in channels:
        await channel.close()


@pytest_asyncio.fixture
async def grpc_channel(grpc_create_channel):
    return grpc_create_channel()


@pytest_asyncio.fixture
async def grpc_stub(grpc_stub_cls, grpc_channel):
    return grpc_stub_cls(grpc_channel)


@pytest.fixture(scope="session")
def suite(fresh_database, tmp_path_factory):
    """The whole suite as `make up` runs it (emulator, four services, gateway), on free ports, with a
    database of its own (its sync workers must not take the unit tests' jobs)."""
    from deploy.suite import Suite
    from svclib.config import load_settings
    from tests.e2e import suite_env

    log_dir = str(tmp_path_factory.mktemp("suite-logs"))
    ports = PortReservations()  # every port of the suite, held until its end
    env = suite_env(
        ports,
        log_dir,
        # Its own Redis keys: a shared Redis may hold another run's (for another database).
        redis_prefix=f"finpulse-test-{uuid.uuid4().hex[:8]}:",
        # The flows below send bursts far above a person's (test_isolation walks every route at
        # once); the per-user limit itself is tested on a gateway of its own (test_gateway.py).
        FINPULSE_USER_RATE_LIMIT="1000",
        FINPULSE_USER_RATE_BURST="2000",
    )
    settings = load_settings(env)
    # 50 emulator customers: each test against the shared suite takes its own (tests/test_isolation.py:
    # 38 and 39, test_bank_outage.py: 41, test_e2e_app.py: 30 and 42); two tests sharing one see each
    # other's jobs.
    running = Suite(
        settings,
        fresh_database("suite"),
        base_env=env,
        log_dir=log_dir,
        emulator_args=["--customers", "50"],
        ports=ports,
    )
    try:
        asyncio.run(running.migrate())
        running.start()
        asyncio.run(running.wait_healthy())
        yield running
    finally:
        running.close()  # the children, then their ports
        ports.close()  # (when Suite() itself failed)


# ---------------------------------------------------------------------------------------------
# End-to-end helpers on the running suite


@pytest.fixture
async def session():
    import aiohttp

    async with aiohttp.ClientSession() as opened:
        yield opened


@pytest.fixture
def http(suite, session):
    """The gateway as the frontend calls it: each request acts for the user it names (tests/e2e.py)."""
    from tests.e2e import Http

    return Http(session, suite.gateway_url, tokens=suite.token)


@pytest.fixture(name="db")
async def suite_db(suite):
    """A connection to the running suite's database, to check what it stored."""
    conn = await asyncpg.connect(suite.backing.database_url)
    yield conn
    await conn.close()


@pytest.fixture
def bank_urls(suite) -> dict[str, str]:
    return {bank.id: bank.base_url for bank in suite.settings.banks}


async def _banks_back_to_normal(suite) -> None:
    """Fault knobs off, every bank up, breakers closed, failed catalogue reads forgotten: what one test
    did to the shared banks never reaches the next (a breaker a test opened would refuse its calls)."""
    import aiohttp
    import redis.asyncio as aioredis

    async with aiohttp.ClientSession() as session:
        for bank in suite.settings.banks:
            if not bank.base_url:
                continue
            async with session.post(
                f"{bank.base_url}/__admin__/faults",
                json={
                    "error_rate": 0.0,
                    "rate_limit_rate": 0.0,
                    "latency_ms": 0.0,
                    "payment_delay_ms": 0.0,
                    "refuse_payment_consents": False,
                },
            ) as resp:
                await resp.read()
            async with session.post(f"{bank.base_url}/__admin__/down", json={"down": False}) as resp:
                await resp.read()
    client = aioredis.from_url(suite.backing.redis_url)
    try:
        prefix = suite.env["FINPULSE_REDIS_PREFIX"] + "breaker:"
        keys = [k async for k in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
    conn = await asyncpg.connect(suite.backing.database_url)
    try:
        await conn.execute("DELETE FROM sync.catalogue_state WHERE last_error IS NOT NULL")
    finally:
        await conn.close()


@pytest.fixture(autouse=True)
def _shared_banks_reset_after_each_test(request):
    yield
    if "suite" in request.fixturenames:
        asyncio.run(_banks_back_to_normal(request.getfixturevalue("suite")))
