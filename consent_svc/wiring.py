"""consent_svc's wiring: the bank clients (tokens and circuit breakers in Redis), storage, its client of
sync_svc, the consent and payment services and the servicer, on the runtime."""

from __future__ import annotations

from finpulse.consent.v1 import consent_pb2 as pb
from finpulse.consent.v1 import consent_pb2_grpc as pb_grpc

from bankapi.breaker import RedisBreakerStore
from bankapi.client import BankClients
from bankapi.config import BankEndpoint, TeamCredentials
from bankapi.tokens import RedisTokenStore
from consent_svc.payment_storage import PaymentStorage
from consent_svc.payments import PaymentService
from consent_svc.peers import SyncPaymentData
from consent_svc.service import ConsentService
from consent_svc.servicer import ConsentServicer
from consent_svc.storage import ConsentStorage
from svclib.logging import current_request_id
from svclib.runtime import Runtime
from svclib.server import GrpcServer


async def setup(runtime: Runtime, server: GrpcServer) -> None:
    tokens = RedisTokenStore(runtime.cache.redis, prefix=runtime.cache.key("banktoken", ""))
    settings = runtime.settings  # bankapi reads no settings: its banks, team and options are given here
    clients = BankClients(
        [BankEndpoint(b.id, b.base_url, b.approval_mode) for b in settings.banks],
        TeamCredentials(settings.team.client_id, settings.team.client_secret, settings.team.name),
        token_store=tokens,
        timeout=settings.bank_timeout,
        max_retries=settings.bank_max_retries,
        request_id_provider=current_request_id,
        breaker_store=RedisBreakerStore(runtime.cache.redis, prefix=runtime.cache.key("breaker", "")),
    )
    runtime.on_close(clients.close)
    storage = ConsentStorage(runtime.pool)
    sync = SyncPaymentData(runtime.clients)
    service = ConsentService(storage, runtime.settings.banks, clients, sync)
    payments = PaymentService(PaymentStorage(runtime.pool), runtime.settings.banks, clients, storage, sync)
    server.add(
        pb_grpc.add_ConsentServiceServicer_to_server,
        ConsentServicer(service, payments),
        pb.DESCRIPTOR.services_by_name["ConsentService"].full_name,
    )
