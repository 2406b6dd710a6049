"""Consents at the domain and storage level: `consent_svc.service.ConsentService` on the real `consent`
schema, asking the bank emulator (started in this process, so its fault knobs are at hand). The sync
queue is a recorder standing in for sync_svc (its real counterpart: tests/test_consents_e2e.py).

Covered here: no banks is refused; a failed creation is kept (FAILED, with its error, in the request's
language) and asking again replaces it; a payment consent at a manual bank is DEFERRED until the
account consent is approved, then requested; a bank's first sync is queued when its account consent
becomes APPROVED (and again after a product consent), best effort.
"""

from __future__ import annotations

import asyncio
import dataclasses

import aiohttp
import pytest

from bank_sandbox import SandboxConfig, start_banks
from bankapi import BankClients, MemoryTokenStore
from consent_svc.__main__ import SPEC
from consent_svc.model import BankRequest, consent_message, overall_status
from consent_svc.service import ConsentService
from consent_svc.storage import ConsentStorage
from svclib import i18n
from svclib.config import BankConfig, TeamCredentials
from svclib.errors import InvalidArgument
from tests.e2e import customer_signs

TEAM = TeamCredentials("team200", "finpulse-dev-secret", "FinPulse")
APPROVAL = {"vbank": "auto", "abank": "auto", "sbank": "manual"}


class RecordingSync:
    """The SyncQueue (sync_svc) as a recorder; `fail` makes every call raise."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str], str, bool]] = []
        self.fail = False

    async def start_sync(self, user_id: str, bank_ids: list[str], reason: str, *, after_change: bool = False) -> None:
        if self.fail:
            raise ConnectionError("sync_svc is down")
        self.calls.append((user_id, bank_ids, reason, after_change))


@dataclasses.dataclass
class Env:
    service: ConsentService
    storage: ConsentStorage
    sync: RecordingSync
    running: object
    pool: object

    async def rows(self, user: str, bank: str, kind: str) -> list[dict]:
        return [
            dict(r)
            for r in await self.pool.fetch(
                "SELECT id, status, consent_id, request_id, error_code, error_message, payment_type, debtor_account "
                "FROM consents WHERE user_id = $1 AND bank_id = $2 AND consent_type = $3 ORDER BY id",
                user,
                bank,
                kind,
            )
        ]

    async def events(self, row_id: int) -> list[tuple]:
        return [
            tuple(r)
            for r in await self.pool.fetch(
                "SELECT old_status, new_status, source FROM consent_events WHERE consent_row = $1 ORDER BY id", row_id
            )
        ]


@pytest.fixture
async def env(schema_pool):
    running = await start_banks(SandboxConfig(customers=10, approval=dict(APPROVAL)), dict.fromkeys(APPROVAL, 0))
    pool = await schema_pool(SPEC)
    configs = tuple(
        BankConfig(b, b.upper(), url, APPROVAL[b], "{base_url}/client/consents/{request_id}")
        for b, url in running.urls.items()
    )
    clients = BankClients(
        configs, team=TEAM, token_store=MemoryTokenStore(), timeout=5, max_retries=0, backoff_base=0.01
    )
    storage, sync = ConsentStorage(pool), RecordingSync()
    yield Env(ConsentService(storage, configs, clients, sync), storage, sync, running, pool)
    await clients.close()
    await running.stop()


def state(env: Env, bank_id: str):
    from bank_sandbox.app import STATE

    return env.running.apps[bank_id][STATE]


def by_bank(results) -> dict:
    return {r.bank.id: r for r in results}


async def status_of(env: Env, user: str) -> dict:
    return {bank_id: kinds for bank_id, kinds in await env.service.status(user)}


def in_language(language: str, make):
    token = i18n.language_var.set(language)
    try:
        return make()
    finally:
        i18n.language_var.reset(token)


async def test_no_banks_is_an_invalid_argument(env):
    with pytest.raises(InvalidArgument) as info:
        await env.service.create("team200-1", [])
    assert info.value.field == "banks"


async def test_a_failed_creation_is_kept_with_its_error_and_asking_again_replaces_it(env):
    user = "team200-1"
    state(env, "abank").down = True
    results = by_bank(
        await env.service.create(
            user, [BankRequest("abank", True, True, False), BankRequest("vbank", True, False, False)]
        )
    )
    account = results["abank"].outcomes["accounts"]
    assert account.status == "error" and account.consent.status == "FAILED"
    assert account.message.startswith("Банк сейчас недоступен") and "(503: " in account.message
    product = results["abank"].outcomes["products"]
    assert product.status == "error" and product.consent is None  # never asked: no account consent
    assert product.message == "Сначала нужно согласие на доступ к счетам в этом банке"
    assert overall_status(list(results.values())) == "error"
    [failed] = await env.rows(user, "abank", "accounts")
    assert (failed["status"], failed["consent_id"], failed["request_id"], failed["error_code"]) == (
        "FAILED",
        None,
        None,
        "BANK_UNAVAILABLE",
    )
    assert failed["error_message"].startswith("503: ")
    assert await env.rows(user, "abank", "products") == []

    shown = (await status_of(env, user))["abank"]["accounts"]
    assert shown.status == "FAILED"
    assert in_language("en", lambda: consent_message(shown)).startswith(
        "The bank is unavailable right now and the consent was not created"
    )
    assert in_language("ru", lambda: consent_message(shown)).startswith("Банк сейчас недоступен")

    # Still down: asking again fails again, in the same row.
    again = by_bank(await env.service.create(user, [BankRequest("abank", True, False, False)]))
    assert again["abank"].outcomes["accounts"].consent.status == "FAILED"
    assert [r["id"] for r in await env.rows(user, "abank", "accounts")] == [failed["id"]]

    state(env, "abank").down = False
    retried = by_bank(await env.service.create(user, [BankRequest("abank", True, True, False)]))
    assert retried["abank"].outcomes["accounts"].status == "approved"
    assert retried["abank"].outcomes["products"].status == "approved"
    [row] = await env.rows(user, "abank", "accounts")
    assert (row["id"], row["status"], row["error_code"], row["error_message"]) == (failed["id"], "APPROVED", None, None)
    assert row["consent_id"].startswith("consent-")
    assert await env.events(row["id"]) == [
        (None, "FAILED", "create"),
        ("FAILED", "FAILED", "retry"),
        ("FAILED", "APPROVED", "retry"),
    ]
    assert consent_message((await status_of(env, user))["abank"]["accounts"]) is None
    # The first sync of each bank was queued when its account consent was approved.
    assert env.sync.calls == [(user, ["vbank"], "consent_approved", False), (user, ["abank"], "consent_approved", True)]


async def test_a_refusal_by_the_bank_is_kept_as_failed_with_its_reason(env):
    user = "team200-2"
    await env.service.create(user, [BankRequest("vbank", True, False, False)])
    state(env, "vbank").faults = dataclasses.replace(state(env, "vbank").faults, refuse_payment_consents=True)
    [result] = await env.service.create(user, [BankRequest("vbank", True, False, True)])
    payment = result.outcomes["payments"]
    assert payment.status == "error" and payment.consent.error_code == "BANK_REFUSED"
    assert (
        in_language("en", lambda: payment.message)
        == "The bank refused to create the consent (401: Insufficient permissions)"
    )
    assert result.outcomes["accounts"].reused


async def test_payment_consent_at_a_manual_bank_waits_for_the_account_consent(env):
    user = "team200-3"
    sbank_url = env.running.urls["sbank"]
    [created] = await env.service.create(user, [BankRequest("sbank", True, True, True)])
    account, product, payment = (created.outcomes[k] for k in ("accounts", "products", "payments"))
    assert (account.status, product.status, payment.status) == ("pending", "pending", "pending")
    assert payment.consent.status == "DEFERRED" and payment.consent.request_id is None
    assert payment.message == (
        "Согласие на платежи будет запрошено, как только банк одобрит согласие на доступ к счетам"
    )
    assert (
        in_language("en", lambda: payment.message)
        == "The payment consent will be requested once the account consent is approved"
    )
    assert account.message is None  # simply waiting for the customer
    assert state(env, "sbank").counts(state(env, "sbank").customer(user))["payment_consents"] == 0
    [deferred] = await env.rows(user, "sbank", "payments")

    # Asking again keeps the one deferred consent.
    [again] = await env.service.create(user, [BankRequest("sbank", True, True, True)])
    assert again.outcomes["payments"].reused and again.outcomes["payments"].consent.id == deferred["id"]
    assert (await status_of(env, user))["sbank"]["payments"].status == "DEFERRED"
    assert env.sync.calls == []

    async with aiohttp.ClientSession() as session:
        await customer_signs(session, sbank_url, user, account.consent.request_id)
        status = await status_of(env, user)
        assert status["sbank"]["accounts"].status == "APPROVED"
        requested = status["sbank"]["payments"]
        assert requested.id == deferred["id"] and requested.status == "AWAITING_USER"
        assert requested.request_id.startswith("pcr-")
        assert requested.approval_url == f"{sbank_url}/client/consents/{requested.request_id}"
        assert consent_message(requested) is None
        assert env.sync.calls == [(user, ["sbank"], "consent_approved", False)]
        [row] = await env.rows(user, "sbank", "payments")
        assert (row["payment_type"], row["debtor_account"]) == ("vrp", requested.debtor_account)
        assert row["debtor_account"] and await env.events(row["id"]) == [
            (None, "DEFERRED", "create"),
            ("DEFERRED", "AWAITING_USER", "deferred"),
        ]
        terms = state(env, "sbank").consents.find(None, requested.request_id).terms
        assert (
            terms.consent_type,
            str(terms.vrp_max_individual_amount),
            str(terms.vrp_daily_limit),
            str(terms.vrp_monthly_limit),
        ) == ("vrp", "100000.00", "200000.00", "1000000.00")

        await customer_signs(session, sbank_url, user, product.consent.request_id, "product-agreement-consents")
        await customer_signs(session, sbank_url, user, requested.request_id, "payment-consents")
    status = await status_of(env, user)
    assert {kind: c.status for kind, c in status["sbank"].items()} == dict.fromkeys(
        ("accounts", "products", "payments"), "APPROVED"
    )
    assert status["sbank"]["payments"].consent_id.startswith("pcon-")
    # The product consent came later: another sync, after any running one.
    assert env.sync.calls[1:] == [(user, ["sbank"], "consent_approved", True)]


async def test_the_callback_requests_a_deferred_payment_consent_and_queues_the_sync(env):
    user = "team200-4"
    sbank = state(env, "sbank")
    sbank.faults = dataclasses.replace(sbank.faults, sticky_awaiting=True)  # polling never sees the approval
    [created] = await env.service.create(user, [BankRequest("sbank", True, False, True)])
    request_id = created.outcomes["accounts"].consent.request_id
    async with aiohttp.ClientSession() as session:
        signed = await customer_signs(session, env.running.urls["sbank"], user, request_id)
    assert (await status_of(env, user))["sbank"]["payments"].status == "DEFERRED"
    recorded = await env.service.callback(user, "sbank", request_id, signed["consent_id"])
    assert recorded.status == "APPROVED"
    payment = (await status_of(env, user))["sbank"]["payments"]
    assert payment.status == "AWAITING_USER" and payment.approval_url
    assert env.sync.calls == [(user, ["sbank"], "consent_approved", False)]


async def test_a_deferred_consent_that_cannot_be_created_fails_and_is_asked_again(env):
    user = "team200-5"
    [created] = await env.service.create(user, [BankRequest("sbank", True, False, True)])
    sbank = state(env, "sbank")
    sbank.faults = dataclasses.replace(sbank.faults, refuse_payment_consents=True)
    async with aiohttp.ClientSession() as session:
        await customer_signs(session, env.running.urls["sbank"], user, created.outcomes["accounts"].consent.request_id)
    failed = (await status_of(env, user))["sbank"]["payments"]
    assert failed.status == "FAILED" and failed.error_code == "BANK_REFUSED"
    sbank.faults = dataclasses.replace(sbank.faults, refuse_payment_consents=False)
    [again] = await env.service.create(user, [BankRequest("sbank", True, False, True)])
    assert again.outcomes["accounts"].reused and again.outcomes["payments"].consent.status == "AWAITING_USER"
    assert [r["id"] for r in await env.rows(user, "sbank", "payments")] == [failed.id]


async def test_rejected_and_revoked_consents_say_why_in_the_requests_language(env):
    user = "team200-6"
    created, _ = await env.service.create(
        user, [BankRequest("sbank", True, False, False), BankRequest("vbank", True, False, False)]
    )
    async with aiohttp.ClientSession() as session:
        await customer_signs(
            session, env.running.urls["sbank"], user, created.outcomes["accounts"].consent.request_id, action="reject"
        )
    vbank_consent = (await status_of(env, user))["vbank"]["accounts"]
    await env.service.revoke(user, vbank_consent.consent_id)
    status = await status_of(env, user)
    rejected, revoked = status["sbank"]["accounts"], status["vbank"]["accounts"]
    assert (rejected.status, revoked.status) == ("REJECTED", "REVOKED")
    assert consent_message(rejected) == "Согласие отклонено в банке"
    assert in_language("en", lambda: consent_message(rejected)) == "The bank rejected the consent"
    assert in_language("en", lambda: consent_message(revoked)) == "The consent was revoked"
    assert consent_message(revoked) == "Согласие отозвано"


async def test_a_failing_sync_queue_never_fails_the_consent_call(env):
    user = "team200-7"
    env.sync.fail = True
    [created] = await env.service.create(user, [BankRequest("vbank", True, True, False)])
    assert created.outcomes["accounts"].status == "approved" and created.outcomes["products"].status == "approved"


async def test_more_concurrent_creations_than_pooled_connections_all_finish(env):
    """Each creation holds a pooled connection for its lock and takes another for its rows: ten users at
    once on a pool of five (the fixture's) must all get their consents, not wait on each other for ever."""
    assert env.pool.get_max_size() < 10
    users = [f"team200-{n}" for n in range(1, 11)]
    results = await asyncio.wait_for(
        asyncio.gather(*(env.service.create(user, [BankRequest("vbank", True, True, False)]) for user in users)),
        timeout=60,
    )
    for result in results:
        outcomes = by_bank(result)["vbank"].outcomes
        assert outcomes["accounts"].consent.status == "APPROVED" and outcomes["products"].consent.status == "APPROVED"
