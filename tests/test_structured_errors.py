"""Structured errors (issue 13): every error is a `google.rpc.Status` with an ErrorInfo (a stable reason,
the domain that made it, metadata), a BadRequest naming bad fields, a RetryInfo when a retry may work.

At the gRPC level (the services' interceptor, in process and on the running suite) the details travel in
the `grpc-status-details-bin` trailer; through the gateway they are the JSON body's `details`, and
`error_code` repeats the reason.
"""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import grpc
import pytest
from finpulse.dashboard.v1 import dashboard_pb2 as pb
from finpulse.dashboard.v1 import dashboard_pb2_grpc as pb_grpc
from finpulse.sync.v1 import sync_pb2, sync_pb2_grpc
from grpc_status import rpc_status
from openapi_schema_validator import OAS30Validator

from gateway import openapi
from gateway.routes import build_routes
from svclib import rich_status
from svclib.errors import Aborted, AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unavailable, require
from svclib.internal_auth import Signer
from tests.e2e import Http, onboard

INFO = "type.googleapis.com/google.rpc.ErrorInfo"
BAD = "type.googleapis.com/google.rpc.BadRequest"
RETRY = "type.googleapis.com/google.rpc.RetryInfo"
USER = "team200-46"  # this file's own emulator customer (tests/conftest.py: each test file takes its own)


def of_type(details: list[dict], type_url: str) -> dict:
    [found] = [d for d in details if d["@type"] == type_url]
    return found


def rich(err: grpc.aio.AioRpcError) -> dict[str, object]:
    """The detail messages of a failed call, by full name (rpc_status checks code and message match)."""
    status = rpc_status.from_call(err)
    assert status is not None, "the error carries no google.rpc.Status"
    assert status.code == err.code().value[0] and status.message == err.details()
    return rich_status.unpack(status.details)


# ------------------------------------------------------------------------------------------ domain errors


def test_every_domain_error_has_a_reason_and_invalid_argument_a_field_violation():
    assert [cls("x").reason for cls in (NotFound, AlreadyExists, FailedPrecondition, Aborted, Unavailable)] == [
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "FAILED_PRECONDITION",
        "ABORTED",
        "UNAVAILABLE",
    ]
    err = InvalidArgument("amount: must be greater than zero", "amount")
    assert (err.reason, err.metadata, err.violations) == (
        "INVALID_ARGUMENT",
        {"field": "amount"},
        [("amount", "amount: must be greater than zero")],
    )
    specific = NotFound("Payment p not found", reason="PAYMENT_NOT_FOUND", metadata={"bank_id": "vbank", "n": None})
    assert (specific.reason, specific.metadata) == ("PAYMENT_NOT_FOUND", {"bank_id": "vbank"})
    with pytest.raises(InvalidArgument) as too_long:
        require("x" * 20, "comment", max_len=10)
    assert (too_long.value.reason, too_long.value.metadata) == ("LIMIT_EXCEEDED", {"field": "comment", "limit": "10"})
    with pytest.raises(InvalidArgument) as missing:
        require("  ", "user_id")
    assert missing.value.reason == "FIELD_REQUIRED"


def test_the_status_stays_small_enough_for_a_trailer():
    huge = rich_status.status(
        grpc.StatusCode.INVALID_ARGUMENT,
        "я" * 1000,
        reason="LIMIT_EXCEEDED",
        domain="finpulse.x",
        metadata={"field": "f" * 500},
        violations=[(f"f{i}" * 100, "д" * 300) for i in range(10)],
    )
    assert huge.ByteSize() < 3500
    details = rich_status.unpack(huge.details)
    assert details["google.rpc.BadRequest"].field_violations[0].field.startswith("f0")
    assert details["google.rpc.ErrorInfo"].reason == "LIMIT_EXCEEDED"


# ------------------------------------------------------------------------------------------ the interceptor


class Probe(pb_grpc.DashboardServiceServicer):
    """Raises the domain error (or downstream failure) its request names."""

    async def GetFinancialInputs(self, request, context):
        if request.user_id == "bad-field":
            raise InvalidArgument(
                "inputs.salary_amount: must be greater than zero", "inputs.salary_amount", reason="INVALID_AMOUNT"
            )
        if request.user_id == "busy":
            raise Unavailable(
                "the bank is busy", reason="BANK_RATE_LIMITED", metadata={"bank_id": "vbank"}, retry_after=2.5
            )
        if request.user_id == "downstream":
            status = rich_status.status(
                grpc.StatusCode.NOT_FOUND,
                "no such bank",
                reason="BANK_NOT_FOUND",
                domain="finpulse.sync",
                metadata={"bank_id": "nobank"},
            )
            raise _FakeRpcError(grpc.StatusCode.NOT_FOUND, "no such bank", rich_status.trailing_metadata(status))
        if request.user_id == "boom":
            raise RuntimeError("secret")
        return pb.GetFinancialInputsResponse(user_id=request.user_id)


class _FakeRpcError(grpc.aio.AioRpcError):
    """What a failed call to a peer service raises (with its trailer)."""

    def __init__(self, code, details, trailing):
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details=details)


@pytest.fixture
def grpc_add_to_server():
    return pb_grpc.add_DashboardServiceServicer_to_server


@pytest.fixture
def grpc_servicer():
    return Probe()


@pytest.fixture
def grpc_stub_cls():
    return pb_grpc.DashboardServiceStub


async def _fail(stub, user_id: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetFinancialInputs(pb.GetFinancialInputsRequest(user_id=user_id))
    return caught.value


async def test_an_invalid_argument_carries_a_bad_request_and_an_error_info(grpc_stub):
    err = await _fail(grpc_stub, "bad-field")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = rich(err)
    [violation] = details["google.rpc.BadRequest"].field_violations
    assert violation.field == "inputs.salary_amount" and "greater than zero" in violation.description
    info = details["google.rpc.ErrorInfo"]
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "INVALID_AMOUNT",
        "finpulse",
        {"field": "inputs.salary_amount"},
    )


async def test_a_retryable_error_carries_retry_info_and_the_retry_after_header(grpc_stub):
    err = await _fail(grpc_stub, "busy")
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    details = rich(err)
    assert details["google.rpc.ErrorInfo"].reason == "BANK_RATE_LIMITED"
    assert details["google.rpc.ErrorInfo"].metadata["bank_id"] == "vbank"
    assert details["google.rpc.RetryInfo"].retry_delay.seconds == 3
    assert ("retry-after", "3") in list(err.trailing_metadata())


async def test_a_peers_rich_error_is_passed_on_and_an_unexpected_one_is_internal(grpc_stub):
    err = await _fail(grpc_stub, "downstream")
    assert err.code() == grpc.StatusCode.NOT_FOUND
    info = rich(err)["google.rpc.ErrorInfo"]
    assert (info.reason, info.domain, info.metadata["bank_id"]) == ("BANK_NOT_FOUND", "finpulse.sync", "nobank")
    err = await _fail(grpc_stub, "boom")
    assert err.code() == grpc.StatusCode.INTERNAL and "secret" not in err.details()
    assert rich(err)["google.rpc.ErrorInfo"].reason == "INTERNAL"


async def test_the_size_limit_is_limit_exceeded_naming_the_field(grpc_stub):
    err = await _fail(grpc_stub, "u" * 300)  # user_id: at most 256 characters (svclib.limits default)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "u" * 300 not in err.details()
    details = rich(err)
    info = details["google.rpc.ErrorInfo"]
    assert (info.reason, info.metadata["field"], info.metadata["limit"]) == ("LIMIT_EXCEEDED", "user_id", "256")
    assert [v.field for v in details["google.rpc.BadRequest"].field_violations] == ["user_id"]


# ------------------------------------------------------------------------------------------ the running suite


@pytest.fixture
async def sync_stub(suite):
    signer = Signer(suite.settings.resolved_internal_secret(), "test")
    async with grpc.aio.insecure_channel(suite.settings.service_addrs["sync"]) as channel:
        yield sync_pb2_grpc.SyncServiceStub(channel), (signer.metadata(USER),)


async def test_grpc_unknown_bank_and_over_long_value_on_the_running_sync_service(sync_stub):
    stub, metadata = sync_stub
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.BootstrapBank(
            sync_pb2.BootstrapBankRequest(bank_id="nobank", user_id=USER, skip_sync=True), metadata=metadata
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    info = rich(caught.value)["google.rpc.ErrorInfo"]
    assert (info.reason, info.domain, dict(info.metadata)) == ("BANK_NOT_FOUND", "finpulse.sync", {"bank_id": "nobank"})

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.StartSync(sync_pb2.StartSyncRequest(user_id=USER, reason="r" * 65), metadata=metadata)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = rich(caught.value)
    info = details["google.rpc.ErrorInfo"]
    assert (info.reason, info.domain, info.metadata["field"], info.metadata["limit"]) == (
        "LIMIT_EXCEEDED",
        "finpulse.sync",
        "reason",
        "64",
    )
    assert details["google.rpc.BadRequest"].field_violations[0].field == "reason"


async def test_http_a_bad_field_is_400_with_a_bad_request_naming_it(suite, session):
    http = Http(session, suite.gateway_url, token=suite.token(USER))
    status, body = await http.call(
        "PUT", f"/api/users/{USER}/financial-inputs", json={"salary_amount": "-5", "next_salary_date": "2026-12-05"}
    )
    assert status == 400, body
    assert (body["code"], body["error"], body["error_code"]) == (3, "INVALID_ARGUMENT", "INVALID_AMOUNT")
    violation = of_type(body["details"], BAD)["field_violations"][0]
    assert violation["field"] == "inputs.salary_amount" and violation["description"] == body["message"]
    info = of_type(body["details"], INFO)
    assert info == {
        "@type": INFO,
        "reason": "INVALID_AMOUNT",
        "domain": "finpulse.dashboard",
        "metadata": {"field": "inputs.salary_amount"},
    }


async def test_http_an_unknown_bank_is_404_with_its_reason(suite, session):
    http = Http(session, suite.gateway_url, token=suite.token(USER))
    status, body = await http.get("/api/banks/nobank/bootstrap", skip_sync="true")
    assert status == 404, body
    assert (body["error"], body["error_code"], body["message"]) == (
        "NOT_FOUND",
        "BANK_NOT_FOUND",
        "Bank 'nobank' is not supported.",
    )
    assert body["details"] == [
        {"@type": INFO, "reason": "BANK_NOT_FOUND", "domain": "finpulse.sync", "metadata": {"bank_id": "nobank"}}
    ]


async def test_http_an_over_long_value_is_limit_exceeded_naming_the_field_and_its_limit(suite, session):
    http = Http(session, suite.gateway_url, token=suite.token(USER))
    status, body = await http.call("POST", "/api/sync", json={"reason": "r" * 65})
    assert status == 400, body
    assert body["error_code"] == "LIMIT_EXCEEDED"
    info = of_type(body["details"], INFO)
    assert info["metadata"] == {"field": "reason", "limit": "64"} and info["domain"] == "finpulse.gateway"
    assert of_type(body["details"], BAD)["field_violations"][0]["field"] == "reason"


async def test_http_the_gateways_own_errors_have_an_error_info(suite, session):
    anonymous = Http(session, suite.gateway_url)
    http = Http(session, suite.gateway_url, token=suite.token(USER))
    cases = [
        (await anonymous.get("/api/dashboard"), 401, "TOKEN_MISSING"),
        (await http.get("/api/nope"), 404, "ROUTE_NOT_FOUND"),
        (
            await http.call("POST", "/api/sync", data=b"{}", headers={"Content-Type": "text/plain"}),
            415,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        (
            await http.call("POST", "/api/sync", data=b"{nope", headers={"Content-Type": "application/json"}),
            400,
            "MALFORMED_JSON",
        ),
    ]
    for (status, body), expected_status, reason in cases:
        assert status == expected_status, body
        assert body["error_code"] == reason
        assert of_type(body["details"], INFO) == {"@type": INFO, "reason": reason, "domain": "finpulse.gateway"}
    status, body = await http.call(
        "POST", "/api/payments", json={"idempotency_key": "a"}, headers={"Idempotency-Key": "b"}
    )
    assert status == 400 and body["error_code"] == "IDEMPOTENCY_KEY_MISMATCH", body
    assert of_type(body["details"], INFO)["metadata"] == {"field": "idempotency_key"}


async def _call(http: Http, method: str, path: str, **kwargs) -> tuple[int, dict]:
    for _ in range(40):  # a 429 of the per-user rate limit is retried a bit later
        status, answer = await http.call(method, path, **kwargs)
        if status != 429:
            return status, answer
        await asyncio.sleep(0.3)
    return status, answer


async def test_http_a_bank_refusal_carries_the_banks_error_code(suite, http):
    await onboard(http, USER, ("vbank",), wait=True)
    status, stored = await _call(
        http, "GET", "/api/banks/vbank/bootstrap", params={"user_id": USER, "skip_sync": "true", "page_size": "20"}
    )
    assert status == 200, stored
    checking = next(a for a in stored["accounts"] if a["account_sub_type"] == "Checking")
    balance = next(
        Decimal(b["amount"])
        for b in stored["balances"]
        if b["account_id"] == checking["account_id"] and b["type"] == "InterimAvailable"
    )
    other = next(
        a
        for a in stored["accounts"]
        if a["account_id"] != checking["account_id"] and a["account_number"] and a["account_sub_type"].lower() != "loan"
    )
    base = {"user_id": USER, "bank_id": "vbank", "account_id": checking["account_id"]}

    # The bank knows no such creditor account: its refusal, with its code.
    status, answer = await _call(
        http,
        "POST",
        "/api/payments",
        headers={"Idempotency-Key": f"errors-{uuid.uuid4().hex}"},
        json={**base, "creditor_account": "40817810000000000001", "amount": "1.00"},
    )
    assert status == 400, answer
    assert (answer["error"], answer["error_code"]) == ("INVALID_ARGUMENT", "CREDITOR_NOT_FOUND")
    info = of_type(answer["details"], INFO)
    assert (info["domain"], info["metadata"]["field"], info["metadata"]["bank_id"]) == (
        "finpulse.consent",
        "creditor_account",
        "vbank",
    )
    assert of_type(answer["details"], BAD)["field_violations"][0]["field"] == "creditor_account"

    key = f"errors-{uuid.uuid4().hex}"
    body = {**base, "creditor_account": other["account_number"], "amount": str(balance + 1000)}
    for _ in range(2):  # the first request, then its replay with the same key: the same answer
        status, answer = await _call(http, "POST", "/api/payments", json=body, headers={"Idempotency-Key": key})
        assert status == 400, answer
        assert (answer["error"], answer["error_code"]) == ("FAILED_PRECONDITION", "INSUFFICIENT_FUNDS")
        info = of_type(answer["details"], INFO)
        assert (info["reason"], info["domain"], info["metadata"]["bank_id"]) == (
            "INSUFFICIENT_FUNDS",
            "finpulse.consent",
            "vbank",
        )
        assert info["metadata"]["payment_id"].startswith("pmt-")

    status, answer = await _call(
        http, "POST", "/api/payments", json={**body, "amount": "1.00"}, headers={"Idempotency-Key": key}
    )
    assert status == 409 and answer["error_code"] == "IDEMPOTENCY_KEY_REUSED", answer


# ------------------------------------------------------------------------------------------ OpenAPI


def test_openapi_has_an_example_per_error_code_each_a_valid_error_body():
    document = openapi.build_document(build_routes(), comments={})
    validator = OAS30Validator(document["components"]["schemas"]["Error"])
    seen = set()
    for name, response in document["components"]["responses"].items():
        examples = response["content"]["application/json"]["examples"]
        assert examples, name
        for example in examples.values():
            validator.validate(example["value"])
            seen.add(example["value"]["error"])
    assert {
        "INVALID_ARGUMENT",
        "FAILED_PRECONDITION",
        "UNAUTHENTICATED",
        "PERMISSION_DENIED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "ABORTED",
        "RESOURCE_EXHAUSTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DEADLINE_EXCEEDED",
    } <= seen
    assert not validator.is_valid({**examples[next(iter(examples))]["value"], "details": [{"reason": "X"}]})
