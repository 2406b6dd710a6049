"""dashboard_svc financial inputs over gRPC (pytest-grpc contract on grpc.aio), real Postgres and Redis."""
from __future__ import annotations

import uuid

import grpc
import pytest
from finpulse.dashboard.v1 import dashboard_pb2 as pb
from finpulse.dashboard.v1 import dashboard_pb2_grpc as pb_grpc

from dashboard_svc.__main__ import SPEC
from dashboard_svc.servicer import DashboardServicer
from dashboard_svc.service import DashboardService
from dashboard_svc.storage import DashboardStorage


@pytest.fixture
def grpc_add_to_server():
    return pb_grpc.add_DashboardServiceServicer_to_server


@pytest.fixture
async def grpc_servicer(schema_pool, cache):
    pool = await schema_pool(SPEC)
    return DashboardServicer(DashboardService(DashboardStorage(pool), cache))


@pytest.fixture
def grpc_stub_cls():
    return pb_grpc.DashboardServiceStub


@pytest.fixture
def user_id() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


async def test_inputs_round_trip_exact_and_idempotent(grpc_stub, user_id):
    empty = await grpc_stub.GetFinancialInputs(pb.GetFinancialInputsRequest(user_id=user_id))
    assert not empty.inputs.HasField("salary_amount") and not empty.HasField("updated_at")

    inputs = pb.FinancialInputs(salary_amount="120000.5", next_salary_date="2026-12-05",
                                credit_payment_amount="15000.10", credit_payment_date="2026-12-10")
    first = await grpc_stub.UpdateFinancialInputs(pb.UpdateFinancialInputsRequest(user_id=user_id, inputs=inputs))
    assert first.inputs.salary_amount == "120000.50"
    assert first.inputs.credit_payment_amount == "15000.10"
    assert first.inputs.next_salary_date == "2026-12-05"

    again = await grpc_stub.UpdateFinancialInputs(pb.UpdateFinancialInputsRequest(user_id=user_id, inputs=inputs))
    assert again.updated_at == first.updated_at, "a repeated PUT with the same values changes nothing"

    read = await grpc_stub.GetFinancialInputs(pb.GetFinancialInputsRequest(user_id=user_id))
    assert read.inputs == first.inputs

    # PUT replaces: fields left out are cleared.
    only_salary = pb.FinancialInputs(salary_amount="1.00")
    replaced = await grpc_stub.UpdateFinancialInputs(
        pb.UpdateFinancialInputsRequest(user_id=user_id, inputs=only_salary))
    assert replaced.inputs == pb.FinancialInputs(salary_amount="1.00")


@pytest.mark.parametrize("inputs, field", [
    (pb.FinancialInputs(salary_amount="-5"), "salary_amount"),
    (pb.FinancialInputs(salary_amount="0"), "salary_amount"),
    (pb.FinancialInputs(salary_amount="10.123"), "salary_amount"),
    (pb.FinancialInputs(salary_amount="1e5"), "salary_amount"),
    (pb.FinancialInputs(salary_amount="99999999999999"), "salary_amount"),
    (pb.FinancialInputs(credit_payment_amount="abc"), "credit_payment_amount"),
    (pb.FinancialInputs(next_salary_date="2026-02-30"), "next_salary_date"),
    (pb.FinancialInputs(credit_payment_date="05.12.2026"), "credit_payment_date"),
])
async def test_bad_inputs_are_invalid_argument_naming_the_field(grpc_stub, user_id, inputs, field):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await grpc_stub.UpdateFinancialInputs(pb.UpdateFinancialInputsRequest(user_id=user_id, inputs=inputs))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.value.details()
    stored = await grpc_stub.GetFinancialInputs(pb.GetFinancialInputsRequest(user_id=user_id))
    assert not stored.HasField("updated_at"), "nothing is stored on bad input"


async def test_missing_user_and_inputs(grpc_stub, user_id):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await grpc_stub.GetFinancialInputs(pb.GetFinancialInputsRequest(user_id=""))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await grpc_stub.UpdateFinancialInputs(pb.UpdateFinancialInputsRequest(user_id=user_id))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs" in err.value.details()
