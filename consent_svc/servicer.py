"""gRPC transport of consent_svc: proto <-> domain, nothing else."""
from __future__ import annotations

import datetime as dt
from decimal import Decimal

from finpulse.consent.v1 import consent_pb2 as pb
from finpulse.consent.v1 import consent_pb2_grpc as pb_grpc
from finpulse.sync.v1 import sync_pb2

from bankapi.client import BankClients
from bankapi.breaker import RedisBreakerStore
from bankapi.tokens import RedisTokenStore
from dashboard_svc.model import Repayments
from svclib.clients import ServiceClients
from svclib.protoconv import optional, set_timestamp
from svclib.runtime import Runtime
from svclib.server import GrpcServer
from svclib.validation import format_amount

from consent_svc.payment_storage import PaymentEventRow, PaymentStorage, StoredPayment
from consent_svc.payments import DebtorAccount, Loan, PaymentService, RepaymentRequest, \
    TransferRequest
from consent_svc.service import ACCOUNTS, PAYMENTS, PRODUCTS, BankRequest, ConsentService, Outcome, client_status, \
    consent_message, overall_status
from consent_svc.storage import ConsentStorage, StoredConsent

_KINDS = {ACCOUNTS: pb.CONSENT_KIND_ACCOUNTS, PRODUCTS: pb.CONSENT_KIND_PRODUCTS, PAYMENTS: pb.CONSENT_KIND_PAYMENTS}
_FIELDS = {ACCOUNTS: "account_consent", PRODUCTS: "product_consent", PAYMENTS: "payment_consent"}


def _status_enum(status: str) -> int:
    return pb.ConsentStatus.Value(f"CONSENT_STATUS_{status}")


def _outcome_pb(outcome: Outcome) -> pb.ConsentOutcome:
    msg = pb.ConsentOutcome(status=outcome.status, reused=outcome.reused)
    message = outcome.message
    if message:
        msg.error_message = message
    if outcome.error:
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
    if consent.consent_id or consent.request_id:
        msg.consent_id = consent.consent_id or consent.request_id
    message = consent_message(consent)
    if message:
        msg.error_message = message
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


_PAYMENT_KINDS = {"transfer": pb.PAYMENT_KIND_TRANSFER, "loan_repayment": pb.PAYMENT_KIND_LOAN_REPAYMENT}


def _payment_status(status: str | None) -> int:
    return pb.PaymentStatus.Value(f"PAYMENT_STATUS_{status}") if status else pb.PAYMENT_STATUS_UNSPECIFIED


def _payment_pb(p: StoredPayment) -> pb.Payment:
    msg = pb.Payment(payment_id=p.payment_id, user_id=p.user_id, kind=_PAYMENT_KINDS[p.kind],
                     status=_payment_status(p.status), idempotency_key=p.idempotency_key, bank_id=p.bank_id,
                     account_id=p.account_id, debtor_account=p.debtor_account, creditor_account=p.creditor_account,
                     amount=format_amount(p.amount), currency=p.currency)
    for field in ("creditor_bank_id", "creditor_name", "comment", "agreement_id", "bank_payment_id", "bank_status",
                  "consent_id", "error_code", "error_message"):
        value = getattr(p, field)
        if value is not None:
            setattr(msg, field, value)
    if p.approval_url and p.status == "AWAITING_AUTHORIZATION":
        msg.approval_url = p.approval_url
    set_timestamp(msg, "created_at", p.created_at)
    set_timestamp(msg, "updated_at", p.updated_at)
    set_timestamp(msg, "completed_at", p.completed_at)
    return msg


def _event_pb(e: PaymentEventRow) -> pb.PaymentEvent:
    msg = pb.PaymentEvent(old_status=_payment_status(e.old_status), new_status=_payment_status(e.new_status),
                          source=e.source)
    if e.message is not None:
        msg.message = e.message
    if e.bank_status is not None:
        msg.bank_status = e.bank_status
    set_timestamp(msg, "at", e.created_at)
    return msg


def _dec(text: str) -> Decimal:
    return Decimal(text) if text else Decimal(0)


class SyncPaymentData:
    """sync_svc as consents and payments need it: stored accounts and loans, loan repayments, and
    queueing a sync (the `SyncQueue` of consent_svc.service and the `PaymentData` of payments)."""

    START_SYNC_TIMEOUT = 5.0  # seconds: queueing a sync is best effort, never worth the whole deadline

    def __init__(self, clients: ServiceClients):
        self.clients = clients

    async def account(self, user_id: str, bank_id: str, account_id: str) -> DebtorAccount | None:
        reply = await self.clients.sync.ListAccounts(sync_pb2.ListAccountsRequest(user_id=user_id, bank_id=bank_id))
        for a in reply.accounts:
            if a.bank_id == bank_id and a.account_id == account_id:
                return DebtorAccount(a.bank_id, a.account_id, optional(a, "account_number"), a.currency or "RUB",
                                     a.account_sub_type)
        return None

    async def loans(self, user_id: str) -> list[Loan]:
        reply = await self.clients.sync.ListCredits(sync_pb2.ListCreditsRequest(user_id=user_id))
        return [Loan(c.bank_id, c.agreement_id, c.product_type, c.status, optional(c, "account_number"))
                for c in reply.credits]

    async def repayments(self, user_id: str) -> list[Repayments]:
        reply = await self.clients.sync.GetAggregates(sync_pb2.GetAggregatesRequest(user_id=user_id))
        return [Repayments(bank_id=r.bank_id, agreement_id=r.agreement_id, count=r.count, total=_dec(r.total),
                           average=_dec(r.average), currency=r.currency or "RUB",
                           last_paid_at=r.last_paid_at.ToDatetime(dt.timezone.utc), typical_day=r.typical_day,
                           months=tuple(dt.date.fromisoformat(m) for m in r.months_paid))
                for r in reply.loan_repayments]

    async def start_sync(self, user_id: str, bank_ids: list[str], reason: str, *, after_change: bool = True) -> None:
        """A sync of those banks; with `after_change` (after a payment, a newly approved product
        consent) run again after one already running, which read before the change."""
        await self.clients.sync.StartSync(sync_pb2.StartSyncRequest(user_id=user_id, bank_ids=bank_ids, reason=reason,
                                                                    after_change=after_change),
                                          timeout=self.START_SYNC_TIMEOUT)


class ConsentServicer(pb_grpc.ConsentServiceServicer):
    def __init__(self, service: ConsentService, payments: PaymentService):
        self.service = service
        self.payments = payments

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

    async def CreatePayment(self, request, context):
        result = await self.payments.create_payment(request.user_id, request.idempotency_key, TransferRequest(
            bank_id=request.bank_id, account_id=request.account_id, creditor_account=request.creditor_account,
            amount=request.amount, creditor_bank_id=request.creditor_bank_id, creditor_name=request.creditor_name,
            currency=request.currency, comment=request.comment))
        return pb.CreatePaymentResponse(payment=_payment_pb(result.payment), replayed=result.replayed)

    async def RepayLoan(self, request, context):
        result = await self.payments.repay_loan(request.user_id, request.idempotency_key, RepaymentRequest(
            agreement_id=request.agreement_id, bank_id=request.bank_id, account_id=request.account_id,
            amount=request.amount, loan_bank_id=request.loan_bank_id, comment=request.comment))
        response = pb.RepayLoanResponse(payment=_payment_pb(result.payment), replayed=result.replayed,
                                        amount_source=result.payment.amount_source)
        if result.payment.amount_note:
            response.amount_note = result.payment.amount_note
        return response

    async def GetPayment(self, request, context):
        payment, events = await self.payments.get(request.user_id, request.payment_id)
        return pb.GetPaymentResponse(payment=_payment_pb(payment), events=[_event_pb(e) for e in events])

    async def ListPayments(self, request, context):
        payments, token = await self.payments.list(request.user_id, request.page_size, request.page_token)
        return pb.ListPaymentsResponse(payments=[_payment_pb(p) for p in payments], next_page_token=token)


async def setup(runtime: Runtime, server: GrpcServer) -> None:
    tokens = RedisTokenStore(runtime.cache.redis, prefix=runtime.cache.key("banktoken", ""))
    clients = BankClients(runtime.settings, token_store=tokens,
                          breaker_store=RedisBreakerStore(runtime.cache.redis, prefix=runtime.cache.key("breaker", "")))
    runtime.on_close(clients.close)
    storage = ConsentStorage(runtime.pool)
    sync = SyncPaymentData(runtime.clients)
    service = ConsentService(storage, runtime.settings.banks, clients, sync)
    payments = PaymentService(PaymentStorage(runtime.pool), runtime.settings.banks, clients, storage, sync)
    server.add(pb_grpc.add_ConsentServiceServicer_to_server, ConsentServicer(service, payments),
               pb.DESCRIPTOR.services_by_name["ConsentService"].full_name)
