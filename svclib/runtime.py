"""Run a service process: `python -m <service> serve|migrate`.

A service declares a `ServiceSpec` (its name, schema, migrations folder and a `setup` coroutine that
registers its servicers and background tasks); this module owns everything else: settings, logging,
embedded stores in local mode, migrations, the pool, Redis, clients of the other services, the gRPC
server with its health status, the Prometheus metrics exporter (on `FINPULSE_<SVC>_METRICS_ADDR`,
when set), signals and an orderly shutdown.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import pathlib
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from svclib import db, metrics
from svclib.cache import Cache
from svclib.clients import ServiceClients
from svclib.config import ConfigError, EnvReader, Settings, load_section, load_settings
from svclib.embedded import BackingServices, ensure_backing_services
from svclib.internal_auth import Verifier
from svclib.logging import setup_logging
from svclib.process import die_with_parent
from svclib.resilience import LoopHealth, is_unavailable
from svclib.server import GrpcServer, install_signal_handlers
from svclib.tracing import setup_tracing

log = logging.getLogger("svclib.runtime")

READINESS_INTERVAL = 5.0


@dataclasses.dataclass
class Runtime:
    """What a service's setup gets: shared plumbing, opened and closed by the runner."""

    settings: Settings
    pool: asyncpg.Pool
    cache: Cache
    clients: ServiceClients
    database_url: str = ""  # what `pool` connects to (a Listener opens its own connection there)
    section: Any = None  # the service's own section of the settings (`ServiceSpec.section`), if it has one
    # Heartbeats of the service's long-running loops: health turns NOT_SERVING when one goes silent.
    health: LoopHealth = dataclasses.field(default_factory=LoopHealth)
    _closers: list[Callable[[], Awaitable[None]]] = dataclasses.field(default_factory=list)
    _tasks: list[asyncio.Task] = dataclasses.field(default_factory=list)

    def on_close(self, closer: Callable[[], Awaitable[None]]) -> None:
        self._closers.append(closer)

    def background(self, coro: Awaitable, name: str) -> asyncio.Task:
        """Run `coro` until the service stops. It should never end by itself (use
        svclib.resilience.run_forever); if it does, that is logged and health turns NOT_SERVING."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.append(task)
        self.health.register(f"task:{name}", float("inf"))
        task.add_done_callback(self._task_ended)
        return task

    def _task_ended(self, task: asyncio.Task) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        log.error("background task %s ended", task.get_name(), exc_info=exc)
        self.health.register(f"task:{task.get_name()}", -1.0)  # stale at once: NOT_SERVING

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for closer in reversed(self._closers):
            try:
                await closer()
            except Exception:  # shutdown goes on
                log.exception("error while closing")
        await self.clients.close()
        await self.cache.close()
        await self.pool.close()


@dataclasses.dataclass(frozen=True)
class ServiceSpec:
    name: str  # "consent"; also the key in SERVICE_PORTS / service_addrs
    schema: str
    migrations: pathlib.Path
    # Registers servicers on the server (GrpcServer.add) and starts background work on the runtime.
    setup: Callable[[Runtime, GrpcServer], Awaitable[None]]
    # True for the services that call the banks: only they need the team's secret at the banks.
    calls_banks: bool = False
    # Reads the service's own section of the settings (e.g. sync_svc.settings.read_sync_section); its
    # problems are reported at start with the common settings'. The result is `Runtime.section`.
    section: Callable[[EnvReader], Any] | None = None


def resolve_backing(settings: Settings, service: str | None = None) -> BackingServices:
    """Configured URLs, or embedded stores in local mode when a URL is not configured. With `service`,
    its own FINPULSE_<SVC>_DATABASE_URL stands in when FINPULSE_DATABASE_URL is not set."""
    database_url = settings.database_url or (settings.database_url_for(service) if service else None)
    return ensure_backing_services(database_url, settings.redis_url, settings.data_dir)


def service_role(settings: Settings, spec: ServiceSpec) -> db.ServiceRole | None:
    """The role the service's migrations create and grant: the user of FINPULSE_<SVC>_DATABASE_URL."""
    url = settings.service_database_urls.get(spec.name)
    return db.ServiceRole.from_url(url) if url else None


class StartupError(Exception):
    """The service cannot start (its database stayed unreachable); the message says what to check."""


async def _when_reachable(what: str, attempt: Callable[[], Awaitable], wait: float):
    """`attempt()`, retried with backoff while `what` cannot be reached (a database that starts after
    us, as in compose or Kubernetes), for up to `wait` seconds (Settings.startup_wait)."""
    deadline = asyncio.get_running_loop().time() + wait
    delay = 0.5
    while True:
        try:
            return await attempt()
        except (TimeoutError, OSError, asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError) as exc:
            if asyncio.get_running_loop().time() + delay > deadline:
                raise StartupError(f"{what} is unreachable after {wait:.0f} s: {exc}") from None
            log.warning(f"{what} is unreachable, retrying", extra={"error": str(exc), "retry_in_s": delay})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def open_runtime(
    settings: Settings, spec: ServiceSpec, database_url: str, redis_url: str, section: Any = None
) -> Runtime:
    pool = await _when_reachable(
        "the database",
        lambda: db.create_pool(database_url, spec.schema, application_name=f"finpulse-{spec.name}"),
        settings.startup_wait,
    )
    metrics.watch_pool(spec.name, pool)
    return Runtime(
        settings=settings,
        pool=pool,
        cache=Cache(redis_url, prefix=settings.redis_prefix),
        clients=ServiceClients(settings, spec.name),
        database_url=database_url,
        section=section,
    )


async def _stores_ready(runtime: Runtime) -> bool:
    return await _database_answers(runtime) and await runtime.cache.ping()


async def _database_answers(runtime: Runtime) -> bool:
    try:
        await runtime.pool.fetchval("SELECT 1", timeout=2)
        return True
    except Exception as exc:  # noqa: BLE001 - any failure here means "not ready"
        if not is_unavailable(exc):
            log.warning("readiness check failed", extra={"error": repr(exc)})
        return False


async def _watch_readiness(runtime: Runtime, server: GrpcServer) -> None:
    """SERVING once Postgres and Redis answer; NOT_SERVING while Postgres does not, or while one of the
    service's loops is silent (runtime.health: dead or stuck). Redis being down later does not count:
    every service keeps working without it."""
    serving = False
    metrics.set_serving(server.name, serving)
    while True:
        try:
            if not serving:
                ready = await _stores_ready(runtime) and runtime.health.healthy()
            else:
                ready = await _database_answers(runtime) and runtime.health.healthy()
            if ready != serving:
                serving = ready
                await server.set_serving(serving)
                metrics.set_serving(server.name, serving)
                if serving:
                    log.info("serving")
                else:
                    log.warning(
                        "NOT_SERVING",
                        extra={"database": await _database_answers(runtime), "silent_loops": runtime.health.stale()},
                    )
        except asyncio.CancelledError:
            raise
        except Exception:  # the watch itself must never stop
            log.exception("readiness watch failed; retrying")
        await asyncio.sleep(0.2 if not serving else READINESS_INTERVAL)


async def serve(spec: ServiceSpec, settings: Settings, section: Any = None) -> None:
    backing = resolve_backing(settings, spec.name)
    try:
        if settings.migrate_on_start:
            await _when_reachable(
                "the database",
                lambda: db.migrate(backing.database_url, spec.schema, spec.migrations, service_role(settings, spec)),
                settings.startup_wait,
            )
        own_url = settings.service_database_urls.get(spec.name) or backing.database_url
        runtime = await open_runtime(settings, spec, own_url, backing.redis_url, section)
        server = GrpcServer(
            spec.name,
            settings.grpc_host,
            settings.port_for(spec.name),
            settings.shutdown_grace_for(spec.calls_banks),
            Verifier(settings.resolved_internal_secret()),
        )
        exporter = None
        try:
            exporter = metrics.start_exporter(settings.metrics_addrs.get(spec.name))
            await spec.setup(runtime, server)
            await server.start()
            watcher = asyncio.create_task(_watch_readiness(runtime, server))
            stop = asyncio.Event()
            install_signal_handlers(stop)
            await stop.wait()
            log.info("shutting down", extra={"grace_s": server.grace})
            watcher.cancel()
            await server.stop()
        finally:
            await runtime.close()
            if exporter is not None:
                exporter.close()
    finally:
        backing.stop()
    log.info("stopped")


async def run_migrations(spec: ServiceSpec, settings: Settings) -> None:
    backing = resolve_backing(settings)
    try:
        applied = await db.migrate(backing.database_url, spec.schema, spec.migrations, service_role(settings, spec))
        log.info("migrations done", extra={"schema": spec.schema, "applied": applied})
    finally:
        backing.stop()


async def wait_for_migrations(spec: ServiceSpec, settings: Settings, timeout: float) -> int:
    """`wait-migrations`: 0 once the image's migrations are applied (by a migration job), 1 if they
    are not within `timeout` seconds. Reads with the service's own URL (a pod's init container)."""
    backing = resolve_backing(settings, spec.name)
    try:
        url = settings.service_database_urls.get(spec.name) or backing.database_url
        pending = await db.wait_migrated(url, spec.schema, spec.migrations, timeout)
    finally:
        backing.stop()
    if pending:
        log.error("migrations not applied in time", extra={"schema": spec.schema, "pending": pending})
        return 1
    log.info("migrations applied", extra={"schema": spec.schema})
    return 0


def main(spec: ServiceSpec, argv: list[str] | None = None) -> int:
    die_with_parent()
    parser = argparse.ArgumentParser(prog=f"python -m {spec.name}_svc")
    parser.add_argument("command", choices=["serve", "migrate", "wait-migrations"], nargs="?", default="serve")
    parser.add_argument("--timeout", type=float, default=600.0, help="wait-migrations: seconds to wait")
    args = parser.parse_args(argv)
    try:
        problems = []
        try:
            settings = load_settings()
        except ConfigError as exc:
            problems, settings = exc.problems, None
        section = None
        if spec.section is not None:
            try:
                section = load_section(spec.section)
            except ConfigError as exc:
                problems += exc.problems
        if settings is None:
            raise ConfigError(problems)
        if not settings.is_local and settings.database_url_for(spec.name) is None:
            problems.append(
                f"FINPULSE_DATABASE_URL (or FINPULSE_{spec.name.upper()}_DATABASE_URL): "
                "required when FINPULSE_ENV=production"
            )
        elif args.command == "migrate" and not settings.is_local and settings.database_url is None:
            problems.append("FINPULSE_DATABASE_URL: migrate needs it (a role that may create schemas and roles)")
        if args.command == "serve" and spec.calls_banks and not settings.team.client_secret:
            problems.append(
                f"FINPULSE_TEAM_SECRET: {spec.name}_svc calls the banks and needs it when FINPULSE_ENV=production"
            )
        if args.command == "serve" and not settings.is_local and not settings.internal_secret:
            problems.append(
                "FINPULSE_INTERNAL_SECRET: required when FINPULSE_ENV=production (the services and "
                "the gateway sign and verify their calls to each other with it)"
            )
        if problems:
            raise ConfigError(problems)
    except ConfigError as exc:
        print(f"{spec.name}_svc: {exc}", file=sys.stderr)
        return 2
    setup_logging(f"{spec.name}_svc", settings.log_level)
    if args.command == "serve":
        setup_tracing(f"{spec.name}_svc")  # only when OTEL_* ask for it (svclib.tracing)
    if args.command == "wait-migrations":
        return asyncio.run(wait_for_migrations(spec, settings, args.timeout))
    try:
        asyncio.run(serve(spec, settings, section) if args.command == "serve" else run_migrations(spec, settings))
    except StartupError as exc:
        log.error("cannot start", extra={"reason": str(exc)})
        print(f"{spec.name}_svc: {exc}", file=sys.stderr)
        return 1
    return 0
