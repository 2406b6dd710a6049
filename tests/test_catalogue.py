"""The banks' product catalogues in sync_svc: read from the emulator banks, stored in Postgres, refreshed
when old, and the stored copy served while a bank is down (real emulator, real Postgres)."""

from __future__ import annotations

import datetime as dt

import aiohttp
import pytest

from bank_sandbox.app import start_banks
from bank_sandbox.config import SandboxConfig
from bank_sandbox.data import catalogue
from bankapi.client import BankClients
from bankapi.config import BankEndpoint, TeamCredentials
from svclib.config import BankConfig
from sync_svc.__main__ import SPEC
from sync_svc.catalogue import Catalogues
from sync_svc.catalogue_storage import CatalogueStorage
from tests.e2e import set_faults

TEAM = TeamCredentials(client_id="team200", client_secret="finpulse-dev-secret")
APPROVAL = {"vbank": "auto", "abank": "auto", "sbank": "manual"}


class Clock:
    def __init__(self):
        self.now = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
async def banks():
    running = await start_banks(SandboxConfig(approval=dict(APPROVAL)), dict.fromkeys(APPROVAL, 0))
    yield running
    await running.stop()


@pytest.fixture
async def catalogues(banks, schema_pool):
    pool = await schema_pool(SPEC)
    await pool.execute("TRUNCATE bank_products, catalogue_state")
    configs = [BankConfig(bank_id, bank_id.upper(), banks.urls[bank_id], mode) for bank_id, mode in APPROVAL.items()]
    clients = BankClients(
        [BankEndpoint(c.id, c.base_url, c.approval_mode) for c in configs], TEAM, max_retries=0, timeout=2
    )
    calls = []

    async def fetch(bank_id):
        calls.append(bank_id)
        return await clients.get(bank_id).get_products()

    clock = Clock()
    made = Catalogues(CatalogueStorage(pool), configs, fetch, clock=clock, wait=5.0)
    made.calls, made.clock_ = calls, clock
    yield made
    await made.close()
    await clients.close()


async def test_catalogues_are_read_once_stored_and_refreshed_when_old(catalogues):
    products, states = await catalogues.products([], "loan")
    expected = {
        (bank, p.product_id, p.interest_rate, p.min_amount, p.max_amount, p.term_months)
        for bank in APPROVAL
        for p in catalogue(42, bank).loans
    }
    assert {
        (p.bank_id, p.product_id, p.interest_rate, p.min_amount, p.max_amount, p.term_months) for p in products
    } == expected
    assert [p.bank_id for p in products] == sorted((p.bank_id for p in products), key=list(APPROVAL).index)
    assert all(p.product_type == "loan" and p.product_name for p in products)
    assert [(bank, state.fetched_at) for bank, state in states] == [(b, catalogues.clock_.now) for b in APPROVAL]
    assert sorted(catalogues.calls) == sorted(APPROVAL)

    deposits, _ = await catalogues.products(["abank"], "deposit")
    assert {p.product_id for p in deposits} == {p.product_id for p in catalogue(42, "abank").deposits}
    assert sorted(catalogues.calls) == sorted(APPROVAL), "stored copies answer while young"

    catalogues.clock_.now += dt.timedelta(hours=6)
    await catalogues.products(["vbank"], "")
    assert catalogues.calls[-1] == "vbank" and len(catalogues.calls) == 4, "refreshed once older than 6 hours"


async def test_a_bank_that_is_down_keeps_its_stored_copy(catalogues, banks):
    await catalogues.products([], "")
    async with aiohttp.ClientSession() as session:
        await set_faults(session, banks.urls["sbank"], error_rate=1.0)
    catalogues.clock_.now += dt.timedelta(hours=7)
    products, states = await catalogues.products(["sbank"], "loan")
    assert len(products) == 3, "the stored copy is answered"
    [(bank_id, state)] = states
    assert bank_id == "sbank" and state.last_error and state.fetched_at < catalogues.clock_.now
    calls = len(catalogues.calls)
    await catalogues.products(["sbank"], "loan")
    assert len(catalogues.calls) == calls, "a failed bank is not asked again within 5 minutes"
    async with aiohttp.ClientSession() as session:
        await set_faults(session, banks.urls["sbank"], error_rate=0.0)
    catalogues.clock_.now += dt.timedelta(minutes=6)
    _, [(_, state)] = await catalogues.products(["sbank"], "loan")
    assert state.last_error is None and state.fetched_at == catalogues.clock_.now


async def test_bad_requests_name_the_problem(catalogues):
    from svclib.errors import InvalidArgument, NotFound

    with pytest.raises(NotFound):
        await catalogues.products(["nobank"], "")
    with pytest.raises(InvalidArgument, match="product_type"):
        await catalogues.products([], "mortgage")
