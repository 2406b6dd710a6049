"""onboarding_svc's clients of its peers, as the domain declares them (`onboarding_svc.model`): consent_svc
(the user's consents), sync_svc (queueing syncs) and dashboard_svc (dropping a cached dashboard)."""

from __future__ import annotations

from finpulse.consent.v1 import consent_pb2, consent_pb2_grpc
from finpulse.dashboard.v1 import dashboard_pb2, dashboard_pb2_grpc
from finpulse.sync.v1 import sync_pb2, sync_pb2_grpc

from onboarding_svc.model import ConsentInfo, QueuedSync
from svclib.clients import ServiceClients

_KIND_NAMES = {
    consent_pb2.CONSENT_KIND_ACCOUNTS: "accounts",
    consent_pb2.CONSENT_KIND_PRODUCTS: "products",
    consent_pb2.CONSENT_KIND_PAYMENTS: "payments",
}


class ConsentClient:
    def __init__(self, clients: ServiceClients):
        self.consent = clients.stub("consent", consent_pb2_grpc.ConsentServiceStub, consent_pb2.DESCRIPTOR)

    async def list_user_consents(self, user_id: str) -> list[ConsentInfo]:
        reply = await self.consent.ListUserConsents(consent_pb2.ListUserConsentsRequest(user_id=user_id))
        return [
            ConsentInfo(
                c.bank_id,
                _KIND_NAMES.get(c.kind, "unknown"),
                consent_pb2.ConsentStatus.Name(c.status).removeprefix("CONSENT_STATUS_"),
            )
            for c in reply.consents
        ]


class SyncClient:
    def __init__(self, clients: ServiceClients):
        self.sync = clients.stub("sync", sync_pb2_grpc.SyncServiceStub, sync_pb2.DESCRIPTOR)

    async def start_sync(
        self, user_id: str, bank_ids: list[str], reason: str, skip_synced: bool = False
    ) -> list[QueuedSync]:
        reply = await self.sync.StartSync(
            sync_pb2.StartSyncRequest(user_id=user_id, bank_ids=bank_ids, reason=reason, skip_synced=skip_synced)
        )
        return [
            QueuedSync(j.bank_id, j.job_id, sync_pb2.JobState.Name(j.state).removeprefix("JOB_STATE_").lower())
            for j in reply.jobs
        ]


class DashboardClient:
    def __init__(self, clients: ServiceClients):
        self.dashboard = clients.stub("dashboard", dashboard_pb2_grpc.DashboardServiceStub, dashboard_pb2.DESCRIPTOR)

    async def invalidate(self, user_id: str) -> None:
        await self.dashboard.InvalidateDashboard(dashboard_pb2.InvalidateDashboardRequest(user_id=user_id))
