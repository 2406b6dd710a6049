"""Helpers for end-to-end tests: HTTP calls to the gateway and to the bank emulator as a customer."""
from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

TEAM = "team200"
TEAM_SECRET = "finpulse-dev-secret"


class Http:
    """A tiny JSON client: `await http.get(path, **query)` → (status, body)."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str):
        self.session = session
        self.base = base_url.rstrip("/")

    async def call(self, method: str, path: str, *, json: Any = None, params: dict | None = None,
                   data: bytes | None = None, headers: dict | None = None) -> tuple[int, Any]:
        async with self.session.request(method, self.base + path, json=json, params=params, data=data,
                                        headers=headers) as resp:
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


async def customer_signs(session: aiohttp.ClientSession, bank_url: str, customer: str, request_id: str,
                         kind_path: str = "account-consents", action: str = "approve") -> dict:
    """The customer approves a consent in their bank's app (login, then sign)."""
    async with session.post(f"{bank_url}/auth/login", json={"username": customer, "password": TEAM_SECRET}) as r:
        assert r.status == 200, await r.text()
        token = (await r.json())["access_token"]
    async with session.post(f"{bank_url}/{kind_path}/sign", headers={"Authorization": f"Bearer {token}"},
                            json={"request_id": request_id, "action": action, "signature": "e2e"}) as r:
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
