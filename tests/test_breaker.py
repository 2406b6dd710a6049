"""The per-bank circuit breaker (bankapi.breaker): its rules with an injected clock, in one process and
shared by replicas through a real Redis, and how a BankClient uses it against the emulator."""

from __future__ import annotations

import uuid

import aiohttp
import pytest
import redis.asyncio as aioredis

from bank_sandbox.app import start_banks
from bank_sandbox.config import SandboxConfig
from bankapi import BankClient, BankUnavailable
from bankapi.breaker import Breaker, MemoryBreakerStore, RedisBreakerStore
from bankapi.config import BankEndpoint, TeamCredentials
from bankapi.errors import CircuitOpen


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def redis_store(redis_url):
    client = aioredis.from_url(redis_url, decode_responses=True)
    prefix = f"finpulse-test-{uuid.uuid4().hex[:8]}:breaker:"
    yield lambda: RedisBreakerStore(client, prefix)
    keys = [k async for k in client.scan_iter(match=prefix + "*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture(params=["memory", "redis"])
def store_factory(request, redis_store):
    if request.param == "memory":
        shared = MemoryBreakerStore()
        return lambda: shared
    shared_redis = redis_store()
    return lambda: shared_redis


async def test_five_failures_open_it_then_one_trial_per_doubling_cooldown(store_factory):
    clock = Clock()
    breaker = Breaker("vbank", store_factory(), clock)
    for _ in range(4):
        assert (await breaker.before_call()).allowed
        assert (await breaker.failed()).allowed, "still closed below the threshold"
    verdict = await breaker.failed()
    assert not verdict.allowed and verdict.failing_since == clock.now and verdict.next_try_at == clock.now + 10
    clock.now += 9.9
    refused = await breaker.before_call()
    assert not refused.allowed and refused.next_try_at == 1_000_010.0
    calls = 5
    for cooldown in (20, 40, 80, 120, 120):  # each failed trial doubles the wait, up to 120 s
        clock.now = refused.next_try_at
        assert (await breaker.before_call()).allowed, "the trial"
        assert not (await breaker.before_call()).allowed, "only one trial at a time"
        calls += 1
        refused = await breaker.failed()
        assert refused.next_try_at == clock.now + cooldown
    assert calls == 10
    clock.now = refused.next_try_at
    assert (await breaker.before_call()).allowed
    await breaker.succeeded()
    assert (await breaker.before_call()).allowed and (await breaker.before_call()).failing_since is None


async def test_replicas_share_one_breaker_through_redis(redis_store):
    clock = Clock()
    first, second = Breaker("abank", redis_store(), clock), Breaker("abank", redis_store(), clock)
    for _ in range(5):
        await first.failed()
    refused = await second.before_call()
    assert not refused.allowed and refused.next_try_at == clock.now + 10, "the other replica refuses too"
    clock.now += 10
    trials = [(await b.before_call()).allowed for b in (first, second, first)]
    assert trials.count(True) == 1, "one trial across replicas"
    assert (await Breaker("vbank", redis_store(), clock).before_call()).allowed, "breakers are per bank"


async def test_redis_down_falls_back_to_this_process():
    dead = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    clock = Clock()
    breaker = Breaker("sbank", RedisBreakerStore(dead, "x:"), clock)
    for _ in range(5):
        await breaker.failed()
    assert not (await breaker.before_call()).allowed
    await dead.aclose()


async def test_a_client_stops_calling_a_bank_that_is_down():
    banks = await start_banks(SandboxConfig(approval={"vbank": "auto"}), {"vbank": 0})
    try:
        team = TeamCredentials("team200", "finpulse-dev-secret")
        client = BankClient(
            BankEndpoint("vbank", banks.urls["vbank"]),
            team,
            max_retries=3,
            backoff_base=0.01,
            breaker_store=MemoryBreakerStore(),
        )
        await client.get_token()
        async with aiohttp.ClientSession() as session:
            await session.delete(f"{banks.urls['vbank']}/__admin__/requests")
            await session.post(f"{banks.urls['vbank']}/__admin__/down", json={"down": True})
            with pytest.raises(BankUnavailable) as first:
                await client.get_products()
            assert not isinstance(first.value, CircuitOpen) and first.value.attempts == 4
            with pytest.raises(CircuitOpen) as second:
                await client.get_products()  # the 5th failure opens the breaker
            with pytest.raises(CircuitOpen) as third:
                await client.get_products()  # not sent at all
            assert "vbank failing since" in third.value.message and "next try at" in third.value.message
            assert 0 < third.value.retry_after <= 10
            async with session.get(f"{banks.urls['vbank']}/__admin__/requests") as resp:
                assert (await resp.json())["total"] == 5
            assert second.value.attempts == 0
        await client.close()
    finally:
        await banks.stop()
