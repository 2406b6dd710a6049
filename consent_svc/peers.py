"""consent_svc's client of its peer sync_svc: the user's stored accounts and loans, the loans' repayments
(through the shared `finance.protoconv`), and queueing a sync; it is the `SyncQueue` the consent service
declares (`consent_svc.model`) and the `PaymentData` payments declare (`consent_svc.payment_requests`)."""

from __future__ import annotations

from finpulse.sync.v1 import sync_pb2, sync_pb2_grpc

from consent_svc.payment_requests import DebtorAccount, Loan
from finance.loans import Repayments
from finance.protoconv import repayments_from_pb
from svclib.clients import ServiceClients
from svclib.protoconv import optional


class SyncPaymentData:
    """sync_svc as consents and payments need it: stored accounts and loans, loan repayments, and
    queueing a sync (the `SyncQueue` of consent_svc.model and the `PaymentData` of payments)."""

    START_SYNC_TIMEOUT = 5.0  # seconds: queueing a sync is best effort, never worth the whole deadline

    def __init__(self, clients: ServiceClients):
        self.sync = clients.stub("sync", sync_pb2_grpc.SyncServiceStub, sync_pb2.DESCRIPTOR)

    async def account(self, user_id: str, bank_id: str, account_id: str) -> DebtorAccount | None:
        reply = await self.sync.ListAccounts(sync_pb2.ListAccountsRequest(user_id=user_id, bank_id=bank_id))
        for a in reply.accounts:
            if a.bank_id == bank_id and a.account_id == account_id:
                return DebtorAccount(
                    a.bank_id, a.account_id, optional(a, "account_number"), a.currency or "RUB", a.account_sub_type
                )
        return None

    async def loans(self, user_id: str) -> list[Loan]:
        reply = await self.sync.ListCredits(sync_pb2.ListCreditsRequest(user_id=user_id))
        return [
            Loan(c.bank_id, c.agreement_id, c.product_type, c.status, optional(c, "account_number"))
            for c in reply.credits
        ]

    async def repayments(self, user_id: str) -> list[Repayments]:
        reply = await self.sync.GetAggregates(sync_pb2.GetAggregatesRequest(user_id=user_id))
        return [repayments_from_pb(r) for r in reply.loan_repayments]

    async def start_sync(self, user_id: str, bank_ids: list[str], reason: str, *, after_change: bool = True) -> None:
        """A sync of those banks; with `after_change` (after a payment, a newly approved product
        consent) run again after one already running, which read before the change."""
        await self.sync.StartSync(
            sync_pb2.StartSyncRequest(user_id=user_id, bank_ids=bank_ids, reason=reason, after_change=after_change),
            timeout=self.START_SYNC_TIMEOUT,
        )
