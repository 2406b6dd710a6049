"""gRPC transport of dashboard_svc: proto <-> domain, nothing else."""
from __future__ import annotations

from finpulse.dashboard.v1 import dashboard_pb2 as pb
from finpulse.dashboard.v1 import dashboard_pb2_grpc as pb_grpc

from svclib.protoconv import optional, set_timestamp
from svclib.runtime import Runtime
from svclib.server import GrpcServer
from svclib.validation import format_amount

from dashboard_svc.model import FinancialInputs
from dashboard_svc.service import DashboardService, parse_inputs
from dashboard_svc.storage import DashboardStorage


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


class DashboardServicer(pb_grpc.DashboardServiceServicer):
    def __init__(self, service: DashboardService):
        self.service = service

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


async def setup(runtime: Runtime, server: GrpcServer) -> None:
    service = DashboardService(DashboardStorage(runtime.pool), runtime.cache)
    server.add(pb_grpc.add_DashboardServiceServicer_to_server, DashboardServicer(service),
               pb.DESCRIPTOR.services_by_name["DashboardService"].full_name)
