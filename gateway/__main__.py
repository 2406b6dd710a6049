"""`python -m gateway`: serve the REST gateway on FINPULSE_GATEWAY_HOST:FINPULSE_GATEWAY_PORT.

Exit codes: 0 after a graceful stop (SIGTERM/SIGINT), 1 when the protos' HTTP annotations cannot be
routed, 2 on bad configuration (including no key to verify bearer tokens: FINPULSE_JWT_SECRET or
FINPULSE_JWT_PUBLIC_KEY, or FINPULSE_AUTH_DEV_TRUST_USER=1 for local development).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from aiohttp import web

from gateway.app import MAX_REQUEST_LINE_BYTES, ROUTES, create_app
from gateway.auth import Authenticator
from gateway.routes import Route, RouteError, build_routes
from gateway.settings import GatewaySettings, load_gateway_settings
from svclib import metrics, ports
from svclib.config import ConfigError
from svclib.logging import setup_logging
from svclib.process import die_with_parent
from svclib.tracing import setup_tracing

log = logging.getLogger("gateway")


async def serve(settings: GatewaySettings, routes: list[Route] | None = None) -> None:
    """Run the gateway until SIGTERM or SIGINT, then drain requests and close the gRPC channels."""
    app = create_app(settings, routes=routes)
    runner = web.AppRunner(
        app,
        access_log=None,
        shutdown_timeout=settings.shutdown_grace,
        max_line_size=MAX_REQUEST_LINE_BYTES,  # passed on to aiohttp's RequestHandler
        max_field_size=MAX_REQUEST_LINE_BYTES,
    )
    await runner.setup()
    exporter = metrics.start_exporter(settings.gateway_metrics_addr)
    try:
        site = web.TCPSite(
            runner, settings.gateway_host, settings.gateway_port, reuse_port=ports.is_reserved(settings.gateway_port)
        )  # svclib.ports
        await site.start()
        log.info(
            "gateway listening on %s:%s",
            settings.gateway_host,
            settings.gateway_port,
            extra={"routes": len(app[ROUTES])},
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("gateway shutting down")
    finally:
        await runner.cleanup()  # stops listening, waits for in-flight requests, closes the clients
        if exporter is not None:
            exporter.close()


def main() -> int:
    die_with_parent()
    try:
        settings = load_gateway_settings()
        Authenticator(settings)  # the token key is checked before anything starts
        settings.resolved_internal_secret()  # and the secret its calls to the services are signed with
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        routes = build_routes()
    except RouteError as exc:
        print(f"cannot route the HTTP annotations: {exc}", file=sys.stderr)
        return 1
    setup_logging("gateway", settings.log_level)
    setup_tracing("gateway")  # only when OTEL_* ask for it (svclib.tracing)
    asyncio.run(serve(settings, routes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
