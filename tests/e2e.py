"""Helpers for end-to-end tests: HTTP calls to the gateway and to the bank emulator as a customer."""

from __future__ import annotations

import asyncio
import re
import urllib.parse
from collections.abc import Callable
from typing import Any

import aiohttp

TEAM = "team200"
TEAM_SECRET = "finpulse-dev-secret"


class Http:
    """A tiny JSON client: `await http.get(path, **query)` → (status, body).

    With `token`, every request carries `Authorization: Bearer <token>` (unless the call passes its
    own Authorization header); `as_user(token)` is the same client with another token. With
    `tokens` (e.g. `suite.token`) and no fixed token, a request acts as the user it names in its
    `user_id` (body, query or /api/users/{user_id}/ path), or else as the last user named: the flow
    tests read like the seed
    frontend's calls; isolation itself is tested with explicit tokens (tests/test_isolation.py).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        token: str | None = None,
        tokens: Callable[[str], str] | None = None,
    ):
        self.session = session
        self.base = base_url.rstrip("/")
        self.token = token
        self.tokens = tokens
        self.last_user: str | None = None

    def as_user(self, token: str | None) -> Http:
        return Http(self.session, self.base, token)

    def _token_for(self, path: str, json: Any, params: dict | None) -> str | None:
        if self.token is not None or self.tokens is None:
            return self.token
        in_path = re.match(r"/api/users/([^/]+)/", path)
        named = (
            (json.get("user_id") if isinstance(json, dict) else None)
            or (params or {}).get("user_id")
            or (urllib.parse.unquote(in_path.group(1)) if in_path else None)
        )
        if named:
            self.last_user = str(named)
        return self.tokens(self.last_user) if self.last_user else None

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict | None = None,
        data: bytes | None = None,
        headers: dict | None = None,
    ) -> tuple[int, Any]:
        headers = dict(headers or {})
        token = self._token_for(path, json, params)
        if token is not None:
            headers.setdefault("Authorization", f"Bearer {token}")
        async with self.session.request(
            method, self.base + path, json=json, params=params, data=data, headers=headers
        ) as resp:
            text = await resp.text()
            try:
                body = await resp.json(content_type=None) if text else None
            except ValueError:
                body = text
            return resp.status, body

    async def get(self, path: str, **params: Any) -> tuple[int, Any]:
        return await self.call("GET", path, params={k: str(v) for k, v in params.items()})

    async def post(self, path: str, body: Any = None, **params: Any) -> tuple[int, Any]:
        return await self.call("POST", path, json=body, params={k: str(v) for k, v in params.items()} or None)


async def customer_signs(
    session: aiohttp.ClientSession,
    bank_url: str,
    customer: str,
    request_id: str,
    kind_path: str = "account-consents",
    action: str = "approve",
) -> dict:
    """The customer approves a consent in their bank's app (login, then sign)."""
    async with session.post(f"{bank_url}/auth/login", json={"username": customer, "password": TEAM_SECRET}) as r:
        assert r.status == 200, await r.text()
        token = (await r.json())["access_token"]
    async with session.post(
        f"{bank_url}/{kind_path}/sign",
        headers={"Authorization": f"Bearer {token}"},
        json={"request_id": request_id, "action": action, "signature": "e2e"},
    ) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def set_faults(session: aiohttp.ClientSession, bank_url: str, **faults: Any) -> None:
    async with session.post(f"{bank_url}/__admin__/faults", json=faults) as r:
        assert r.status == 200, await r.text()


async def eventually(check, timeout: float = 15.0, interval: float = 0.3):
    """Call the async `check` until it returns a truthy value; its last value otherwise."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value or asyncio.get_running_loop().time() > deadline:
            return value
        await asyncio.sleep(interval)


ACTIVE_JOB_STATES = ("JOB_STATE_QUEUED", "JOB_STATE_RUNNING")


async def wait_synced(http: Http, user: str, timeout: float = 120) -> dict:
    """Wait until every sync job of `user` has ended (none queued, running or waiting to retry; the
    top-level `status` already says `completed` while a job waits to retry); the last sync status. An
    error answer is polled again (a service that was just restarted may be answering 503 for a moment)."""
    last = None

    async def done():
        nonlocal last
        status, last = await http.get("/api/sync/status", user_id=user)
        return (
            last
            if status == 200
            and last["status"] == "completed"
            and not any(b.get("state") in ACTIVE_JOB_STATES for b in last["banks"])
            else None
        )

    body = await eventually(done, timeout=timeout, interval=0.5)
    assert body, f"sync of {user} did not finish in {timeout} s; last answer {last}"
    return body


async def onboard(http: Http, user: str, banks=("vbank", "abank"), *, wait: bool = False) -> dict:
    """Account and product consents at `banks` (auto-approving ones), then finalize (which queues the
    first sync); with `wait`, until that sync has finished. The finalize answer."""
    status, body = await http.post(
        "/api/onboarding/consents",
        {"user_id": user, "banks": [{"bank_id": b, "consents": {"account": True, "product": True}} for b in banks]},
    )
    assert status == 200 and body["overall_status"] == "completed", body
    status, body = await http.post("/api/onboarding/finalize", {"onboarding_id": user, "user_id": user})
    assert status == 200, body
    if wait:
        await wait_synced(http, user)
    return body


def suite_env(ports: Any, log_dir: str, *, redis_prefix: str, metrics: bool = True, **settings: str) -> dict[str, str]:
    """The environment of a suite a test starts (deploy.suite.Suite): this process's variables less any
    FINPULSE_*, loopback binds, every address a port `ports` (svclib.ports.PortReservations) holds,
    short grace and lease, its own Redis keys, then `settings` (FINPULSE_* names) on top."""
    import os

    from deploy.suite import SERVICES
    from svclib.config import KNOWN_BANKS

    env = {k: v for k, v in os.environ.items() if not k.startswith("FINPULSE_")}
    env.update(
        FINPULSE_ENV="local",
        FINPULSE_GRPC_HOST="127.0.0.1",
        FINPULSE_GATEWAY_HOST="127.0.0.1",
        FINPULSE_GATEWAY_PORT=str(ports.port()),
        FINPULSE_SHUTDOWN_GRACE="2",
        FINPULSE_DATA_DIR=log_dir,
        FINPULSE_LOG_LEVEL="INFO",
        FINPULSE_SYNC_LEASE="4",
        FINPULSE_REDIS_PREFIX=redis_prefix,
    )
    for name in SERVICES:
        env[f"FINPULSE_{name.upper()}_ADDR"] = ports.addr()
        if metrics:
            env[f"FINPULSE_{name.upper()}_METRICS_ADDR"] = ports.addr()  # Prometheus exporter
    for bank_id in KNOWN_BANKS:
        env[f"FINPULSE_BANK_{bank_id.upper()}_URL"] = ports.url()
    env.update(settings)
    return env
