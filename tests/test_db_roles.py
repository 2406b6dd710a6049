"""Per-service Postgres roles: each service's migrations create its role, and that role can use its
own schema and nothing else. Real Postgres (the configured server or the embedded one); the roles are
cluster-global, so every name carries this run's prefix and is dropped at the end.
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import uuid
from urllib.parse import quote, urlparse, urlunparse

import asyncpg
import pytest

from svclib import db
from svclib.config import SERVICE_PORTS, ConfigError, load_settings

pytestmark = pytest.mark.timeout(180)

SERVICES = tuple(SERVICE_PORTS)  # onboarding, consent, sync, dashboard
# One table of each schema, and a row that fits it.
PROBE = {
    "onboarding": (
        "onboarding_sessions",
        "INSERT INTO onboarding_sessions (onboarding_id, user_id) VALUES ('o1', 'u1')",
    ),
    "consent": (
        "consents",
        "INSERT INTO consents (user_id, bank_id, consent_type, request_id, status) "
        "VALUES ('u1', 'vbank', 'accounts', 'r1', 'PENDING')",
    ),
    "sync": ("sync_jobs", "INSERT INTO sync_jobs (user_id, bank_id) VALUES ('u1', 'vbank')"),
    "dashboard": (
        "user_financial_inputs",
        "INSERT INTO user_financial_inputs (user_id, salary_amount) VALUES ('u1', 1000.00)",
    ),
}


def as_role(url: str, role: str, password: str) -> str:
    """`url` with another user and password (host, port, database and query kept)."""
    parsed = urlparse(url)
    host = parsed.netloc.rpartition("@")[2]
    return urlunparse(parsed._replace(netloc=f"{quote(role, safe='')}:{quote(password, safe='')}@{host}"))


def specs() -> dict:
    from consent_svc.__main__ import SPEC as consent
    from dashboard_svc.__main__ import SPEC as dashboard
    from onboarding_svc.__main__ import SPEC as onboarding
    from sync_svc.__main__ import SPEC as sync

    return {"onboarding": onboarding, "consent": consent, "sync": sync, "dashboard": dashboard}


@pytest.fixture(scope="module")
def roles(fresh_database):
    """This run's role names and passwords, and the databases they touched (cleaned up afterwards)."""
    prefix = f"fpt_{uuid.uuid4().hex[:8]}"
    names = {svc: (f"{prefix}_{svc}", f"pw-{svc}-{uuid.uuid4().hex[:6]}'\"x") for svc in SERVICES}
    touched: list[str] = []
    yield names, touched
    admin_urls = touched

    async def drop():
        for url in admin_urls:
            conn = await asyncpg.connect(url)
            try:
                existing = [
                    r["rolname"]
                    for r in await conn.fetch("SELECT rolname FROM pg_roles WHERE rolname LIKE $1", prefix + "%")
                ]
                if existing:
                    await conn.execute("DROP OWNED BY " + ", ".join(f'"{n}"' for n in existing))
            finally:
                await conn.close()
        if admin_urls:
            conn = await asyncpg.connect(admin_urls[0])
            try:
                for name, _ in names.values():
                    await conn.execute(f'DROP ROLE IF EXISTS "{name}"')
            finally:
                await conn.close()

    asyncio.run(drop())


@pytest.fixture(scope="module")
def spare_databases(fresh_database, roles) -> list[str]:
    """Three more databases on the same server (created here: the factory cannot run in a test's loop)."""
    urls = [fresh_database(f"roles_{i}").database_url for i in range(3)]
    roles[1].extend(urls)
    return urls


@pytest.fixture(scope="module")
def migrated(fresh_database, roles, redis_url):
    """A database migrated by `python -m <svc>_svc migrate`, every service with its own role: the four
    migrations and a second sync migration run at once, then all of them again (idempotent)."""
    names, touched = roles
    admin = fresh_database("roles").database_url
    touched.append(admin)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINPULSE_")}
    env.update(
        FINPULSE_ENV="local", FINPULSE_DATABASE_URL=admin, FINPULSE_REDIS_URL=redis_url, FINPULSE_LOG_LEVEL="WARNING"
    )
    for svc, (role, password) in names.items():
        env[f"FINPULSE_{svc.upper()}_DATABASE_URL"] = as_role(admin, role, password)
    for _ in range(2):
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", f"{svc}_svc", "migrate"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for svc in (*SERVICES, "sync")
        ]
        for proc in procs:
            out, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0, out.decode()
    return admin, {svc: as_role(admin, role, password) for svc, (role, password) in names.items()}


@pytest.mark.parametrize("service", SERVICES)
async def test_a_service_role_uses_its_own_schema_and_no_other(migrated, service):
    _admin, urls = migrated
    conn = await asyncpg.connect(urls[service])
    try:
        table, insert = PROBE[service]
        async with conn.transaction():
            await conn.execute(f"SET LOCAL search_path TO {service}")
            await conn.execute(insert)
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") >= 1
            await conn.execute(f"UPDATE {table} SET user_id = 'u2' WHERE user_id = 'u1'")
            assert await conn.execute(f"DELETE FROM {table} WHERE user_id = 'u2'") != "DELETE 0"
            # Bulk writes stage rows in temporary tables.
            await conn.execute(f"CREATE TEMP TABLE stage ON COMMIT DROP AS SELECT * FROM {table} WITH NO DATA")
        assert await conn.fetchval(f"SELECT count(*) FROM {service}.schema_migrations") >= 1

        for other in SERVICES:
            if other == service:
                continue
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await conn.fetch(f"SELECT * FROM {other}.{PROBE[other][0]} LIMIT 1")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(f"CREATE TABLE {service}.extra (id int)")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(
                f"INSERT INTO {service}.schema_migrations (version, name, checksum) VALUES (999, 'x', 'x')"
            )
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(f"DROP TABLE {service}.{table}")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("CREATE SCHEMA mine")
    finally:
        await conn.close()


async def test_a_service_pool_resolves_its_schema_with_its_role(migrated):
    _, urls = migrated
    pool = await db.create_pool(urls["sync"], "sync", max_size=2)
    try:
        job = await pool.fetchval("INSERT INTO sync_jobs (user_id, bank_id) VALUES ('pool', 'abank') RETURNING job_id")
        assert await pool.fetchval("SELECT user_id FROM sync_jobs WHERE job_id = $1", job) == "pool"
        # An identity column: its sequence is usable too.
        await pool.execute("INSERT INTO bank_status_log (bank_id, operation, outcome) VALUES ('abank', 'x', 'ok')")
        await pool.execute("DELETE FROM sync_jobs WHERE job_id = $1", job)
    finally:
        await pool.close()


async def test_roles_log_in_with_a_scram_verifier_of_their_password(migrated, roles):
    admin, _ = migrated
    names, _ = roles
    conn = await asyncpg.connect(admin)
    try:
        if not await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
            pytest.skip("pg_authid is readable by superusers only")
        for role, password in names.values():
            stored, can_login = await conn.fetchrow(
                "SELECT rolpassword, rolcanlogin FROM pg_authid WHERE rolname = $1", role
            )
            assert can_login
            # Postgres kept our verifier as it is (a string it did not take for a verifier would have
            # been hashed again, with a salt of its own): recomputed from the password, it matches.
            assert stored.startswith("SCRAM-SHA-256$4096:")
            salt = base64.b64decode(stored.split("$")[1].split(":")[1])
            assert db.scram_verifier(password, salt=salt) == stored
            assert password not in stored
    finally:
        await conn.close()


async def test_role_setup_tolerates_migrations_of_two_databases_at_once(spare_databases, roles):
    """Roles are cluster-global and the migration lock is per database: the same role created,
    altered and granted from two databases at once still ends up right in both."""
    names, _ = roles
    first, second = spare_databases[:2]
    spec = specs()["dashboard"]
    role = db.ServiceRole(names["dashboard"][0], names["dashboard"][1])
    for _ in range(2):
        await asyncio.gather(
            *(db.migrate(url, spec.schema, spec.migrations, role) for url in (first, second, first, second))
        )
    for url in (first, second):
        conn = await asyncpg.connect(as_role(url, role.name, role.password))
        try:
            assert await conn.fetchval("SELECT count(*) FROM dashboard.dashboard_cache") == 0
        finally:
            await conn.close()


async def test_wait_migrations_waits_for_the_schema_of_the_image(spare_databases, migrated, roles):
    _admin, urls = migrated
    spec = specs()["sync"]
    assert await db.wait_migrated(urls["sync"], "sync", spec.migrations, timeout=5) == []
    # A database nobody migrated yet: everything is pending, and the role cannot even get in.
    names, _ = roles
    empty = spare_databases[2]
    pending = await db.wait_migrated(as_role(empty, *names["sync"]), "sync", spec.migrations, timeout=0.5, interval=0.1)
    assert pending == [name for _, name, _ in db.discover_migrations(spec.migrations)]

    env = {k: v for k, v in os.environ.items() if not k.startswith("FINPULSE_")}
    env.update(
        FINPULSE_ENV="production",
        FINPULSE_SYNC_DATABASE_URL=urls["sync"],
        FINPULSE_REDIS_URL="redis://unused",
        FINPULSE_TEAM_SECRET="x",
        FINPULSE_LOG_LEVEL="WARNING",
    )
    done = subprocess.run(
        [sys.executable, "-m", "sync_svc", "wait-migrations", "--timeout", "5"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    # `migrate` needs the migration role's URL, not only the service's own.
    refused = subprocess.run(
        [sys.executable, "-m", "sync_svc", "migrate"], env=env, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2 and "FINPULSE_DATABASE_URL" in refused.stderr


def test_a_service_url_must_name_its_role():
    with pytest.raises(ConfigError, match="FINPULSE_SYNC_DATABASE_URL: must name the service's own role"):
        load_settings({"FINPULSE_SYNC_DATABASE_URL": "postgresql://db.example/finpulse"})
    settings = load_settings(
        {
            "FINPULSE_DATABASE_URL": "postgresql://admin@db/x",
            "FINPULSE_SYNC_DATABASE_URL": "postgresql://finpulse_sync:pw@db/x",
        }
    )
    assert settings.database_url_for("sync") == "postgresql://finpulse_sync:pw@db/x"
    assert settings.database_url_for("consent") == "postgresql://admin@db/x"
    assert db.ServiceRole.from_url(settings.database_url_for("sync")) == db.ServiceRole("finpulse_sync", "pw")


async def test_the_migration_role_is_refused_as_a_service_role(database_url, tmp_path):
    (tmp_path / "001_t.sql").write_text("CREATE TABLE t (id int);")
    conn = await asyncpg.connect(database_url)
    try:
        me = await conn.fetchval("SELECT current_user")
    finally:
        await conn.close()
    with pytest.raises(ValueError, match="migration's own role"):
        await db.migrate(database_url, f"roles_{uuid.uuid4().hex[:6]}", tmp_path, db.ServiceRole(me))
