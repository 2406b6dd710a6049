"""sync_svc's bank list and durable job queue over gRPC (pytest-grpc contract, real Postgres).

consent_svc is played by `connected` (users named connected-… have vbank and abank connected).
"""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import grpc
import pytest
from finpulse.sync.v1 import sync_pb2 as pb
from finpulse.sync.v1 import sync_pb2_grpc as pb_grpc

from svclib.config import load_settings
from sync_svc.__main__ import SPEC
from sync_svc.bank_storage import BankDataStorage
from sync_svc.catalogue import Catalogues
from sync_svc.catalogue_storage import CatalogueStorage
from sync_svc.service import SyncService
from sync_svc.servicer import SyncServicer
from sync_svc.storage import JobStorage

CONNECTED = {"vbank", "abank"}  # what consent_svc would answer: approved account consents


@pytest.fixture
def grpc_add_to_server():
    return pb_grpc.add_SyncServiceServicer_to_server


@pytest.fixture
async def pool(schema_pool):
    return await schema_pool(SPEC)


async def connected(user_id: str) -> set[str]:
    return CONNECTED if user_id.startswith("connected-") else set()


def make_service(pool, cache, settings) -> SyncService:
    return SyncService(JobStorage(pool), BankDataStorage(pool), cache, settings.banks, connected)


async def no_bank(bank_id: str):
    raise ConnectionError(f"{bank_id} is not reachable from these tests")


@pytest.fixture
def grpc_servicer(pool, cache):
    settings = load_settings({})
    return SyncServicer(
        make_service(pool, cache, settings), Catalogues(CatalogueStorage(pool), settings.banks, no_bank)
    )


@pytest.fixture
def grpc_stub_cls():
    return pb_grpc.SyncServiceStub


async def test_bank_list_in_configured_order_with_connection(grpc_stub):
    user = f"connected-{uuid.uuid4().hex[:6]}"
    reply = await grpc_stub.ListBanks(pb.ListBanksRequest(user_id=user))
    assert [(b.id, b.name, b.connected, b.status) for b in reply.banks] == [
        ("vbank", "VBank", True, "configured"),
        ("abank", "ABank", True, "configured"),
        ("sbank", "SBank", False, "configured"),
    ]
    assert reply.banks[2].approval_mode == "manual"
    anonymous = await grpc_stub.ListBanks(pb.ListBanksRequest())
    assert not any(b.connected for b in anonymous.banks)


async def test_unconfigured_bank_is_listed_as_missing_url(pool, cache):
    settings = load_settings(
        {
            "FINPULSE_ENV": "production",
            "FINPULSE_DATABASE_URL": "postgresql://x/y",
            "FINPULSE_REDIS_URL": "redis://x",
            "FINPULSE_TEAM_SECRET": "s",
            "FINPULSE_BANK_VBANK_URL": "https://vbank.example",
        }
    )
    listings = await make_service(pool, cache, settings).list_banks(None)
    assert [(item.bank.id, item.bank.base_url) for item in listings] == [
        ("vbank", "https://vbank.example"),
        ("abank", None),
        ("sbank", None),
    ]


async def test_start_sync_queues_once_and_joins(grpc_stub, pool):
    user = f"connected-{uuid.uuid4().hex[:6]}"
    first = await grpc_stub.StartSync(pb.StartSyncRequest(user_id=user, reason="onboarding"))
    assert sorted(j.bank_id for j in first.jobs) == ["abank", "vbank"]
    assert all(j.state == pb.JOB_STATE_QUEUED and not j.joined for j in first.jobs)

    # Concurrent requests for the same user join the job in flight: still one job per bank.
    replies = await asyncio.gather(
        *(grpc_stub.StartSync(pb.StartSyncRequest(user_id=user, bank_ids=["vbank"])) for _ in range(10))
    )
    assert {r.jobs[0].job_id for r in replies} == {j.job_id for j in first.jobs if j.bank_id == "vbank"}
    assert all(r.jobs[0].joined for r in replies)
    count = await pool.fetchval("SELECT count(*) FROM sync_jobs WHERE user_id = $1", user)
    assert count == 2

    # Once a job has finished, a new request queues a new one.
    await pool.execute("UPDATE sync_jobs SET state = 'succeeded' WHERE user_id = $1 AND bank_id = 'vbank'", user)
    again = await grpc_stub.StartSync(pb.StartSyncRequest(user_id=user, bank_ids=["vbank"]))
    assert not again.jobs[0].joined


@pytest.mark.parametrize(
    "request_, code",
    [
        (pb.StartSyncRequest(user_id=""), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.StartSyncRequest(user_id="connected-x", bank_ids=["nobank"]), grpc.StatusCode.NOT_FOUND),
        (pb.StartSyncRequest(user_id="connected-x", bank_ids=["vbank", "vbank"]), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.StartSyncRequest(user_id="connected-x", bank_ids=["sbank"]), grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
async def test_start_sync_rejects_bad_requests(grpc_stub, request_, code):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await grpc_stub.StartSync(request_)
    assert err.value.code() == code
    assert err.value.details()


async def test_concurrent_claims_take_each_job_once(pool):
    jobs = JobStorage(pool)
    users = [f"claim-{uuid.uuid4().hex[:6]}" for _ in range(6)]
    queued = {(await jobs.enqueue(u, "vbank", "test")).job_id for u in users}
    claims = await asyncio.gather(*(jobs.claim(f"w{i}", 30) for i in range(20)))
    taken = [c.job_id for c in claims if c is not None and c.job_id in queued]
    assert sorted(taken) == sorted(queued), "every job claimed exactly once"
    assert all(c.attempts == 1 and c.state == "running" for c in claims if c is not None and c.job_id in queued)


async def test_expired_lease_is_taken_over_and_the_old_worker_loses_it(pool):
    jobs = JobStorage(pool)
    user = f"lease-{uuid.uuid4().hex[:6]}"
    ref = await jobs.enqueue(user, "vbank", "test")
    await pool.execute("UPDATE sync_jobs SET run_after = now() - interval '1 hour' WHERE job_id = $1", ref.job_id)
    first = await jobs.claim("dead-worker", 30)
    while first is not None and first.job_id != ref.job_id:  # other tests' jobs may be due too
        first = await jobs.claim("dead-worker", 30)
    assert first is not None
    await pool.execute("UPDATE sync_jobs SET lease_until = now() - interval '1 second' WHERE job_id = $1", ref.job_id)
    second = await jobs.claim("live-worker", 30)
    while second is not None and second.job_id != ref.job_id:
        second = await jobs.claim("live-worker", 30)
    assert second is not None and second.attempts == 2 and second.worker_id == "live-worker"
    assert not await jobs.heartbeat(ref.job_id, "dead-worker", 30, {}), "the dead worker's lease is gone"
    assert not await jobs.finish(ref.job_id, "dead-worker", "succeeded", {})
    assert await jobs.retry_later(ref.job_id, "live-worker", 60, "bank down")
    again = await jobs.get(ref.job_id)
    assert again.state == "queued" and again.last_error == "bank down" and again.worker_id is None


def test_read_cache_round_trips_stored_rows_exactly():
    """The bootstrap read cache stores rows as JSON; they come back with Decimal money and aware times."""
    import datetime as dt
    from decimal import Decimal

    from sync_svc.bank_storage import StoredAccount, StoredCredit
    from sync_svc.service import _dump, _rebuild

    now = dt.datetime.now(dt.UTC)
    credit = StoredCredit(
        "vbank",
        "loan-1",
        "prod-1",
        "loan",
        "Ипотека",
        Decimal("895465.41"),
        None,
        "active",
        now,
        None,
        "40817810000000000001",
        Decimal("10.05"),
        now,
    )
    account = StoredAccount(
        "vbank",
        "acc-1",
        "Enabled",
        "RUB",
        "Personal",
        "Checking",
        "Main",
        dt.date(2024, 10, 30),
        "40817810000000000001",
        "Ivan",
        now,
        now,
    )
    assert _rebuild(StoredCredit, [_dump(credit)]) == [credit]
    assert _rebuild(StoredAccount, [_dump(account)]) == [account]


async def test_a_change_at_the_bank_during_a_running_sync_queues_another_after_it(grpc_stub, pool):
    """A payment completes while a sync of its bank runs (and may have read the balances before it):
    StartSync(after_change) joins the running job and its end queues a successor; a plain join, or
    a join of a job that has not started yet, does not."""
    jobs = JobStorage(pool)
    user = f"connected-{uuid.uuid4().hex[:6]}"

    async def start(after_change: bool) -> pb.StartSyncResponse:
        return await grpc_stub.StartSync(
            pb.StartSyncRequest(user_id=user, bank_ids=["vbank"], reason="payment", after_change=after_change)
        )

    async def jobs_of_user() -> list:
        return await pool.fetch(
            "SELECT job_id, state, reason FROM sync.sync_jobs WHERE user_id = $1 ORDER BY created_at", user
        )

    await start(False)
    queued = await start(True)  # joins a job that has not run yet: it will read after the change
    assert queued.jobs[0].joined
    claimed = await _claim_for(jobs, user)
    assert not await pool.fetchval("SELECT rerun FROM sync.sync_jobs WHERE job_id = $1", claimed.job_id)
    assert (await start(False)).jobs[0].joined  # a plain refresh joins and changes nothing
    assert await jobs.finish(claimed.job_id, claimed.worker_id, "succeeded", {})
    assert [r["state"] for r in await jobs_of_user()] == ["succeeded"]

    await start(False)
    running = await _claim_for(jobs, user)
    assert (await start(True)).jobs[0].joined
    assert await jobs.finish(running.job_id, running.worker_id, "succeeded", {})
    rows = await jobs_of_user()
    assert [(r["state"], r["reason"]) for r in rows] == [
        ("succeeded", "payment"),
        ("succeeded", "payment"),
        ("queued", "after_change"),
    ]

    # Sent back to the queue to retry, the job reads everything again: no successor needed.
    successor = await _claim_for(jobs, user)
    assert (await start(True)).jobs[0].joined
    assert await jobs.retry_later(successor.job_id, successor.worker_id, 0, "bank down")
    again = await _claim_for(jobs, user)
    assert await jobs.finish(again.job_id, again.worker_id, "succeeded", {})
    assert [r["state"] for r in await jobs_of_user()] == ["succeeded"] * 3


async def _claim_for(jobs: JobStorage, user: str):
    """Claim jobs until this user's is taken (other tests' jobs may be queued in the same schema)."""
    for _ in range(50):
        job = await jobs.claim(f"worker-{uuid.uuid4().hex[:6]}", 30)
        assert job is not None, "the user's job was not claimable"
        if job.user_id == user:
            return job
    raise AssertionError("too many foreign jobs")


class _DatabaseGone:
    """consent_svc as a job meets it while Postgres restarts: the job's first database touch fails."""

    async def for_bank(self, user_id: str, bank_id: str):
        raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")


class _FlakyJobs(JobStorage):
    """The job queue while the database comes back: the first `fail` outcome writes find it unavailable."""

    def __init__(self, pool, fail: int):
        super().__init__(pool)
        self.fail = fail

    async def retry_later(self, *args, **kwargs) -> bool:
        if self.fail > 0:
            self.fail -= 1
            raise ConnectionRefusedError(111, "Connect call failed")
        return await super().retry_later(*args, **kwargs)


async def test_a_job_cut_short_by_the_database_runs_again_soon_and_the_attempt_does_not_count(pool, cache):
    from sync_svc.worker import SyncWorkers, WorkerConfig

    user = f"dbgone-{uuid.uuid4().hex[:6]}"
    jobs = _FlakyJobs(pool, fail=2)  # and its outcome is written once the database answers again
    workers = SyncWorkers(
        jobs,
        BankDataStorage(pool),
        banks=None,
        consents=_DatabaseGone(),
        cache=cache,
        config=WorkerConfig(backoff_base=1.0, max_attempts=1),
    )
    ref = await jobs.enqueue(user, "vbank", "test")
    for _ in range(50):
        job = await jobs.claim(workers.worker_id, 30)
        if job is not None and job.job_id == ref.job_id:
            break
    assert job is not None and job.attempts == 1
    await workers.process(job)
    again = await jobs.get(ref.job_id)
    assert again.state == "queued" and again.worker_id is None and jobs.fail == 0
    assert again.attempts == 0, "not counted: even max_attempts=1 does not give up"
    assert (again.run_after - again.updated_at).total_seconds() <= 1.0, "runs again within a second"
    assert "closed in the middle of operation" in again.last_error
    assert await BankDataStorage(pool).sync_state(user, "vbank") is None, "no failure recorded at the bank"


async def test_retry_later_may_refund_the_attempt(pool):
    jobs = JobStorage(pool)
    user = f"refund-{uuid.uuid4().hex[:6]}"
    await jobs.enqueue(user, "vbank", "test")
    job = await _claim_for(jobs, user)
    assert await jobs.retry_later(job.job_id, job.worker_id, 0, "database restarting", refund_attempt=True)
    assert (await jobs.get(job.job_id)).attempts == 0
    job = await _claim_for(jobs, user)
    assert await jobs.retry_later(job.job_id, job.worker_id, 0, "bank down")
    assert (await jobs.get(job.job_id)).attempts == 1


async def test_bootstrap_does_not_wait_for_a_job_that_retries_after_its_deadline(pool, cache):
    """A bank whose last attempt failed waits to retry; a bootstrap joining it answers what is stored at
    once instead of waiting its whole deadline for a job that cannot run before it."""
    settings = load_settings({})
    service = SyncService(JobStorage(pool), BankDataStorage(pool), cache, settings.banks, connected, bootstrap_wait=5.0)
    user = f"connected-{uuid.uuid4().hex[:6]}"
    jobs = JobStorage(pool)
    await jobs.enqueue(user, "vbank", "test")
    job = await _claim_for(jobs, user)
    assert await jobs.retry_later(job.job_id, job.worker_id, 60, "bank down")
    started = asyncio.get_running_loop().time()
    snapshot = await service.bootstrap(user, "vbank", 10, "", skip_sync=False)
    assert asyncio.get_running_loop().time() - started < 2
    assert snapshot.from_cache and snapshot.status.job.job_id == job.job_id and snapshot.status.job.state == "queued"
