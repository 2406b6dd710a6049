"""dashboard_svc's wiring: storage, the clients of its peers, the service and the servicer, on the runtime."""

from __future__ import annotations

from finpulse.dashboard.v1 import dashboard_pb2 as pb
from finpulse.dashboard.v1 import dashboard_pb2_grpc as pb_grpc

from dashboard_svc.applications import RefinanceApplications
from dashboard_svc.model import DashboardConfig
from dashboard_svc.peers import SyncData
from dashboard_svc.service import DashboardService
from dashboard_svc.servicer import DashboardServicer
from dashboard_svc.storage import DashboardStorage
from svclib.runtime import Runtime
from svclib.server import GrpcServer


async def setup(runtime: Runtime, server: GrpcServer) -> None:
    config: DashboardConfig = runtime.section  # dashboard_svc.settings
    storage = DashboardStorage(runtime.pool)
    service = DashboardService(storage, runtime.cache, SyncData(runtime.clients, runtime.cache), config)

    async def current_offers(user_id: str) -> list[dict]:
        return (await service.dashboard(user_id, False)).part("refinance")["offers"]

    server.add(
        pb_grpc.add_DashboardServiceServicer_to_server,
        DashboardServicer(service, RefinanceApplications(storage, current_offers)),
        pb.DESCRIPTOR.services_by_name["DashboardService"].full_name,
    )
