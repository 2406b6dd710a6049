"""Tests of `bankapi` against the local bank emulator (`bank_sandbox`) and a real Redis.

Each test starts its own emulator banks on free ports (isolated consents and fault knobs), builds
`BankEndpoint`/`TeamCredentials` (`bankapi.config`) directly, and keeps its Redis keys under a unique prefix.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import aiohttp
import pytest
import redis.asyncio as aioredis

from bankapi import (
    AuthFailed,
    BadRequest,
    BankClient,
    BankClients,
    BankUnavailable,
    CallRecord,
    ConsentKind,
    ConsentRequired,
    ConsentStatus,
    Forbidden,
    MemoryTokenStore,
    NotFound,
    PaymentStatus,
    RateLimited,
    RedisTokenStore,
    UnknownBank,
    format_amount,
    normalize_payment_status,
    normalize_status,
)
from bankapi.config import BankEndpoint, TeamCredentials
from bankapi.errors import CallRefused, error_for_status, parse_retry_after
from bankapi.models import Transaction, agreement_id_from_text, parse_datetime
from bankapi.tokens import Token, TokenCache
from svclib.logging import request_id_var

TEAM = TeamCredentials(client_id="team200", client_secret="finpulse-dev-secret", name="FinPulse")
CUSTOMER = "team200-1"
APPROVAL = {"vbank": "auto", "abank": "auto", "sbank": "manual"}


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture
async def start_sandbox():
    """Start the three emulator banks on free ports with a given SandboxConfig; `.urls` maps bank id →
    base URL. Everything started is stopped at teardown."""
    from bank_sandbox.app import start_banks
    from bank_sandbox.config import SandboxConfig

    running = []

    async def start(**config):
        banks = await start_banks(
            SandboxConfig(approval=dict(APPROVAL), **config), dict.fromkeys(APPROVAL, 0), host="127.0.0.1"
        )
        running.append(banks)
        return banks

    yield start
    for banks in running:
        await banks.stop()


@pytest.fixture
async def sandbox(start_sandbox):
    """The emulator with its default configuration (seed 42)."""
    return await start_sandbox()


@pytest.fixture
async def redis_client(redis_url):
    """The session's Redis (tests/conftest.py: the configured server, else an embedded one): never skipped."""
    client = aioredis.from_url(redis_url, socket_connect_timeout=1, socket_timeout=2)
    yield client
    await client.aclose()


@pytest.fixture
async def token_store(redis_client):
    """A RedisTokenStore under a prefix unique to this test; its keys are deleted afterwards."""
    prefix = f"finpulse:test:{uuid.uuid4().hex}:banktoken:"
    yield RedisTokenStore(redis_client, prefix=prefix)
    keys = [k async for k in redis_client.scan_iter(match=prefix + "*")]
    if keys:
        await redis_client.delete(*keys)


def bank_config(sandbox, bank_id: str) -> BankEndpoint:
    return BankEndpoint(id=bank_id, base_url=sandbox.urls[bank_id], approval_mode=APPROVAL[bank_id])


class Recorder:
    """An `on_call` hook that keeps every CallRecord."""

    def __init__(self) -> None:
        self.records: list[CallRecord] = []

    def __call__(self, record: CallRecord) -> None:
        self.records.append(record)

    def ops(self, operation: str) -> list[CallRecord]:
        return [r for r in self.records if r.operation == operation]


def make_client(sandbox, bank_id: str, recorder: Recorder | None = None, **options) -> BankClient:
    options.setdefault("timeout", 3.0)
    options.setdefault("backoff_base", 0.01)
    options.setdefault("backoff_max", 0.05)
    options.setdefault("token_store", MemoryTokenStore())
    return BankClient(bank_config(sandbox, bank_id), TEAM, on_call=recorder, **options)


async def set_faults(
    sandbox, bank_id: str, latency_ms: int = 0, error_rate: float = 0.0, rate_limit_rate: float = 0.0, **extra
) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{sandbox.urls[bank_id]}/__admin__/faults",
            json={"latency_ms": latency_ms, "error_rate": error_rate, "rate_limit_rate": rate_limit_rate, **extra},
        ) as resp:
            assert resp.status < 300, await resp.text()


async def sign_as_customer(base_url: str, request_id: str, action: str = "approve", customer: str = CUSTOMER) -> dict:
    """What the customer does in the bank's app: log in and approve (or reject) the consent request."""
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{base_url}/auth/login", json={"username": customer, "password": TEAM.client_secret}
        ) as resp:
            assert resp.status == 200, await resp.text()
            client_token = (await resp.json())["access_token"]
        async with http.post(
            f"{base_url}/account-consents/sign",
            json={"request_id": request_id, "action": action, "signature": "x"},
            headers={"Authorization": f"Bearer {client_token}"},
        ) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()


async def approved_account_consent(client: BankClient) -> str:
    consent = await client.request_account_consent(CUSTOMER)
    assert consent.status is ConsentStatus.APPROVED and consent.consent_id
    return consent.consent_id


# ------------------------------------------------------------------------------------------ pure units


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("approved", ConsentStatus.APPROVED),
        ("Authorized", ConsentStatus.APPROVED),
        ("active", ConsentStatus.APPROVED),
        ("AUTHORIZED", ConsentStatus.APPROVED),
        ("Authorised", ConsentStatus.APPROVED),
        ("pending", ConsentStatus.AWAITING_USER),
        ("AwaitingAuthorization", ConsentStatus.AWAITING_USER),
        ("awaiting_authorization", ConsentStatus.AWAITING_USER),
        ("Rejected", ConsentStatus.REJECTED),
        ("rejected", ConsentStatus.REJECTED),
        ("Revoked", ConsentStatus.REVOKED),
        ("revoked", ConsentStatus.REVOKED),
        ("Expired", ConsentStatus.EXPIRED),
        ("expired", ConsentStatus.EXPIRED),
        ("APPROVED", ConsentStatus.APPROVED),
        ("AWAITING_USER", ConsentStatus.AWAITING_USER),
        (None, ConsentStatus.PENDING),
        ("", ConsentStatus.PENDING),
        ("SomethingNew", ConsentStatus.PENDING),
    ],
)
def test_normalize_status(raw, expected):
    assert normalize_status(raw) is expected


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("pending", PaymentStatus.PENDING),
        ("AcceptedSettlementInProcess", PaymentStatus.PENDING),
        ("completed", PaymentStatus.COMPLETED),
        ("AcceptedSettlementCompleted", PaymentStatus.COMPLETED),
        ("failed", PaymentStatus.FAILED),
        ("Rejected", PaymentStatus.FAILED),
        (None, PaymentStatus.PENDING),
    ],
)
def test_normalize_payment_status(raw, expected):
    assert normalize_payment_status(raw) is expected


def test_parsing_is_tolerant_and_exact():
    assert parse_datetime("2025-11-18T18:17:15.532290") == datetime(2025, 11, 18, 18, 17, 15, 532290, UTC)
    assert parse_datetime("2025-11-08T08:30:15Z") == datetime(2025, 11, 8, 8, 30, 15, tzinfo=UTC)
    assert parse_datetime("2025-11-08T11:30:15.5+03:00") == datetime(2025, 11, 8, 8, 30, 15, 500000, UTC)
    assert parse_datetime("garbage") is None and parse_datetime(None) is None
    tx = Transaction.from_api(
        {
            "accountId": "acc-1",
            "transactionId": "tx-1",
            "amount": {"amount": "4971.71", "currency": "RUB"},
            "creditDebitIndicator": "Debit",
            "bookingDateTime": "2025-11-08T08:30:15.285567Z",
            "transactionInformation": "Платеж по кредиту №loan-team200-1-0447",
            "bankTransactionCode": {"code": "02"},
            "merchant": None,
        }
    )
    assert tx.amount == Decimal("4971.71") and tx.signed_amount == Decimal("-4971.71")
    assert tx.agreement_id == "loan-team200-1-0447" and tx.merchant_name is None and tx.bank_code == "02"
    assert agreement_id_from_text("Проценты по депозиту №dep-team200-1-0001") == "dep-team200-1-0001"
    assert agreement_id_from_text("Дикси - Москва") is None
    assert format_amount(Decimal("1000")) == "1000.00" and format_amount("0.1") == "0.10"
    with pytest.raises(ValueError):
        format_amount("1.005")


def test_error_mapping():
    ctx = {"bank_id": "vbank", "operation": "op", "interaction_id": "iid"}
    consent = error_for_status(403, {"detail": {"error": "CONSENT_MISMATCH", "message": "not yours"}}, **ctx)
    assert isinstance(consent, ConsentRequired) and consent.code == "CONSENT_MISMATCH"
    assert consent.message == "not yours" and consent.interaction_id == "iid" and consent.bank_id == "vbank"
    assert type(error_for_status(403, {"detail": "X-Requesting-Bank must be the team id"}, **ctx)) is Forbidden
    invalid = error_for_status(422, {"detail": [{"loc": ["query", "limit"], "msg": "Input should be ≤ 100"}]}, **ctx)
    assert isinstance(invalid, BadRequest) and invalid.message == "query.limit: Input should be ≤ 100"
    assert isinstance(error_for_status(400, {"detail": "Insufficient funds"}, **ctx), BadRequest)
    assert isinstance(error_for_status(404, {"detail": "Account not found"}, **ctx), NotFound)
    assert isinstance(error_for_status(503, "503 Service Temporarily Unavailable", **ctx), BankUnavailable)
    limited = error_for_status(429, "<html>slow down</html>", retry_after_header="Wed, 21 Oct 2015 07:28:00 GMT", **ctx)
    assert isinstance(limited, RateLimited) and limited.retry_after == 0.0  # a date in the past: now
    assert error_for_status(429, None, **ctx).retry_after is None
    assert parse_retry_after("120") == 120.0 and parse_retry_after("soon") is None
    # 401: a bad token, or a refusal of the call itself (not a token problem, not an outage)
    assert type(error_for_status(401, {"detail": "Could not validate credentials"}, **ctx)) is AuthFailed
    refused = error_for_status(401, {"detail": "Insufficient permissions"}, **ctx)
    assert isinstance(refused, CallRefused) and not isinstance(refused, (AuthFailed, BankUnavailable))


async def test_limit_is_validated_locally():
    client = BankClient(BankEndpoint("vbank", "http://127.0.0.1:9"), TEAM)
    for bad in (0, 101, 500):
        with pytest.raises(ValueError, match="between 1 and 100"):
            await client.get_transactions_page(CUSTOMER, "consent-x", "acc-1", limit=bad)
    await client.close()


async def test_registry_unknown_bank():
    banks = [BankEndpoint("vbank", "http://127.0.0.1:9"), BankEndpoint("xbank", None)]
    async with BankClients(banks, TEAM) as clients:
        assert clients.get("vbank") is clients.get("vbank")
        with pytest.raises(UnknownBank, match="unknown bank 'nobank'"):
            clients.get("nobank")
        with pytest.raises(UnknownBank, match="no base URL"):
            clients.get("xbank")


async def test_registry_is_configured_by_its_caller_only(sandbox):
    banks = [
        BankEndpoint("vbank", sandbox.urls["vbank"] + "/", "auto"),
        BankEndpoint("sbank", sandbox.urls["sbank"], "manual"),
    ]
    async with BankClients(
        banks, TEAM, token_store=MemoryTokenStore(), timeout=2.5, max_retries=1, backoff_base=0.01
    ) as clients:
        assert clients.bank_ids == ["vbank", "sbank"] and "abank" not in clients
        vbank = clients.get("vbank")
        assert (vbank.timeout, vbank.max_retries, vbank.team) == (2.5, 1, TEAM)
        assert vbank.auto_approves and not clients.get("sbank").auto_approves
        assert await vbank.get_products()
        with pytest.raises(UnknownBank):
            clients.get("abank")


async def test_redis_store_degrades_when_redis_is_down(ports):
    # A port held by this test and listening nowhere: every connection is refused (svclib.ports).
    down = aioredis.Redis(host="127.0.0.1", port=ports.port(), socket_connect_timeout=0.2)
    store = RedisTokenStore(down, prefix="finpulse:test:down:", op_timeout=0.3)
    started = time.monotonic()
    assert await store.get("vbank:team200") is None
    await store.set("vbank:team200", "x", 60)  # no exception
    assert time.monotonic() - started < 1.5
    await down.aclose()


# ------------------------------------------------------------------------------------------ token


async def test_token_fetched_once_and_shared_through_redis(sandbox, token_store):
    rec = Recorder()
    async with make_client(sandbox, "vbank", rec, token_store=token_store) as first:
        tokens = await asyncio.gather(*(first.get_token() for _ in range(10)))
        assert len(set(tokens)) == 1 and len(rec.ops("get_token")) == 1
        await first.get_products()
    async with make_client(sandbox, "vbank", rec, token_store=token_store) as second:
        assert await second.get_token() == tokens[0]
        await second.get_products()
    assert len(rec.ops("get_token")) == 1  # the second client reused the stored token
    # Each bank has its own token.
    async with make_client(sandbox, "abank", rec, token_store=token_store) as other:
        assert await other.get_token() != tokens[0]
    assert len(rec.ops("get_token")) == 2


async def test_token_refreshed_once_on_401(sandbox, token_store):
    await token_store.set("vbank:team200", "bogus-token", 3600)
    rec = Recorder()
    async with make_client(sandbox, "vbank", rec, token_store=token_store) as client:
        products = await client.get_products()
        assert products
        assert [(r.operation, r.http_status) for r in rec.records] == [
            ("get_products", 401),
            ("get_token", 200),
            ("get_products", 200),
        ]
        fresh = await client.get_token()
    assert fresh != "bogus-token" and fresh in (await token_store.get("vbank:team200"))


class Clock:
    """Epoch seconds that move only when the test says so."""

    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_token_renewed_before_expiry():
    clock = Clock()
    fetched = []

    async def fetch() -> Token:
        fetched.append(1)
        return Token.issued(f"token-{len(fetched)}", expires_in=100, now=clock())  # renewed 10 % (10 s) early

    store = MemoryTokenStore(clock)
    cache = TokenCache("vbank:team200", fetch, store, clock=clock)
    assert Token.issued("t", 86400).refresh_at == pytest.approx(time.time() + 86400 - 300, abs=1)
    assert await cache.get() == await cache.get() == "token-1"
    clock.now += 89.9
    assert await cache.get() == "token-1" and len(fetched) == 1, "still fresh just before the margin"
    clock.now += 0.2
    assert await cache.get() == "token-2" and len(fetched) == 2, "renewed 10 % before it expires"
    # Another process's cache finds the renewed token in the store (its TTL ends at its refresh time).
    other = TokenCache("vbank:team200", fetch, store, clock=clock)
    assert await other.get() == "token-2" and len(fetched) == 2
    clock.now += 90.1
    assert await other.get() == "token-3" and len(fetched) == 3


async def test_bad_credentials_and_unusable_tokens_raise_auth_failed(start_sandbox, caplog):
    caplog.set_level(logging.DEBUG)
    banks = await start_sandbox(token_ttl=0)  # every token is born expired
    bank = bank_config(banks, "vbank")
    async with BankClient(bank, TeamCredentials("team200", "wrong-secret"), backoff_base=0.01) as wrong:
        with pytest.raises(AuthFailed, match="Invalid client_secret") as info:
            await wrong.get_products()
        assert info.value.http_status == 401 and info.value.operation == "get_token"
    assert "wrong-secret" not in caplog.text  # the secret is in the token call's query: never logged
    rec = Recorder()
    async with make_client(banks, "vbank", rec) as client:
        with pytest.raises(AuthFailed, match="after a token refresh"):
            await client.get_products()
    assert [(r.operation, r.http_status) for r in rec.records] == [
        ("get_token", 200),
        ("get_products", 401),
        ("get_token", 200),
        ("get_products", 401),
    ]


# ------------------------------------------------------------------------------------------ consents + data


async def test_auto_consent_accounts_balances_and_every_transaction_page(sandbox):
    rec = Recorder()
    async with make_client(sandbox, "vbank", rec) as client:
        consent = await client.request_account_consent(CUSTOMER)
        assert consent.kind is ConsentKind.ACCOUNTS and consent.auto_approved
        assert consent.status is ConsentStatus.APPROVED and consent.consent_id.startswith("consent-")
        assert consent.request_id.startswith("req-") and consent.created_at.tzinfo is not None
        polled = await client.get_account_consent(consent.consent_id)
        assert polled.status is ConsentStatus.APPROVED and polled.raw_status == "Authorized"
        assert polled.expires_at > datetime.now(UTC) + timedelta(days=300)

        accounts = await client.get_accounts(CUSTOMER, consent.consent_id)
        assert accounts and all(a.account_id.startswith("acc-") for a in accounts)
        assert all(a.account_number and len(a.account_number) >= 16 for a in accounts)
        one = await client.get_account(CUSTOMER, consent.consent_id, accounts[0].account_id)
        assert one.account_id == accounts[0].account_id

        balances = await client.get_balances(CUSTOMER, consent.consent_id, accounts[0].account_id)
        assert balances and all(isinstance(b.amount, Decimal) for b in balances)
        assert {b.type for b in balances} >= {"InterimAvailable"}

        account = accounts[0]
        first = await client.get_transactions_page(CUSTOMER, consent.consent_id, account.account_id, limit=100)
        assert first.current_page in (1, None) and len(first.transactions) <= 100
        all_txs = []
        for acc in accounts:
            all_txs += [tx async for tx in client.iter_transactions(CUSTOMER, consent.consent_id, acc.account_id)]
        mine = [t for t in all_txs if t.account_id == account.account_id]
        assert len({t.transaction_id for t in mine}) == len(mine)
        assert first.total_pages > 1 and first.next_link  # seed 42: several pages of 100
        assert len(mine) == first.total_records > 100
        path = f"/accounts/{account.account_id}/transactions"
        pages_read = [r for r in rec.ops("get_transactions") if r.path == path]
        assert len(pages_read) == 1 + first.total_pages  # the probe above, then every page once
        assert all(isinstance(t.amount, Decimal) and t.amount > 0 for t in all_txs)
        assert all(t.booking_time is not None and t.booking_time.tzinfo is not None for t in all_txs)
        assert any(t.signed_amount < 0 for t in all_txs) and any(t.signed_amount > 0 for t in all_txs)
        linked = [t for t in all_txs if t.agreement_id]
        assert linked, "expected loan repayments / deposit interest with an embedded agreement id"
        assert all(t.agreement_id in t.description for t in linked)
        products = await client.request_product_consent(CUSTOMER)
        agreements = await client.get_product_agreements(CUSTOMER, products.consent_id)
        assert {t.agreement_id for t in linked} <= {a.agreement_id for a in agreements}

        # Our own time filter applies even if the server ignored it.
        cutoff = max(t.booking_time for t in mine) - timedelta(days=30)
        recent = [
            tx
            async for tx in client.iter_transactions(CUSTOMER, consent.consent_id, account.account_id, from_time=cutoff)
        ]
        assert recent and all(t.booking_time >= cutoff for t in recent)
        assert len(recent) == len([t for t in mine if t.booking_time >= cutoff])


async def test_manual_consent_pending_then_approved(sandbox):
    async with make_client(sandbox, "sbank") as client:
        assert not client.auto_approves
        consent = await client.request_account_consent(CUSTOMER)
        assert consent.status is ConsentStatus.AWAITING_USER and consent.consent_id is None
        assert not consent.auto_approved and consent.request_id.startswith("req-")
        polled = await client.get_account_consent(consent.request_id)
        assert polled.status is ConsentStatus.AWAITING_USER and polled.raw_status == "AwaitingAuthorization"
        assert polled.consent_id is None and polled.request_id == consent.request_id  # answer echoes the request id
        with pytest.raises(ConsentRequired):
            await client.get_accounts(CUSTOMER, consent.request_id)

        # As on the organisers' server: polling by request id keeps answering AwaitingAuthorization.
        await set_faults(sandbox, "sbank", sticky_awaiting=True)
        signed = await sign_as_customer(sandbox.urls["sbank"], consent.request_id)
        still = await client.get_account_consent(consent.request_id)
        assert still.status is ConsentStatus.AWAITING_USER and still.consent_id is None
        assert still.request_id == consent.request_id
        approved = await client.get_account_consent(signed["consent_id"])  # the id from the callback
        assert approved.status is ConsentStatus.APPROVED and approved.consent_id == signed["consent_id"]
        assert await client.get_accounts(CUSTOMER, approved.consent_id)


async def test_manual_consent_rejected(sandbox):
    async with make_client(sandbox, "sbank") as client:
        consent = await client.request_account_consent(CUSTOMER)
        signed = await sign_as_customer(sandbox.urls["sbank"], consent.request_id, action="reject")
        assert signed["consent_id"] is None
        rejected = await client.get_account_consent(consent.request_id)
        assert rejected.status is ConsentStatus.REJECTED and rejected.consent_id is None
        assert rejected.request_id == consent.request_id


async def test_revoked_consent_gives_consent_required(sandbox):
    async with make_client(sandbox, "abank") as client:
        consent_id = await approved_account_consent(client)
        assert await client.get_accounts(CUSTOMER, consent_id)
        await client.delete_account_consent(consent_id)
        revoked = await client.get_account_consent(consent_id)
        assert revoked.status is ConsentStatus.REVOKED and revoked.consent_id == consent_id
        with pytest.raises(ConsentRequired) as info:
            await client.get_accounts(CUSTOMER, consent_id)
        assert info.value.code == "CONSENT_REQUIRED" and info.value.http_status == 403
        assert info.value.bank_id == "abank" and info.value.interaction_id
        with pytest.raises(NotFound):
            await client.get_account_consent("consent-does-not-exist")


async def test_product_agreements_details_and_catalogue(sandbox):
    async with make_client(sandbox, "vbank") as client:
        consent = await client.request_product_consent(CUSTOMER)
        assert consent.kind is ConsentKind.PRODUCTS and consent.status is ConsentStatus.APPROVED
        assert consent.consent_id.startswith("pagc-") and consent.request_id.startswith("pagcr-")
        polled = await client.get_product_consent(consent.consent_id, CUSTOMER)
        assert polled.status is ConsentStatus.APPROVED

        agreements = await client.get_product_agreements(CUSTOMER, consent.consent_id)
        assert agreements and {a.product_type for a in agreements} <= {"loan", "deposit", "card"}
        assert all(isinstance(a.amount, Decimal) for a in agreements)
        detail = await client.get_product_agreement(CUSTOMER, consent.consent_id, agreements[0].agreement_id)
        assert detail.agreement_id == agreements[0].agreement_id
        assert isinstance(detail.interest_rate, Decimal)

        with pytest.raises(ConsentRequired):  # an account consent is not a product consent
            await client.get_product_agreements(CUSTOMER, "consent-not-a-product-consent")
        await client.delete_product_consent(consent.consent_id, CUSTOMER)
        with pytest.raises(ConsentRequired):
            await client.get_product_agreements(CUSTOMER, consent.consent_id)

        catalogue = await client.get_products()
        assert catalogue and all(p.product_id for p in catalogue)
        loans = await client.get_products("loan")
        assert loans and {p.product_type for p in loans} == {"loan"}


# ------------------------------------------------------------------------------------------ payments


async def test_payment_between_two_banks_and_single_use_consent(sandbox):
    rec = Recorder()

    async def spendable(client: BankClient) -> tuple[str, object]:
        consent_id = await approved_account_consent(client)
        accounts = await client.get_accounts(CUSTOMER, consent_id)
        return consent_id, next(a for a in accounts if a.account_sub_type == "Checking")

    async def available(client: BankClient, consent_id: str, account_id: str) -> Decimal:
        balances = await client.get_balances(CUSTOMER, consent_id, account_id)
        return next(b.amount for b in balances if b.type == "InterimAvailable")

    async with make_client(sandbox, "vbank", rec) as vbank, make_client(sandbox, "abank") as abank:
        v_consent, v_acc = await spendable(vbank)
        a_consent, a_acc = await spendable(abank)
        v_before = await available(vbank, v_consent, v_acc.account_id)
        a_before = await available(abank, a_consent, a_acc.account_id)
        consent = await vbank.request_payment_consent(
            CUSTOMER,
            debtor_account=v_acc.account_number,
            creditor_account=a_acc.account_number,
            amount=Decimal("12.34"),
            currency="RUB",
            creditor_name="Me",
            reference="test",
        )
        assert consent.kind is ConsentKind.PAYMENTS and consent.status is ConsentStatus.APPROVED
        assert consent.consent_id.startswith("pcon-")
        iid = str(uuid.uuid4())  # persisted by the caller before paying, to reconcile later
        payment = await vbank.create_payment(
            CUSTOMER,
            consent.consent_id,
            amount=Decimal("12.34"),
            currency="RUB",
            debtor_account=v_acc.account_number,
            creditor_account=a_acc.account_number,
            creditor_bank_code="abank",
            comment="test",
            interaction_id=iid,
        )
        assert payment.amount == Decimal("12.34") and payment.status is PaymentStatus.COMPLETED
        assert payment.payment_id.startswith("pay-") and rec.ops("create_payment")[0].interaction_id == iid
        again = await vbank.get_payment(CUSTOMER, payment.payment_id)
        assert again.payment_id == payment.payment_id and again.status is PaymentStatus.COMPLETED
        assert await available(vbank, v_consent, v_acc.account_id) == v_before - Decimal("12.34")
        assert await available(abank, a_consent, a_acc.account_id) == a_before + Decimal("12.34")
        with pytest.raises(ConsentRequired) as info:  # a single-use consent is spent
            await vbank.create_payment(
                CUSTOMER,
                consent.consent_id,
                amount="1.00",
                currency="RUB",
                debtor_account=v_acc.account_number,
                creditor_account=a_acc.account_number,
                creditor_bank_code="abank",
            )
        assert info.value.code == "INVALID_CONSENT"
        with pytest.raises(NotFound):
            await vbank.get_payment(CUSTOMER, "pay-does-not-exist")


async def test_payment_errors_are_typed_and_never_retried(sandbox):
    rec = Recorder()
    async with make_client(sandbox, "vbank", rec, max_retries=3) as client:
        v_acc = next(
            a
            for a in await client.get_accounts(CUSTOMER, await approved_account_consent(client))
            if a.account_sub_type != "Loan"
        )
        consent = await client.request_payment_consent(
            CUSTOMER, debtor_account=v_acc.account_number, amount="10.00", currency="RUB"
        )
        with pytest.raises(BadRequest):
            await client.create_payment(
                CUSTOMER,
                consent.consent_id,
                amount="10.00",
                currency="RUB",
                debtor_account="0000000000000000000",
                creditor_account=v_acc.account_number,
            )
        consent = await client.request_payment_consent(
            CUSTOMER, debtor_account=v_acc.account_number, amount="10.00", currency="RUB"
        )
        await set_faults(sandbox, "vbank", error_rate=1.0)
        with pytest.raises(BankUnavailable) as info:
            await client.create_payment(
                CUSTOMER,
                consent.consent_id,
                amount="10.00",
                currency="RUB",
                debtor_account=v_acc.account_number,
                creditor_account=v_acc.account_number,
            )
        assert info.value.attempts == 1
        assert len([r for r in rec.ops("create_payment") if r.http_status and r.http_status >= 500]) == 1


def test_payment_consent_use_is_read_in_either_form():
    from bankapi.models import ConsentResult

    def parse(data: dict) -> ConsentResult:
        return ConsentResult.from_api(ConsentKind.PAYMENTS, {"data": {"consentId": "pcon-1", **data}})

    fresh = parse({"status": "Authorised", "usedCount": 0, "paymentIds": []})
    assert (fresh.status, fresh.used, fresh.used_count, fresh.payment_ids) == (ConsentStatus.APPROVED, False, 0, ())
    assert parse({"status": "Consumed"}).used and parse({"status": "used"}).used
    assert parse({"status": "Consumed"}).status is ConsentStatus.EXPIRED  # spent: as good as expired
    assert parse({"status": "Authorized", "used_count": 1}).used
    named = parse({"status": "Authorized", "payments": [{"paymentId": "pay-1"}, {"payment_id": "pay-2"}, {}]})
    assert named.used and named.payment_ids == ("pay-1", "pay-2")
    assert not parse({"status": "Expired"}).used and parse({"status": "Expired"}).used_count is None


async def test_a_spent_single_use_consent_names_its_payment(sandbox):
    async with make_client(sandbox, "vbank") as client:
        account = next(
            a
            for a in await client.get_accounts(CUSTOMER, await approved_account_consent(client))
            if a.account_sub_type == "Checking"
        )
        consent = await client.request_payment_consent(
            CUSTOMER, debtor_account=account.account_number, amount="3.00", currency="RUB"
        )
        before = await client.get_payment_consent(consent.consent_id)
        assert before.status is ConsentStatus.APPROVED and not before.used and before.used_count == 0
        payment = await client.create_payment(
            CUSTOMER,
            consent.consent_id,
            amount="3.00",
            currency="RUB",
            debtor_account=account.account_number,
            creditor_account=account.account_number,
        )
        after = await client.get_payment_consent(consent.consent_id)
        assert after.used and after.raw_status == "Consumed" and after.payment_ids == (payment.payment_id,)
        assert after.used_count == 1


async def test_payment_consent_form_is_learnt_per_bank_flat_then_nested(start_sandbox):
    """A bank taking only the nested body form answers the flat one 422 `body.data: Field required`:
    the client sends the nested form then, and remembers it for that bank (the next request goes
    nested at once); a flat bank keeps the flat form."""
    sandbox = await start_sandbox(payment_consent_form={"vbank": "nested"})
    rec = Recorder()
    async with make_client(sandbox, "vbank", rec) as nested, make_client(sandbox, "abank", rec) as flat:
        account = next(
            a
            for a in await nested.get_accounts(CUSTOMER, await approved_account_consent(nested))
            if a.account_sub_type == "Checking"
        )
        other = next(
            a
            for a in await flat.get_accounts(CUSTOMER, await approved_account_consent(flat))
            if a.account_sub_type == "Checking"
        )
        assert nested.payment_consent_form is None
        single = await nested.request_payment_consent(
            CUSTOMER,
            debtor_account=account.account_number,
            amount="5.00",
            creditor_account=other.account_number,
            creditor_bank_code="abank",
            creditor_name="Me",
            reference="rent",
        )
        assert single.status is ConsentStatus.APPROVED and single.consent_type == "single_use"
        assert nested.payment_consent_form == "nested"
        assert [
            r.http_status for r in rec.records if r.bank_id == "vbank" and r.operation == "request_payment_consent"
        ] == [422, 200]
        seen = await nested.get_payment_consent(single.consent_id)
        assert (seen.raw["data"]["amount"], seen.raw["data"]["creditorAccount"]) == ("5.00", other.account_number)

        standing = await nested.request_payment_consent(
            CUSTOMER,
            debtor_account=account.account_number,
            amount=None,
            consent_type="vrp",
            vrp_max_individual_amount="100.00",
            vrp_daily_limit="200.00",
        )
        assert standing.status is ConsentStatus.APPROVED and standing.consent_type == "vrp"
        assert [
            r.http_status for r in rec.records if r.bank_id == "vbank" and r.operation == "request_payment_consent"
        ] == [422, 200, 200]  # nested at once
        seen = await nested.get_payment_consent(standing.consent_id)
        assert seen.raw["data"]["vrpMaxIndividualAmount"] == "100.00" and "amount" not in seen.raw["data"]
        paid = await nested.create_payment(
            CUSTOMER,
            single.consent_id,
            amount="5.00",
            currency="RUB",
            debtor_account=account.account_number,
            creditor_account=other.account_number,
            creditor_bank_code="abank",
        )
        assert paid.status is PaymentStatus.COMPLETED

        await flat.request_payment_consent(CUSTOMER, debtor_account=other.account_number, amount="1.00")
        assert flat.payment_consent_form == "flat"
        assert [
            r.http_status for r in rec.records if r.bank_id == "abank" and r.operation == "request_payment_consent"
        ] == [200]


async def test_insufficient_permissions_is_a_refusal_not_a_token_problem(sandbox):
    rec = Recorder()
    async with make_client(sandbox, "vbank", rec, max_retries=3) as client:
        account = (await client.get_accounts(CUSTOMER, await approved_account_consent(client)))[0]
        await set_faults(sandbox, "vbank", refuse_payment_consents=True)
        with pytest.raises(CallRefused) as info:
            await client.request_payment_consent(CUSTOMER, debtor_account=account.account_number, amount="1.00")
        assert info.value.http_status == 401 and "Insufficient permissions" in info.value.message
        assert len(rec.ops("request_payment_consent")) == 1, "neither retried nor repeated after a token refresh"
        assert len(rec.ops("get_token")) == 1
        await set_faults(sandbox, "vbank", refuse_payment_consents=False)
        again = await client.request_payment_consent(CUSTOMER, debtor_account=account.account_number, amount="1.00")
        assert again.status is ConsentStatus.APPROVED


# ------------------------------------------------------------------------------------------ failures


async def test_5xx_retried_until_success(sandbox):
    rec = Recorder()
    async with make_client(sandbox, "vbank", rec, max_retries=8) as client:
        await client.get_token()
        await set_faults(sandbox, "vbank", error_rate=0.5)
        for _ in range(5):
            assert await client.get_products()
    failures = [r for r in rec.ops("get_products") if r.outcome == "error"]
    assert all(r.http_status >= 500 for r in failures)
    assert failures, "with error_rate 0.5 some calls should have failed and been retried"


async def test_5xx_exhausts_retries_then_bank_unavailable(sandbox):
    rec = Recorder()
    async with make_client(sandbox, "abank", rec, max_retries=3) as client:
        await client.get_token()
        await set_faults(sandbox, "abank", error_rate=1.0)
        with pytest.raises(BankUnavailable) as info:
            await client.get_products()
    assert info.value.attempts == 4 and info.value.http_status >= 500
    calls = rec.ops("get_products")
    assert [r.attempt for r in calls] == [1, 2, 3, 4] and all(r.outcome == "error" for r in calls)


async def test_rate_limited_is_raised_at_once_with_retry_after(sandbox):
    rec = Recorder()
    async with make_client(sandbox, "vbank", rec) as client:
        await client.get_token()
        await set_faults(sandbox, "vbank", rate_limit_rate=1.0)
        with pytest.raises(RateLimited) as info:
            await client.get_products()
    assert info.value.http_status == 429 and info.value.retry_after == 1.0  # body is plain text, header honoured
    assert len(rec.ops("get_products")) == 1


async def test_timeout_becomes_bank_unavailable(sandbox):
    rec = Recorder()
    async with make_client(sandbox, "vbank", rec, timeout=0.2, max_retries=1) as client:
        await client.get_token()
        await set_faults(sandbox, "vbank", latency_ms=600)
        started = time.monotonic()
        with pytest.raises(BankUnavailable, match="timeout") as info:
            await client.get_products()
    assert time.monotonic() - started < 1.0
    assert info.value.attempts == 2 and info.value.http_status is None
    assert [r.http_status for r in rec.ops("get_products")] == [None, None]


async def test_fresh_interaction_id_per_call_logged_and_seen_by_the_bank(sandbox, caplog):
    seen_by_bank: list[tuple[str | None, str | None]] = []  # (interaction id, request id) per bank request

    class BankSide(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen_by_bank.append((getattr(record, "x-fapi-interaction-id", None), request_id_var.get()))

    bank_log = logging.getLogger("bank_sandbox")
    handler = BankSide()
    bank_log.addHandler(handler)
    caplog.set_level(logging.INFO, logger="bankapi")
    caplog.set_level(logging.INFO, logger="bank_sandbox")
    rec = Recorder()
    try:
        async with make_client(sandbox, "vbank", rec, request_id_provider=lambda: "rid-42") as client:
            consent_id = await approved_account_consent(client)
            for _ in range(3):
                await client.get_accounts(CUSTOMER, consent_id)
    finally:
        bank_log.removeHandler(handler)
    ids = [r.interaction_id for r in rec.records]
    assert len(ids) == 5 and len(set(ids)) == len(ids)
    assert all(uuid.UUID(i).version == 4 for i in ids)
    assert all(r.bank_id == "vbank" and r.latency_ms >= 0 and r.outcome == "ok" for r in rec.records)
    assert seen_by_bank == [(i, "rid-42") for i in ids]  # sent as X-Fapi-Interaction-Id and X-Request-Id
    logged = " ".join(r.getMessage() for r in caplog.records if r.name == "bankapi")
    assert all(i in logged for i in ids) and "op=get_accounts" in logged and "bank=vbank" in logged
