"""Endpoints for tests and demos under /__admin__/: no auth, never hit by faults or outages."""

from __future__ import annotations

import dataclasses

from aiohttp import web

from bank_sandbox.config import Faults
from bank_sandbox.protocol import ApiError, Fields, json_response, read_json
from bank_sandbox.state import BankState

PREFIX = "/__admin__/"
FAULT_KNOBS = tuple(f.name for f in dataclasses.fields(Faults))


class Admin:
    def __init__(self, state: BankState):
        self.state = state

    def register(self, router: web.UrlDispatcher) -> None:
        router.add_get(PREFIX + "faults", self.get_faults)
        router.add_post(PREFIX + "faults", self.set_faults)
        router.add_post(PREFIX + "down", self.set_down)
        router.add_get(PREFIX + "customers/{client_id}/counts", self.counts)
        router.add_get(PREFIX + "requests", self.requests)
        router.add_delete(PREFIX + "requests", self.reset_requests)
        router.add_post(PREFIX + "customers/{client_id}/transactions", self.add_transactions)

    def _faults_json(self) -> web.Response:
        return json_response({**dataclasses.asdict(self.state.faults), "down": self.state.down})

    async def get_faults(self, request: web.Request) -> web.Response:
        return self._faults_json()

    async def set_faults(self, request: web.Request) -> web.Response:
        """Partial update of latency_ms, error_rate, rate_limit_rate, sticky_awaiting, payment_delay_ms."""
        changes = await read_json(request)
        unknown = sorted(set(changes) - set(FAULT_KNOBS))
        if unknown:
            raise ApiError(422, f"unknown fault knobs {unknown}: expected some of {list(FAULT_KNOBS)}")
        try:
            self.state.faults = dataclasses.replace(self.state.faults, **changes)
        except ValueError as exc:
            raise ApiError(422, str(exc)) from None
        return self._faults_json()

    async def set_down(self, request: web.Request) -> web.Response:
        """`{"down": true}`: every API call of this bank answers 503 until `{"down": false}`."""
        body = Fields(await read_json(request), ("body",))
        down = body.flag("down", required=True)
        body.done()
        self.state.down = down
        return self._faults_json()

    async def requests(self, request: web.Request) -> web.Response:
        """API requests that reached this bank (every answer counts, faults included), by path template."""
        counted = self.state.requests
        return json_response({"total": sum(counted.values()), "by_path": dict(sorted(counted.items()))})

    async def reset_requests(self, request: web.Request) -> web.Response:
        self.state.requests.clear()
        return json_response({"total": 0, "by_path": {}})

    async def counts(self, request: web.Request) -> web.Response:
        customer = self.state.customer(request.match_info["client_id"])
        return json_response(self.state.counts(customer))

    async def add_transactions(self, request: web.Request) -> web.Response:
        """`{"account_id", "count"}`: append `count` new transactions dated now; returns them."""
        customer = self.state.customer(request.match_info["client_id"])
        body = Fields(await read_json(request), ("body",))
        account_id = body.text("account_id", required=True) or ""
        count = body.integer("count", default=1, ge=1, le=1000)
        body.done()
        account = customer.account(account_id)
        if account is None:
            raise ApiError(404, "Account not found")
        added = self.state.append_transactions(customer, account, count)
        return json_response({"data": {"transaction": [tx.to_json() for tx in reversed(added)]}})
