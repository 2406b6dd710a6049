"""Per-user isolation through the gateway: user A's token against everything of user B.

User B onboards for real (consents at vbank, finalize, a full sync, inputs and goals), so every
resource of B exists. Then, for every route of the gateway's route table (read from the protos, so
a new endpoint is covered the day it is annotated), user A calls it:
- naming B (`user_id=B` in the path, query or body) → 403, before any service is reached;
- addressing B's resources by their own ids (onboarding session, consent, ...) while acting as A →
  404 or 403;
and no response to A, whatever its status, contains any identifier of B (user id, onboarding id,
consent ids, account ids). Finally no token, a bad signature and an expired token are 401 on every
route.
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.parse

import aiohttp
import jwt
import pytest

from gateway.routes import Route, build_routes
from tests.e2e import Http, wait_synced

pytestmark = pytest.mark.timeout(300)

USER_A = "team200-38"
USER_B = "team200-39"


@pytest.fixture(scope="module")
def routes() -> list[Route]:
    return build_routes()


async def _onboard_b(http: Http) -> dict[str, object]:
    """B's real resources; every identifier that must never reach A."""
    status, started = await http.post("/api/onboarding/start", {"user_id": USER_B})
    assert status == 200, started
    status, created = await http.post(
        "/api/onboarding/consents",
        {
            "user_id": USER_B,
            "banks": [
                {"bank_id": bank, "consents": {"account": True, "product": True, "payment": True}}
                for bank in ("vbank", "abank")
            ],
        },
    )
    assert status == 200 and created["overall_status"] == "completed", created
    consent_ids = [
        outcome["consent_id"]
        for bank in created["results"]
        for outcome in (bank["account_consent"], bank["product_consent"], bank["payment_consent"])
        if outcome and outcome.get("consent_id")
    ]
    assert consent_ids, created
    status, body = await http.post(
        "/api/onboarding/finalize", {"onboarding_id": started["onboarding_id"], "user_id": USER_B}
    )
    assert status == 200, body
    await wait_synced(http, USER_B)
    boots = {}
    for bank in ("vbank", "abank"):
        status, boots[bank] = await http.get(f"/api/banks/{bank}/bootstrap", user_id=USER_B, skip_sync="true")
        assert status == 200 and boots[bank]["accounts"], boots[bank]
    accounts = [a for boot in boots.values() for a in boot["accounts"]]
    account_ids = [a["account_id"] for a in accounts]
    numbers = [a["account_number"] for a in accounts if a.get("account_number")]
    creditor = boots["abank"]["accounts"][0]["account_number"]
    status, paid = await http.call(
        "POST",
        "/api/payments",
        headers={"Idempotency-Key": "isolation-b-1"},
        json={
            "bank_id": "vbank",
            "account_id": boots["vbank"]["accounts"][0]["account_id"],
            "creditor_account": creditor,
            "creditor_bank_id": "abank",
            "amount": "1.00",
        },
    )
    assert status == 200, paid
    agreements = [c["agreement_id"] for boot in boots.values() for c in boot["credits"]]
    status, _ = await http.call(
        "PUT",
        f"/api/users/{USER_B}/financial-inputs",
        json={"salary_amount": "123456.78", "next_salary_date": "2031-01-15"},
    )
    assert status == 200
    status, _ = await http.call(
        "PUT", f"/api/users/{USER_B}/profile", json={"goal_type": "GOAL_TYPE_SAVINGS", "target_amount": "98765.43"}
    )
    assert status == 200
    status, _dashboard = await http.get("/api/dashboard", user_id=USER_B)
    assert status == 200
    return {
        "user_id": USER_B,
        "onboarding_id": started["onboarding_id"],
        "consent_ids": consent_ids,
        "request_id": created["results"][0]["account_consent"].get("request_id") or "req-unknown",
        "account_ids": account_ids,
        "payment_id": paid["payment"]["payment_id"],
        "account_number": creditor,
        "agreement_id": agreements[0] if agreements else "agreement-of-b",
        "secrets": [
            USER_B,
            started["onboarding_id"],
            *consent_ids,
            *account_ids,
            *numbers,
            paid["payment"]["payment_id"],
            "123456.78",
            "98765.43",
        ],
    }


def _assert_no_b_data(b: dict, route: Route, status: int, body: object, sent: str) -> None:
    """No identifier of B in the answer, except what A itself sent (an error may echo the id asked for)."""
    text = json.dumps(body, ensure_ascii=False) if not isinstance(body, str) else body
    leaked = [secret for secret in b["secrets"] if secret in text and secret not in sent]
    assert not leaked, f"{route.http_method} {route.path_template} answered {status} with B's {leaked}: {text[:500]}"


def _path(route: Route, values: dict[str, str]) -> str:
    path = route.aiohttp_path
    for field in route.path_fields:
        var = Route.path_var(field)
        assert field in values, f"{route.path_template}: the isolation test needs a value for {{{field}}}"
        path = path.replace("{" + var + "}", urllib.parse.quote(values[field], safe=""))
    return path


async def _call(http: Http, route: Route, path: str, fields: dict[str, str]) -> tuple[int, object]:
    """Call `route` with `fields` in the query (no body) or the JSON body."""
    headers = {"Accept": "application/json"}
    if route.body:
        return await http.call(
            route.http_method,
            path,
            json=fields if route.body == "*" else {},
            headers=headers,
            params=None if route.body == "*" else fields,
        )
    if route.is_server_streaming:
        async with http.session.get(
            http.base + path, params=fields, headers={**headers, "Authorization": f"Bearer {http.token}"}
        ) as resp:
            text = (await resp.content.read(4096)).decode(errors="replace")
            return resp.status, text
    return await http.call(route.http_method, path, params=fields, headers=headers)


async def test_user_a_never_gets_user_b_data(suite, routes):
    async with aiohttp.ClientSession() as session:
        as_b = Http(session, suite.gateway_url, token=suite.token(USER_B))
        as_a = Http(session, suite.gateway_url, token=suite.token(USER_A))
        b = await _onboard_b(as_b)
        status, _ = await as_a.post("/api/onboarding/start", {})
        assert status == 200, "A exists too"

        resource_ids = {
            "user_id": USER_B,
            "onboarding_id": b["onboarding_id"],
            "consent_id": b["consent_ids"][0],
            "bank_id": "vbank",
            "account_id": b["account_ids"][0],
            "request_id": b["request_id"],
            "payment_id": b["payment_id"],
            "agreement_id": b["agreement_id"],
            "application_id": "rfa-not-a-users",
            "offer_id": "ofr-not-a-users",
            # what a payment request needs besides: valid, so only ownership can refuse it
            "creditor_account": b["account_number"],
            "amount": "1.00",
            "idempotency_key": "isolation-a",
        }
        checked = []
        for route in routes:
            fields = route.input_descriptor.fields_by_name
            named_fields = {
                name: value for name, value in resource_ids.items() if name in fields and name not in route.path_fields
            }
            path_values = dict(resource_ids)

            # 1. Naming B: refused at the gateway.
            if "user_id" in fields:
                path = _path(route, path_values)
                status, body = await _call(as_a, route, path, named_fields)
                assert status == 403, (route.path_template, status, body)
                _assert_no_b_data(b, route, status, body, f"{path} {named_fields}")
                checked.append((route.path_template, "names B", status))

            # 2. Acting as A on B's resources (ids of B in the path or fields, user_id left to the token).
            own_fields = {k: v for k, v in named_fields.items() if k != "user_id"}
            own_path = {**path_values, "user_id": USER_A}
            resource_in_request = [
                k
                for k in (
                    "onboarding_id",
                    "consent_id",
                    "account_id",
                    "payment_id",
                    "agreement_id",
                    "application_id",
                    "offer_id",
                )
                if k in own_fields or k in route.path_fields
            ]
            path = _path(route, own_path)
            status, body = await _call(as_a, route, path, own_fields)
            if resource_in_request:
                # Refused: unknown to A (404), not A's (403), or not verifiable for A at the bank (400).
                assert status in (400, 403, 404), (route.path_template, status, body)
            else:
                assert status < 500, (route.path_template, status, body)
            _assert_no_b_data(b, route, status, body, f"{path} {own_fields}")
            checked.append((route.path_template, "as A", status))

        assert len({path for path, *_ in checked}) == len({r.path_template for r in routes})

        # A's payment and repayment attempts from B's account never reached the bank.
        vbank = next(bank.base_url for bank in suite.settings.banks if bank.id == "vbank")
        async with session.get(f"{vbank}/__admin__/customers/{USER_B}/counts") as resp:
            assert (await resp.json())["payments"] == 1, "only B's own payment"

        # B still sees its own data: the refusals above were about A, not broken endpoints.
        status, body = await as_b.get("/api/dashboard")
        assert status == 200 and body


async def test_missing_bad_and_expired_tokens_are_401_everywhere(suite, routes):
    now = dt.datetime.now(dt.UTC)
    claims = {"sub": USER_A, "iss": suite.settings.jwt_issuer, "aud": suite.settings.jwt_audience}
    forged = jwt.encode({**claims, "exp": now + dt.timedelta(hours=1)}, "not-the-secret-" + "x" * 32, "HS256")
    expired = jwt.encode({**claims, "exp": now - dt.timedelta(hours=1)}, suite.settings.jwt_secret, "HS256")
    async with aiohttp.ClientSession() as session:
        for token in (None, forged, expired):
            for route in routes:
                values = {
                    "user_id": USER_A,
                    "onboarding_id": USER_A,
                    "consent_id": "c-1",
                    "bank_id": "vbank",
                    "account_id": "a-1",
                    "payment_id": "pmt-1",
                    "agreement_id": "agr-1",
                    "application_id": "rfa-1",
                }
                if token is None and route.path_template == "/api/auth/login":
                    continue  # the one route open without a token in local mode: it signs one (test_e2e_app.py)
                async with session.request(
                    route.http_method,
                    suite.gateway_url + _path(route, values),
                    headers={"Authorization": f"Bearer {token}"} if token else {},
                ) as resp:
                    assert resp.status == 401, (route.path_template, token and token[:12], resp.status)
                    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
                    body = await resp.json()
                    assert body["error"] == "UNAUTHENTICATED"
