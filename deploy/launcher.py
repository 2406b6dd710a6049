"""`make up`: the whole suite on one machine, each part its own process.

Starts embedded Postgres and Redis unless FINPULSE_DATABASE_URL / FINPULSE_REDIS_URL are set, runs
every service's migrations, then the suite (`deploy.suite.Suite`: the bank emulator when the banks
point at this machine, the four gRPC services and the gateway) under supervision; waits until each
one answers its health check, prints where the gateway is with a first curl command, and on Ctrl-C
(or SIGTERM) stops everything in order: children get SIGTERM and their grace period, stragglers are
killed, the embedded servers stop, data is kept. Children also die with the launcher
(`svclib.process.die_with_parent`), so a killed launcher leaves no orphans.

A child that exits without being asked to is started again with a backoff (`Suite.supervise`, the
bookkeeping: deploy/supervisor.py), and each exit, restart and recovery is reported on stderr; one
dead child never stops the suite: only Ctrl-C / SIGTERM does.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from deploy.suite import SERVICES, Suite, report_to_stderr
from gateway.settings import GatewaySettings, load_gateway_settings
from svclib.config import ConfigError
from svclib.embedded import ensure_backing_services

__all__ = ["main", "run"]


def _banner(suite: Suite) -> str:
    url = suite.gateway_url
    user = f"{suite.settings.team.client_id}-1"
    bearer = suite.token(user) if suite.settings.jwt_secret else "<token>"
    auth = f"-H 'Authorization: Bearer {bearer}'"
    lines = [
        "",
        f"FinPulse is up: gateway {url}",
        "  services: " + ", ".join(f"{n} {suite.settings.service_addrs[n]}" for n in SERVICES),
        f"  metrics: gateway {url}/metrics"
        + "".join(f", {n} http://{addr}/metrics" for n, addr in suite.settings.metrics_addrs.items() if addr),
        f"  database: {'embedded' if suite.backing.postgres else 'configured'}, "
        f"redis: {'embedded' if suite.backing.redis else 'configured'}",
        f"Demo user {user}; its token (valid 12 h) is in the commands below.",
        "Try:",
        f"  curl -s {auth} '{url}/api/banks'",
        f"  curl -s {auth} -X POST {url}/api/onboarding/start -H 'Content-Type: application/json' -d '{{}}'",
        f"  curl -s {auth} '{url}/api/dashboard'",
        "Press Ctrl-C to stop.",
        "",
    ]
    return "\n".join(lines)


async def _announce(suite: Suite) -> None:
    """The banner once every child is healthy; meanwhile, every minute, which one is not yet."""
    while True:
        try:
            await suite.wait_healthy(timeout=60)
        except RuntimeError as exc:
            report_to_stderr(f"{exc}; still waiting (a child that exits is restarted)")
            continue
        print(_banner(suite), flush=True)
        return


async def run(settings: GatewaySettings) -> int:
    backing = ensure_backing_services(settings.database_url, settings.redis_url, settings.data_dir)
    suite = Suite(settings, backing)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks: list[asyncio.Task] = []
    code = 0
    try:
        await suite.migrate()
        if not stop.is_set():
            suite.start()
            tasks = [asyncio.create_task(suite.supervise()), asyncio.create_task(_announce(suite))]
            await stop.wait()  # only Ctrl-C / SIGTERM stops the suite: a child that exits is restarted
    except RuntimeError as exc:
        print(f"launcher: {exc}", file=sys.stderr)
        code = 1
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        print("launcher: stopping...", file=sys.stderr)
        suite.close()
        backing.stop()
        print("launcher: stopped (data kept in " + settings.data_dir + ")", file=sys.stderr)
    return code


def main() -> int:
    try:
        settings = load_gateway_settings()
    except ConfigError as exc:
        print(f"launcher: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(run(settings))


if __name__ == "__main__":
    sys.exit(main())
