"""The dashboard's two-level cache (Redis, then the dashboard_cache table) on real Postgres and Redis.

sync_svc is played by `FakeBankData` (a data version the test moves, and a count of computations);
the calculation is the real one, on an empty data set.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import pytest

from dashboard_svc.__main__ import SPEC
from dashboard_svc.model import FinancialInputs, Goals
from dashboard_svc.service import DashboardService, Gathered
from dashboard_svc.storage import DashboardStorage
from svclib.cache import Cache

EMPTY = {
    "accounts": [],
    "credits": [],
    "repayments": [],
    "income_days": [],
    "cash_flow": [],
    "spending_30d": [],
    "spent_today": [],
    "recent_transactions": [],
    "banks": [],
}


class FakeBankData:
    def __init__(self):
        self.version = 1
        self.gathered = 0

    async def data_version(self, user_id: str) -> int:
        return self.version

    async def gather(self, user_id: str, now: dt.datetime) -> Gathered:
        self.gathered += 1
        await asyncio.sleep(0.05)  # long enough for concurrent requests to pile up
        return Gathered(dict(EMPTY), self.version, None)

    async def goals(self, user_id: str) -> Goals:
        return Goals()


class Clock:
    def __init__(self):
        self.now = dt.datetime.now(dt.UTC)  # near the database's own now(): expiry uses both

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
async def parts(schema_pool, cache):
    pool = await schema_pool(SPEC)
    data, clock = FakeBankData(), Clock()
    return DashboardService(DashboardStorage(pool), cache, data, clock=clock), data, clock, pool


@pytest.fixture
def user() -> str:
    return f"dash-{uuid.uuid4().hex[:8]}"


async def test_second_call_is_cached_until_fresh_time_or_version_changes(parts, user):
    service, data, clock, _ = parts
    first = await service.dashboard(user, False)
    assert not first.is_cached and data.gathered == 1
    second = await service.dashboard(user, False)
    assert second.is_cached and second.calculated_at == first.calculated_at and data.gathered == 1

    clock.now += dt.timedelta(minutes=14)
    assert (await service.dashboard(user, False)).is_cached
    clock.now += dt.timedelta(minutes=2)  # 16 minutes old: recomputed
    third = await service.dashboard(user, False)
    assert not third.is_cached and data.gathered == 2

    data.version += 1  # a sync committed new data: the next answer is recomputed at once
    fourth = await service.dashboard(user, False)
    assert not fourth.is_cached and fourth.data_version == data.version and data.gathered == 3


async def test_force_refresh_recomputes(parts, user):
    service, data, _, _ = parts
    await service.dashboard(user, False)
    forced = await service.dashboard(user, True)
    assert not forced.is_cached and data.gathered == 2


async def test_changed_inputs_invalidate_both_levels(parts, user):
    service, data, _, pool = parts
    await service.dashboard(user, False)
    await service.put_inputs(user, FinancialInputs())
    assert await pool.fetchval("SELECT count(*) FROM dashboard_cache WHERE user_id = $1", user) == 0
    assert not (await service.dashboard(user, False)).is_cached and data.gathered == 2


async def test_one_computation_per_user_under_concurrency(parts, user):
    service, data, _, _ = parts
    answers = await asyncio.gather(*(service.dashboard(user, False) for _ in range(20)))
    assert data.gathered == 1
    assert sum(1 for a in answers if not a.is_cached) == 1
    assert len({a.calculated_at for a in answers}) == 1


async def test_table_serves_when_redis_is_down(schema_pool, user):
    pool = await schema_pool(SPEC)
    data, clock = FakeBankData(), Clock()
    dead = Cache("redis://127.0.0.1:1/0", socket_timeout=0.2)  # nothing listens there
    service = DashboardService(DashboardStorage(pool), dead, data, clock=clock)
    first = await service.dashboard(user, False)
    second = await service.dashboard(user, False)
    assert not first.is_cached and second.is_cached and data.gathered == 1
    await dead.close()


async def test_expired_table_entry_is_not_served(parts, user):
    service, _data, _clock, pool = parts
    await service.dashboard(user, False)
    await service.cache.delete(service.cache.key("dashboard", user))
    await pool.execute("UPDATE dashboard_cache SET expires_at = now() - interval '1 second' WHERE user_id = $1", user)
    assert not (await service.dashboard(user, False)).is_cached
