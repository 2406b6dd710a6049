"""The FinPulse web app's whole flow against the running suite, in the order the app calls it.

The app sends no token (it discards the one its login returns), so it talks to a gateway run with the
development switch (FINPULSE_AUTH_DEV_TRUST_USER=1), exactly as `../shared/docs/frontend-api.md`
describes: login → banks → consents (the manual bank approved by the customer) → the goals step
reading the dashboard during onboarding → finalize → dashboard → loans → deposits → refinance →
apply → sync start/status. Every field the app reads is checked for presence and JSON type, and the
loan figures are recomputed here from the bank's own data (the emulator's generated agreements and
repayments) by the documented rules, independently of the suite's code.

Customer team200-30 has four loans at three banks: at vbank a consumer loan at 13.0 % (the cheapest
consumer loan there is) and a mortgage at 8.6 % whose balance is below every mortgage's minimum; at
abank a consumer loan at 14.0 % (vbank's 13.0 % saves less than 1 % of it); at sbank a mortgage at
11.5 %, for which abank's catalogue (8.5 %) is the cheaper offer.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sys
from decimal import ROUND_HALF_UP, Decimal

import aiohttp
import jwt
import pytest

from bank_sandbox import data as bank_data
from deploy.children import Child
from svclib.ports import PortReservations
from tests.e2e import Http, customer_signs, eventually

USER = "team200-30"
CENT = Decimal("0.01")
BANKS = ("vbank", "abank", "sbank")


# ------------------------------------------------------------------------------------------- the app's gateway


@pytest.fixture(scope="module")
def app_gateway(suite):
    """A second gateway on the same services with the development switch on: the app sends no token."""
    ports = PortReservations()  # its port, held until it stops (svclib.ports)
    port = ports.port()
    env = {
        **suite.env,
        "FINPULSE_AUTH_DEV_TRUST_USER": "1",
        "FINPULSE_GATEWAY_PORT": str(port),
        "FINPULSE_GATEWAY_HOST": "127.0.0.1",
        **ports.env(),
    }
    child = Child(
        "app-gateway",
        [sys.executable, "-m", "gateway"],
        env,
        os.path.join(suite.log_dir, "app-gateway.log") if suite.log_dir else None,
    )
    child.start()
    url = f"http://127.0.0.1:{port}"

    async def up() -> bool:
        try:
            async with aiohttp.ClientSession() as session, session.get(url + "/healthz") as resp:
                return resp.status == 200
        except aiohttp.ClientError:
            return False

    assert asyncio.run(eventually(up, timeout=30)), "the app's gateway did not start"
    yield url
    child.signal(15)
    child.wait(15)
    ports.close()


class App:
    """The app's calls: no Authorization header, only Content-Type on POSTs with a body."""

    def __init__(self, session: aiohttp.ClientSession, base: str):
        self.session, self.base = session, base

    async def call(self, method: str, path: str, body=None, **query) -> tuple[int, dict]:
        kwargs = {"json": body} if body is not None else {}
        async with self.session.request(method, self.base + path, params=query or None, **kwargs) as resp:
            return resp.status, await resp.json(content_type=None)


# ------------------------------------------------------------------------------------------- the bank's truth


def _round(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def bank_loans(user: str) -> dict[str, dict]:
    """The customer's loans as the emulator generated them, with the repayments its history shows."""
    anchor = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    who = bank_data.profile(42, "team200", int(user.rsplit("-", 1)[1]))
    loans = {}
    for bank_id in BANKS:
        catalogue = bank_data.catalogue(42, bank_id)
        customer = bank_data.build_customer(42, bank_id, who, catalogue, anchor, 365)
        for agreement in customer.agreements:
            if agreement.product.product_type != "loan":
                continue
            label = f"Платеж по кредиту №{agreement.agreement_id}"
            paid = [
                t.draft.amount
                for account in customer.accounts
                for t in account.transactions
                if t.draft.information == label
            ]
            loans[agreement.agreement_id] = {
                "bank_id": bank_id,
                "principal": agreement.amount,
                "rate": agreement.product.interest_rate,
                "name": agreement.product.name,
                "closed": agreement.end is not None,
                "count": len(paid),
                "payment": _round(sum(paid, Decimal(0)) / len(paid)) if paid else None,
            }
    return loans


def outstanding(loan: dict) -> Decimal:
    """B = P(1+i)^n − M((1+i)^n − 1)/i, clamped to [0, P], to cents (the README's rule)."""
    principal, i, n, payment = loan["principal"], loan["rate"] / 1200, loan["count"], loan["payment"]
    growth = (1 + i) ** n
    return _round(min(max(principal * growth - payment * (growth - 1) / i, Decimal(0)), principal))


def schedule(balance: Decimal, rate: Decimal, payment: Decimal) -> tuple[int, Decimal]:
    """Months and interest to repay `balance` paying `payment` a month: each month's interest is rounded
    to cents, the last month pays what is left."""
    i, months, interest = rate / 1200, 0, Decimal(0)
    while balance > 0:
        month_interest = _round(balance * i)
        months, interest = months + 1, interest + month_interest
        balance = max(Decimal(0), balance + month_interest - payment)
    return months, interest


def annuity(balance: Decimal, rate: Decimal, months: int) -> Decimal:
    i = rate / 1200
    return _round(balance * i / (1 - (1 + i) ** -months))


# ------------------------------------------------------------------------------------------- the flow


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


async def test_the_web_app_flow_on_real_data(suite, app_gateway, bank_urls):
    truth = bank_loans(USER)
    async with aiohttp.ClientSession() as session:
        app = App(session, app_gateway)

        # Login (step 1): only user_id; the answer's token is valid on every route (production apps send it).
        status, login = await app.call("POST", "/api/auth/login", {"user_id": USER})
        assert status == 200, login
        assert login["profile"] == {
            "user_id": USER,
            "name": f"User {USER}",
            "subscription_plan": "free",
            "is_active": True,
        }
        claims = jwt.decode(login["token"], options={"verify_signature": False})
        assert claims["sub"] == USER
        with_token = Http(session, suite.gateway_url, token=login["token"])
        assert (await with_token.get("/api/banks"))[0] == 200, "the login's token works on the token-only gateway"

        # Banks (step 2): configured banks, in order.
        status, banks = await app.call("GET", "/api/banks", user_id=USER)
        assert status == 200 and [b["id"] for b in banks["banks"]] == list(BANKS)
        assert all(
            (b["status"] == "configured" and b["baseUrl"] and "error" not in b) or b["error"] is None
            for b in banks["banks"]
        )

        # Consents (step 3): all three booleans, every bank; sbank waits for its customer.
        request = {
            "user_id": USER,
            "banks": [{"bank_id": b, "consents": {"account": True, "product": True, "payment": False}} for b in BANKS],
        }
        status, consents = await app.call("POST", "/api/onboarding/consents", request)
        assert status == 200, consents
        by_bank = {r["bank_id"]: r for r in consents["results"]}
        assert by_bank["vbank"]["account_consent"]["status"] == "approved"
        assert by_bank["sbank"]["account_consent"]["status"] == "pending"
        assert by_bank["sbank"]["account_consent"]["approval_url"]
        assert by_bank["sbank"]["payment_consent"] is None
        assert consents["overall_status"] == "in_progress"
        # The app retries a failed POST: approved consents are reused.
        status, again = await app.call("POST", "/api/onboarding/consents", request)
        assert status == 200 and {r["bank_id"]: r["account_consent"]["reused"] for r in again["results"]} == {
            "vbank": True,
            "abank": True,
            "sbank": True,
        }
        # The customer approves at sbank (its app); the app only polls.
        for kind, field in (("account-consents", "account_consent"), ("product-agreement-consents", "product_consent")):
            await customer_signs(session, bank_urls["sbank"], USER, by_bank["sbank"][field]["request_id"], kind)

        async def all_approved():
            status, body = await app.call("GET", "/api/onboarding/consents/status", user_id=USER)
            assert status == 200
            statuses = {
                (r["bank_id"], k): (r[k] or {}).get("status")
                for r in body["results"]
                for k in ("account_consent", "product_consent")
            }
            return body if set(statuses.values()) == {"approved"} and len(statuses) == 6 else None

        status_body = await eventually(all_approved, timeout=30)
        assert status_body, "every account and product consent approved"
        assert all("error_message" in r["account_consent"] for r in status_body["results"])

        # Goals (step 5), before finalize: the dashboard already has the loans (first syncs were queued at
        # each approval; a dashboard asked while they run waits for them).
        active = {k: v for k, v in truth.items() if not v["closed"]}
        expected_total = sum((outstanding(v) for v in active.values()), Decimal(0))

        async def loans_seen():
            status, body = await app.call("GET", "/api/dashboard", user_id=USER)
            assert status == 200, body
            total = body["loan_summary"]["total_outstanding"]
            return body if total == float(expected_total) else None

        dashboard = await eventually(loans_seen, timeout=60, interval=1.0)
        assert dashboard, f"the goals step sees the loans: {float(expected_total)}"
        assert dashboard["user_mode"] == "loans"

        # Finalize (step 6): onboarding_id is the user id; nothing left to queue but what is not synced yet.
        status, final = await app.call("POST", "/api/onboarding/finalize", {"onboarding_id": USER, "user_id": USER})
        assert status == 200 and final["status"] == "completed" and final["ready"] is True, final
        assert {r["bank_id"] for r in final["bootstrap_results"]} == set(BANKS)
        assert all(r["status"] in ("synced", "queued") for r in final["bootstrap_results"])

        # Home: every field the app reads, with its JSON type.
        status, home = await app.call("GET", "/api/dashboard", user_id=USER)
        assert status == 200
        sts = home["sts_today"]
        assert _number(sts["amount"]) and _number(sts["spent"]) and _number(sts["tomorrow"]["amount"])
        assert isinstance(sts["tomorrow"]["impact"], str)
        summary = home["loan_summary"]
        for key in (
            "total_outstanding",
            "mandatory_daily_payment",
            "additional_daily_payment",
            "total_monthly_payment",
        ):
            assert _number(summary[key]), key
        savings = home["savings_summary"]
        assert all(_number(savings[k]) for k in ("total_saved", "daily_payment", "target", "progress_percent"))
        assert savings["target"] > 0
        assert _number(home["total_debit_cards_balance"])
        for event in home["events_next_30d"]:
            assert event["type"] in ("loan_payment", "salary") and event["amount"] > 0
            dt.date.fromisoformat(event["date"])
        health = home["health_score"]
        assert 0 <= health["value"] <= 100 and health["status"] in ("excellent", "good", "fair", "poor")
        assert isinstance(health["reasons"], list)
        assert isinstance(home["cache_info"]["is_cached"], bool)
        assert home["data_freshness"] and all(isinstance(f["age_minutes"], int) for f in home["data_freshness"])
        # The app's text is Russian unless asked otherwise.
        assert any(
            "₽" in part or "руб" in part.lower() or "доход" in part.lower()
            for part in home["sts_today"]["detail"]["reason"].split(";")
        ), home["sts_today"]["detail"]["reason"]

        # Loans: the dashboard's figures, the bank's truth, avalanche order.
        status, loans = await app.call("GET", "/api/loans", user_id=USER)
        assert status == 200 and loans["status"] == "ok", loans
        assert (loans["total_outstanding"], loans["mdp"], loans["adp"]) == (
            summary["total_outstanding"],
            summary["mandatory_daily_payment"],
            summary["additional_daily_payment"],
        )
        assert loans["strategy"] == "avalanche"
        assert {item["id"] for item in loans["loans"]} == set(active)
        assert [item["priority"] for item in loans["loans"]] == list(range(1, len(active) + 1))
        assert [item["rate"] for item in loans["loans"]] == sorted(
            (float(v["rate"]) for v in active.values()), reverse=True
        )
        names = {b["id"]: b["name"] for b in banks["banks"]}
        for item in loans["loans"]:
            loan = truth[item["id"]]
            assert item["bank"] == names[loan["bank_id"]]
            assert item["balance"] == float(outstanding(loan)) and item["balance_exact"] == str(outstanding(loan))
            assert item["monthly_payment"] == float(loan["payment"])
            assert item["rate"] == float(loan["rate"])
            months, _ = schedule(outstanding(loan), loan["rate"], loan["payment"])
            assert item["remaining_months"] == months and item["maturity_date"], item
            assert isinstance(item["is_refi_candidate"], bool) and isinstance(item["type"], str) and item["type"]
        mdp = Decimal(str(summary["mandatory_daily_payment"]))
        assert Decimal(str(loans["adp"])) == min(
            _round(mdp * Decimal("0.20")), Decimal(home["sts_today"]["detail"]["amount_per_day"])
        ), "the default speed (optimal) adds 20 %, never more than safe-to-spend"

        # Texts follow Accept-Language (Russian by default, as the app is); codes do not.
        async with session.get(
            f"{app_gateway}/api/loans", params={"user_id": USER}, headers={"Accept-Language": "en-GB,en;q=0.8"}
        ) as resp:
            english = await resp.json()
        assert [i["id"] for i in english["loans"]] == [i["id"] for i in loans["loans"]]
        assert [i["kind"] for i in english["loans"]] == [i["kind"] for i in loans["loans"]]
        assert {i["type"] for i in loans["loans"]} <= {"Ипотека", "Автокредит", "Потребительский кредит", "Кредит"}
        assert {i["type"] for i in english["loans"]} <= {"Mortgage", "Car loan", "Consumer loan", "Loan"}

        # Deposits: the dashboard's savings figures.
        status, deposits = await app.call("GET", "/api/deposits", user_id=USER)
        assert status == 200 and deposits["status"] == "ok"
        assert (deposits["total_saved"], deposits["sdp"], deposits["target"], deposits["progress_percent"]) == (
            savings["total_saved"],
            savings["daily_payment"],
            savings["target"],
            savings["progress_percent"],
        )
        for item in deposits["deposits"]:
            assert {"id", "bank", "type", "balance", "rate", "term_months", "maturity_date"} <= set(item)
            assert isinstance(item["term_months"], int) and item["term_months"] > 0, "terms from the catalogue"

        # Refinance: the mortgage at sbank (11.5 %) has a cheaper mortgage at abank (8.5 %); the other loans
        # have no offer worth 1 % of their balance.
        status, refinance = await app.call("GET", "/api/refinance/optimize-loans", user_id=USER)
        assert status == 200 and refinance["status"] == "ok", refinance
        assert isinstance(refinance["triggers"], list) and isinstance(refinance["financing_needed"], bool)
        mortgage_id = next(k for k, v in active.items() if v["bank_id"] == "sbank")
        candidates = {item["id"]: item["is_refi_candidate"] for item in loans["loans"]}
        assert [k for k, v in candidates.items() if v] == [mortgage_id], candidates
        offer = next(
            o for o in refinance["offers"] if o["strategy"] == "refinance_one" and o["loan_ids"] == [mortgage_id]
        )
        assert refinance["offers"][0]["savings"] >= offer["savings"]
        mortgage = truth[mortgage_id]
        balance = outstanding(mortgage)
        months, current_interest = schedule(balance, mortgage["rate"], mortgage["payment"])
        term = min(months, 240)
        new_payment = annuity(balance, Decimal("8.5"), term)
        _, new_interest = schedule(balance, Decimal("8.5"), new_payment)
        assert (offer["bank"], offer["bank_id"], offer["rate"], offer["term_months"]) == ("ABank", "abank", 8.5, term)
        assert offer["loan_amount"] == float(balance) and offer["commission"] == 0 and offer["breakeven_months"] == 0
        assert offer["monthly_payment"] == float(new_payment)
        assert Decimal(offer["detail"]["savings"]) == current_interest - new_interest
        assert refinance["urgency"] in ("HIGH", "MEDIUM", "WATCH") and refinance["financing_needed"] is True
        assert any(
            t["type"] == "refi_opportunity" and t["loan_ids"] == [mortgage_id] for t in refinance["trigger_details"]
        )

        # Apply: recorded (the banks' API cannot open a loan), idempotent, readable later.
        body = {"user_id": USER, "offer_id": offer["id"], "loan_ids": [], "phone": "+7 (999) 123-45-67"}
        status, applied = await app.call("POST", "/api/refinance/apply", body)
        assert status == 200 and applied["status"] == "recorded" and applied["application_id"], applied
        assert "ABank" in applied["message"]
        status, again = await app.call("POST", "/api/refinance/apply", body)
        assert status == 200 and again["application_id"] == applied["application_id"] and again["replayed"]
        status, read = await app.call("GET", f"/api/refinance/applications/{applied['application_id']}", user_id=USER)
        assert status == 200 and read["application"]["offer_id"] == offer["id"]
        status, _unknown = await app.call("POST", "/api/refinance/apply", {**body, "offer_id": "ofr-nope"})
        assert status == 404

        # Refresh: POST /api/sync/start?user_id=&force=true, no body; status completed within the app's 60 s.
        status, started = await app.call("POST", "/api/sync/start", None, user_id=USER, force="true")
        assert status == 200 and started["status"] == "queued" and started["sync_id"], started

        async def completed():
            status, body = await app.call("GET", "/api/sync/status", user_id=USER)
            return body if status == 200 and body["status"] == "completed" else None

        assert await eventually(completed, timeout=60, interval=2.0), "the app's refresh completes within 60 s"
        status, after = await app.call("GET", "/api/dashboard", user_id=USER)
        assert status == 200 and after["loan_summary"]["total_outstanding"] == summary["total_outstanding"]


async def test_profile_holds_name_plan_and_the_goals_step(suite, app_gateway):
    user = "team200-42"
    async with aiohttp.ClientSession() as session:
        app = App(session, app_gateway)
        status, login = await app.call("POST", "/api/auth/login", {"user_id": user, "user_name": "Анна"})
        assert status == 200 and login["profile"]["name"] == "Анна"
        status, profile = await app.call(
            "PUT",
            f"/api/users/{user}/profile",
            {
                "goal_type": "GOAL_TYPE_SAVINGS_AND_LOANS",
                "target_amount": "300000.00",
                "horizon_months": 24,
                "loans_speed": "REPAYMENT_SPEED_FAST",
                "loan_strategy": "LOAN_STRATEGY_SNOWBALL",
                "subscription_plan": "premium",
            },
        )
        assert status == 200, profile
        assert profile["profile"]["name"] == "Анна", "a name left out is kept"
        assert profile["profile"]["subscription_plan"] == "premium"
        status, login = await app.call("POST", "/api/auth/login", {"user_id": user})
        assert login["profile"] == {"user_id": user, "name": "Анна", "subscription_plan": "premium", "is_active": True}
        status, bad = await app.call("PUT", f"/api/users/{user}/profile", {"subscription_plan": "gold"})
        assert status == 400 and "subscription_plan" in bad["message"]
        status, bad = await app.call("POST", "/api/auth/login", {"user_id": "team 200/1"})
        assert status == 400


def test_make_token_signs_with_the_running_suites_secret(suite, tmp_path):
    """`make token` gets its token from the running suite's login, whatever data dir it is run with."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("FINPULSE_")}
    env.update(FINPULSE_DATA_DIR=str(tmp_path / "elsewhere"), FINPULSE_GATEWAY_PORT=str(suite.settings.gateway_port))
    out = subprocess.run(
        [sys.executable, "-m", "gateway.token", "team200-10"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()

    async def banks() -> int:
        async with aiohttp.ClientSession() as session:
            return (await Http(session, suite.gateway_url, token=token).get("/api/banks"))[0]

    assert asyncio.run(banks()) == 200
    assert not (tmp_path / "elsewhere" / "jwt-secret").exists(), "no secret of its own was made"
