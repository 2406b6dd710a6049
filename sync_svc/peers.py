"""sync_svc's client of its peer consent_svc: the user's approved consents, as the workers and the service
need them (`sync_svc.worker.Consents`, the `connected_banks` of `sync_svc.service`)."""

from __future__ import annotations

from finpulse.consent.v1 import consent_pb2, consent_pb2_grpc

from svclib.clients import ServiceClients
from sync_svc.worker import JobConsents


class ConsentAdapter:
    """consent_svc as the sync domain needs it."""

    def __init__(self, clients: ServiceClients):
        self.consent = clients.stub("consent", consent_pb2_grpc.ConsentServiceStub, consent_pb2.DESCRIPTOR)

    async def _approved(self, user_id: str, bank_id: str | None = None):
        request = consent_pb2.ListApprovedConsentsRequest(user_id=user_id)
        if bank_id:
            request.bank_id = bank_id
        return (await self.consent.ListApprovedConsents(request)).consents

    async def connected_banks(self, user_id: str) -> set[str]:
        return {c.bank_id for c in await self._approved(user_id) if c.kind == consent_pb2.CONSENT_KIND_ACCOUNTS}

    async def for_bank(self, user_id: str, bank_id: str) -> JobConsents:
        by_kind = {c.kind: c.consent_id for c in await self._approved(user_id, bank_id)}
        return JobConsents(
            by_kind.get(consent_pb2.CONSENT_KIND_ACCOUNTS), by_kind.get(consent_pb2.CONSENT_KIND_PRODUCTS)
        )
