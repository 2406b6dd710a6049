"""gRPC transport of consent_svc: proto <-> domain, nothing else (its client of sync_svc is in
`consent_svc.peers`, its setup in `consent_svc.wiring`)."""

from __future__ import annotations

import datetime as dt

from finpulse.consent.v1 import consent_pb2 as pb
from finpulse.consent.v1 import consent_pb2_grpc as pb_grpc

from consent_svc.model import (
    ACCOUNTS,
    PAYMENTS,
    PRODUCTS,
    BankRequest,
    Outcome,
    client_status,
    consent_message,
    overall_status,
)
from consent_svc.payment_requests import RepaymentRequest, TransferRequest
from consent_svc.payment_storage import PaymentEventRow, StoredPayment
from consent_svc.payments import PaymentService
from consent_svc.service import ConsentService
from consent_svc.storage import StoredConsent
from svclib.protoconv import optional, set_timestamp
from svclib.validation import format_amount

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
    msg = pb.ConsentState(
        status=client_status(consent.status), raw_status=consent.status, permissions=list(consent.permissions)
    )
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
    msg = pb.Consent(
        user_id=consent.user_id,
        bank_id=consent.bank_id,
        kind=_KINDS[consent.kind],
        status=_status_enum(consent.status),
        permissions=list(consent.permissions),
    )
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
    msg = pb.Payment(
        payment_id=p.payment_id,
        user_id=p.user_id,
        kind=_PAYMENT_KINDS[p.kind],
        status=_payment_status(p.status),
        idempotency_key=p.idempotency_key,
        bank_id=p.bank_id,
        account_id=p.account_id,
        debtor_account=p.debtor_account,
        creditor_account=p.creditor_account,
        amount=format_amount(p.amount),
        currency=p.currency,
    )
    for field in (
        "creditor_bank_id",
        "creditor_name",
        "comment",
        "agreement_id",
        "bank_payment_id",
        "bank_status",
        "consent_id",
        "error_code",
        "error_message",
    ):
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
    msg = pb.PaymentEvent(
        old_status=_payment_status(e.old_status), new_status=_payment_status(e.new_status), source=e.source
    )
    if e.message is not None:
        msg.message = e.message
    if e.bank_status is not None:
        msg.bank_status = e.bank_status
    set_timestamp(msg, "at", e.created_at)
    return msg


class ConsentServicer(pb_grpc.ConsentServiceServicer):
    def __init__(self, service: ConsentService, payments: PaymentService):
        self.service = service
        self.payments = payments

    async def CreateConsents(self, request, context):
        requests = [
            BankRequest(b.bank_id, b.consents.account, b.consents.product, b.consents.payment) for b in request.banks
        ]
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
        set_timestamp(response, "checked_at", dt.datetime.now(dt.UTC))
        return response

    async def ConsentCallback(self, request, context):
        consent = await self.service.callback(request.user_id, request.bank_id, request.request_id, request.consent_id)
        return pb.ConsentCallbackResponse(
            user_id=consent.user_id,
            bank_id=consent.bank_id,
            kind=_KINDS[consent.kind],
            consent_id=consent.consent_id or "",
            status=consent.status,
        )

    async def RevokeConsent(self, request, context):
        consent = await self.service.revoke(request.user_id, request.consent_id)
        return pb.RevokeConsentResponse(
            consent_id=request.consent_id, bank_id=consent.bank_id, kind=_KINDS[consent.kind], status=consent.status
        )

    async def ListApprovedConsents(self, request, context):
        consents = await self.service.approved(request.user_id, optional(request, "bank_id"))
        return pb.ListApprovedConsentsResponse(consents=[_consent_pb(c) for c in consents])

    async def ListUserConsents(self, request, context):
        consents = await self.service.latest(request.user_id)
        return pb.ListUserConsentsResponse(consents=[_consent_pb(c) for c in consents])

    async def CreatePayment(self, request, context):
        result = await self.payments.create_payment(
            request.user_id,
            request.idempotency_key,
            TransferRequest(
                bank_id=request.bank_id,
                account_id=request.account_id,
                creditor_account=request.creditor_account,
                amount=request.amount,
                creditor_bank_id=request.creditor_bank_id,
                creditor_name=request.creditor_name,
                currency=request.currency,
                comment=request.comment,
            ),
        )
        return pb.CreatePaymentResponse(payment=_payment_pb(result.payment), replayed=result.replayed)

    async def RepayLoan(self, request, context):
        result = await self.payments.repay_loan(
            request.user_id,
            request.idempotency_key,
            RepaymentRequest(
                agreement_id=request.agreement_id,
                bank_id=request.bank_id,
                account_id=request.account_id,
                amount=request.amount,
                loan_bank_id=request.loan_bank_id,
                comment=request.comment,
            ),
        )
        response = pb.RepayLoanResponse(
            payment=_payment_pb(result.payment), replayed=result.replayed, amount_source=result.payment.amount_source
        )
        if result.payment.amount_note:
            response.amount_note = result.payment.amount_note
        return response

    async def GetPayment(self, request, context):
        payment, events = await self.payments.get(request.user_id, request.payment_id)
        return pb.GetPaymentResponse(payment=_payment_pb(payment), events=[_event_pb(e) for e in events])

    async def ListPayments(self, request, context):
        payments, token = await self.payments.list(request.user_id, request.page_size, request.page_token)
        return pb.ListPaymentsResponse(payments=[_payment_pb(p) for p in payments], next_page_token=token)
