"""onboarding_svc's wiring: storage, the clients of its peers, the service and the servicer, on the runtime."""

from __future__ import annotations

from finpulse.onboarding.v1 import onboarding_pb2 as pb
from finpulse.onboarding.v1 import onboarding_pb2_grpc as pb_grpc

from onboarding_svc.peers import ConsentClient, DashboardClient, SyncClient
from onboarding_svc.service import OnboardingService
from onboarding_svc.servicer import OnboardingServicer
from onboarding_svc.storage import OnboardingStorage
from svclib.runtime import Runtime
from svclib.server import GrpcServer


async def setup(runtime: Runtime, server: GrpcServer) -> None:
    service = OnboardingService(
        OnboardingStorage(runtime.pool),
        ConsentClient(runtime.clients),
        SyncClient(runtime.clients),
        DashboardClient(runtime.clients),
    )
    server.add(
        pb_grpc.add_OnboardingServiceServicer_to_server,
        OnboardingServicer(service),
        pb.DESCRIPTOR.services_by_name["OnboardingService"].full_name,
    )
