"""dashboard_svc's clients of its peers: sync_svc (stored bank data, SQL aggregates, data versions, sync
status) and onboarding_svc (the user's goals), as the `BankData` the dashboard service declares
(`dashboard_svc.service.BankData`), their messages turned into the domain's values."""

from __future__ import annotations

import asyncio
import datetime as dt
from decimal import Decimal

from finpulse.onboarding.v1 import onboarding_pb2, onboarding_pb2_grpc
from finpulse.sync.v1 import sync_pb2, sync_pb2_grpc

from dashboard_svc.model import (
    AccountView,
    BankFreshness,
    CategoryTotal,
    CreditView,
    DayAmount,
    Goals,
    MonthFlow,
    ProductView,
    TransactionView,
)
from dashboard_svc.service import Gathered
from finance.dataversion import data_version_key
from finance.protoconv import repayments_from_pb
from svclib.cache import Cache
from svclib.clients import ServiceClients
from svclib.protoconv import optional

RECENT = 10


def _dec(text: str) -> Decimal | None:
    return Decimal(text) if text else None


def _time(msg, field: str) -> dt.datetime | None:
    return getattr(msg, field).ToDatetime(dt.UTC) if msg.HasField(field) else None


def _date(text: str | None) -> dt.date | None:
    return dt.date.fromisoformat(text[:10]) if text else None


_BANK_STATUS = {
    sync_pb2.JOB_STATE_QUEUED: "syncing",
    sync_pb2.JOB_STATE_RUNNING: "syncing",
    sync_pb2.JOB_STATE_SUCCEEDED: "ok",
    sync_pb2.JOB_STATE_FAILED: "error",
    sync_pb2.JOB_STATE_NEEDS_RECONSENT: "needs_reconsent",
}


def _bank_state(bank) -> str:
    """ok | syncing | error | needs_reconsent | never_synced; a job queued again after a failed attempt
    is `error` (the bank is failing now), not `syncing`."""
    if not bank.HasField("sync"):
        return "never_synced"
    sync = bank.sync
    if sync.state == sync_pb2.JOB_STATE_QUEUED and sync.attempts > 0 and sync.HasField("last_error"):
        return "error"
    return _BANK_STATUS.get(sync.state, "never_synced")


class SyncData:
    """sync_svc (bank data, aggregates, versions) and onboarding_svc (goals) as the dashboard needs them."""

    def __init__(self, clients: ServiceClients, cache: Cache):
        self.sync = clients.stub("sync", sync_pb2_grpc.SyncServiceStub, sync_pb2.DESCRIPTOR)
        self.onboarding = clients.stub(
            "onboarding", onboarding_pb2_grpc.OnboardingServiceStub, onboarding_pb2.DESCRIPTOR
        )
        self.cache = cache

    async def data_version(self, user_id: str) -> int:
        published = await self.cache.get(data_version_key(self.cache.prefix, user_id))
        if published is not None:
            return int(published)
        reply = await self.sync.GetDataVersion(sync_pb2.GetDataVersionRequest(user_id=user_id))
        return reply.data_version

    async def goals(self, user_id: str) -> Goals:
        reply = await self.onboarding.GetProfile(onboarding_pb2.GetProfileRequest(user_id=user_id))
        p = reply.profile

        def word(enum, value: int, prefix: str) -> str | None:
            return enum.Name(value).removeprefix(prefix).lower() if value else None

        return Goals(
            goal_type=word(onboarding_pb2.GoalType, p.goal_type, "GOAL_TYPE_"),
            target_amount=_dec(optional(p, "target_amount") or ""),
            target_date=_date(optional(p, "target_date")),
            loans_speed=word(onboarding_pb2.RepaymentSpeed, p.loans_speed, "REPAYMENT_SPEED_"),
            savings_speed=word(onboarding_pb2.RepaymentSpeed, p.savings_speed, "REPAYMENT_SPEED_"),
            loan_strategy=word(onboarding_pb2.LoanStrategy, p.loan_strategy, "LOAN_STRATEGY_"),
            horizon_months=optional(p, "horizon_months"),
        )

    async def wait_for_first_sync(self, user_id: str, timeout: float) -> None:
        """Poll (cheaply, 4 times a second) until the user has data or no sync is in flight."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            status = await self.sync.GetSyncStatus(
                sync_pb2.GetSyncStatusRequest(user_id=user_id), timeout=max(0.5, deadline - loop.time())
            )
            if status.status != "running" or await self.data_version(user_id) > 0:
                return
            await asyncio.sleep(min(0.25, max(0.0, deadline - loop.time())))

    async def gather(self, user_id: str, now: dt.datetime) -> Gathered:
        sync = self.sync
        today = now.replace(hour=0, minute=0, second=0, microsecond=0)
        aggregates_request = sync_pb2.GetAggregatesRequest(user_id=user_id, months=12, income_days=180)
        aggregates_request.spending_since.FromDatetime(now - dt.timedelta(days=30))
        aggregates_request.today_since.FromDatetime(today)
        accounts, balances, credits, aggregates, recent, banks, catalogue = await asyncio.gather(
            sync.ListAccounts(sync_pb2.ListAccountsRequest(user_id=user_id)),
            sync.ListBalances(sync_pb2.ListBalancesRequest(user_id=user_id)),
            sync.ListCredits(sync_pb2.ListCreditsRequest(user_id=user_id)),
            sync.GetAggregates(aggregates_request),
            sync.ListTransactions(sync_pb2.ListTransactionsRequest(user_id=user_id, page_size=RECENT)),
            sync.ListBanks(sync_pb2.ListBanksRequest(user_id=user_id)),
            sync.ListProducts(sync_pb2.ListProductsRequest()),
        )
        by_account: dict[tuple[str, str], dict[str, Decimal]] = {}
        for b in balances.balances:
            amount = Decimal(b.amount) * (-1 if b.credit_debit_indicator.lower() == "debit" else 1)
            by_account.setdefault((b.bank_id, b.account_id), {})[b.type] = amount
        views = []
        for a in accounts.accounts:
            kinds = by_account.get((a.bank_id, a.account_id), {})
            available = kinds.get("InterimAvailable", kinds.get("ClosingAvailable", kinds.get("InterimBooked")))
            views.append(
                AccountView(
                    bank_id=a.bank_id,
                    bank_name=a.bank_name,
                    account_id=a.account_id,
                    sub_type=a.account_sub_type,
                    currency=a.currency or "RUB",
                    nickname=a.nickname,
                    account_number=optional(a, "account_number"),
                    available=available,
                    booked=kinds.get("InterimBooked"),
                )
            )
        fields = {
            "accounts": views,
            "credits": [
                CreditView(
                    bank_id=c.bank_id,
                    agreement_id=c.agreement_id,
                    product_type=c.product_type,
                    product_name=c.product_name,
                    amount=Decimal(c.amount),
                    interest_rate=_dec(optional(c, "interest_rate") or ""),
                    status=c.status,
                    start_date=_date(optional(c, "start_date")),
                    account_number=optional(c, "account_number"),
                    account_balance=_dec(optional(c, "account_balance") or ""),
                    end_date=_date(optional(c, "end_date")),
                    product_id=c.product_id,
                )
                for c in credits.credits
            ],
            "products": [
                ProductView(
                    bank_id=p.bank_id,
                    product_id=p.product_id,
                    product_type=p.product_type,
                    product_name=p.product_name,
                    interest_rate=_dec(optional(p, "interest_rate") or ""),
                    min_amount=_dec(optional(p, "min_amount") or ""),
                    max_amount=_dec(optional(p, "max_amount") or ""),
                    term_months=optional(p, "term_months"),
                    commission=_dec(optional(p, "commission") or ""),
                )
                for p in catalogue.products
            ],
            "bank_names": {b.id: b.name for b in banks.banks},
            "repayments": [repayments_from_pb(r) for r in aggregates.loan_repayments],
            "income_days": [
                DayAmount(
                    day=dt.date.fromisoformat(d.day),
                    currency=d.currency or "RUB",
                    total=Decimal(d.total),
                    count=d.count,
                )
                for d in aggregates.income_days
            ],
            "cash_flow": [
                MonthFlow(
                    month=dt.date.fromisoformat(m.month),
                    currency=m.currency or "RUB",
                    income=Decimal(m.income),
                    spending=Decimal(m.spending),
                )
                for m in aggregates.cash_flow
            ],
            "spending_30d": [
                CategoryTotal(c.category, c.currency or "RUB", Decimal(c.total), c.count)
                for c in aggregates.spending_by_category
            ],
            "spent_today": [
                CategoryTotal(c.category, c.currency or "RUB", Decimal(c.total), c.count)
                for c in aggregates.spent_today
            ],
            "recent_transactions": [
                TransactionView(
                    bank_id=t.bank_id,
                    account_id=t.account_id,
                    transaction_id=t.transaction_id,
                    booking_time=_time(t, "booking_time"),
                    signed_amount=Decimal(t.signed_amount),
                    currency=t.currency or "RUB",
                    description=t.description,
                    category=optional(t, "category"),
                )
                for t in recent.transactions
            ],
            "banks": [
                BankFreshness(
                    bank_id=b.id,
                    bank_name=b.name,
                    status=_bank_state(b),
                    last_success_at=_time(b.sync, "last_success_at"),
                    last_error=optional(b.sync, "last_error"),
                )
                for b in banks.banks
                if b.connected or (b.HasField("sync") and b.sync.HasField("last_success_at"))
            ],
        }
        successes = [b.last_success_at for b in fields["banks"] if b.last_success_at]
        return Gathered(fields, aggregates.data_version, max(successes) if successes else None)
