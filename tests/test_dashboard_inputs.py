"""dashboard_svc financial inputs over gRPC (pytest-grpc contract on grpc.aio), real Postgres and Redis."""

from __future__ import annotations

import uuid

import grpc
import pytest
from finpulse.dashboard.v1 import dashboard_pb2 as pb
from finpulse.dashboard.v1 import dashboard_pb2_grpc as pb_grpc

from dashboard_svc.__main__ import SPEC
from dashboard_svc.applications import RefinanceApplications
from dashboard_svc.service import DashboardService
from dashboard_svc.servicer import DashboardServicer
from dashboard_svc.storage import DashboardStorage


@pytest.fixture
def grpc_add_to_server():
    return pb_grpc.add_DashboardServiceServicer_to_server


# The user's current offers, as the refinance part of their dashboard computation would list them.
OFFER = {
    "id": "ofr-0123456789abcdef",
    "bank": "VBank",
    "bank_id": "vbank",
    "strategy": "refinance_one",
    "product_id": "prod-vbank-loan-001",
    "product_name": "Потребительский кредит 13.0%",
    "loan_ids": ["loan-team200-1-0447"],
    "term_months": 20,
    "detail": {"rate": "13.0", "monthly_payment": "10172.02", "savings": "20617.71", "loan_amount": "180000.00"},
}


async def current_offers(user_id: str) -> list[dict]:
    return [OFFER] if user_id.startswith("user-") else []


@pytest.fixture
async def grpc_servicer(schema_pool, cache):
    pool = await schema_pool(SPEC)
    storage = DashboardStorage(pool)
    return DashboardServicer(DashboardService(storage, cache), RefinanceApplications(storage, current_offers))


@pytest.fixture
def grpc_stub_cls():
    return pb_grpc.DashboardServiceStub


@pytest.fixture
def user_id() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


async def test_inputs_round_trip_exact_and_idempotent(grpc_stub, user_id):
    empty = await grpc_stub.GetFinancialInputs(pb.GetFinancialInputsRequest(user_id=user_id))
    assert not empty.inputs.HasField("salary_amount") and not empty.HasField("updated_at")

    inputs = pb.FinancialInputs(
        salary_amount="120000.5",
        next_salary_date="2026-12-05",
        credit_payment_amount="15000.10",
        credit_payment_date="2026-12-10",
    )
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
        pb.UpdateFinancialInputsRequest(user_id=user_id, inputs=only_salary)
    )
    assert replaced.inputs == pb.FinancialInputs(salary_amount="1.00")


@pytest.mark.parametrize(
    "inputs, field",
    [
        (pb.FinancialInputs(salary_amount="-5"), "salary_amount"),
        (pb.FinancialInputs(salary_amount="0"), "salary_amount"),
        (pb.FinancialInputs(salary_amount="10.123"), "salary_amount"),
        (pb.FinancialInputs(salary_amount="1e5"), "salary_amount"),
        (pb.FinancialInputs(salary_amount="99999999999999"), "salary_amount"),
        (pb.FinancialInputs(credit_payment_amount="abc"), "credit_payment_amount"),
        (pb.FinancialInputs(next_salary_date="2026-02-30"), "next_salary_date"),
        (pb.FinancialInputs(credit_payment_date="05.12.2026"), "credit_payment_date"),
    ],
)
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


# ------------------------------------------------------------------------------ refinancing applications


async def test_an_application_is_recorded_once_per_offer_and_says_what_happens_next(grpc_stub, user_id):
    request = pb.ApplyRefinanceRequest(user_id=user_id, offer_id=OFFER["id"], phone="+7 (999) 123-45-67")
    first = await grpc_stub.ApplyRefinance(request, metadata=(("x-language", "ru"),))
    assert first.status == "recorded" and first.application_id.startswith("rfa-") and not first.replayed
    app = first.application
    assert (
        app.offer_id,
        app.bank_id,
        app.product_id,
        list(app.loan_ids),
        app.loan_amount,
        app.rate,
        app.term_months,
        app.monthly_payment,
        app.savings,
    ) == (
        OFFER["id"],
        "vbank",
        "prod-vbank-loan-001",
        ["loan-team200-1-0447"],
        "180000.00",
        "13.0",
        20,
        "10172.02",
        "20617.71",
    )
    assert "в банк ничего не отправлено" in first.message and first.application_id in first.message
    again = await grpc_stub.ApplyRefinance(request, metadata=(("x-language", "en"),))
    assert again.replayed and again.application_id == first.application_id, "one application per offer"
    assert "nothing was sent to the bank" in again.message
    same_loans = pb.ApplyRefinanceRequest(user_id=user_id, offer_id=OFFER["id"], loan_ids=["loan-team200-1-0447"])
    assert (await grpc_stub.ApplyRefinance(same_loans)).application_id == first.application_id
    read = await grpc_stub.GetRefinanceApplication(
        pb.GetRefinanceApplicationRequest(user_id=user_id, application_id=first.application_id)
    )
    assert read.application.status == "recorded" and read.application.created_at == app.created_at
    listed = await grpc_stub.ListRefinanceApplications(pb.ListRefinanceApplicationsRequest(user_id=user_id))
    assert [a.application_id for a in listed.applications] == [first.application_id]


@pytest.mark.parametrize(
    "change, code, fragment",
    [
        ({"offer_id": "ofr-unknown"}, grpc.StatusCode.NOT_FOUND, "not among your current offers"),
        ({"loan_ids": ["loan-other"]}, grpc.StatusCode.INVALID_ARGUMENT, "loan_ids"),
        ({"phone": "call me maybe"}, grpc.StatusCode.INVALID_ARGUMENT, "phone"),
        ({"offer_id": "o" * 65}, grpc.StatusCode.INVALID_ARGUMENT, "offer_id"),
    ],
)
async def test_bad_applications_are_refused(grpc_stub, user_id, change, code, fragment):
    fields = {"user_id": user_id, "offer_id": OFFER["id"], **change}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await grpc_stub.ApplyRefinance(pb.ApplyRefinanceRequest(**fields))
    assert err.value.code() == code and fragment in err.value.details()


async def test_another_users_application_is_not_found(grpc_stub, user_id):
    made = await grpc_stub.ApplyRefinance(pb.ApplyRefinanceRequest(user_id=user_id, offer_id=OFFER["id"]))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await grpc_stub.GetRefinanceApplication(
            pb.GetRefinanceApplicationRequest(user_id="user-someone-else", application_id=made.application_id)
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
