"""gRPC transport of dashboard_svc: proto <-> domain, nothing else (its clients of sync_svc and onboarding_svc
are in `dashboard_svc.peers`, its setup in `dashboard_svc.wiring`)."""

from __future__ import annotations

import collections
import datetime as dt

from finpulse.dashboard.v1 import dashboard_pb2 as pb
from finpulse.dashboard.v1 import dashboard_pb2_grpc as pb_grpc
from google.protobuf import json_format

from dashboard_svc.applications import RefinanceApplications, next_step
from dashboard_svc.model import FinancialInputs
from dashboard_svc.service import FIRST_SYNC_WAIT, Answer, DashboardService, parse_inputs, unchanged_until
from dashboard_svc.storage import StoredApplication
from svclib import i18n
from svclib.cache import CACHE_UNTIL_METADATA
from svclib.protoconv import optional, set_timestamp
from svclib.validation import format_amount


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


def _parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _minutes(since: dt.datetime, now: dt.datetime) -> int:
    return max(0, int((now - since).total_seconds() // 60))


#: The response message of each part of a computation (dashboard_svc.service.PARTS).
_PART_MESSAGES = {
    "dashboard": pb.GetDashboardResponse,
    "loans": pb.GetLoansResponse,
    "deposits": pb.GetDepositsResponse,
    "refinance": pb.OptimizeLoansResponse,
}


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
        application_id=application.application_id,
        offer_id=application.offer_id,
        status=application.status,
        message=next_step(application),
        bank_id=offer.get("bank_id", ""),
        product_id=offer.get("product_id", ""),
        loan_ids=list(offer.get("loan_ids") or []),
        loan_amount=detail.get("loan_amount", ""),
        rate=detail.get("rate", ""),
        term_months=int(offer.get("term_months") or 0),
        monthly_payment=detail.get("monthly_payment", ""),
        savings=detail.get("savings", ""),
    )
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
        application, replayed = await self.applications.apply(
            request.user_id, request.offer_id, list(request.loan_ids), request.phone
        )
        message = _application_pb(application)
        return pb.ApplyRefinanceResponse(
            status=application.status,
            application_id=application.application_id,
            message=message.message,
            application=message,
            replayed=replayed,
        )

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
            inputs = parse_inputs(
                optional(i, "salary_amount"),
                optional(i, "next_salary_date"),
                optional(i, "credit_payment_amount"),
                optional(i, "credit_payment_date"),
            )
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
