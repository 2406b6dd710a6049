"""The shared server interceptor: request id, domain errors → codes, no internals leaked."""

from __future__ import annotations

import asyncpg
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
        if request.user_id == "db-down":  # what asyncpg raises while Postgres restarts
            raise asyncpg.exceptions.CannotConnectNowError("the database system is starting up")
        if request.user_id == "nul":  # what asyncpg raises for text with NUL (shown by the test below)
            raise asyncpg.exceptions.CharacterNotInRepertoireError("invalid byte sequence for encoding UTF8: 0x00")
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
    reply = await grpc_stub.GetFinancialInputs(
        pb.GetFinancialInputsRequest(user_id="team200-1"),
        metadata=(("x-request-id", "req-42"), ("x-user-id", "team200-1")),
    )
    assert reply.user_id == "req-42|team200-1"
    generated = await grpc_stub.GetFinancialInputs(pb.GetFinancialInputsRequest(user_id="u"))
    request_id, _, user = generated.user_id.partition("|")
    assert len(request_id) == 32 and user == "None"


async def test_a_call_for_one_user_cannot_name_another(grpc_stub):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await grpc_stub.GetFinancialInputs(
            pb.GetFinancialInputsRequest(user_id="team200-2"), metadata=(("x-user-id", "team200-1"),)
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert caught.value.details() == "user_id does not match the calling user"


async def test_domain_error_maps_to_its_code(grpc_stub):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await grpc_stub.GetFinancialInputs(pb.GetFinancialInputsRequest(user_id="missing"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and err.value.details() == "no such user"


async def test_unexpected_error_is_internal_without_details(grpc_stub):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await grpc_stub.GetFinancialInputs(pb.GetFinancialInputsRequest(user_id="boom"))
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "hunter2" not in err.value.details() and "Traceback" not in err.value.details()


async def test_text_postgres_refuses_is_invalid_argument(database_url):
    """A NUL in text reaching SQL is the caller's bad input (INVALID_ARGUMENT), not an INTERNAL error."""
    import asyncpg

    from svclib.server import _UNSTORABLE_TEXT

    conn = await asyncpg.connect(database_url)
    try:
        with pytest.raises(_UNSTORABLE_TEXT):
            await conn.fetchval("SELECT $1::text", "a\x00b")
    finally:
        await conn.close()


async def test_unstorable_text_maps_to_invalid_argument(grpc_stub):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await grpc_stub.GetFinancialInputs(pb.GetFinancialInputsRequest(user_id="nul"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "NUL" in caught.value.details()


# ---------------------------------------------------------------------------------------------
# Callers are verified (svclib.internal_auth): the test channels sign like the services do.


async def test_unsigned_forged_and_expired_statements_are_refused(grpc_addr, grpc_server):
    from svclib.internal_auth import Signer
    from tests.conftest import INTERNAL_SECRET

    request = pb.GetFinancialInputsRequest(user_id="team200-1")
    async with grpc.aio.insecure_channel(grpc_addr) as raw:  # no statement at all
        stub = pb_grpc.DashboardServiceStub(raw)
        cases = {
            "none": (("x-user-id", "team200-1"),),
            "other secret": (Signer("another-secret-" + "x" * 32, "gateway").metadata("team200-1"),),
            "expired": (Signer(INTERNAL_SECRET, "gateway", clock=lambda: 1_000_000.0).metadata("team200-1"),),
            "not bearer": (("authorization", "Basic abc"),),
        }
        for name, metadata in cases.items():
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetFinancialInputs(request, metadata=metadata)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, name
        good = Signer(INTERNAL_SECRET, "gateway").metadata("team200-1")
        reply = await stub.GetFinancialInputs(request, metadata=(good, ("x-user-id", "team200-2")))
        assert reply.user_id.endswith("|team200-1"), "the statement's user, never the x-user-id header"


async def test_an_unreachable_database_is_unavailable_with_retry_after(grpc_stub):
    """A database that is briefly away is UNAVAILABLE (the gateway: 503 + Retry-After), not INTERNAL."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await grpc_stub.GetFinancialInputs(pb.GetFinancialInputsRequest(user_id="db-down"))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "database is unavailable" in err.value.details()
    assert ("retry-after", "2") in tuple(err.value.trailing_metadata())
