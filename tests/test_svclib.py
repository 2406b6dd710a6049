"""Shared plumbing: configuration, migrations, the Redis cache, the server's error mapping."""

from __future__ import annotations

import asyncio
import itertools
import os
import pathlib
import subprocess
import sys
import uuid

import asyncpg
import pytest

from gateway.settings import load_gateway_settings
from svclib import db
from svclib.cache import Cache
from svclib.config import ConfigError


def test_config_defaults_are_the_local_suite():
    settings = load_gateway_settings({})
    assert settings.is_local and settings.database_url is None
    assert [(b.id, b.base_url, b.approval_mode) for b in settings.banks] == [
        ("vbank", "http://127.0.0.1:9101", "auto"),
        ("abank", "http://127.0.0.1:9102", "auto"),
        ("sbank", "http://127.0.0.1:9103", "manual"),
    ]
    assert settings.service_addrs["consent"] == "127.0.0.1:50052"
    assert settings.cors_origins == ("http://localhost:3000",)


def test_config_names_every_bad_value():
    with pytest.raises(ConfigError) as err:
        load_gateway_settings(
            {
                "FINPULSE_ENV": "production",
                "FINPULSE_GATEWAY_PORT": "eighty",
                "FINPULSE_DATABASE_URL": "mysql://x",
                "FINPULSE_BANKS": "vbank,Bad Bank",
                "FINPULSE_BANK_VBANK_APPROVAL": "sometimes",
                "FINPULSE_SYNC_ADDR": "nowhere",
                "FINPULSE_SHUTDOWN_GRACE": "-1",
            }
        )
    text = str(err.value)
    for name in (
        "FINPULSE_GATEWAY_PORT",
        "FINPULSE_DATABASE_URL",
        "FINPULSE_REDIS_URL",
        "'Bad Bank'",
        "FINPULSE_BANK_VBANK_APPROVAL",
        "FINPULSE_SYNC_ADDR",
        "FINPULSE_SHUTDOWN_GRACE",
    ):
        assert name in text, name


@pytest.mark.parametrize("service, needs_secret", [("sync", True), ("consent", True), ("dashboard", False)])
def test_only_services_calling_banks_need_the_team_secret(service, needs_secret):
    """In production the team's secret at the banks is required by consent_svc and sync_svc only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINPULSE_")}
    # A port nothing listens on: a service that starts fails later, on its database, not on its config.
    env.update(
        FINPULSE_ENV="production",
        FINPULSE_DATABASE_URL="postgresql://nobody@127.0.0.1:1/x",
        FINPULSE_REDIS_URL="redis://127.0.0.1:1/0",
        FINPULSE_GRPC_PORT="1",
        FINPULSE_STARTUP_WAIT="1",
        FINPULSE_INTERNAL_SECRET="internal-" + "s" * 32,
    )
    proc = subprocess.run(
        [sys.executable, "-m", f"{service}_svc", "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    named = "FINPULSE_TEAM_SECRET" in proc.stderr
    assert named == needs_secret, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    if needs_secret:
        assert proc.returncode == 2
    else:  # it started, waited for its database, then gave up clearly
        assert proc.returncode == 1
        assert f"{service}_svc: the database is unreachable after 1 s" in proc.stderr


def test_real_bank_urls_are_configuration_only():
    settings = load_gateway_settings(
        {
            "FINPULSE_ENV": "production",
            "FINPULSE_DATABASE_URL": "postgresql://db/x",
            "FINPULSE_REDIS_URL": "redis://r",
            "FINPULSE_TEAM_SECRET": "s3cret",
            "FINPULSE_BANK_VBANK_URL": "https://vbank.open.bankingapi.ru/",
            "FINPULSE_BANK_SBANK_URL": "https://sbank.open.bankingapi.ru",
        }
    )
    assert settings.bank("vbank").base_url == "https://vbank.open.bankingapi.ru"
    assert settings.bank("abank").base_url is None  # not configured: listed as missing_url
    assert settings.bank("sbank").approval_mode == "manual"
    assert settings.cors_origins == ()


async def test_migrations_apply_once_under_concurrency(database_url, tmp_path: pathlib.Path):
    schema = f"mig_{uuid.uuid4().hex[:8]}"
    (tmp_path / "001_first.sql").write_text("CREATE TABLE t (id int PRIMARY KEY);")
    (tmp_path / "002_second.sql").write_text("INSERT INTO t VALUES (1);")
    results = await asyncio.gather(*(db.migrate(database_url, schema, tmp_path) for _ in range(4)))
    assert sorted(len(r) for r in results) == [0, 0, 0, 2], "one runner applied both, the others found nothing"
    assert await db.migrate(database_url, schema, tmp_path) == []
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval(f"SELECT count(*) FROM {schema}.t") == 1
        assert await conn.fetchval(f"SELECT count(*) FROM {schema}.schema_migrations") == 2
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await conn.close()


async def test_failed_migration_rolls_back_its_step(database_url, tmp_path: pathlib.Path):
    schema = f"mig_{uuid.uuid4().hex[:8]}"
    (tmp_path / "001_ok.sql").write_text("CREATE TABLE t (id int);")
    (tmp_path / "002_broken.sql").write_text("CREATE TABLE u (id int); SELECT no_such_function();")
    with pytest.raises(asyncpg.PostgresError):
        await db.migrate(database_url, schema, tmp_path)
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval(f"SELECT max(version) FROM {schema}.schema_migrations") == 1
        assert await conn.fetchval("SELECT to_regclass($1)", f"{schema}.u") is None
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await conn.close()


def test_migration_file_names_are_checked(tmp_path: pathlib.Path):
    (tmp_path / "1_bad.sql").write_text("")
    with pytest.raises(ValueError, match="NNN_lowercase_name"):
        db.discover_migrations(tmp_path)


async def test_cache_round_trip_and_prefix_delete(cache: Cache):
    await cache.set_json(cache.key("a", "1"), {"x": "1.10"}, 60)
    await cache.set_json(cache.key("a", "2"), [1, 2], 60)
    assert await cache.get_json(cache.key("a", "1")) == {"x": "1.10"}
    await cache.delete_prefix(cache.key("a", ""))
    assert await cache.get_json(cache.key("a", "2")) is None


async def test_cache_degrades_to_misses_when_redis_is_down():
    dead = Cache("redis://127.0.0.1:1/0", socket_timeout=0.2)  # nothing listens on port 1
    assert await dead.ping() is False
    assert await dead.get_json("k") is None
    await dead.set_json("k", {"a": 1}, 10)  # no exception
    await dead.delete("k")
    await dead.close()


async def test_raise_to_never_moves_backwards(cache: Cache):
    key = cache.key("version")
    await cache.raise_to(key, 5, 60)
    await cache.raise_to(key, 3, 60)  # a late publisher of an older version
    assert await cache.get(key) == "5"
    await cache.raise_to(key, 6, 60)
    assert await cache.get(key) == "6"


async def test_rate_limiter_caps_requests_across_limiters(redis_url):
    """Two limiters (two replicas) on one key share one budget: of 20 requests at 50/s with a burst of 5,
    the first 5 go at once and each other one waits for a slot of its own, 20 ms after the previous one:
    the last (20 - 5) / 50 = 0.3 s after the first (the waits are recorded, not slept)."""
    import time

    import redis.asyncio as aioredis

    from svclib.ratelimit import RateLimiter

    client = aioredis.from_url(redis_url)
    key = f"test-{uuid.uuid4().hex[:8]}"
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    first, second = (RateLimiter(client, 50, burst=5, prefix="finpulse-test:rl:", sleep=record) for _ in range(2))
    started = time.perf_counter()
    await asyncio.gather(*(limiter.acquire(key) for limiter in (first, second) for _ in range(10)))
    elapsed = time.perf_counter() - started  # the slots' clock (Redis's) moved this much meanwhile
    assert 15 - elapsed / 0.02 - 1 <= len(waits) <= 15, waits
    assert 0.3 - elapsed - 0.002 <= max(waits) <= 0.3 + 0.002, (waits, elapsed)
    ordered = sorted(waits)
    assert all(b - a >= 0.02 - elapsed - 0.002 for a, b in itertools.pairwise(ordered)), "one slot per request"
    await client.delete(f"finpulse-test:rl:{key}")
    await client.aclose()


async def test_concurrent_acquires_share_round_trips_and_keep_one_slot_each(redis_url):
    """100 requests waiting on one key at once: a Redis call per batch (counted by Redis itself), and
    still one slot each, 20 ms apart past the burst of 5 (the waits are recorded, not slept)."""
    import redis.asyncio as aioredis

    from svclib.ratelimit import RateLimiter

    client = aioredis.from_url(redis_url)
    key = f"test-{uuid.uuid4().hex[:8]}"
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    limiter = RateLimiter(client, 50, burst=5, prefix="finpulse-test:rl:", sleep=record)
    calls: list[int] = []
    reserve = limiter._reserve

    async def counted(key: str, n: int) -> float:
        calls.append(n)
        return await reserve(key, n)

    limiter._reserve = counted
    await asyncio.gather(*(limiter.acquire(key) for _ in range(100)))
    assert sum(calls) == 100 and len(calls) <= 2, f"reservations {calls} for 100 requests waiting at once"
    ordered = sorted(waits)
    assert len(ordered) >= 94, "past the burst, every request waits for a slot of its own"
    assert all(abs((b - a) - 0.02) < 1e-6 for a, b in itertools.pairwise(ordered)), "one slot per request"
    seconds, micros = await client.time()
    redis_now = seconds * 1000 + micros / 1000
    tat = float(await client.get(f"finpulse-test:rl:{key}"))
    assert abs(tat - redis_now - 100 * 20) < 200, "the shared budget moved on by one slot per request"
    await client.delete(f"finpulse-test:rl:{key}")
    await client.aclose()


async def test_admission_leases_slots_in_batches_and_never_exceeds_the_cap(redis_url):
    """Two replicas admitting one key with leases of 10: 100 concurrent requests at a burst of 40
    admit exactly 40 (the shared bucket) and cost one Redis call per batch, not per request."""
    import redis.asyncio as aioredis

    from svclib.ratelimit import RateLimiter

    client = aioredis.from_url(redis_url)
    key = f"test-{uuid.uuid4().hex[:8]}"
    replicas = [RateLimiter(client, 0.5, burst=40, prefix="finpulse-test:rl:", lease=10) for _ in range(2)]
    calls = 0
    for limiter in replicas:
        grant = limiter._grant

        async def counted(*args, _grant=grant):
            nonlocal calls
            calls += 1
            return await _grant(*args)

        limiter._grant = counted
    waits = await asyncio.gather(*(limiter.admit(key) for limiter in replicas for _ in range(50)))
    admitted = [w for w in waits if w == 0.0]
    assert len(admitted) == 40, "the burst, shared by both replicas"
    assert all(0 < w <= 2.0 for w in waits if w), "refusals say when to come back (one slot per 2 s)"
    assert calls <= 6, f"{calls} Redis calls: 4 batches, one refusal per replica"
    again = await asyncio.gather(*(limiter.admit(key) for limiter in replicas for _ in range(10)))
    assert all(again) and calls <= 6, "refusals are remembered until their wait is over"
    await client.delete(f"finpulse-test:rl:{key}")
    await client.aclose()


def test_production_services_need_the_internal_secret():
    """Every service signs and verifies the calls between the suite's processes (svclib.internal_auth)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINPULSE_")}
    env.update(
        FINPULSE_ENV="production",
        FINPULSE_DATABASE_URL="postgresql://nobody@127.0.0.1:1/x",
        FINPULSE_REDIS_URL="redis://127.0.0.1:1/0",
        FINPULSE_GRPC_PORT="1",
        FINPULSE_STARTUP_WAIT="1",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "dashboard_svc", "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "FINPULSE_INTERNAL_SECRET" in proc.stderr, proc.stderr[-2000:]
    env["FINPULSE_INTERNAL_SECRET"] = "short"
    proc = subprocess.run(
        [sys.executable, "-m", "dashboard_svc", "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "at least 32 characters" in proc.stderr, proc.stderr[-2000:]


def test_database_unavailability_is_told_from_bugs_and_from_other_failures():
    from bankapi.errors import BankUnavailable
    from svclib.errors import NotFound
    from svclib.resilience import is_unavailable

    # What asyncpg raises once the server dropped a connection someone still holds, and when it hands
    # out one whose server just said goodbye (tests/test_faults.py meets both around every restart).
    assert is_unavailable(
        asyncpg.InterfaceError("cannot call Connection.is_closed(): connection has been released back to the pool")
    )
    assert is_unavailable(
        asyncpg.exceptions._base.InternalClientError("cannot switch to state 12; another operation (2) is in progress")
    )
    assert is_unavailable(asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"))
    assert is_unavailable(ConnectionRefusedError(111, "Connect call failed"))
    # A database error raised while handling a lost connection (a rollback on it) is the outage too.
    try:
        try:
            raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")
        except asyncpg.ConnectionDoesNotExistError:
            # implicit chaining (__context__), as asyncpg raises it from a failed rollback
            raise asyncpg.InterfaceError("cannot rollback: the transaction is in an odd state")  # noqa: B904
    except asyncpg.InterfaceError as exc:
        assert is_unavailable(exc)
    # Not the database: bugs, domain errors and bank failures, even with a network error under them.
    assert not is_unavailable(asyncpg.InterfaceError("cannot perform operation: another operation is in progress"))
    assert not is_unavailable(asyncpg.UniqueViolationError("duplicate key"))
    assert not is_unavailable(RuntimeError("boom"))
    for outer in (NotFound("no such consent"), BankUnavailable("vbank is down", bank_id="vbank")):
        try:
            try:
                raise ConnectionResetError("reset by peer")
            except ConnectionResetError as inner:
                raise outer from inner
        except Exception as exc:  # noqa: BLE001
            assert not is_unavailable(exc), exc


async def test_advisory_lock_gives_its_connection_back_when_cancelled_or_cut_off(database_url):
    pool = await db.create_pool(database_url, "public", min_size=1, max_size=2)
    try:
        async with db.AdvisoryLock(pool, "test-lock"):
            # Another request waits for the lock until its deadline cancels it: its connection comes back.
            for _ in range(3):
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(db.AdvisoryLock(pool, "test-lock").__aenter__(), 0.2)
            assert await asyncio.wait_for(pool.fetchval("SELECT 1"), 5) == 1, "the pool still has a connection"

        # The server drops the lock's session (a restart): leaving the block raises nothing of its own.
        admin = await asyncpg.connect(database_url)
        try:
            with pytest.raises(LookupError):
                async with db.AdvisoryLock(pool, "test-lock") as _:
                    pid = await admin.fetchval(
                        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = "
                        "(hashtextextended('test-lock', 0) & x'ffffffff'::bigint)::oid AND granted"
                    )
                    await admin.execute("SELECT pg_terminate_backend($1)", pid)
                    for _ in range(500):  # until that session is gone (the signal is asynchronous)
                        if not await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
                            break
                        await asyncio.sleep(0.01)
                    raise LookupError("the block's own error is the one the caller sees")
            async with db.AdvisoryLock(pool, "test-lock", wait=False):
                pass  # free again: the session that held it is gone
        finally:
            await admin.close()
    finally:
        pool.terminate()  # not close(): that would wait forever for a connection a bug never gave back
