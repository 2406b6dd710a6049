"""One aiohttp application per bank, and `start_banks` to serve several of them from one process.

Middlewares, outermost first: one JSON log line per request; saving the state after a request that may
have changed it (with a state folder: bank_sandbox.persistence); the fault knobs and outages (never on
/__admin__/); FastAPI-style rendering of every error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from aiohttp import web

from bank_sandbox.admin import PREFIX as ADMIN_PREFIX
from bank_sandbox.admin import Admin
from bank_sandbox.api import BankApi
from bank_sandbox.config import SandboxConfig
from bank_sandbox.persistence import StateFile
from bank_sandbox.portal import Portal
from bank_sandbox.protocol import ApiError, error_response
from bank_sandbox.state import BankState, Registry
from svclib.logging import request_id_var
from svclib.ports import is_reserved

log = logging.getLogger("bank_sandbox")

STATE = web.AppKey("state", BankState)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Fault answers come from a front proxy: plain text, not the bank's JSON.
PROXY_REASONS = {429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Temporarily Unavailable"}


@web.middleware
async def log_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One line per request; `request_id` is the suite's X-Request-Id when the caller sends one."""
    started = time.perf_counter()
    interaction_id = request.headers.get("X-Fapi-Interaction-Id")
    request_id = request_id_var.set(request.headers.get("X-Request-Id"))
    status = 500
    try:
        response = await handler(request)
        status = response.status
        if interaction_id:
            response.headers["X-Fapi-Interaction-Id"] = interaction_id
        return response
    except web.HTTPException as exc:  # redirects
        status = exc.status
        raise
    finally:
        if not request.path.startswith("/__admin__/"):
            resource = request.match_info.route.resource
            template = resource.canonical if resource is not None else request.path
            counted = request.app[STATE].requests
            counted[template] = counted.get(template, 0) + 1
        log.info(
            "request",
            extra={
                "bank": request.app[STATE].bank_id,
                "method": request.method,
                "path": request.path,
                "status": status,
                "latency_ms": round((time.perf_counter() - started) * 1000, 1),
                "x-fapi-interaction-id": interaction_id,
            },
        )
        request_id_var.reset(request_id)


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CHANGE_NOTHING = frozenset({"/auth/bank-token", "/auth/login"})  # POSTs that only issue a token


@web.middleware
async def save_changes(request: web.Request, handler: Handler) -> web.StreamResponse:
    """After any request but a read, the bank's changes go to disk before the answer does (a no-op
    without a state folder, or when nothing changed)."""
    if request.method in SAFE_METHODS or request.path in CHANGE_NOTHING:
        return await handler(request)
    try:
        return await handler(request)
    finally:
        request.app[STATE].on_change()


def _proxy_answer(status: int, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=f"{status} {PROXY_REASONS[status]}", headers=headers)


@web.middleware
async def inject_faults(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith(ADMIN_PREFIX):
        return await handler(request)
    state = request.app[STATE]
    if state.down:
        return _proxy_answer(503)
    faults = state.faults
    if faults.latency_ms:
        await asyncio.sleep(faults.latency_ms / 1000)
    if faults.rate_limit_rate and state.fault_rng.random() < faults.rate_limit_rate:
        return _proxy_answer(429, {"Retry-After": "1"})
    if faults.error_rate and state.fault_rng.random() < faults.error_rate:
        return _proxy_answer(state.fault_rng.choice((503, 500)))
    return await handler(request)


@web.middleware
async def render_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.detail, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.reason)  # unknown route, wrong method: {"detail": "Not Found"}
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return web.Response(status=500, text="Internal Server Error")


def create_bank_app(bank_id: str, config: SandboxConfig, registry: Registry | None = None) -> web.Application:
    """The bank `bank_id`; banks sharing `registry` can pay into each other's accounts."""
    state = BankState(bank_id, config)
    registry = Registry() if registry is None else registry
    registry.add(state)
    app = web.Application(middlewares=[log_requests, save_changes, inject_faults, render_errors])
    app[STATE] = state
    BankApi(state, registry).register(app.router)
    Admin(state).register(app.router)
    Portal(state).register(app.router)
    return app


@dataclass
class RunningBanks:
    urls: dict[str, str]  # bank id -> base URL
    apps: dict[str, web.Application] = field(default_factory=dict)
    registry: Registry | None = None
    _runners: list[web.AppRunner] = field(default_factory=list)

    async def stop(self) -> None:
        while self._runners:
            await self._runners.pop().cleanup()
        if self.registry is not None and self.registry.store is not None:
            self.registry.store.close()  # every change is on disk already


async def start_banks(
    config: SandboxConfig, ports: Mapping[str, int], host: str = "127.0.0.1", state_dir: str | None = None
) -> RunningBanks:
    """Serve each bank of `ports` on its port (0: any free one), all sharing one registry. With
    `state_dir`, the banks start from the state kept there and keep every change there
    (bank_sandbox.persistence: StateError when another process holds it or its file is unreadable)."""
    registry = Registry(StateFile(state_dir) if state_dir else None)
    running = RunningBanks({}, registry=registry)
    url_host = f"[{host}]" if ":" in host else host
    try:
        for bank_id in ports:
            running.apps[bank_id] = create_bank_app(bank_id, config, registry)
        registry.restore()  # before the first request
        for bank_id, port in ports.items():
            app = running.apps[bank_id]
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            running._runners.append(runner)
            await web.TCPSite(runner, host, port, reuse_port=bool(port) and is_reserved(port)).start()
            running.urls[bank_id] = f"http://{url_host}:{runner.addresses[0][1]}"
    except BaseException:
        await running.stop()
        raise
    return running
