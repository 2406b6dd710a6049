"""gRPC transport of consent_svc: proto <-> domain, nothing else."""
from __future__ import annotations

import datetime as dt

from finpulse.consent.v1 import consent_pb2 as pb
from finpulse.consent.v1 import consent_pb2_grpc as pb_grpc

from bankapi.client import BankClients
from bankapi.tokens import RedisTokenStore
from svclib.protoconv import optional, set_timestamp
from svclib.runtime import Runtime
from svclib.server import GrpcServer

from consent_svc.service import ACCOUNTS, PAYMENTS, PRODUCTS, BankRequest, ConsentService, Outcome, client_status, \
    overall_status
from consent_svc.storage import ConsentStorage, StoredConsent

_KINDS = {ACCOUNTS: pb.CONSENT_KIND_ACCOUNTS, PRODUCTS: pb.CONSENT_KIND_PRODUCTS, PAYMENTS: pb.CONSENT_KIND_PAYMENTS}
_FIELDS = {ACCOUNTS: "account_consent", PRODUCTS: "product_consent", PAYMENTS: "payment_consent"}


def _status_enum(status: str) -> int:
    return pb.ConsentStatus.Value(f"CONSENT_STATUS_{status}")


def _outcome_pb(outcome: Outcome) -> pb.ConsentOutcome:
    msg = pb.ConsentOutcome(status=outcome.status, reused=outcome.reused)
    if outcome.error:
        msg.error_message = outcome.error
        return msg
    consent = outcome.consent
    msg.raw_status = consent.status
    if consent.status == "APPROVED":
        msg.consent_id = consent.consent_id or ""
        if not outcome.reused and consent.request_id:
            msg.request_id = consent.request_id
    else:  # still waiting: the request id and where the customer approves it
        if consent.request_id:
            msg.request_id = consent.request_id
        if consent.approval_url:
            msg.approval_url = consent.approval_url
    set_timestamp(msg, "expires_at", consent.expires_at)
    return msg


def _state_pb(consent: StoredConsent) -> pb.ConsentState:
    msg = pb.ConsentState(status=client_status(consent.status), raw_status=consent.status,
                          permissions=list(consent.permissions))
    # As the seed did, a pending consent shows its request id where the consent id would be.
    msg.consent_id = consent.consent_id or consent.request_id or ""
    if consent.request_id:
        msg.request_id = consent.request_id
    if consent.approval_url and consent.status != "APPROVED":
        msg.approval_url = consent.approval_url
    if consent.bank_status:
        msg.bank_status = consent.bank_status
    set_timestamp(msg, "checked_at", consent.checked_at)
    set_timestamp(msg, "expires_at", consent.expires_at)
    return msg


def _consent_pb(consent: StoredConsent) -> pb.Consent:
    msg = pb.Consent(user_id=consent.user_id, bank_id=consent.bank_id, kind=_KINDS[consent.kind],
                     status=_status_enum(consent.status), permissions=list(consent.permissions))
    if consent.consent_id:
        msg.consent_id = consent.consent_id
    if consent.request_id:
        msg.request_id = consent.request_id
    set_timestamp(msg, "expires_at", consent.expires_at)
    set_timestamp(msg, "updated_at", consent.updated_at)
    return msg


class ConsentServicer(pb_grpc.ConsentServiceServicer):
    def __init__(self, service: ConsentService):
        self.service = service

    async def CreateConsents(self, request, context):
        requests = [BankRequest(b.bank_id, b.consents.account, b.consents.product, b.consents.payment)
                    for b in request.banks]
        results = await self.service.create(request.user_id, requests)
        response = pb.CreateConsentsResponse(user_id=request.user_id, overall_status=overall_status(results))
        for result in results:
            item = response.results.add(bank_id=result.bank.id, bank_name=result.bank.name)
            for kind, outcome in result.outcomes.items():
                getattr(item, _FIELDS[kind]).CopyFrom(_outcome_pb(outcome))
        return response

    async def GetConsentStatus(self, request, context):
        grouped = await self.service.status(request.user_id)
        response = pb.GetConsentStatusResponse(user_id=request.user_id)
        for bank_id, kinds in grouped:
            item = response.results.add(bank_id=bank_id, bank_name=self.service.bank_name(bank_id))
            for kind, consent in kinds.items():
                getattr(item, _FIELDS[kind]).CopyFrom(_state_pb(consent))
        set_timestamp(response, "checked_at", dt.datetime.now(dt.timezone.utc))
        return response

    async def ConsentCallback(self, request, context):
        consent = await self.service.callback(request.user_id, request.bank_id, request.request_id,
                                              request.consent_id)
        return pb.ConsentCallbackResponse(user_id=consent.user_id, bank_id=consent.bank_id,
                                          kind=_KINDS[consent.kind], consent_id=consent.consent_id or "",
                                          status=consent.status)

    async def RevokeConsent(self, request, context):
        consent = await self.service.revoke(request.user_id, request.consent_id)
        return pb.RevokeConsentResponse(consent_id=request.consent_id, bank_id=consent.bank_id,
                                        kind=_KINDS[consent.kind], status=consent.status)

    async def ListApprovedConsents(self, request, context):
        consents = await self.service.approved(request.user_id, optional(request, "bank_id"))
        return pb.ListApprovedConsentsResponse(consents=[_consent_pb(c) for c in consents])

    async def ListUserConsents(self, request, context):
        consents = await self.service.latest(request.user_id)
        return pb.ListUserConsentsResponse(consents=[_consent_pb(c) for c in consents])


async def setup(runtime: Runtime, server: GrpcServer) -> None:
    tokens = RedisTokenStore(runtime.cache.redis, prefix=runtime.cache.key("banktoken", ""))
    clients = BankClients(runtime.settings, token_store=tokens)
    runtime.on_close(clients.close)
    service = ConsentService(ConsentStorage(runtime.pool), runtime.settings.banks, clients)
    server.add(pb_grpc.add_ConsentServiceServicer_to_server, ConsentServicer(service),
               pb.DESCRIPTOR.services_by_name["ConsentService"].full_name)
