"""Payments end to end: gateway → consent_svc → the bank emulator, with the suite's real processes.

Every test takes its own emulator customers (team200-31 … 35), so neither their money nor their
syncs overlap another test's. "No bank call" and "exactly one bank payment" are read from the
emulator's own counters (`/__admin__/customers/{id}/counts`: payments made, payment consents asked).
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from decimal import Decimal

import aiohttp
import pytest

from tests.e2e import Http, eventually, onboard, set_faults, wait_synced

pytestmark = pytest.mark.timeout(300)

AUTO_BANKS = ("vbank", "abank")


def new_key() -> str:
    return f"e2e-{uuid.uuid4().hex}"


async def stored(http: Http, user: str, bank: str) -> dict:
    """What the suite stores for the bank (no new sync)."""
    status, body = await call(
        http, "GET", f"/api/banks/{bank}/bootstrap", params={"user_id": user, "skip_sync": "true", "page_size": "20"}
    )
    assert status == 200, body
    return body


def account(snapshot: dict, sub_type: str) -> dict:
    return next(a for a in snapshot["accounts"] if a["account_sub_type"] == sub_type)


def available(snapshot: dict, account_id: str) -> Decimal:
    return next(
        Decimal(b["amount"])
        for b in snapshot["balances"]
        if b["account_id"] == account_id and b["type"] == "InterimAvailable"
    )


async def bank_counts(session: aiohttp.ClientSession, bank_url: str, user: str) -> dict:
    async with session.get(f"{bank_url}/__admin__/customers/{user}/counts") as resp:
        assert resp.status == 200
        return await resp.json()


async def call(http: Http, method: str, path: str, **kwargs) -> tuple[int, dict]:
    """As a well-behaved client: a 429 of the gateway's per-user rate limit is retried a bit later."""
    for _ in range(40):
        status, answer = await http.call(method, path, **kwargs)
        if status != 429:
            break
        await asyncio.sleep(0.3)
    return status, answer


async def pay(http: Http, body: dict, key: str | None, path: str = "/api/payments") -> tuple[int, dict]:
    return await call(http, "POST", path, json=body, headers={"Idempotency-Key": key} if key else None)


# ------------------------------------------------------------------------------------------ money moves


async def test_a_payment_between_two_of_the_users_banks_moves_money_at_both(suite, http, session, bank_urls):
    user = "team200-33"
    await onboard(http, user, wait=True)
    vbank, abank = await stored(http, user, "vbank"), await stored(http, user, "abank")
    source, target = account(vbank, "Checking"), account(abank, "Checking")
    before = (available(vbank, source["account_id"]), available(abank, target["account_id"]))
    amount, key = Decimal("1234.56"), new_key()
    body = {
        "user_id": user,
        "bank_id": "vbank",
        "account_id": source["account_id"],
        "creditor_account": target["account_number"],
        "creditor_bank_id": "abank",
        "amount": str(amount),
        "comment": "e2e transfer",
    }

    status, answer = await pay(http, body, key)
    assert status == 200, answer
    payment = answer["payment"]
    assert answer["replayed"] is False and payment["status"] == "PAYMENT_STATUS_COMPLETED"
    assert (payment["amount"], payment["debtor_account"], payment["idempotency_key"]) == (
        "1234.56",
        source["account_number"],
        key,
    )
    assert payment["bank_payment_id"].startswith("pay-") and payment["consent_id"].startswith("pcon-")

    # The payment queued a sync of both banks: once it ran, the stored balances moved by the amount.
    await wait_synced(http, user)
    vbank, abank = await stored(http, user, "vbank"), await stored(http, user, "abank")
    after = (available(vbank, source["account_id"]), available(abank, target["account_id"]))
    assert (before[0] - after[0], after[1] - before[1]) == (amount, amount)
    debit = next(t for t in vbank["transactions"] if t["amount"] == "1234.56" and "e2e transfer" in t["description"])
    credit = next(t for t in abank["transactions"] if t["amount"] == "1234.56" and "e2e transfer" in t["description"])
    assert (debit["direction"], credit["direction"]) == ("debit", "credit")

    replay = await pay(http, body, key)
    assert replay[0] == 200 and replay[1]["replayed"] is True and replay[1]["payment"] == payment
    assert (await bank_counts(session, bank_urls["vbank"], user))["payments"] == 1

    status, got = await call(http, "GET", f"/api/payments/{payment['payment_id']}", params={"user_id": user})
    assert status == 200 and got["payment"]["status"] == "PAYMENT_STATUS_COMPLETED"
    assert [e["source"] for e in got["events"]] == ["create", "consent", "bank_call", "bank_answer"]
    status, listed = await call(http, "GET", "/api/payments", params={"user_id": user, "page_size": "10"})
    assert status == 200 and [p["payment_id"] for p in listed["payments"]] == [payment["payment_id"]]

    stranger = http.as_user(suite.token("team200-35"))
    status, _ = await call(stranger, "GET", f"/api/payments/{payment['payment_id']}")  # the token's user's? no
    assert status == 404
    status, _ = await call(stranger, "GET", f"/api/payments/{payment['payment_id']}", params={"user_id": user})
    assert status == 403  # naming the owner


async def test_a_loan_repayment_pays_the_dashboards_instalment_to_the_loans_account(http, session, bank_urls):
    user = "team200-34"
    await onboard(http, user, wait=True)
    vbank, abank = await stored(http, user, "vbank"), await stored(http, user, "abank")
    loan = next(c for c in vbank["credits"] if c["product_type"] == "loan" and c["status"] == "active")
    loan_account = next(a for a in vbank["accounts"] if a["account_number"] == loan["account_number"])
    status, dashboard = await call(http, "GET", "/api/dashboard", params={"user_id": user, "force_refresh": "true"})
    assert status == 200, dashboard
    instalment = next(row for row in dashboard["loans"] if row["agreement_id"] == loan["agreement_id"])
    source = account(abank, "Checking")  # paid from the other bank
    before = available(vbank, loan_account["account_id"])

    status, answer = await pay(
        http,
        {"user_id": user, "bank_id": "abank", "account_id": source["account_id"]},
        new_key(),
        f"/api/loans/{loan['agreement_id']}/repayment",
    )
    assert status == 200, answer
    payment = answer["payment"]
    assert payment["status"] == "PAYMENT_STATUS_COMPLETED" and payment["kind"] == "PAYMENT_KIND_LOAN_REPAYMENT"
    assert answer["amount_source"] == "detected" and payment["amount"] == instalment["monthly_payment"]
    assert (payment["creditor_account"], payment["creditor_bank_id"], payment["agreement_id"]) == (
        loan["account_number"],
        "vbank",
        loan["agreement_id"],
    )

    await wait_synced(http, user)
    vbank = await stored(http, user, "vbank")
    assert available(vbank, loan_account["account_id"]) - before == Decimal(payment["amount"])
    arrived = [
        t
        for t in vbank["transactions"]
        if t["account_id"] == loan_account["account_id"]
        and t["direction"] == "credit"
        and t["amount"] == payment["amount"]
        and loan["agreement_id"] in t["description"]
    ]
    assert arrived, "the repayment is booked on the loan's account"
    assert (await bank_counts(session, bank_urls["abank"], user))["payments"] == 1

    status, error = await pay(
        http,
        {"user_id": user, "bank_id": "abank", "account_id": source["account_id"]},
        new_key(),
        "/api/loans/loan-does-not-exist/repayment",
    )
    assert status == 404 and "loan-does-not-exist" in error["message"]


# ------------------------------------------------------------------------------------------ idempotency


async def test_twenty_concurrent_requests_with_one_key_make_exactly_one_bank_payment(http, session, bank_urls):
    user = "team200-31"
    await onboard(http, user, ("vbank",), wait=True)
    vbank = await stored(http, user, "vbank")
    body = {
        "user_id": user,
        "bank_id": "vbank",
        "account_id": account(vbank, "Checking")["account_id"],
        "creditor_account": account(vbank, "Savings")["account_number"],
        "amount": "500.00",
    }
    key = new_key()

    # No wait for the user's rate-limit bucket: the suite's (1000/s, burst 2000, tests/conftest.py) takes
    # these 20 at once after the polling above.
    answers = await asyncio.gather(*(pay(http, body, key) for _ in range(20)))
    statuses = [status for status, _ in answers]
    assert set(statuses) <= {200, 409} and 200 in statuses, answers
    assert len({a["payment"]["payment_id"] for s, a in answers if s == 200}) == 1
    assert all(a["error"] == "ABORTED" and "in progress" in a["message"] for s, a in answers if s == 409)
    counts = await bank_counts(session, bank_urls["vbank"], user)
    assert (counts["payments"], counts["payment_consents"]) == (1, 1)

    status, final = await pay(http, body, key)
    assert status == 200 and final["replayed"] is True and final["payment"]["status"] == "PAYMENT_STATUS_COMPLETED"
    status, conflict = await pay(http, {**body, "amount": "500.01"}, key)
    assert status == 409 and conflict["error"] == "ALREADY_EXISTS" and "Idempotency-Key" in conflict["message"]
    assert (await bank_counts(session, bank_urls["vbank"], user))["payments"] == 1


async def test_killed_after_the_bank_paid_the_retry_answers_the_stored_result(suite, http, session, bank_urls, db):
    user = "team200-32"
    await onboard(http, user, wait=True)
    vbank, abank = await stored(http, user, "vbank"), await stored(http, user, "abank")
    source = account(vbank, "Checking")
    before = available(vbank, source["account_id"])
    body = {
        "user_id": user,
        "bank_id": "vbank",
        "account_id": source["account_id"],
        "creditor_account": account(abank, "Checking")["account_number"],
        "creditor_bank_id": "abank",
        "amount": "777.77",
    }
    key = new_key()

    # The bank books the payment, then takes its time to answer: consent_svc is killed meanwhile.
    await set_faults(session, bank_urls["vbank"], payment_delay_ms=8000)
    try:
        first = asyncio.create_task(pay(http, body, key))

        async def bank_paid():
            return (await bank_counts(session, bank_urls["vbank"], user))["payments"] == 1

        assert await eventually(bank_paid, timeout=30, interval=0.05)
        suite.stop(["consent"], signal.SIGKILL)
    finally:
        await set_faults(session, bank_urls["vbank"], payment_delay_ms=0)
    status, answer = await first
    assert status >= 500, answer
    row = await db.fetchrow(
        "SELECT status, in_doubt, bank_payment_id FROM consent.payments WHERE user_id = $1 AND idempotency_key = $2",
        user,
        key,
    )
    assert dict(row) == {"status": "INITIATING", "in_doubt": True, "bank_payment_id": None}  # intent, not outcome

    suite.start(["consent"])
    await suite.wait_healthy(["consent"])

    async def retried():  # the gateway's channel may still be backing off from the dead process: 503
        result = await pay(http, body, key)
        return result if result[0] != 503 else None

    status, answer = await eventually(retried, timeout=30, interval=0.5) or (503, None)
    assert status == 200, answer
    payment = answer["payment"]
    assert answer["replayed"] is True and payment["status"] == "PAYMENT_STATUS_COMPLETED"
    assert payment["bank_payment_id"].startswith("pay-")
    again = await pay(http, body, key)
    assert again == (200, answer)
    counts = await bank_counts(session, bank_urls["vbank"], user)
    assert (counts["payments"], counts["payment_consents"]) == (1, 1)

    status, got = await call(http, "GET", f"/api/payments/{payment['payment_id']}", params={"user_id": user})
    assert status == 200 and "reconcile" in [e["source"] for e in got["events"]]
    await wait_synced(http, user)
    assert before - available(await stored(http, user, "vbank"), source["account_id"]) == Decimal("777.77")


# ------------------------------------------------------------------------------------------ validation


async def test_bad_payments_are_4xx_and_never_reach_the_bank(suite, http, session, bank_urls):
    user = "team200-35"
    await onboard(http, user, ("vbank",), wait=True)
    vbank = await stored(http, user, "vbank")
    mine = account(vbank, "Checking")
    base = {
        "user_id": user,
        "bank_id": "vbank",
        "account_id": mine["account_id"],
        "creditor_account": "40817810000000000001",
        "amount": "10.00",
    }
    me = http.as_user(suite.token(user))
    table = [
        ("negative amount", {"amount": "-10.00"}, 400),
        ("zero amount", {"amount": "0"}, 400),
        ("zero with decimals", {"amount": "0.00"}, 400),
        ("three decimals", {"amount": "10.005"}, 400),
        ("huge amount", {"amount": "100000000000000000.00"}, 400),
        ("just too large", {"amount": "1000000000000.00"}, 400),
        ("exponent", {"amount": "1e6"}, 400),
        ("a JSON number", {"amount": 10.5}, 400),
        ("no amount", {"amount": ""}, 400),
        ("not an account number", {"creditor_account": "pay me"}, 400),
        ("unknown bank", {"bank_id": "nobank"}, 400),
        ("unknown account", {"account_id": "acc-does-not-exist"}, 404),
        ("another user's account", {"account_id": "acc-34407"}, 404),
        ("paying an account from itself", {"creditor_account": mine["account_number"]}, 400),
        ("another user", {"user_id": "team200-34"}, 403),
    ]
    for name, change, expected in table:
        status, answer = await pay(me, {**base, **change}, new_key())
        assert status == expected, (name, answer)
        assert answer["message"], name
    status, answer = await pay(me, base, None)
    assert status == 400 and "idempotency_key is required" in answer["message"]
    status, answer = await call(
        me, "POST", "/api/payments", json={**base, "idempotency_key": "a"}, headers={"Idempotency-Key": "b"}
    )
    assert status == 400 and "Idempotency-Key" in answer["message"]
    status, answer = await pay(
        me,
        {"bank_id": "vbank", "account_id": mine["account_id"], "amount": "-1"},
        new_key(),
        "/api/loans/loan-x/repayment",
    )
    assert status == 400 and "amount" in answer["message"]
    counts = await bank_counts(session, bank_urls["vbank"], user)
    assert (counts["payments"], counts["payment_consents"]) == (0, 0)
    status, listed = await call(me, "GET", "/api/payments")
    assert status == 200 and listed["payments"] == []  # nothing was recorded either
