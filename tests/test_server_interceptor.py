"""The shared server interceptor: request id, domain errors → codes, no internals leaked."""
from __future__ import annotations

import grpc
import pytest
from finpulse.dashboard.v1 import dashboard_pb2 as pb
from finpulse.dashboard.v1 import dashboard_pb2_grpc as pb_grpc

from svclib.errors import NotFound
from svclib.logging import request_id_var, user_id_var


class Probe(pb_grpc.DashboardServiceServicer):
    """Answers with the request id and user it saw, or fails as asked by the user id."""

    async def GetFinancialInputs(self, request, context):
        if request.user_id == "boom":
            raise RuntimeError("database password is hunter2")
        if request.user_id == "missing":
            raise NotFound("no such user")
        return pb.GetFinancialInputsResponse(user_id=f"{request_id_var.get()}|{user_id_var.get()}")


@pytest.fixture
def grpc_add_to_server():
    return pb_grpc.add_DashboardServiceServicer_to_server


@pytest.fixture
def grpc_servicer():
    return Probe()


@pytest.fixture
def grpc_stub_cls():
    return pb_grpc.DashboardServiceStub


async def test_request_id_and_user_come_from_metadata(grpc_stub):
    reply = await grpc_stub.GetFinancialInputs(pb.GetFinancialInputsRequest(user_id="u"),
                                               metadata=(("x-request-id", "req-42"), ("x-user-id", "team200-1")))
    assert reply.user_id == "req-42|team200-1"
    generated = await grpc_stub.GetFinancialInputs(pb.GetFinancialInputsRequest(user_id="u"))
    request_id, _, user = generated.user_id.partition("|")
    assert len(request_id) == 32 and user == "None"


async def test_domain_error_maps_to_its_code(grpc_stub):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await grpc_stub.GetFinancialInputs(pb.GetFinancialInputsRequest(user_id="missing"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and err.value.details() == "no such user"


async def test_unexpected_error_is_internal_without_details(grpc_stub):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await grpc_stub.GetFinancialInputs(pb.GetFinancialInputsRequest(user_id="boom"))
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "hunter2" not in err.value.details() and "Traceback" not in err.value.details()
