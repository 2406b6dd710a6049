"""gRPC transport of sync_svc: proto <-> domain, nothing else."""
from __future__ import annotations

from finpulse.consent.v1 import consent_pb2
from finpulse.sync.v1 import sync_pb2 as pb
from finpulse.sync.v1 import sync_pb2_grpc as pb_grpc

from svclib.protoconv import optional, set_timestamp
from svclib.runtime import Runtime
from svclib.server import GrpcServer

from sync_svc.service import SyncService
from sync_svc.storage import SyncStorage

_JOB_STATES = {
    "queued": pb.JOB_STATE_QUEUED, "running": pb.JOB_STATE_RUNNING, "succeeded": pb.JOB_STATE_SUCCEEDED,
    "failed": pb.JOB_STATE_FAILED, "needs_reconsent": pb.JOB_STATE_NEEDS_RECONSENT,
}


class SyncServicer(pb_grpc.SyncServiceServicer):
    def __init__(self, service: SyncService):
        self.service = service

    async def ListBanks(self, request, context):
        listings = await self.service.list_banks(optional(request, "user_id"))
        response = pb.ListBanksResponse()
        for item in listings:
            bank = response.banks.add(id=item.bank.id, name=item.bank.name, connected=item.connected,
                                      approval_mode=item.bank.approval_mode)
            if item.bank.base_url:
                bank.baseUrl = item.bank.base_url
                bank.status = "configured"
            else:
                bank.status = "missing_url"
                bank.error = "Bank endpoint URL is not configured."
        return response

    async def StartSync(self, request, context):
        jobs = await self.service.start_sync(request.user_id, list(request.bank_ids), request.reason)
        response = pb.StartSyncResponse(user_id=request.user_id)
        for job in jobs:
            ref = response.jobs.add(bank_id=job.bank_id, job_id=job.job_id, state=_JOB_STATES[job.state],
                                    joined=job.joined)
            set_timestamp(ref, "created_at", job.created_at)
        return response


def consent_connected_banks(runtime: Runtime):
    """Connected banks of a user: where consent_svc holds an approved account consent."""

    async def connected(user_id: str) -> set[str]:
        reply = await runtime.clients.consent.ListApprovedConsents(
            consent_pb2.ListApprovedConsentsRequest(user_id=user_id))
        return {c.bank_id for c in reply.consents if c.kind == consent_pb2.CONSENT_KIND_ACCOUNTS}

    return connected


async def setup(runtime: Runtime, server: GrpcServer) -> None:
    service = SyncService(SyncStorage(runtime.pool), runtime.settings.banks, consent_connected_banks(runtime))
    server.add(pb_grpc.add_SyncServiceServicer_to_server, SyncServicer(service),
               pb.DESCRIPTOR.services_by_name["SyncService"].full_name)
