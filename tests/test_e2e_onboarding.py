"""The onboarding and consent flow end to end: HTTP through the gateway, the services, the emulator.

Each test uses its own bank customer (team200-1 … team200-10 exist at the emulator), so tests do not
share consents.
"""

from __future__ import annotations

import asyncio

import aiohttp
import asyncpg
import pytest

from tests.e2e import customer_signs, eventually, set_faults

pytestmark = pytest.mark.timeout(180)


def _bank(body: dict, bank_id: str) -> dict:
    return next(r for r in body["results"] if r["bank_id"] == bank_id)


async def test_full_onboarding_survives_a_restart(suite, http, bank_urls):
    user = "team200-1"
    status, started = await http.post("/api/onboarding/start", {"user_id": user, "user_name": "Ivan"})
    assert status == 200, started
    onboarding_id = started["onboarding_id"]
    assert started["status"] == "started" and started["user_id"] == user and started["user_name"] == "Ivan"

    status, banks = await http.get("/api/banks", user_id=user)
    assert status == 200
    assert [b["id"] for b in banks["banks"]] == ["vbank", "abank", "sbank"]
    assert all(b["status"] == "configured" and b["baseUrl"] and not b["connected"] for b in banks["banks"])

    request = {
        "user_id": user,
        "banks": [
            {"bank_id": bank, "consents": {"account": True, "product": True, "payment": False}}
            for bank in ("vbank", "abank", "sbank")
        ],
    }
    status, created = await http.post("/api/onboarding/consents", request)
    assert status == 200, created
    assert created["overall_status"] == "in_progress"
    for bank in ("vbank", "abank"):
        result = _bank(created, bank)
        assert result["account_consent"]["status"] == "approved"
        assert result["account_consent"]["consent_id"].startswith("consent-")
        assert result["product_consent"]["status"] == "approved"
        assert result["payment_consent"] is None
    sbank = _bank(created, "sbank")
    assert sbank["bank_name"] == "SBank"
    assert sbank["account_consent"]["status"] == "pending"
    assert sbank["account_consent"]["consent_id"] is None
    assert sbank["account_consent"]["approval_url"]
    account_request = sbank["account_consent"]["request_id"]
    product_request = sbank["product_consent"]["request_id"]

    # A retry does not ask the banks again: live consents are reused, pending ones kept.
    status, again = await http.post("/api/onboarding/consents", request)
    assert status == 200
    assert _bank(again, "vbank")["account_consent"]["reused"] is True
    assert (
        _bank(again, "vbank")["account_consent"]["consent_id"]
        == _bank(created, "vbank")["account_consent"]["consent_id"]
    )
    assert _bank(again, "sbank")["account_consent"]["request_id"] == account_request

    status, consents = await http.get("/api/onboarding/consents/status", user_id=user)
    assert status == 200
    assert _bank(consents, "sbank")["account_consent"]["status"] == "pending"
    assert _bank(consents, "sbank")["account_consent"]["raw_status"] == "AWAITING_USER"

    # The customer approves at sbank; polling picks the new consent id up.
    async with aiohttp.ClientSession() as session:
        signed = await customer_signs(session, bank_urls["sbank"], user, account_request)
        await customer_signs(session, bank_urls["sbank"], user, product_request, "product-agreement-consents")

    async def sbank_approved():
        _, body = await http.get("/api/onboarding/consents/status", user_id=user)
        return body if _bank(body, "sbank")["account_consent"]["status"] == "approved" else None

    consents = await eventually(sbank_approved)
    assert consents, "sbank consent was not picked up by polling"
    sbank_state = _bank(consents, "sbank")
    assert sbank_state["account_consent"]["consent_id"] == signed["consent_id"]
    assert sbank_state["product_consent"]["status"] == "approved"
    assert [r["bank_id"] for r in consents["results"]] == ["vbank", "abank", "sbank"]
    for result in consents["results"]:
        assert set(result) >= {"bank_id", "bank_name", "account_consent", "product_consent", "payment_consent"}

    status, finalized = await http.post("/api/onboarding/finalize", {"onboarding_id": onboarding_id, "user_id": user})
    assert status == 200, finalized
    assert finalized["status"] == "completed" and finalized["ready"] is True
    assert finalized["approved_consents_count"] == 6
    assert sorted(r["bank_id"] for r in finalized["bootstrap_results"]) == ["abank", "sbank", "vbank"]
    # The first syncs were queued when the account consents were approved: finalize answers them.
    assert all(r["status"] in ("queued", "synced") and r["job_id"] for r in finalized["bootstrap_results"])

    status, second = await http.post("/api/onboarding/finalize", {"onboarding_id": onboarding_id, "user_id": user})
    assert (status, second) == (200, finalized), "a second finalize gives the same answer"

    # The seed frontend sends its user id as the onboarding id: that is the user's latest session.
    status, by_user = await http.post("/api/onboarding/finalize", {"onboarding_id": user, "user_id": user})
    assert (status, by_user) == (200, finalized)

    status, progress = await http.get("/api/onboarding/status", onboarding_id=onboarding_id)
    assert status == 200
    assert progress["status"] == "completed" and progress["completed_steps"] == [1, 2, 3, 4, 5]
    assert progress["consents_status"]["sbank"] == {"accounts": "APPROVED", "products": "APPROVED", "payments": None}

    # Finalize queued one durable sync job per connected bank.
    conn = await asyncpg.connect(suite.backing.database_url)
    try:
        jobs = await conn.fetch("SELECT bank_id, state FROM sync.sync_jobs WHERE user_id = $1", user)
    finally:
        await conn.close()
    assert sorted(j["bank_id"] for j in jobs) == ["abank", "sbank", "vbank"]

    # Every process restarts; the session, its user and its consents are still there.
    suite.stop()
    suite.start()
    await suite.wait_healthy()
    status, after = await http.get("/api/onboarding/status", onboarding_id=onboarding_id)
    assert status == 200 and after == progress
    status, consents_after = await http.get("/api/onboarding/consents/status", user_id=user)
    assert status == 200
    for bank in ("vbank", "abank", "sbank"):
        assert (
            _bank(consents_after, bank)["account_consent"]["consent_id"]
            == _bank(consents, bank)["account_consent"]["consent_id"]
        )
    status, banks = await http.get("/api/banks", user_id=user)
    assert all(b["connected"] for b in banks["banks"])


async def test_callback_records_consent_when_bank_keeps_awaiting(suite, http, bank_urls):
    user = "team200-2"
    async with aiohttp.ClientSession() as session:
        await set_faults(session, bank_urls["sbank"], sticky_awaiting=True)
        try:
            status, created = await http.post(
                "/api/onboarding/consents",
                {"user_id": user, "banks": [{"bank_id": "sbank", "consents": {"account": True, "product": False}}]},
            )
            assert status == 200, created
            request_id = _bank(created, "sbank")["account_consent"]["request_id"]
            signed = await customer_signs(session, bank_urls["sbank"], user, request_id)

            # Polling keeps seeing AwaitingAuthorization (as the organisers' server does).
            status, consents = await http.get("/api/onboarding/consents/status", user_id=user)
            assert _bank(consents, "sbank")["account_consent"]["status"] == "pending"

            query = {"user_id": user, "bank_id": "sbank", "request_id": request_id}
            status, body = await http.get("/api/onboarding/consents/callback", **query, consent_id="consent-forged")
            assert status in (400, 404), body
            status, body = await http.get(
                "/api/onboarding/consents/callback",
                **{**query, "user_id": "team200-9"},
                consent_id=signed["consent_id"],
            )
            assert status == 404, body

            status, body = await http.get("/api/onboarding/consents/callback", **query, consent_id=signed["consent_id"])
            assert status == 200, body
            assert body["status"] == "APPROVED" and body["consent_id"] == signed["consent_id"]
            status, repeated = await http.get(
                "/api/onboarding/consents/callback", **query, consent_id=signed["consent_id"]
            )
            assert (status, repeated) == (200, body)

            status, consents = await http.get("/api/onboarding/consents/status", user_id=user)
            assert _bank(consents, "sbank")["account_consent"]["status"] == "approved"
            assert _bank(consents, "sbank")["account_consent"]["consent_id"] == signed["consent_id"]
        finally:
            await set_faults(session, bank_urls["sbank"], sticky_awaiting=False)


async def test_finalize_errors(http):
    user = "team200-3"
    status, body = await http.post("/api/onboarding/finalize", {"onboarding_id": user, "user_id": user})
    assert status == 400 and "No approved consents" in body["message"]

    # An approved product consent alone is not enough: the account consent is mandatory.
    status, created = await http.post(
        "/api/onboarding/consents",
        {"user_id": user, "banks": [{"bank_id": "vbank", "consents": {"account": True, "product": True}}]},
    )
    assert status == 200, created
    account_consent = _bank(created, "vbank")["account_consent"]["consent_id"]
    status, _ = await http.call("DELETE", f"/api/consents/{account_consent}", params={"user_id": user})
    assert status == 200
    status, body = await http.post("/api/onboarding/finalize", {"onboarding_id": user, "user_id": user})
    assert status == 400 and "No approved account consents" in body["message"]

    status, body = await http.get("/api/onboarding/status", onboarding_id="00000000-0000-0000-0000-000000000000")
    assert status == 404 and "not found" in body["message"]
    status, body = await http.post(
        "/api/onboarding/finalize", {"onboarding_id": "00000000-0000-0000-0000-000000000000", "user_id": user}
    )
    assert status == 404

    status, started = await http.post("/api/onboarding/start", {"user_id": "team200-4"})
    status, body = await http.post(
        "/api/onboarding/finalize", {"onboarding_id": started["onboarding_id"], "user_id": user}
    )
    # Another user's session is not finalized, and answers exactly as a session that does not exist.
    assert status == 404, body
    missing_status, missing = await http.post(
        "/api/onboarding/finalize", {"onboarding_id": "no-such-session", "user_id": user}
    )
    assert (missing_status, body["error"]) == (404, missing["error"])
    assert body["message"].replace(started["onboarding_id"], "<id>") == missing["message"].replace(
        "no-such-session", "<id>"
    )


async def test_revoke_then_data_is_refused_and_status_shows_it(http):
    user = "team200-5"
    status, created = await http.post(
        "/api/onboarding/consents",
        {"user_id": user, "banks": [{"bank_id": "vbank", "consents": {"account": True, "product": False}}]},
    )
    consent_id = _bank(created, "vbank")["account_consent"]["consent_id"]
    status, revoked = await http.call("DELETE", f"/api/consents/{consent_id}", params={"user_id": user})
    assert status == 200 and revoked["status"] == "REVOKED"
    status, again = await http.call("DELETE", f"/api/consents/{consent_id}", params={"user_id": user})
    assert (status, again) == (200, revoked), "revoking twice is a no-op"
    status, _other = await http.call("DELETE", f"/api/consents/{consent_id}", params={"user_id": "team200-6"})
    assert status == 404, "another user's consent is not found"

    status, consents = await http.get("/api/onboarding/consents/status", user_id=user)
    assert _bank(consents, "vbank")["account_consent"]["raw_status"] == "REVOKED"
    status, banks = await http.get("/api/banks", user_id=user)
    assert not next(b for b in banks["banks"] if b["id"] == "vbank")["connected"]

    # Asking again creates a new consent at the bank instead of reusing the revoked one.
    status, renewed = await http.post(
        "/api/onboarding/consents",
        {"user_id": user, "banks": [{"bank_id": "vbank", "consents": {"account": True, "product": False}}]},
    )
    assert _bank(renewed, "vbank")["account_consent"]["consent_id"] != consent_id


async def test_one_bank_down_does_not_stop_the_others(http, bank_urls):
    user = "team200-7"
    async with aiohttp.ClientSession() as session:
        await set_faults(session, bank_urls["abank"], error_rate=1.0)
        try:
            status, created = await http.post(
                "/api/onboarding/consents",
                {
                    "user_id": user,
                    "banks": [
                        {"bank_id": bank, "consents": {"account": True, "product": True}} for bank in ("vbank", "abank")
                    ],
                },
            )
        finally:
            await set_faults(session, bank_urls["abank"], error_rate=0.0)
    assert status == 200, created
    assert _bank(created, "vbank")["account_consent"]["status"] == "approved"
    abank = _bank(created, "abank")
    assert abank["account_consent"]["status"] == "error"
    # In the request's language (Russian by default), with the bank's answer for support.
    assert abank["account_consent"]["error_message"].startswith("Банк сейчас недоступен")
    assert "(50" in abank["account_consent"]["error_message"]
    assert abank["account_consent"]["raw_status"] == "FAILED"
    assert abank["product_consent"]["status"] == "error"
    assert created["overall_status"] == "error"


async def test_concurrent_consent_requests_create_one_consent(suite, http):
    user = "team200-8"
    request = {"user_id": user, "banks": [{"bank_id": "vbank", "consents": {"account": True, "product": False}}]}
    answers = await asyncio.gather(*(http.post("/api/onboarding/consents", request) for _ in range(5)))
    ids = {_bank(body, "vbank")["account_consent"]["consent_id"] for _, body in answers}
    assert len(ids) == 1
    conn = await asyncpg.connect(suite.backing.database_url)
    try:
        count = await conn.fetchval("SELECT count(*) FROM consent.consents WHERE user_id = $1", user)
    finally:
        await conn.close()
    assert count == 1
