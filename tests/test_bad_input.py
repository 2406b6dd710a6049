"""The bad input an operator found getting through, against the running suite: each answers a clear
4xx (never 429, never 500, never an echo of the huge value), and nothing of it is stored."""

from __future__ import annotations

import datetime as dt

import aiohttp
import jwt
import pytest

from tests.e2e import Http

USER = "team200-9"
MEGABYTE = "x" * 1_000_000  # 1 MB, under the gateway's 1 MiB body cap


@pytest.mark.parametrize(
    "method, path, body, field",
    [
        ("POST", "/api/sync", {"bank_ids": [MEGABYTE]}, "bank_ids[0]"),
        ("POST", "/api/sync", {"reason": MEGABYTE}, "reason"),
        ("PUT", f"/api/users/{USER}/financial-inputs", {"salary_amount": MEGABYTE}, "salary_amount"),
        ("PUT", f"/api/users/{USER}/financial-inputs", {"next_salary_date": MEGABYTE}, "next_salary_date"),
        (
            "POST",
            "/api/onboarding/consents",
            {"banks": [{"bank_id": MEGABYTE, "consents": {"account": True}}]},
            "banks[0].bank_id",
        ),
    ],
    ids=["bank_ids", "reason", "salary_amount", "next_salary_date", "bank_id"],
)
async def test_a_megabyte_value_is_400_naming_the_field_without_echoing_it(suite, db, method, path, body, field):
    # (Bodies stay under the gateway's 1 MiB cap, so the field's own limit is what answers.)
    async with aiohttp.ClientSession() as session:
        http = Http(session, suite.gateway_url, token=suite.token(USER))
        status, answer = await http.call(method, path, json=body)
    assert status == 400, (status, str(answer)[:300])
    assert field in answer["message"] and "at most" in answer["message"]
    assert len(str(answer)) < 2000, "the value is never echoed back"
    assert answer["details"][0]["field_violations"][0]["field"].endswith(field.split(".")[-1])
    stored = await db.fetchval("SELECT count(*) FROM sync.sync_jobs WHERE length(reason) > 64")
    assert stored == 0, "an oversized reason is never stored"


async def test_a_query_longer_than_aiohttps_default_line_is_a_json_400_naming_the_field(suite):
    # 3,000 four-byte characters: 36 KB percent-encoded, past aiohttp's default 8 KiB request line (whose
    # parser would answer a plain-text 400 before the gateway sees it), under the gateway's 64 KiB.
    value = "\U000137d4" * 3000
    async with aiohttp.ClientSession() as session:
        http = Http(session, suite.gateway_url, token=suite.token(USER))
        status, answer = await http.call("POST", "/api/sync/start", params={"bank_ids": value})
    assert status == 400, (status, str(answer)[:300])
    assert answer["error_code"] == "LIMIT_EXCEEDED" and "bank_ids" in answer["message"]
    assert len(str(answer)) < 2000, "the value is never echoed back"


async def test_a_token_whose_sub_holds_nul_is_401(suite):
    settings = suite.settings
    now = dt.datetime.now(dt.UTC)
    token = jwt.encode(
        {
            "sub": "team200-9\x00admin",
            "iss": settings.jwt_issuer,
            "aud": settings.jwt_audience,
            "iat": now,
            "exp": now + dt.timedelta(minutes=5),
        },
        settings.jwt_secret,
        algorithm="HS256",
    )
    async with aiohttp.ClientSession() as session:
        status, answer = await Http(session, suite.gateway_url, token=token).get("/api/dashboard")
    assert status == 401 and "sub" in answer["message"]


async def test_a_body_that_is_not_json_is_415(suite):
    async with aiohttp.ClientSession() as session:
        http = Http(session, suite.gateway_url, token=suite.token(USER))
        status, answer = await http.call(
            "POST", "/api/sync", data=b'{"user_id": "team200-9"}', headers={"Content-Type": "text/plain"}
        )
    assert status == 415 and "application/json" in answer["message"]


async def test_finalize_of_another_users_session_does_not_reveal_it(suite):
    async with aiohttp.ClientSession() as session:
        owner = Http(session, suite.gateway_url, token=suite.token("team200-8"))
        status, started = await owner.post("/api/onboarding/start", {})
        assert status == 200
        other = Http(session, suite.gateway_url, token=suite.token(USER))
        status, answer = await other.post("/api/onboarding/finalize", {"onboarding_id": started["onboarding_id"]})
        assert status == 404 and "belongs" not in answer["message"]
