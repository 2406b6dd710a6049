"""Consents end to end: gateway → consent_svc (→ sync_svc) → the bank emulator, the suite's real processes.

Failed creations shown and retried, the payment consent deferred at the manual-approval bank until the
account consent is approved, texts for people in the request's language, the first sync queued when a
bank is connected (no finalize), and loan repayments through the standing consent at the manual bank
(no customer per instalment, exactly once across a crash).

Every test takes its own emulator customers (team200-25, 36, 40), so their consents, syncs and money
do not overlap another test's.
"""

from __future__ import annotations

import asyncio
import signal
import uuid

import aiohttp
import pytest

from tests.e2e import Http, customer_signs, eventually, set_faults, wait_synced

pytestmark = pytest.mark.timeout(300)

EN = {"Accept-Language": "en-US,en;q=0.9"}


def _bank(body: dict, bank_id: str) -> dict:
    return next(r for r in body["results"] if r["bank_id"] == bank_id)


async def consents(http: Http, user: str, banks: dict[str, dict], headers: dict | None = None) -> tuple[int, dict]:
    return await http.call(
        "POST",
        "/api/onboarding/consents",
        headers=headers,
        json={
            "user_id": user,
            "banks": [
                {"bank_id": bank, "consents": {"account": False, "product": False, "payment": False, **kinds}}
                for bank, kinds in banks.items()
            ],
        },
    )


async def consent_status(http: Http, user: str, headers: dict | None = None) -> dict:
    status, body = await http.call("GET", "/api/onboarding/consents/status", params={"user_id": user}, headers=headers)
    assert status == 200, body
    return body


async def sync_jobs(http: Http, user: str) -> dict[str, dict]:
    """The banks whose newest sync job exists, by bank id."""
    status, body = await http.get("/api/sync/status", user_id=user)
    assert status == 200, body
    return {b["bank_id"]: b for b in body["banks"] if b.get("job_id")}


async def counts(session: aiohttp.ClientSession, bank_url: str, user: str) -> dict:
    async with session.get(f"{bank_url}/__admin__/customers/{user}/counts") as resp:
        assert resp.status == 200
        return await resp.json()


async def test_consents_for_no_bank_are_a_400(http):
    user = "team200-25"
    for body in ({"user_id": user, "banks": []}, {"user_id": user}):
        status, answer = await http.post("/api/onboarding/consents", body)
        assert status == 400 and "banks" in answer["message"], answer


async def test_a_failed_consent_shows_with_its_error_and_asking_again_replaces_it(http, bank_urls, db):
    user = "team200-25"
    async with aiohttp.ClientSession() as session:
        await set_faults(session, bank_urls["abank"], error_rate=1.0)
        try:
            status, created = await consents(
                http, user, {"vbank": {"account": True, "product": True}, "abank": {"account": True}}
            )
        finally:
            await set_faults(session, bank_urls["abank"], error_rate=0.0)
    assert status == 200, created
    assert created["overall_status"] == "error"
    failed = _bank(created, "abank")["account_consent"]
    assert failed["status"] == "error" and failed["raw_status"] == "FAILED" and failed["consent_id"] is None
    assert failed["error_message"].startswith("Банк сейчас недоступен")

    # The status keeps it (in English when asked so), with the bank's answer for support.
    shown = _bank(await consent_status(http, user, EN), "abank")["account_consent"]
    assert (shown["status"], shown["raw_status"], shown["consent_id"]) == ("error", "FAILED", None)
    assert shown["error_message"].startswith("The bank is unavailable right now and the consent was not created")
    assert "(50" in shown["error_message"]
    assert _bank(await consent_status(http, user), "vbank")["account_consent"]["error_message"] is None

    # vbank is connected: its first sync was queued at the approval, before any finalize.
    jobs = await sync_jobs(http, user)
    assert "vbank" in jobs and "abank" not in jobs
    assert (
        await db.fetchval(
            "SELECT reason FROM sync.sync_jobs WHERE user_id = $1 AND bank_id = 'vbank' ORDER BY created_at LIMIT 1",
            user,
        )
        == "consent_approved"
    )

    status, retried = await consents(http, user, {"abank": {"account": True}})
    assert status == 200 and retried["overall_status"] == "completed", retried
    account = _bank(retried, "abank")["account_consent"]
    assert account["status"] == "approved" and account["consent_id"].startswith("consent-")
    assert account.get("error_message") is None
    rows = await db.fetch(
        "SELECT status, error_message FROM consent.consents "
        "WHERE user_id = $1 AND bank_id = 'abank' AND consent_type = 'accounts'",
        user,
    )
    assert [(r["status"], r["error_message"]) for r in rows] == [("APPROVED", None)]  # replaced, not piled up

    async def abank_queued():
        return "abank" in await sync_jobs(http, user)

    assert await eventually(abank_queued, timeout=15), "abank's first sync was not queued at its approval"
    await wait_synced(http, user)


async def test_the_payment_consent_at_the_manual_bank_waits_for_the_account_consent(http, bank_urls):
    user = "team200-36"
    sbank = bank_urls["sbank"]
    status, created = await consents(http, user, {"sbank": {"account": True, "payment": True}}, EN)
    assert status == 200, created
    assert created["overall_status"] == "in_progress"
    result = _bank(created, "sbank")
    account, payment = result["account_consent"], result["payment_consent"]
    assert account["status"] == "pending" and account["approval_url"] and account.get("error_message") is None
    assert (payment["status"], payment["raw_status"]) == ("pending", "DEFERRED")
    assert payment["request_id"] is None and payment["approval_url"] is None
    assert payment["error_message"] == "The payment consent will be requested once the account consent is approved"

    shown = _bank(await consent_status(http, user), "sbank")["payment_consent"]
    assert (shown["status"], shown["raw_status"]) == ("pending", "DEFERRED")
    assert shown["error_message"].startswith("Согласие на платежи будет запрошено")
    assert "sbank" not in await sync_jobs(http, user)
    async with aiohttp.ClientSession() as session:
        assert (await counts(session, sbank, user))["payment_consents"] == 0

        # The customer approves the account consent; the next poll asks sbank for the payment consent.
        await customer_signs(session, sbank, user, account["request_id"])

        async def payment_requested():
            body = _bank(await consent_status(http, user), "sbank")
            return body if body["payment_consent"]["raw_status"] == "AWAITING_USER" else None

        polled = await eventually(payment_requested)
        assert polled, "the deferred payment consent was not requested after the approval"
        assert polled["account_consent"]["status"] == "approved"
        requested = polled["payment_consent"]
        assert requested["status"] == "pending" and requested["request_id"].startswith("pcr-")
        assert requested["approval_url"] and requested["request_id"] in requested["approval_url"]
        assert requested.get("error_message") is None
        assert (await counts(session, sbank, user))["payment_consents"] == 1
        assert "sbank" in await sync_jobs(http, user), "the first sync is queued at the account approval"

        await customer_signs(session, sbank, user, requested["request_id"], "payment-consents")

        async def payment_approved():
            body = _bank(await consent_status(http, user), "sbank")
            return body if body["payment_consent"]["status"] == "approved" else None

        approved = await eventually(payment_approved)
        assert approved and approved["payment_consent"]["consent_id"].startswith("pcon-")

    # Asking again reuses all of it.
    status, again = await consents(http, user, {"sbank": {"account": True, "payment": True}})
    assert status == 200 and again["overall_status"] == "completed"
    assert _bank(again, "sbank")["payment_consent"]["reused"] is True
    await wait_synced(http, user)


async def test_a_loan_repayment_through_the_standing_consent_needs_no_approval_and_pays_once(
    suite, http, bank_urls, db
):
    user = "team200-40"
    sbank = bank_urls["sbank"]
    status, created = await consents(http, user, {"sbank": {"account": True, "product": True, "payment": True}})
    assert status == 200, created
    result = _bank(created, "sbank")
    async with aiohttp.ClientSession() as session:
        await customer_signs(session, sbank, user, result["account_consent"]["request_id"])
        await customer_signs(
            session, sbank, user, result["product_consent"]["request_id"], "product-agreement-consents"
        )

        async def payment_requested():
            body = _bank(await consent_status(http, user), "sbank")
            return (
                body["payment_consent"]["request_id"]
                if body["payment_consent"]["raw_status"] == "AWAITING_USER"
                else None
            )

        request_id = await eventually(payment_requested)
        assert request_id
        await customer_signs(session, sbank, user, request_id, "payment-consents")

        async def all_approved():
            body = _bank(await consent_status(http, user), "sbank")
            kinds = ("account_consent", "product_consent", "payment_consent")
            return body if all(body[k]["status"] == "approved" for k in kinds) else None

        approved = await eventually(all_approved)
        assert approved
        standing_id = approved["payment_consent"]["consent_id"]
        await wait_synced(http, user)  # the syncs queued at the approvals: no finalize

        status, stored = await http.get("/api/banks/sbank/bootstrap", user_id=user, skip_sync="true", page_size="5")
        assert status == 200, stored
        source = next(a for a in stored["accounts"] if a["account_sub_type"] == "Checking")
        loan = next(c for c in stored["credits"] if c["product_type"] == "loan" and c["status"] == "active")
        before = await counts(session, sbank, user)
        assert (before["payments"], before["payment_consents"]) == (0, 1)
        body = {"user_id": user, "bank_id": "sbank", "account_id": source["account_id"], "amount": "1000.00"}
        path = f"/api/loans/{loan['agreement_id']}/repayment"

        status, answer = await http.call("POST", path, json=body, headers={"Idempotency-Key": f"e2e-{uuid.uuid4()}"})
        assert status == 200, answer
        payment = answer["payment"]
        assert payment["status"] == "PAYMENT_STATUS_COMPLETED" and payment["consent_id"] == standing_id
        assert payment.get("approval_url") is None
        assert (await counts(session, sbank, user))["payment_consents"] == 1, "no new consent, no customer"

        # The bank books the next repayment and answers late: consent_svc is killed meanwhile.
        key = f"e2e-{uuid.uuid4()}"
        await set_faults(session, sbank, payment_delay_ms=8000)
        try:
            first = asyncio.create_task(http.call("POST", path, json=body, headers={"Idempotency-Key": key}))

            async def bank_paid():
                return (await counts(session, sbank, user))["payments"] == 2

            assert await eventually(bank_paid, timeout=30, interval=0.05)
            suite.stop(["consent"], signal.SIGKILL)
        finally:
            await set_faults(session, sbank, payment_delay_ms=0)
        status, _ = await first
        assert status >= 500
        row = await db.fetchrow(
            "SELECT status, in_doubt, consent_id, consent_kind, consent_used_count "
            "FROM consent.payments WHERE user_id = $1 AND idempotency_key = $2",
            user,
            key,
        )
        assert dict(row) == {
            "status": "INITIATING",
            "in_doubt": True,
            "consent_id": standing_id,
            "consent_kind": "vrp",
            "consent_used_count": 1,
        }

        suite.start(["consent"])
        await suite.wait_healthy(["consent"])

        async def retried():  # the gateway's channel may still be backing off from the dead process: 503
            result = await http.call("POST", path, json=body, headers={"Idempotency-Key": key})
            return result if result[0] != 503 else None

        status, answer = await eventually(retried, timeout=30, interval=0.5) or (503, None)
        assert status == 200, answer
        assert answer["replayed"] is True and answer["payment"]["status"] == "PAYMENT_STATUS_COMPLETED"
        assert answer["payment"]["consent_id"] == standing_id
        after = await counts(session, sbank, user)
        assert (after["payments"], after["payment_consents"]) == (2, 1), "paid exactly once, no new consent"
        kinds = await db.fetch("SELECT consent_kind FROM consent.payments WHERE user_id = $1", user)
        assert [r["consent_kind"] for r in kinds] == ["vrp", "vrp"]
