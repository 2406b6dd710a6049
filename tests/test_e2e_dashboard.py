"""GET /api/dashboard end to end: synced bank data → sync_svc aggregates → dashboard_svc → gateway."""

from __future__ import annotations

import aiohttp
import pytest

from tests.e2e import onboard, wait_synced

pytestmark = pytest.mark.timeout(240)

SEED_FIELDS = {
    "sts_today",
    "loan_summary",
    "savings_summary",
    "total_debit_cards_balance",
    "events_next_30d",
    "health_score",
    "bank_statuses",
    "user_mode",
    "cache_info",
    "data_freshness",
}


async def test_dashboard_of_a_synced_user_keeps_the_seed_shape_and_caches(http, suite):
    user = "team200-22"
    await onboard(http, user)
    await wait_synced(http, user)

    status, first = await http.get("/api/dashboard", user_id=user)
    assert status == 200, first
    assert SEED_FIELDS <= set(first)
    assert set(first["sts_today"]) >= {"amount", "spent", "tomorrow"} and "impact" in first["sts_today"]["tomorrow"]
    assert isinstance(first["sts_today"]["amount"], (int, float)) and first["sts_today"]["amount"] >= 0
    assert first["health_score"]["status"] in ("excellent", "good", "fair", "poor")
    assert 0 <= first["health_score"]["value"] <= 100
    assert first["user_mode"] in ("loans", "deposits")
    assert {b["bank_id"] for b in first["bank_statuses"]} == {"vbank", "abank"}
    assert all(b["status"] == "ok" for b in first["bank_statuses"])
    assert all(f["age_minutes"] == 0 for f in first["data_freshness"])
    assert first["cache_info"]["is_cached"] is False
    assert first["balances"] and first["totals_by_currency"]
    assert first["savings_summary"]["target"] > 0

    status, second = await http.get("/api/dashboard", user_id=user)
    assert second["cache_info"]["is_cached"] is True
    assert second["cache_info"]["calculated_at"] == first["cache_info"]["calculated_at"]

    status, forced = await http.get("/api/dashboard", user_id=user, force_refresh="true")
    assert forced["cache_info"]["is_cached"] is False
    assert forced["cache_info"]["calculated_at"] > first["cache_info"]["calculated_at"]

    # New bank data: the next answer is recomputed at once, from the new data version.
    bank = suite.settings.bank("vbank").base_url
    account = next(b["account_id"] for b in first["balances"] if b["bank_id"] == "vbank")
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{bank}/__admin__/customers/{user}/transactions", json={"account_id": account, "count": 2}
        ) as resp:
            assert resp.status == 200
    await http.post("/api/sync", {"user_id": user, "bank_ids": ["vbank"]})
    await wait_synced(http, user)
    status, after = await http.get("/api/dashboard", user_id=user)
    assert after["cache_info"]["is_cached"] is False
    assert after["cache_info"]["data_version"] > forced["cache_info"]["data_version"]


async def test_dashboard_follows_inputs_and_goals(http):
    user = "team200-23"
    await onboard(http, user, ("vbank",))
    await wait_synced(http, user)
    status, _before = await http.get("/api/dashboard", user_id=user)
    assert status == 200
    status, body = await http.call(
        "PUT",
        f"/api/users/{user}/financial-inputs",
        json={"salary_amount": "150000.00", "next_salary_date": "2099-01-05"},
    )
    assert status == 200, body
    status, after = await http.get("/api/dashboard", user_id=user)
    assert after["cache_info"]["is_cached"] is False
    assert after["sts_today"]["detail"]["income_source"] == "user_input"
    assert after["sts_today"]["detail"]["next_income_date"] == "2099-01-05"

    status, body = await http.call(
        "PUT", f"/api/users/{user}/profile", json={"goal_type": "GOAL_TYPE_SAVINGS", "target_amount": "250000.00"}
    )
    assert status == 200, body
    status, with_goal = await http.get("/api/dashboard", user_id=user)
    assert with_goal["cache_info"]["is_cached"] is False
    assert with_goal["savings_summary"]["target"] == 250000.0
    status, profile = await http.get(f"/api/users/{user}/profile")
    assert profile["profile"]["target_amount"] == "250000.00"


async def test_user_without_data_gets_an_empty_dashboard(http):
    status, body = await http.get("/api/dashboard", user_id="team200-24")
    assert status == 200, body
    assert SEED_FIELDS <= set(body)
    assert body["sts_today"]["amount"] == 0 and body["sts_today"]["detail"]["status"] == "DANGER"
    assert body["bank_statuses"] == [] and body["events_next_30d"] == []


@pytest.mark.parametrize(
    "params, status",
    [
        ({"user_id": "team200-24", "force_refresh": "maybe"}, 400),
        ({"user_id": "team200-24", "days": "7"}, 400),
    ],
)
async def test_dashboard_bad_requests(http, params, status):
    got, body = await http.get("/api/dashboard", **params)
    assert got == status, body


async def test_dashboard_user_comes_from_the_token(suite, http):
    got, body = await http.as_user(suite.token("team200-24")).get("/api/dashboard")
    assert got == 200 and body["user_id"] == "team200-24", body
    got, body = await http.as_user(None).get("/api/dashboard", user_id="team200-24")
    assert got == 401, body


@pytest.mark.parametrize(
    "body, field",
    [
        ({"goal_type": "GOAL_TYPE_SAVINGS", "target_amount": "-1"}, "target_amount"),
        ({"goal_type": "GOAL_TYPE_SAVINGS", "target_date": "2001-01-01"}, "target_date"),
        ({"goal_type": "SOMETHING"}, "goal_type"),
    ],
)
async def test_profile_bad_input(http, body, field):
    status, answer = await http.call("PUT", "/api/users/team200-24/profile", json=body)
    assert status == 400 and field in answer["message"], answer
