"""gRPC transport of dashboard_svc: proto <-> domain, and the adapters to sync_svc and onboarding_svc."""
from __future__ import annotations

import asyncio
import collections
import datetime as dt
from decimal import Decimal

from google.protobuf import json_format

from finpulse.dashboard.v1 import dashboard_pb2 as pb
from finpulse.dashboard.v1 import dashboard_pb2_grpc as pb_grpc
from finpulse.onboarding.v1 import onboarding_pb2
from finpulse.sync.v1 import sync_pb2

from svclib import i18n
from svclib.cache import CACHE_UNTIL_METADATA, Cache, data_version_key
from svclib.clients import ServiceClients
from svclib.protoconv import optional, set_timestamp
from svclib.runtime import Runtime
from svclib.server import GrpcServer
from svclib.validation import format_amount

from dashboard_svc.model import (AccountView, BankFreshness, CategoryTotal, CreditView, DashboardConfig, DayAmount,
                                 FinancialInputs, Goals, MonthFlow, ProductView, Repayments, TransactionView)
from dashboard_svc.applications import RefinanceApplications, next_step
from dashboard_svc.service import FIRST_SYNC_WAIT, Answer, DashboardService, Gathered, parse_inputs, unchanged_until
from dashboard_svc.storage import DashboardStorage, StoredApplication

RECENT = 10


def _inputs_pb(inputs: FinancialInputs) -> pb.FinancialInputs:
    msg = pb.FinancialInputs()
    if inputs.salary_amount is not None:
        msg.salary_amount = format_amount(inputs.salary_amount)
    if inputs.next_salary_date is not None:
        msg.next_salary_date = inputs.next_salary_date.isoformat()
    if inputs.credit_payment_amount is not None:
        msg.credit_payment_amount = format_amount(inputs.credit_payment_amount)
    if inputs.credit_payment_date is not None:
        msg.credit_payment_date = inputs.credit_payment_date.isoformat()
    return msg


def _dec(text: str) -> Decimal | None:
    return Decimal(text) if text else None


def _time(msg, field: str) -> dt.datetime | None:
    return getattr(msg, field).ToDatetime(dt.timezone.utc) if msg.HasField(field) else None


def _date(text: str | None) -> dt.date | None:
    return dt.date.fromisoformat(text[:10]) if text else None


_BANK_STATUS = {sync_pb2.JOB_STATE_QUEUED: "syncing", sync_pb2.JOB_STATE_RUNNING: "syncing",
                sync_pb2.JOB_STATE_SUCCEEDED: "ok", sync_pb2.JOB_STATE_FAILED: "error",
                sync_pb2.JOB_STATE_NEEDS_RECONSENT: "needs_reconsent"}


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
        self.clients = clients
        self.cache = cache

    async def data_version(self, user_id: str) -> int:
        published = await self.cache.get(data_version_key(self.cache, user_id))
        if published is not None:
            return int(published)
        reply = await self.clients.sync.GetDataVersion(sync_pb2.GetDataVersionRequest(user_id=user_id))
        return reply.data_version

    async def goals(self, user_id: str) -> Goals:
        reply = await self.clients.onboarding.GetProfile(onboarding_pb2.GetProfileRequest(user_id=user_id))
        p = reply.profile

        def word(enum, value: int, prefix: str) -> str | None:
            return enum.Name(value).removeprefix(prefix).lower() if value else None

        return Goals(
            goal_type=word(onboarding_pb2.GoalType, p.goal_type, "GOAL_TYPE_"),
            target_amount=_dec(optional(p, "target_amount") or ""), target_date=_date(optional(p, "target_date")),
            loans_speed=word(onboarding_pb2.RepaymentSpeed, p.loans_speed, "REPAYMENT_SPEED_"),
            savings_speed=word(onboarding_pb2.RepaymentSpeed, p.savings_speed, "REPAYMENT_SPEED_"),
            loan_strategy=word(onboarding_pb2.LoanStrategy, p.loan_strategy, "LOAN_STRATEGY_"),
            horizon_months=optional(p, "horizon_months"))

    async def wait_for_first_sync(self, user_id: str, timeout: float) -> None:
        """Poll (cheaply, 4 times a second) until the user has data or no sync is in flight."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            status = await self.clients.sync.GetSyncStatus(sync_pb2.GetSyncStatusRequest(user_id=user_id),
                                                           timeout=max(0.5, deadline - loop.time()))
            if status.status != "running" or await self.data_version(user_id) > 0:
                return
            await asyncio.sleep(min(0.25, max(0.0, deadline - loop.time())))

    async def gather(self, user_id: str, now: dt.datetime) -> Gathered:
        sync = self.clients.sync
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
            sync.ListProducts(sync_pb2.ListProductsRequest()))
        by_account: dict[tuple[str, str], dict[str, Decimal]] = {}
        for b in balances.balances:
            amount = Decimal(b.amount) * (-1 if b.credit_debit_indicator.lower() == "debit" else 1)
            by_account.setdefault((b.bank_id, b.account_id), {})[b.type] = amount
        views = []
        for a in accounts.accounts:
            kinds = by_account.get((a.bank_id, a.account_id), {})
            available = kinds.get("InterimAvailable", kinds.get("ClosingAvailable", kinds.get("InterimBooked")))
            views.append(AccountView(
                bank_id=a.bank_id, bank_name=a.bank_name, account_id=a.account_id, sub_type=a.account_sub_type,
                currency=a.currency or "RUB", nickname=a.nickname, account_number=optional(a, "account_number"),
                available=available, booked=kinds.get("InterimBooked")))
        fields = {
            "accounts": views,
            "credits": [CreditView(
                bank_id=c.bank_id, agreement_id=c.agreement_id, product_type=c.product_type,
                product_name=c.product_name, amount=Decimal(c.amount),
                interest_rate=_dec(optional(c, "interest_rate") or ""), status=c.status,
                start_date=_date(optional(c, "start_date")), account_number=optional(c, "account_number"),
                account_balance=_dec(optional(c, "account_balance") or ""), end_date=_date(optional(c, "end_date")),
                product_id=c.product_id) for c in credits.credits],
            "products": [ProductView(
                bank_id=p.bank_id, product_id=p.product_id, product_type=p.product_type, product_name=p.product_name,
                interest_rate=_dec(optional(p, "interest_rate") or ""), min_amount=_dec(optional(p, "min_amount") or ""),
                max_amount=_dec(optional(p, "max_amount") or ""), term_months=optional(p, "term_months"),
                commission=_dec(optional(p, "commission") or "")) for p in catalogue.products],
            "bank_names": {b.id: b.name for b in banks.banks},
            "repayments": [Repayments(
                bank_id=r.bank_id, agreement_id=r.agreement_id, count=r.count, total=Decimal(r.total),
                average=Decimal(r.average), currency=r.currency or "RUB", last_paid_at=_time(r, "last_paid_at"),
                typical_day=r.typical_day, months=tuple(dt.date.fromisoformat(m) for m in r.months_paid))
                for r in aggregates.loan_repayments],
            "income_days": [DayAmount(day=dt.date.fromisoformat(d.day), currency=d.currency or "RUB",
                                      total=Decimal(d.total), count=d.count) for d in aggregates.income_days],
            "cash_flow": [MonthFlow(month=dt.date.fromisoformat(m.month), currency=m.currency or "RUB",
                                    income=Decimal(m.income), spending=Decimal(m.spending))
                          for m in aggregates.cash_flow],
            "spending_30d": [CategoryTotal(c.category, c.currency or "RUB", Decimal(c.total), c.count)
                             for c in aggregates.spending_by_category],
            "spent_today": [CategoryTotal(c.category, c.currency or "RUB", Decimal(c.total), c.count)
                            for c in aggregates.spent_today],
            "recent_transactions": [TransactionView(
                bank_id=t.bank_id, account_id=t.account_id, transaction_id=t.transaction_id,
                booking_time=_time(t, "booking_time"), signed_amount=Decimal(t.signed_amount),
                currency=t.currency or "RUB", description=t.description, category=optional(t, "category"))
                for t in recent.transactions],
            "banks": [BankFreshness(
                bank_id=b.id, bank_name=b.name, status=_bank_state(b),
                last_success_at=_time(b.sync, "last_success_at"), last_error=optional(b.sync, "last_error"))
                for b in banks.banks if b.connected or (b.HasField("sync") and b.sync.HasField("last_success_at"))],
        }
        successes = [b.last_success_at for b in fields["banks"] if b.last_success_at]
        return Gathered(fields, aggregates.data_version, max(successes) if successes else None)


def _parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _minutes(since: dt.datetime, now: dt.datetime) -> int:
    return max(0, int((now - since).total_seconds() // 60))


#: The response message of each part of a computation (dashboard_svc.service.PARTS).
_PART_MESSAGES = {"dashboard": pb.GetDashboardResponse, "loans": pb.GetLoansResponse,
                  "deposits": pb.GetDepositsResponse, "refinance": pb.OptimizeLoansResponse}


class ParsedPayloads:
    """Serialized protos of recent computations' parts, so a cached answer is parsed from JSON once per
    process, not once per request (a bounded LRU keyed by user, computation time, data version, part
    and language)."""

    def __init__(self, size: int = 1024):
        self.size = size
        self._items: collections.OrderedDict[tuple, bytes] = collections.OrderedDict()

    def message(self, user_id: str, answer: Answer, part: str = "dashboard", language: str | None = None):
        language = language or i18n.current_language()
        cls = _PART_MESSAGES[part]
        key = (user_id, answer.calculated_at, answer.data_version, part, language)
        raw = self._items.get(key)
        if raw is not None:
            self._items.move_to_end(key)
            return cls.FromString(raw)
        message = json_format.ParseDict(answer.part(part, language), cls())
        self._items[key] = message.SerializeToString()
        if len(self._items) > self.size:
            self._items.popitem(last=False)
        return message


def _response(response: pb.GetDashboardResponse, answer: Answer, now: dt.datetime) -> pb.GetDashboardResponse:
    response.cache_info.is_cached = answer.is_cached
    response.cache_info.calculated_at = answer.calculated_at.isoformat()
    response.cache_info.age_minutes = _minutes(answer.calculated_at, now)
    response.cache_info.data_version = answer.data_version
    for item in response.data_freshness:  # ages are "now", even when the dashboard is cached
        if item.HasField("fetched_at"):
            item.age_minutes = _minutes(_parse_time(item.fetched_at), now)
    return response


def _first_sync_wait(context) -> float:
    """How long a request may wait for a first sync in flight: its deadline less a margin to answer."""
    remaining = context.time_remaining()
    return FIRST_SYNC_WAIT if remaining is None else max(0.0, min(FIRST_SYNC_WAIT, remaining - 2.0))


def _application_pb(application: StoredApplication) -> pb.RefinanceApplication:
    offer = application.offer
    detail = offer.get("detail") or {}
    msg = pb.RefinanceApplication(
        application_id=application.application_id, offer_id=application.offer_id, status=application.status,
        message=next_step(application), bank_id=offer.get("bank_id", ""), product_id=offer.get("product_id", ""),
        loan_ids=list(offer.get("loan_ids") or []), loan_amount=detail.get("loan_amount", ""),
        rate=detail.get("rate", ""), term_months=int(offer.get("term_months") or 0),
        monthly_payment=detail.get("monthly_payment", ""), savings=detail.get("savings", ""))
    set_timestamp(msg, "created_at", application.created_at)
    return msg


class DashboardServicer(pb_grpc.DashboardServiceServicer):
    def __init__(self, service: DashboardService, applications: RefinanceApplications):
        self.service = service
        self.applications = applications
        self.parsed = ParsedPayloads()

    async def _part(self, request, context, part: str):
        """One part of the user's (cached) computation; reusable by the gateway like the dashboard."""
        answer = await self.service.dashboard(request.user_id, False, _first_sync_wait(context))
        until = unchanged_until(answer, [], self.service.clock())
        if until is not None:
            context.set_trailing_metadata(((CACHE_UNTIL_METADATA, str(int(until.timestamp() * 1000))),))
        return self.parsed.message(request.user_id, answer, part)

    async def GetLoans(self, request, context):
        return await self._part(request, context, "loans")

    async def GetDeposits(self, request, context):
        return await self._part(request, context, "deposits")

    async def OptimizeLoans(self, request, context):
        return await self._part(request, context, "refinance")

    async def ApplyRefinance(self, request, context):
        application, replayed = await self.applications.apply(request.user_id, request.offer_id,
                                                              list(request.loan_ids), request.phone)
        message = _application_pb(application)
        return pb.ApplyRefinanceResponse(status=application.status, application_id=application.application_id,
                                         message=message.message, application=message, replayed=replayed)

    async def GetRefinanceApplication(self, request, context):
        application = await self.applications.get(request.user_id, request.application_id)
        return pb.GetRefinanceApplicationResponse(application=_application_pb(application))

    async def ListRefinanceApplications(self, request, context):
        found = await self.applications.list(request.user_id)
        return pb.ListRefinanceApplicationsResponse(applications=[_application_pb(a) for a in found])

    async def GetFinancialInputs(self, request, context):
        inputs, updated_at = await self.service.get_inputs(request.user_id)
        response = pb.GetFinancialInputsResponse(user_id=request.user_id, inputs=_inputs_pb(inputs))
        set_timestamp(response, "updated_at", updated_at)
        return response

    async def UpdateFinancialInputs(self, request, context):
        inputs = None
        if request.HasField("inputs"):
            i = request.inputs
            inputs = parse_inputs(optional(i, "salary_amount"), optional(i, "next_salary_date"),
                                  optional(i, "credit_payment_amount"), optional(i, "credit_payment_date"))
        stored, updated_at = await self.service.put_inputs(request.user_id, inputs)
        response = pb.UpdateFinancialInputsResponse(user_id=request.user_id, inputs=_inputs_pb(stored))
        set_timestamp(response, "updated_at", updated_at)
        return response

    async def GetDashboard(self, request, context):
        answer = await self.service.dashboard(request.user_id, request.force_refresh, _first_sync_wait(context))
        now = self.service.clock()
        response = _response(self.parsed.message(request.user_id, answer), answer, now)
        shown = [_parse_time(item.fetched_at) for item in response.data_freshness if item.HasField("fetched_at")]
        until = unchanged_until(answer, shown, now)
        if until is not None:
            context.set_trailing_metadata(((CACHE_UNTIL_METADATA, str(int(until.timestamp() * 1000))),))
        return response

    async def InvalidateDashboard(self, request, context):
        await self.service.invalidate(request.user_id)
        return pb.InvalidateDashboardResponse()


async def setup(runtime: Runtime, server: GrpcServer) -> None:
    config = DashboardConfig(base_currency=runtime.settings.base_currency,
                             safety_buffer=runtime.settings.safety_buffer)
    storage = DashboardStorage(runtime.pool)
    service = DashboardService(storage, runtime.cache, SyncData(runtime.clients, runtime.cache), config)

    async def current_offers(user_id: str) -> list[dict]:
        return (await service.dashboard(user_id, False)).part("refinance")["offers"]

    server.add(pb_grpc.add_DashboardServiceServicer_to_server,
               DashboardServicer(service, RefinanceApplications(storage, current_offers)),
               pb.DESCRIPTOR.services_by_name["DashboardService"].full_name)
