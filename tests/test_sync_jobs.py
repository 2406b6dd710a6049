"""sync_svc's bank list and durable job queue over gRPC (pytest-grpc contract, real Postgres)."""
from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from finpulse.sync.v1 import sync_pb2 as pb
from finpulse.sync.v1 import sync_pb2_grpc as pb_grpc

from svclib.config import load_settings
from sync_svc.__main__ import SPEC
from sync_svc.servicer import SyncServicer
from sync_svc.service import SyncService
from sync_svc.storage import SyncStorage

CONNECTED = {"vbank", "abank"}  # what consent_svc would answer: approved account consents


@pytest.fixture
def grpc_add_to_server():
    return pb_grpc.add_SyncServiceServicer_to_server


@pytest.fixture
async def pool(schema_pool):
    return await schema_pool(SPEC)


@pytest.fixture
def grpc_servicer(pool):
    async def connected(user_id: str) -> set[str]:
        return CONNECTED if user_id.startswith("connected-") else set()

    settings = load_settings({"FINPULSE_BANKS": "vbank,abank,sbank", "FINPULSE_BANK_SBANK_URL": ""})
    return SyncServicer(SyncService(SyncStorage(pool), settings.banks, connected))


@pytest.fixture
def grpc_stub_cls():
    return pb_grpc.SyncServiceStub


async def test_bank_list_in_configured_order_with_connection(grpc_stub):
    user = f"connected-{uuid.uuid4().hex[:6]}"
    reply = await grpc_stub.ListBanks(pb.ListBanksRequest(user_id=user))
    assert [(b.id, b.name, b.connected, b.status) for b in reply.banks] == [
        ("vbank", "VBank", True, "configured"), ("abank", "ABank", True, "configured"),
        ("sbank", "SBank", False, "configured")]
    assert reply.banks[2].approval_mode == "manual"
    anonymous = await grpc_stub.ListBanks(pb.ListBanksRequest())
    assert not any(b.connected for b in anonymous.banks)


async def test_unconfigured_bank_is_listed_as_missing_url(pool):
    settings = load_settings({"FINPULSE_ENV": "production", "FINPULSE_DATABASE_URL": "postgresql://x/y",
                              "FINPULSE_REDIS_URL": "redis://x", "FINPULSE_TEAM_SECRET": "s",
                              "FINPULSE_BANK_VBANK_URL": "https://vbank.example"})

    async def connected(user_id: str) -> set[str]:
        return set()

    listings = await SyncService(SyncStorage(pool), settings.banks, connected).list_banks(None)
    assert [(item.bank.id, item.bank.base_url) for item in listings] == [
        ("vbank", "https://vbank.example"), ("abank", None), ("sbank", None)]


async def test_start_sync_queues_once_and_joins(grpc_stub, pool):
    user = f"connected-{uuid.uuid4().hex[:6]}"
    first = await grpc_stub.StartSync(pb.StartSyncRequest(user_id=user, reason="onboarding"))
    assert sorted(j.bank_id for j in first.jobs) == ["abank", "vbank"]
    assert all(j.state == pb.JOB_STATE_QUEUED and not j.joined for j in first.jobs)

    # Concurrent requests for the same user join the job in flight: still one job per bank.
    replies = await asyncio.gather(*(grpc_stub.StartSync(pb.StartSyncRequest(user_id=user, bank_ids=["vbank"]))
                                     for _ in range(10)))
    assert {r.jobs[0].job_id for r in replies} == {j.job_id for j in first.jobs if j.bank_id == "vbank"}
    assert all(r.jobs[0].joined for r in replies)
    count = await pool.fetchval("SELECT count(*) FROM sync_jobs WHERE user_id = $1", user)
    assert count == 2

    # Once a job has finished, a new request queues a new one.
    await pool.execute("UPDATE sync_jobs SET state = 'succeeded' WHERE user_id = $1 AND bank_id = 'vbank'", user)
    again = await grpc_stub.StartSync(pb.StartSyncRequest(user_id=user, bank_ids=["vbank"]))
    assert not again.jobs[0].joined


@pytest.mark.parametrize("request_, code", [
    (pb.StartSyncRequest(user_id=""), grpc.StatusCode.INVALID_ARGUMENT),
    (pb.StartSyncRequest(user_id="connected-x", bank_ids=["nobank"]), grpc.StatusCode.NOT_FOUND),
    (pb.StartSyncRequest(user_id="connected-x", bank_ids=["vbank", "vbank"]), grpc.StatusCode.INVALID_ARGUMENT),
    (pb.StartSyncRequest(user_id="connected-x", bank_ids=["sbank"]), grpc.StatusCode.INVALID_ARGUMENT),
])
async def test_start_sync_rejects_bad_requests(grpc_stub, request_, code):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await grpc_stub.StartSync(request_)
    assert err.value.code() == code
    assert err.value.details()
