"""sync_svc's wiring: storage, the banks' clients, the client of its peer, the service, the servicer and
the workers with their NOTIFY listener, on the runtime."""

from __future__ import annotations

from finpulse.sync.v1 import sync_pb2 as pb
from finpulse.sync.v1 import sync_pb2_grpc as pb_grpc

from svclib.banks import bank_clients
from svclib.ratelimit import RateLimiter
from svclib.resilience import Listener, run_forever
from svclib.runtime import Runtime
from svclib.server import GrpcServer
from sync_svc import metrics
from sync_svc.bank_storage import BankDataStorage
from sync_svc.catalogue import Catalogues
from sync_svc.catalogue_storage import CatalogueStorage
from sync_svc.peers import ConsentAdapter
from sync_svc.service import SyncService
from sync_svc.servicer import SyncServicer
from sync_svc.settings import SyncSettings
from sync_svc.storage import JobStorage
from sync_svc.worker import SyncWorkers, WorkerConfig, record_call


async def setup(runtime: Runtime, server: GrpcServer) -> None:
    settings = runtime.settings
    own: SyncSettings = runtime.section  # sync_svc.settings
    consents = ConsentAdapter(runtime.clients)
    data = BankDataStorage(runtime.pool)
    jobs = JobStorage(runtime.pool)
    service = SyncService(
        jobs,
        data,
        runtime.cache,
        settings.banks,
        consents.connected_banks,
        bootstrap_wait=max(1.0, settings.rpc_timeout - 3),
    )
    limiter = RateLimiter(runtime.cache.redis, own.bank_rate_limit, burst=5, prefix=runtime.cache.key("rl", ""))
    # tokens and circuit breakers in Redis (svclib.banks); every bank call logged and rate-capped per bank
    banks = bank_clients(runtime, on_call=record_call, throttle=lambda bank_id: limiter.acquire(f"bank:{bank_id}"))
    catalogues = Catalogues(
        CatalogueStorage(runtime.pool), settings.banks, lambda bank_id: banks.get(bank_id).get_products()
    )
    runtime.on_close(catalogues.close)
    server.add(
        pb_grpc.add_SyncServiceServicer_to_server,
        SyncServicer(service, catalogues),
        pb.DESCRIPTOR.services_by_name["SyncService"].full_name,
    )
    workers = SyncWorkers(
        jobs,
        data,
        banks,
        consents,
        runtime.cache,
        WorkerConfig(workers=own.workers, concurrency=own.concurrency, lease_seconds=own.lease),
    )
    # New jobs wake the workers at once (NOTIFY sync_jobs); the listener reconnects after a database
    # restart, and the workers poll meanwhile (svclib.resilience.Listener).
    listener = Listener(
        runtime.database_url,
        "sync_jobs",
        workers.wake,
        health=runtime.health,
        server_settings={"application_name": "finpulse-sync-listener"},
    )
    runtime.on_close(listener.close)
    runtime.background(listener.run(), "sync-listener")
    runtime.background(workers.run(runtime.health), "sync-workers")
    # The backlog (queued and running jobs, the oldest due job's wait) in the metrics, every few seconds.
    bank_ids = [bank.id for bank in settings.banks]
    metrics.init(bank_ids)
    runtime.background(
        run_forever("sync-backlog", lambda: metrics.watch_backlog(bank_ids, jobs.backlog)),  # no health: only metrics
        "sync-backlog",
    )
