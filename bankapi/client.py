"""`BankClient`: the typed async client of one bank's Open Banking API (see docs/bank-api.md), and
`BankClients`, the configured banks' clients by bank id.

A `BankClient` is its endpoints over one transport: `bankapi.transport` (`BankTransport`: the HTTP
exchange, token and its refresh, retries, circuit breaker, rate-cap hook, call records, typed
errors; its docstring states the call policy), `bankapi.consents` (account, product-agreement and
payment consents), `bankapi.data` (accounts, balances, transactions, product agreements, the product
catalogue) and `bankapi.payments` (payments). Banks and team credentials are the caller's
(`bankapi.config`), as are the call options.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from .config import BankEndpoint, TeamCredentials
from .consents import DEFAULT_ACCOUNT_PERMISSIONS, DEFAULT_PRODUCT_TYPES, PAYMENT_CONSENT_FORMS, ConsentEndpoints
from .data import MAX_PAGE_LIMIT, MAX_PAGES, DataEndpoints
from .errors import UnknownBank
from .payments import ACCOUNT_SCHEME, PaymentEndpoints, format_amount
from .tokens import TokenStore
from .transport import DEFAULT_TOKEN_LIFETIME, CallRecord, OnCall

__all__ = [
    "ACCOUNT_SCHEME",
    "DEFAULT_ACCOUNT_PERMISSIONS",
    "DEFAULT_PRODUCT_TYPES",
    "DEFAULT_TOKEN_LIFETIME",
    "MAX_PAGES",
    "MAX_PAGE_LIMIT",
    "PAYMENT_CONSENT_FORMS",
    "BankClient",
    "BankClients",
    "BankEndpoint",
    "CallRecord",
    "OnCall",
    "TeamCredentials",
    "format_amount",
]


class BankClient(ConsentEndpoints, DataEndpoints, PaymentEndpoints):
    """Typed async client of one bank: `BankClient(bank, team, token_store=…, timeout=…, …)` (options:
    `BankTransport`). See `bankapi.transport` for the call policy.

    `client_id` arguments are the bank customer's id (e.g. "team200-1"); the team code
    (`team.client_id`) goes into `X-Requesting-Bank` and `requesting_bank`.
    """


class BankClients:
    """The configured banks' clients, by bank id: `clients.get("vbank")`. Clients are created lazily
    and share the token store and call options; `close()` closes them all."""

    def __init__(
        self,
        banks: Iterable[BankEndpoint],
        team: TeamCredentials,
        *,
        token_store: TokenStore | None = None,
        **client_options: Any,
    ):
        """`client_options`: `BankClient`'s keyword options (`timeout`, `max_retries`, `backoff_base`,
        `on_call`, `request_id_provider`, `throttle`, `breaker_store`, …), the same for every bank."""
        self.team = team
        self.banks: dict[str, BankEndpoint] = {b.id: b for b in banks}
        self._token_store = token_store
        self._options = client_options
        self._clients: dict[str, BankClient] = {}

    @property
    def bank_ids(self) -> list[str]:
        return list(self.banks)

    def __contains__(self, bank_id: object) -> bool:
        return bank_id in self.banks

    def get(self, bank_id: str) -> BankClient:
        """The client of `bank_id`; `UnknownBank` if it is not configured or has no base URL."""
        client = self._clients.get(bank_id)
        if client is None:
            bank = self.banks.get(bank_id)
            if bank is None:
                raise UnknownBank(
                    f"unknown bank {bank_id!r} (configured: {', '.join(self.banks) or 'none'})", bank_id=bank_id
                )
            client = self._clients[bank_id] = BankClient(
                bank, self.team, token_store=self._token_store, **self._options
            )
        return client

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)

    async def __aenter__(self) -> BankClients:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
