"""The banks' client (`bankapi`) as the services that call banks build it: the suite's banks, team
credentials and timeouts from `Settings`, bank tokens and circuit breakers in the shared Redis (so every
replica shares one token per bank and one breaker per bank), the request id on every call. `bankapi`
itself reads no settings; this is the one place they are handed to it. Closed with the runtime."""

from __future__ import annotations

from typing import Any

from bankapi.breaker import RedisBreakerStore
from bankapi.client import BankClients
from bankapi.config import BankEndpoint, TeamCredentials
from bankapi.tokens import RedisTokenStore
from svclib.logging import current_request_id
from svclib.runtime import Runtime


def bank_clients(runtime: Runtime, **options: Any) -> BankClients:
    """`BankClients` for every configured bank; `options` (e.g. `on_call`, `throttle`) go to bankapi."""
    settings = runtime.settings
    clients = BankClients(
        [BankEndpoint(b.id, b.base_url, b.approval_mode) for b in settings.banks],
        TeamCredentials(settings.team.client_id, settings.team.client_secret, settings.team.name),
        token_store=RedisTokenStore(runtime.cache.redis, prefix=runtime.cache.key("banktoken", "")),
        timeout=settings.bank_timeout,
        max_retries=settings.bank_max_retries,
        request_id_provider=current_request_id,
        breaker_store=RedisBreakerStore(runtime.cache.redis, prefix=runtime.cache.key("breaker", "")),
        **options,
    )
    runtime.on_close(clients.close)
    return clients
