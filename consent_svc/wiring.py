"""consent_svc's wiring: the bank clients (tokens and circuit breakers in Redis), storage, its client of
sync_svc, the consent and payment services and the servicer, on the runtime."""

from __future__ import annotations

from finpulse.consent.v1 import consent_pb2 as pb
from finpulse.consent.v1 import consent_pb2_grpc as pb_grpc

from consent_svc import metrics
from consent_svc.payment_storage import PaymentStorage
from consent_svc.payments import PaymentService
from consent_svc.peers import SyncPaymentData
from consent_svc.service import ConsentService
from consent_svc.servicer import ConsentServicer
from consent_svc.storage import ConsentStorage
from svclib.banks import bank_clients
from svclib.resilience import run_forever
from svclib.runtime import Runtime
from svclib.server import GrpcServer


async def setup(runtime: Runtime, server: GrpcServer) -> None:
    clients = bank_clients(runtime)  # tokens and circuit breakers in Redis (svclib.banks)
    storage = ConsentStorage(runtime.pool)
    sync = SyncPaymentData(runtime.clients)
    service = ConsentService(storage, runtime.settings.banks, clients, sync)
    payment_storage = PaymentStorage(runtime.pool)
    payments = PaymentService(payment_storage, runtime.settings.banks, clients, storage, sync)
    server.add(
        pb_grpc.add_ConsentServiceServicer_to_server,
        ConsentServicer(service, payments),
        pb.DESCRIPTOR.services_by_name["ConsentService"].full_name,
    )
    # Payments in the metrics: each status reached, and the open ones with the oldest's age every few seconds.
    bank_ids = [bank.id for bank in runtime.settings.banks]
    metrics.init(bank_ids)
    runtime.background(
        run_forever(
            "open-payments", lambda: metrics.watch_open_payments(bank_ids, payment_storage.open_payments)
        ),  # no health: only metrics
        "open-payments",
    )
