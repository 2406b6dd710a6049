"""The bank emulator over HTTP, as the suite's bank client sees it (docs/bank-api.md)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from bank_sandbox import SandboxConfig, create_bank_app, data, start_banks

TEAM, SECRET = "team200", "finpulse-dev-secret"
CUSTOMER = "team200-1"
ACCOUNT_PERMISSIONS = ["ReadAccountsDetail", "ReadBalances", "ReadTransactionsDetail"]
AMOUNT = re.compile(r"^\d+\.\d{2}$")


@dataclass
class Answer:
    status: int
    body: Any
    headers: Any


class Bank:
    """One emulated bank, called as the suite calls it."""

    def __init__(self, session: aiohttp.ClientSession, url: str):
        self.session = session
        self.url = url
        self._token: str | None = None

    async def call(
        self,
        method: str,
        path: str,
        *,
        token: str | bool | None = True,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> Answer:
        """`token`: True for the team token, a string for that token, None for none."""
        sent = {"X-Requesting-Bank": TEAM, **(headers or {})}
        if token is True:
            token = await self.token()
        if token:
            sent["Authorization"] = f"Bearer {token}"
        async with self.session.request(
            method, self.url + path, headers=sent, allow_redirects=False, **kwargs
        ) as response:
            text = await response.text()
            body = await response.json() if response.content_type == "application/json" else text
            return Answer(response.status, body, response.headers)

    async def token(self) -> str:
        if self._token is None:
            answer = await self.call(
                "POST", "/auth/bank-token", token=None, params={"client_id": TEAM, "client_secret": SECRET}
            )
            assert answer.status == 200, answer
            self._token = answer.body["access_token"]
        return self._token

    async def account_consent(
        self, client_id: str = CUSTOMER, permissions: list[str] = ACCOUNT_PERMISSIONS
    ) -> dict[str, Any]:
        answer = await self.call(
            "POST",
            "/account-consents/request",
            json={
                "client_id": client_id,
                "permissions": permissions,
                "reason": "test",
                "requesting_bank": TEAM,
                "requesting_bank_name": "FinPulse",
            },
        )
        assert answer.status == 200, answer
        return answer.body

    async def product_consent(self, client_id: str = CUSTOMER) -> dict[str, Any]:
        answer = await self.call(
            "POST",
            "/product-agreement-consents/request",
            params={"client_id": client_id},
            json={
                "requesting_bank": TEAM,
                "client_id": client_id,
                "read_product_agreements": True,
                "allowed_product_types": ["deposit", "loan", "card"],
            },
        )
        assert answer.status == 200, answer
        return answer.body

    async def data(self, path: str, consent_id: str, client_id: str = CUSTOMER, **params: Any) -> Answer:
        return await self.call(
            "GET", path, headers={"X-Consent-Id": consent_id}, params={"client_id": client_id, **params}
        )

    async def accounts(self, consent_id: str, client_id: str = CUSTOMER) -> list[dict[str, Any]]:
        answer = await self.data("/accounts", consent_id, client_id)
        assert answer.status == 200, answer
        return answer.body["data"]["account"]

    async def balance(self, consent_id: str, account_id: str, client_id: str = CUSTOMER) -> Decimal:
        answer = await self.data(f"/accounts/{account_id}/balances", consent_id, client_id)
        assert answer.status == 200, answer
        return Decimal(answer.body["data"]["balance"][0]["amount"]["amount"])

    async def all_transactions(
        self, consent_id: str, account_id: str, client_id: str = CUSTOMER, limit: int = 100
    ) -> tuple[list[dict[str, Any]], list[Answer]]:
        """Every transaction, walking links.next from page 1."""
        path, params = f"/accounts/{account_id}/transactions", {"page": 1, "limit": limit}
        pages, rows = [], []
        while True:
            answer = await self.data(path, consent_id, client_id, **params)
            assert answer.status == 200, answer
            pages.append(answer)
            rows += answer.body["data"]["transaction"]
            if "next" not in answer.body["links"]:
                return rows, pages
            params["page"] = int(re.search(r"page=(\d+)", answer.body["links"]["next"])[1])

    async def login(self, username: str, password: str = SECRET) -> Answer:
        return await self.call("POST", "/auth/login", token=None, json={"username": username, "password": password})

    async def sign(self, kind_path: str, client_token: str, request_id: str, action: str = "approve") -> Answer:
        return await self.call(
            "POST",
            f"{kind_path}/sign",
            token=client_token,
            json={"request_id": request_id, "action": action, "signature": "sig"},
        )

    async def admin(self, method: str, path: str, **kwargs: Any) -> Answer:
        return await self.call(method, f"/__admin__/{path}", token=None, **kwargs)


@pytest.fixture
async def banks():
    running = await start_banks(SandboxConfig(), {"vbank": 0, "abank": 0, "sbank": 0})
    async with aiohttp.ClientSession() as session:
        yield {bank_id: Bank(session, url) for bank_id, url in running.urls.items()}
    await running.stop()


@pytest.fixture
def vbank(banks) -> Bank:
    return banks["vbank"]


@pytest.fixture
def sbank(banks) -> Bank:
    return banks["sbank"]


# ------------------------------------------------------------------------------------ tokens


async def test_bank_token_and_its_failures(vbank):
    ok = await vbank.call("POST", "/auth/bank-token", token=None, params={"client_id": TEAM, "client_secret": SECRET})
    assert ok.status == 200
    assert {k: ok.body[k] for k in ("token_type", "client_id", "algorithm", "expires_in")} == {
        "token_type": "bearer",
        "client_id": TEAM,
        "algorithm": "HS256",
        "expires_in": 86400,
    }
    assert ok.body["access_token"].count(".") == 2

    wrong_id = await vbank.call(
        "POST", "/auth/bank-token", token=None, params={"client_id": "team999", "client_secret": SECRET}
    )
    assert (wrong_id.status, wrong_id.body) == (401, {"detail": "Invalid client_id"})
    wrong_secret = await vbank.call(
        "POST", "/auth/bank-token", token=None, params={"client_id": TEAM, "client_secret": "nope"}
    )
    assert (wrong_secret.status, wrong_secret.body) == (401, {"detail": "Invalid client_secret"})
    missing = await vbank.call("POST", "/auth/bank-token", token=None, params={"client_id": TEAM})
    assert missing.status == 422
    assert [(e["loc"], e["type"]) for e in missing.body["detail"]] == [(["query", "client_secret"], "missing")]


async def test_calls_without_a_valid_token_of_this_bank_are_401(banks, vbank):
    consent = await vbank.account_consent()
    abank_token = await banks["abank"].token()
    client_token = (await vbank.login(CUSTOMER)).body["access_token"]
    for token in (None, "garbage", abank_token, client_token, (await vbank.token())[:-2] + "xx"):
        answer = await vbank.call(
            "GET",
            "/accounts",
            token=token,
            headers={"X-Consent-Id": consent["consent_id"]},
            params={"client_id": CUSTOMER},
        )
        assert (answer.status, answer.body) == (401, {"detail": "Could not validate credentials"}), token


async def test_expired_token_is_401():
    async with TestClient(TestServer(create_bank_app("vbank", SandboxConfig(token_ttl=0)))) as client:
        token = await (
            await client.post("/auth/bank-token", params={"client_id": TEAM, "client_secret": SECRET})
        ).json()
        response = await client.get("/products", headers={"Authorization": f"Bearer {token['access_token']}"})
        assert response.status == 401
        assert await response.json() == {"detail": "Could not validate credentials"}


# ------------------------------------------------------------------------------------ account consents


async def test_auto_consent_at_vbank_opens_the_data_calls(vbank):
    consent = await vbank.account_consent()
    assert consent["status"] == "approved" and consent["auto_approved"] is True
    assert consent["request_id"].startswith("req-") and consent["consent_id"].startswith("consent-")
    assert "Z" not in consent["created_at"]  # naive, as the banks send it

    got = await vbank.call("GET", f"/account-consents/{consent['consent_id']}")
    assert got.status == 200 and set(got.body) == {"data", "links", "meta"}
    data = got.body["data"]
    assert (data["consentId"], data["status"], data["permissions"]) == (
        consent["consent_id"],
        "Authorized",
        ACCOUNT_PERMISSIONS,
    )
    assert data["expirationDateTime"].endswith("Z") and data["expirationDateTime"][:4] > data["creationDateTime"][:4]

    accounts = await vbank.accounts(consent["consent_id"])
    assert 1 <= len(accounts) <= 4 and any(a["accountSubType"] == "Checking" for a in accounts)
    first = accounts[0]
    assert first["account"][0]["schemeName"] == "RU.CBR.PAN"
    single = await vbank.data(f"/accounts/{first['accountId']}", consent["consent_id"])
    assert single.status == 200
    assert single.body["data"]["account"][0]["accountId"] == first["accountId"]
    assert "account" not in single.body["data"]["account"][0]

    balances = await vbank.data(f"/accounts/{first['accountId']}/balances", consent["consent_id"])
    assert [b["type"] for b in balances.body["data"]["balance"]] == ["InterimAvailable", "InterimBooked"]
    assert all(
        AMOUNT.match(b["amount"]["amount"]) and b["dateTime"].endswith("Z") for b in balances.body["data"]["balance"]
    )


async def test_consent_request_needs_the_team_as_requesting_bank(vbank):
    body = {"client_id": CUSTOMER, "permissions": ACCOUNT_PERMISSIONS}
    for headers in ({"X-Requesting-Bank": "team999"}, {"X-Requesting-Bank": ""}):
        answer = await vbank.call("POST", "/account-consents/request", headers=headers, json=body)
        assert answer.status == 403 and "X-Requesting-Bank" in answer.body["detail"]


async def test_unknown_customer_and_account_are_404(vbank):
    unknown = await vbank.call(
        "POST", "/account-consents/request", json={"client_id": "team999-1", "permissions": ACCOUNT_PERMISSIONS}
    )
    assert (unknown.status, unknown.body) == (404, {"detail": "Client team999-1 not found"})
    consent = await vbank.account_consent()
    missing = await vbank.data("/accounts/acc-0/balances", consent["consent_id"])
    assert (missing.status, missing.body) == (404, {"detail": "Account not found"})


async def test_manual_consent_at_sbank_is_signed_by_the_customer(sbank):
    consent = await sbank.account_consent()
    assert consent["status"] == "pending" and consent["auto_approved"] is False and not consent.get("consent_id")
    request_id = consent["request_id"]
    pending = await sbank.call("GET", f"/account-consents/{request_id}")
    assert pending.body["data"]["status"] == "AwaitingAuthorization"
    refused = await sbank.data("/accounts", request_id)
    assert refused.status == 403 and refused.body["detail"]["error"] == "CONSENT_REQUIRED"

    assert (await sbank.login(CUSTOMER, "wrong")).status == 401
    other = (await sbank.login("team200-2")).body["access_token"]
    assert (await sbank.sign("/account-consents", other, request_id)).status == 403
    customer = (await sbank.login(CUSTOMER)).body["access_token"]
    signed = await sbank.sign("/account-consents", customer, request_id)
    assert signed.status == 200
    consent_id = signed.body["consent_id"]
    assert consent_id.startswith("consent-") and consent_id != request_id
    assert signed.body["granted_to"] == TEAM and signed.body["permissions"] == ACCOUNT_PERMISSIONS
    assert (await sbank.sign("/account-consents", customer, request_id)).status == 400  # only once

    by_request = await sbank.call("GET", f"/account-consents/{request_id}")
    assert (by_request.body["data"]["consentId"], by_request.body["data"]["status"]) == (consent_id, "Authorized")
    assert len(await sbank.accounts(consent_id)) >= 1


async def test_sticky_awaiting_keeps_the_request_id_pending(sbank):
    assert (await sbank.admin("POST", "faults", json={"sticky_awaiting": True})).body["sticky_awaiting"] is True
    request_id = (await sbank.account_consent())["request_id"]
    customer = (await sbank.login(CUSTOMER)).body["access_token"]
    consent_id = (await sbank.sign("/account-consents", customer, request_id)).body["consent_id"]

    by_request = await sbank.call("GET", f"/account-consents/{request_id}")
    assert (by_request.body["data"]["consentId"], by_request.body["data"]["status"]) == (
        request_id,
        "AwaitingAuthorization",
    )
    by_consent = await sbank.call("GET", f"/account-consents/{consent_id}")
    assert (by_consent.body["data"]["consentId"], by_consent.body["data"]["status"]) == (consent_id, "Authorized")


async def test_revoked_foreign_or_narrow_consent_is_consent_required(vbank):
    narrow = (await vbank.account_consent(permissions=["ReadAccountsDetail"]))["consent_id"]
    account_id = (await vbank.accounts(narrow))[0]["accountId"]
    no_balances = await vbank.data(f"/accounts/{account_id}/balances", narrow)
    assert no_balances.status == 403 and no_balances.body["detail"]["error"] == "CONSENT_REQUIRED"

    consent_id = (await vbank.account_consent())["consent_id"]
    foreign = await vbank.data("/accounts", consent_id, client_id="team200-2")
    assert foreign.status == 403 and foreign.body["detail"]["error"] == "CONSENT_REQUIRED"
    assert (await vbank.call("DELETE", f"/account-consents/{consent_id}")).status == 204
    assert (await vbank.call("GET", f"/account-consents/{consent_id}")).body["data"]["status"] == "Revoked"
    revoked = await vbank.data("/accounts", consent_id)
    assert revoked.status == 403
    assert revoked.body["detail"]["error"] == "CONSENT_REQUIRED"
    assert revoked.body["detail"]["consent_request_url"] == "/account-consents/request"


async def test_same_account_ids_at_every_bank_with_distinct_numbers(banks):
    seen = {}
    for bank_id in ("vbank", "abank"):
        bank = banks[bank_id]
        seen[bank_id] = await bank.accounts((await bank.account_consent())["consent_id"])
    assert [a["accountId"] for a in seen["vbank"]] == [a["accountId"] for a in seen["abank"]]
    numbers = [a["account"][0]["identification"] for accounts in seen.values() for a in accounts]
    assert len(set(numbers)) == len(numbers)
    assert all(re.fullmatch(r"40817810\d{11}", number) for number in numbers)


# ------------------------------------------------------------------------------------ transactions


async def test_transactions_paging_matches_meta_and_admin_counts(vbank):
    consent_id = (await vbank.account_consent())["consent_id"]
    account_id = (await vbank.accounts(consent_id))[0]["accountId"]
    rows, pages = await vbank.all_transactions(consent_id, account_id)
    meta = pages[0].body["meta"]
    assert meta["totalRecords"] == len(rows) >= 100 and meta["totalPages"] == len(pages) and meta["pageSize"] == 100
    assert [p.body["meta"]["currentPage"] for p in pages] == list(range(1, len(pages) + 1))
    counts = (await vbank.admin("GET", f"customers/{CUSTOMER}/counts")).body
    assert counts["transactions_by_account"][account_id] == len(rows)
    assert counts["transactions"] == sum(counts["transactions_by_account"].values())

    assert len({r["transactionId"] for r in rows}) == len(rows)
    assert all(
        re.fullmatch(r"tx-vbank-\d{8}", r["transactionId"]) and AMOUNT.match(r["amount"]["amount"]) for r in rows
    )
    booked = [r["bookingDateTime"] for r in rows]
    assert booked == sorted(booked, reverse=True)  # newest first
    purchases = [r for r in rows if r["bankTransactionCode"]["code"] == "01"]
    assert purchases and all(r["merchant"] and r["card"] for r in purchases)
    assert any(r["transactionInformation"] in ("Доход", "Доход от бизнеса") for r in rows)

    path = f"/accounts/{account_id}/transactions"
    window = await vbank.data(
        path, consent_id, from_booking_date_time=booked[20], to_booking_date_time=booked[10].replace("Z", "+00:00")
    )
    assert [r["transactionId"] for r in window.body["data"]["transaction"]] == [r["transactionId"] for r in rows[10:21]]
    past_end = await vbank.data(path, consent_id, page=len(pages) + 1, limit=100)
    assert past_end.body["data"]["transaction"] == [] and "next" not in past_end.body["links"]
    for params in ({"limit": 101}, {"limit": 0}, {"page": 0}):
        bad = await vbank.data(path, consent_id, **params)
        assert bad.status == 422 and bad.body["detail"][0]["loc"] == ["query", next(iter(params))]


async def test_history_is_deterministic_for_a_seed():
    async def first_page(seed: int) -> Any:
        async with TestClient(TestServer(create_bank_app("vbank", SandboxConfig(seed=seed)))) as client:
            async with aiohttp.ClientSession() as session:
                bank = Bank(session, str(client.make_url("")).rstrip("/"))
                consent_id = (await bank.account_consent())["consent_id"]
                accounts = await bank.accounts(consent_id)
                page = await bank.data(f"/accounts/{accounts[0]['accountId']}/transactions", consent_id, limit=100)
                return accounts, page.body["data"]["transaction"]

    assert await first_page(7) == await first_page(7)
    assert await first_page(7) != await first_page(8)


def test_generated_balances_follow_their_history():
    """Replayed from the opening balance, every account stays at or above zero, in order, in the window."""
    anchor = datetime(2026, 6, 15, tzinfo=UTC)
    products = data.catalogue(42, "vbank")
    for index in range(1, 11):
        customer = data.build_customer(42, "vbank", data.profile(42, TEAM, index), products, anchor, 365)
        for account in customer.accounts:
            movements = [
                tx.draft.amount if tx.draft.indicator == "Credit" else -tx.draft.amount for tx in account.transactions
            ]
            running = account.balance - sum(movements)  # the opening balance
            assert running >= 0
            for movement in movements:
                running += movement
                assert running >= 0
            booked = [tx.draft.booked for tx in account.transactions]
            assert booked == sorted(booked)
            assert all(anchor - timedelta(days=365) <= moment < anchor for moment in booked)


async def test_admin_appends_transactions_at_the_top(vbank):
    consent_id = (await vbank.account_consent())["consent_id"]
    account_id = (await vbank.accounts(consent_id))[0]["accountId"]
    before = (await vbank.admin("GET", f"customers/{CUSTOMER}/counts")).body
    added = await vbank.admin("POST", f"customers/{CUSTOMER}/transactions", json={"account_id": account_id, "count": 3})
    assert added.status == 200 and len(added.body["data"]["transaction"]) == 3
    after = (await vbank.admin("GET", f"customers/{CUSTOMER}/counts")).body
    assert after["transactions_by_account"][account_id] == before["transactions_by_account"][account_id] + 3
    page = await vbank.data(f"/accounts/{account_id}/transactions", consent_id, limit=3)
    assert page.body["data"]["transaction"] == added.body["data"]["transaction"]


# ------------------------------------------------------------------------------------ products


async def test_product_agreements_and_details(vbank):
    assert (
        await vbank.call(
            "POST",
            "/product-agreement-consents/request",
            params={"client_id": CUSTOMER},
            json={"requesting_bank": TEAM, "client_id": CUSTOMER},
        )
    ).status == 400  # no flag
    loans_seen = 0
    for index in range(1, 11):
        client_id = f"team200-{index}"
        product_consent = await vbank.product_consent(client_id)
        assert product_consent["consent_id"].startswith("pagc-") and product_consent["valid_until"].endswith("Z")
        flat = await vbank.call(
            "GET", f"/product-agreement-consents/{product_consent['request_id']}", params={"client_id": client_id}
        )
        assert (flat.body["consent_id"], flat.body["status"]) == (product_consent["consent_id"], "active")
        listed = await vbank.call(
            "GET",
            "/product-agreements",
            params={"client_id": client_id},
            headers={"X-Product-Agreement-Consent-Id": product_consent["consent_id"]},
        )
        assert listed.status == 200 and isinstance(listed.body["data"], list)
        agreements = listed.body["data"]
        assert listed.body["meta"]["total"] == len(agreements)
        assert sum(a["product_name"] == "Дебетовая карта" for a in agreements) == 1
        assert all(isinstance(a["amount"], float) for a in agreements)

        consent_id = (await vbank.account_consent(client_id))["consent_id"]
        accounts = await vbank.accounts(consent_id, client_id)
        numbers = {a["account"][0]["identification"]: a["accountId"] for a in accounts}
        for agreement in agreements:
            detail = await vbank.call(
                "GET",
                f"/product-agreements/{agreement['agreement_id']}",
                params={"client_id": client_id},
                headers={"X-Product-Agreement-Consent-Id": product_consent["consent_id"]},
            )
            assert isinstance(detail.body["data"]["interest_rate"], float)
            balance = await vbank.balance(consent_id, numbers[agreement["account_number"]], client_id)
            assert Decimal(str(detail.body["data"]["account_balance"])) == balance
            if agreement["product_type"] == "loan" and agreement["status"] == "active":
                loans_seen += 1
                # repaid monthly from the customer's main (first) Checking account, ~5 % of the principal
                rows, _ = await vbank.all_transactions(consent_id, accounts[0]["accountId"], client_id)
                repayments = [
                    r for r in rows if r["transactionInformation"] == f"Платеж по кредиту №{agreement['agreement_id']}"
                ]
                assert repayments and {Decimal(r["amount"]["amount"]) for r in repayments} == {
                    (Decimal(str(agreement["amount"])) * Decimal("0.05")).quantize(Decimal("0.01"))
                }
    assert loans_seen

    assert (
        await vbank.call(
            "DELETE", f"/product-agreement-consents/{product_consent['consent_id']}", params={"client_id": client_id}
        )
    ).status == 204
    revoked = await vbank.call(
        "GET",
        "/product-agreements",
        params={"client_id": client_id},
        headers={"X-Product-Agreement-Consent-Id": product_consent["consent_id"]},
    )
    assert revoked.status == 403
    assert revoked.body["detail"]["consent_request_url"] == "/product-agreement-consents/request"


async def test_products_catalogue_needs_only_a_token(vbank):
    everything = await vbank.call("GET", "/products")
    loans = await vbank.call("GET", "/products", params={"product_type": "loan"})
    assert everything.status == 200 and len(everything.body["data"]["product"]) > len(loans.body["data"]["product"])
    assert {p["productType"] for p in loans.body["data"]["product"]} == {"loan"}


# ------------------------------------------------------------------------------------ payments


async def test_payment_moves_money_between_vbank_and_abank(banks):
    vbank, abank = banks["vbank"], banks["abank"]
    payer_consent = (await vbank.account_consent())["consent_id"]
    payer = (await vbank.accounts(payer_consent))[0]
    payee_consent = (await abank.account_consent("team200-2"))["consent_id"]
    payee = (await abank.accounts(payee_consent, "team200-2"))[0]
    debtor, creditor = payer["account"][0]["identification"], payee["account"][0]["identification"]
    before = (
        await vbank.balance(payer_consent, payer["accountId"]),
        await abank.balance(payee_consent, payee["accountId"], "team200-2"),
    )

    async def payment_consent(**terms: Any) -> str:
        answer = await vbank.call(
            "POST",
            "/payment-consents/request",
            json={
                "requesting_bank": TEAM,
                "client_id": CUSTOMER,
                "consent_type": "single_use",
                "currency": "RUB",
                "debtor_account": debtor,
                **terms,
            },
        )
        assert answer.status == 200 and answer.body["consent_type"] == "single_use", answer
        return answer.body["consent_id"]

    async def pay(consent_id: str | None, amount: str, to: str = creditor) -> Answer:
        return await vbank.call(
            "POST",
            "/payments",
            params={"client_id": CUSTOMER},
            headers={"X-Payment-Consent-Id": consent_id} if consent_id else {},
            json={
                "data": {
                    "initiation": {
                        "instructedAmount": {"amount": amount, "currency": "RUB"},
                        "debtorAccount": {"schemeName": "RU.CBR.PAN", "identification": debtor},
                        "creditorAccount": {"schemeName": "RU.CBR.PAN", "identification": to, "bank_code": "abank"},
                        "comment": "test",
                    }
                }
            },
        )

    consent_id = await payment_consent(amount=1234.56, creditor_account=creditor)
    assert consent_id.startswith("pcon-")
    paid = await pay(consent_id, "1234.56")
    assert paid.status == 201, paid
    assert paid.body["data"]["status"] == "AcceptedSettlementCompleted" and paid.body["data"]["amount"] == "1234.56"
    after = (
        await vbank.balance(payer_consent, payer["accountId"]),
        await abank.balance(payee_consent, payee["accountId"], "team200-2"),
    )
    assert (before[0] - after[0], after[1] - before[1]) == (Decimal("1234.56"), Decimal("1234.56"))
    newest = await abank.data(f"/accounts/{payee['accountId']}/transactions", payee_consent, "team200-2", limit=1)
    assert newest.body["data"]["transaction"][0]["creditDebitIndicator"] == "Credit"
    payment_id = paid.body["data"]["paymentId"]
    again = await vbank.call("GET", f"/payments/{payment_id}", params={"client_id": CUSTOMER})
    assert again.status == 200 and again.body["data"]["paymentId"] == payment_id

    over = await pay(await payment_consent(amount=10), "20.00")
    assert over.status == 403 and over.body["detail"]["error"] == "CONSENT_MISMATCH"
    reused = await pay(consent_id, "1.00")
    assert reused.status == 403 and reused.body["detail"]["error"] == "INVALID_CONSENT"
    missing = await pay(None, "1.00")
    assert missing.status == 403 and missing.body["detail"]["error"] == "PAYMENT_CONSENT_REQUIRED"
    too_much = await pay(await payment_consent(), str(after[0] + 1))
    assert (too_much.status, too_much.body) == (400, {"detail": "Insufficient funds"})
    nowhere = await pay(await payment_consent(), "1.00", to="4081781000000000000")
    assert nowhere.status == 400 and "not found in any bank" in nowhere.body["detail"]
    assert (await vbank.balance(payer_consent, payer["accountId"])) == after[0]


async def test_payment_delay_answers_late_after_booking_and_the_consent_shows_its_payment(banks):
    vbank = banks["vbank"]
    consent = (await vbank.account_consent())["consent_id"]
    payer = next(a for a in await vbank.accounts(consent) if a["accountSubType"] == "Checking")
    debtor = payer["account"][0]["identification"]
    creditor_consent = (await banks["abank"].account_consent("team200-2"))["consent_id"]
    creditor = (await banks["abank"].accounts(creditor_consent, "team200-2"))[0]["account"][0]["identification"]
    counts = (await vbank.admin("GET", f"customers/{CUSTOMER}/counts")).body
    assert (counts["payments"], counts["payment_consents"]) == (0, 0)
    requested = await vbank.call(
        "POST",
        "/payment-consents/request",
        json={
            "requesting_bank": TEAM,
            "client_id": CUSTOMER,
            "consent_type": "single_use",
            "currency": "RUB",
            "amount": "9.99",
            "debtor_account": debtor,
            "creditor_account": creditor,
        },
    )
    consent_id = requested.body["consent_id"]
    fresh = (await vbank.call("GET", f"/payment-consents/{consent_id}")).body["data"]
    assert (fresh["status"], fresh["usedCount"], fresh["paymentIds"]) == ("Authorized", 0, [])
    balance = await vbank.balance(consent, payer["accountId"])

    assert (await vbank.admin("POST", "faults", json={"payment_delay_ms": 600})).body["payment_delay_ms"] == 600
    paying = asyncio.create_task(
        vbank.call(
            "POST",
            "/payments",
            params={"client_id": CUSTOMER},
            headers={"X-Payment-Consent-Id": consent_id},
            json={
                "data": {
                    "initiation": {
                        "instructedAmount": {"amount": "9.99", "currency": "RUB"},
                        "debtorAccount": {"schemeName": "RU.CBR.PAN", "identification": debtor},
                        "creditorAccount": {
                            "schemeName": "RU.CBR.PAN",
                            "identification": creditor,
                            "bank_code": "abank",
                        },
                    }
                }
            },
        )
    )
    await asyncio.sleep(0.3)
    assert not paying.done()  # the answer waits ...
    counts = (await vbank.admin("GET", f"customers/{CUSTOMER}/counts")).body
    assert (counts["payments"], counts["payment_consents"]) == (1, 1)  # ... but the money already moved
    assert await vbank.balance(consent, payer["accountId"]) == balance - Decimal("9.99")
    paid = await paying
    assert paid.status == 201
    spent = (await vbank.call("GET", f"/payment-consents/{consent_id}")).body["data"]
    assert (spent["status"], spent["usedCount"]) == ("Consumed", 1)
    assert spent["paymentIds"] == [paid.body["data"]["paymentId"]]
    assert (await banks["abank"].admin("GET", "customers/team200-2/counts")).body["payments"] == 0
    bad = await vbank.admin("POST", "faults", json={"payment_delay_ms": -1})
    assert bad.status == 422 and "payment_delay_ms" in bad.body["detail"]


async def test_payment_consent_body_forms_per_bank():
    """A bank configured for the nested form answers the flat one 422 `body.data: Field required` and
    takes the nested one (customer in the query); `both` takes either; a bank not named takes the flat
    form. `refuse_payment_consents` answers 401 Insufficient permissions."""
    running = await start_banks(
        SandboxConfig(payment_consent_form={"vbank": "nested", "abank": "both"}), {"vbank": 0, "abank": 0, "sbank": 0}
    )
    try:
        async with aiohttp.ClientSession() as session:
            banks = {bank_id: Bank(session, url) for bank_id, url in running.urls.items()}
            numbers = {}
            for bank_id, bank in banks.items():
                consent = (await bank.account_consent())["consent_id"] if bank_id != "sbank" else None
                if consent:
                    numbers[bank_id] = (await bank.accounts(consent))[0]["account"][0]["identification"]

            def flat(bank_id: str) -> dict[str, Any]:
                return {
                    "requesting_bank": TEAM,
                    "client_id": CUSTOMER,
                    "consent_type": "single_use",
                    "currency": "RUB",
                    "amount": "7.50",
                    "debtor_account": numbers[bank_id],
                }

            def nested(bank_id: str, **extra: Any) -> dict[str, Any]:
                return {
                    "data": {
                        "initiation": {
                            "instructedAmount": {"amount": "7.50", "currency": "RUB"},
                            "debtorAccount": {"schemeName": "RU.CBR.PAN", "identification": numbers[bank_id]},
                            "creditorAccount": {
                                "schemeName": "RU.CBR.PAN",
                                "identification": numbers["abank"],
                                "bank_code": "abank",
                                "name": "Me",
                            },
                            "comment": "rent",
                        },
                        **extra,
                    }
                }

            vbank, abank = banks["vbank"], banks["abank"]
            refused = await vbank.call("POST", "/payment-consents/request", json=flat("vbank"))
            assert refused.status == 422
            assert refused.body["detail"][0]["loc"] == ["body", "data"]
            assert refused.body["detail"][0]["msg"] == "Field required"
            taken = await vbank.call(
                "POST", "/payment-consents/request", params={"client_id": CUSTOMER}, json=nested("vbank")
            )
            assert taken.status == 200 and taken.body["status"] == "approved", taken
            view = (await vbank.call("GET", f"/payment-consents/{taken.body['consent_id']}")).body["data"]
            assert (view["amount"], view["creditorAccount"], view["creditorName"], view["reference"]) == (
                "7.50",
                numbers["abank"],
                "Me",
                "rent",
            )
            no_customer = await vbank.call("POST", "/payment-consents/request", json=nested("vbank"))
            assert no_customer.status == 422 and no_customer.body["detail"][0]["loc"] == ["query", "client_id"]
            standing = await vbank.call(
                "POST",
                "/payment-consents/request",
                params={"client_id": CUSTOMER},
                json={
                    "data": {
                        "initiation": {
                            "debtorAccount": {"schemeName": "RU.CBR.PAN", "identification": numbers["vbank"]}
                        },
                        "consent_type": "vrp",
                        "currency": "RUB",
                        "vrp_daily_limit": "100.00",
                    }
                },
            )
            assert standing.status == 200 and standing.body["consent_type"] == "vrp", standing

            for body, params in ((flat("abank"), None), (nested("abank"), {"client_id": CUSTOMER})):
                answer = await abank.call("POST", "/payment-consents/request", json=body, params=params)
                assert answer.status == 200, answer
            wrong = await banks["sbank"].call(
                "POST", "/payment-consents/request", params={"client_id": CUSTOMER}, json={"data": {"initiation": {}}}
            )
            assert wrong.status == 422 and {"body", "client_id"} <= set(wrong.body["detail"][0]["loc"])

            assert (await vbank.admin("POST", "faults", json={"refuse_payment_consents": True})).status == 200
            answer = await vbank.call(
                "POST", "/payment-consents/request", params={"client_id": CUSTOMER}, json=nested("vbank")
            )
            assert (answer.status, answer.body) == (401, {"detail": "Insufficient permissions"})
            assert (await vbank.call("GET", f"/payment-consents/{taken.body['consent_id']}")).status == 200
    finally:
        await running.stop()


# ------------------------------------------------------------------------------------ faults and admin


async def test_fault_knobs_hit_the_api_but_not_admin(vbank):
    await vbank.token()  # before the faults
    assert (await vbank.admin("POST", "faults", json={"error_rate": 1})).status == 200
    for _ in range(5):
        assert (await vbank.call("GET", "/products")).status in (500, 503)
        assert (
            await vbank.call(
                "POST", "/auth/bank-token", token=None, params={"client_id": TEAM, "client_secret": SECRET}
            )
        ).status in (500, 503)
    assert (await vbank.admin("GET", "faults")).body["error_rate"] == 1

    await vbank.admin("POST", "faults", json={"error_rate": 0, "rate_limit_rate": 1})
    limited = await vbank.call("GET", "/products")
    assert limited.status == 429 and limited.headers["Retry-After"] == "1"

    await vbank.admin("POST", "faults", json={"rate_limit_rate": 0})
    await vbank.admin("POST", "down", json={"down": True})
    assert (await vbank.call("GET", "/products")).status == 503
    assert (await vbank.admin("GET", f"customers/{CUSTOMER}/counts")).status == 200
    await vbank.admin("POST", "down", json={"down": False})
    assert (await vbank.call("GET", "/products")).status == 200

    bad = await vbank.admin("POST", "faults", json={"error_rate": 2})
    assert bad.status == 422 and "error_rate" in bad.body["detail"]
    assert (await vbank.admin("POST", "faults", json={"nope": 1})).status == 422


async def test_approval_page_signs_and_sends_the_customer_back(sbank):
    request_id = (await sbank.account_consent())["request_id"]
    page = await sbank.call("GET", f"/client/consents/{request_id}", token=None)
    assert page.status == 200 and 'value="approve"' in page.body
    answer = await sbank.call(
        "POST",
        f"/client/consents/{request_id}",
        token=None,
        data={"action": "approve", "redirect_uri": "http://app.local/callback"},
    )
    assert answer.status == 303
    location = answer.headers["Location"]
    assert location.startswith("http://app.local/callback?") and "consent_id=consent-" in location


# ------------------------------------------------------------------------------------ configuration and process


def test_config_from_env_and_its_errors():
    config = SandboxConfig.from_env(
        {
            "BANK_SANDBOX_ERROR_RATE": "0.25",
            "BANK_SANDBOX_STICKY_AWAITING": "true",
            "BANK_SANDBOX_SEED": "7",
            "FINPULSE_TEAM_ID": "team300",
        }
    )
    assert (config.error_rate, config.sticky_awaiting, config.seed, config.team_id) == (0.25, True, 7, "team300")
    assert config.approval_mode("sbank") == "manual" and config.approval_mode("vbank") == "auto"
    with pytest.raises(ValueError, match=r"BANK_SANDBOX_ERROR_RATE.*between 0 and 1"):
        SandboxConfig.from_env({"BANK_SANDBOX_ERROR_RATE": "1.5"})
    with pytest.raises(ValueError, match="BANK_SANDBOX_LATENCY_MS"):
        SandboxConfig.from_env({"BANK_SANDBOX_LATENCY_MS": "slow"})
    with pytest.raises(ValueError, match="customers"):
        SandboxConfig(customers=0)
    forms = SandboxConfig.from_env(
        {"BANK_SANDBOX_PAYMENT_CONSENT_FORM": "sbank=nested, abank=both", "BANK_SANDBOX_REFUSE_PAYMENT_CONSENTS": "1"}
    )
    assert forms.payment_consent_form_of("sbank") == "nested" and forms.payment_consent_form_of("abank") == "both"
    assert forms.payment_consent_form_of("vbank") == "flat" and forms.faults().refuse_payment_consents
    with pytest.raises(ValueError, match="BANK_SANDBOX_PAYMENT_CONSENT_FORM"):
        SandboxConfig.from_env({"BANK_SANDBOX_PAYMENT_CONSENT_FORM": "sbank=sideways"})
    with pytest.raises(ValueError, match="payment_consent_form"):
        SandboxConfig(payment_consent_form={"vbank": "xml"})


async def test_main_serves_the_banks_until_sigterm(ports):
    reserved, ports = ports, {bank_id: ports.port() for bank_id in ("vbank", "abank", "sbank")}  # svclib.ports
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bank_sandbox",
        "--banks",
        ",".join(f"{b}={p}" for b, p in ports.items()),
        env={**os.environ, **reserved.env()},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with aiohttp.ClientSession() as session:
            for port in ports.values():
                for _ in range(100):
                    try:
                        async with session.post(
                            f"http://127.0.0.1:{port}/auth/bank-token",
                            params={"client_id": TEAM, "client_secret": SECRET},
                        ) as response:
                            assert response.status == 200
                            break
                    except aiohttp.ClientConnectionError:
                        assert process.returncode is None
                        await asyncio.sleep(0.1)
                else:
                    pytest.fail(f"no answer on port {port}")
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 10)
        assert process.returncode == 0, stderr.decode()
        assert b'"path": "/auth/bank-token"' in stderr and b"banks stopped" in stderr
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
