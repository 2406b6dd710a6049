"""Payments at the domain and storage level: `consent_svc.payments.PaymentService` on the real `consent`
schema, paying at the bank emulator (started in this process, so its counters and fault knobs are at
hand). What sync_svc would answer (the user's stored accounts, loans and repayments) is read from the
emulator's own customers; everything else is the real thing.

The same behaviour through the gateway and the running suite: tests/test_e2e_payments.py.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import uuid
from decimal import Decimal

import aiohttp
import pytest

from bank_sandbox import SandboxConfig, start_banks
from bank_sandbox.app import STATE
from bankapi import BankClients, MemoryTokenStore
from bankapi.config import BankEndpoint, TeamCredentials
from consent_svc.__main__ import SPEC
from consent_svc.model import ONBOARDING_VRP
from consent_svc.payment_requests import DebtorAccount, Loan, RepaymentRequest, TransferRequest, fingerprint
from consent_svc.payment_storage import PaymentIntent, PaymentStorage
from consent_svc.payments import PaymentResult, PaymentService
from consent_svc.storage import ConsentStorage, NewConsent
from finance.dates import today_of
from finance.loans import Repayments, obligation_of, repayments_by_key
from gateway.errors import ApiError
from gateway.routes import build_routes
from gateway.transcode import build_request
from svclib.config import BankConfig
from svclib.db import LockBusy
from svclib.errors import Aborted, AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from tests.e2e import customer_signs

TEAM = TeamCredentials("team200", "finpulse-dev-secret", "FinPulse")
APPROVAL = {"vbank": "auto", "abank": "auto", "sbank": "manual"}


# ------------------------------------------------------------------------------------------ fixtures


class EmulatorData:
    """PaymentData (what sync_svc would answer) read from the emulator's customers; records syncs."""

    def __init__(self, running):
        self.running = running
        self.synced: list[tuple[str, list[str], str]] = []

    def _customer(self, bank_id: str, user_id: str):
        state = self.running.apps[bank_id][STATE]
        return state.customer(user_id) if user_id in state.profiles else None

    async def account(self, user_id: str, bank_id: str, account_id: str) -> DebtorAccount | None:
        customer = self._customer(bank_id, user_id) if bank_id in self.running.apps else None
        account = customer.account(account_id) if customer else None
        return (
            None
            if account is None
            else DebtorAccount(bank_id, account.account_id, account.number, "RUB", account.subtype)
        )

    async def loans(self, user_id: str) -> list[Loan]:
        return [
            Loan(bank_id, a.agreement_id, a.product.product_type, "closed" if a.end else "active", a.account.number)
            for bank_id in self.running.apps
            for a in self._customer(bank_id, user_id).agreements
        ]

    async def repayments(self, user_id: str) -> list[Repayments]:
        """Per loan, its "Платеж по кредиту №<id>" debits, summed as sync_svc's aggregate does."""
        found = []
        for bank_id in self.running.apps:
            customer = self._customer(bank_id, user_id)
            for agreement in customer.agreements:
                label = f"Платеж по кредиту №{agreement.agreement_id}"
                paid = [
                    t.draft
                    for a in customer.accounts
                    for t in a.transactions
                    if t.draft.indicator == "Debit" and label in t.draft.information
                ]
                if paid:
                    total = sum(d.amount for d in paid)
                    days = collections.Counter(d.booked.day for d in paid)
                    found.append(
                        Repayments(
                            bank_id,
                            agreement.agreement_id,
                            len(paid),
                            total,
                            (total / len(paid)).quantize(Decimal("0.01")),
                            "RUB",
                            max(d.booked for d in paid),
                            days.most_common(1)[0][0],
                        )
                    )
        return found

    async def start_sync(self, user_id: str, bank_ids: list[str], reason: str) -> None:
        self.synced.append((user_id, bank_ids, reason))


@dataclasses.dataclass
class Env:
    service: PaymentService
    storage: PaymentStorage
    consents: ConsentStorage
    data: EmulatorData
    running: object

    def state(self, bank_id: str):
        return self.running.apps[bank_id][STATE]

    def counts(self, bank_id: str, user_id: str) -> dict:
        state = self.state(bank_id)
        return state.counts(state.customer(user_id))

    def checking(self, bank_id: str, user_id: str):
        return next(a for a in self.state(bank_id).customer(user_id).accounts if a.subtype == "Checking")


@pytest.fixture
async def make_env(schema_pool):
    """Factory: the emulator (with `sandbox` settings) and the service (with bank client options)."""
    made = []

    async def make(sandbox: dict | None = None, **client_options) -> Env:
        running = await start_banks(
            SandboxConfig(customers=20, approval=dict(APPROVAL), **(sandbox or {})), dict.fromkeys(APPROVAL, 0)
        )
        pool = await schema_pool(SPEC)
        configs = tuple(
            BankConfig(b, b.upper(), url, APPROVAL[b], "{base_url}/client/consents/{request_id}")
            for b, url in running.urls.items()
        )
        options = {"timeout": 5, "max_retries": 1, "backoff_base": 0.01, **client_options}
        clients = BankClients(
            [BankEndpoint(c.id, c.base_url, c.approval_mode) for c in configs],
            TEAM,
            token_store=MemoryTokenStore(),
            **options,
        )
        made.append((clients, running))
        storage, consents, data = PaymentStorage(pool), ConsentStorage(pool), EmulatorData(running)
        return Env(PaymentService(storage, configs, clients, consents, data), storage, consents, data, running)

    yield make
    for clients, running in made:
        await clients.close()
        await running.stop()


@pytest.fixture
async def env(make_env):
    return await make_env()


def key() -> str:
    return f"key-{uuid.uuid4().hex}"


def transfer(env: Env, user: str, amount: str = "150.25", *, to_bank: str = "abank", **changes) -> TransferRequest:
    """From the user's vbank checking account to their checking account at `to_bank`."""
    request = TransferRequest(
        bank_id="vbank",
        account_id=env.checking("vbank", user).account_id,
        creditor_account=env.checking(to_bank, user).number,
        creditor_bank_id=to_bank,
        amount=amount,
        comment="test",
    )
    return dataclasses.replace(request, **changes)


# ------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"amount": "-10.00"}, "amount"),
        ({"amount": "0"}, "amount"),
        ({"amount": "0.00"}, "amount"),
        ({"amount": "10.005"}, "amount"),
        ({"amount": "1e3"}, "amount"),
        ({"amount": "999999999999999.00"}, "amount"),
        ({"amount": "1000000000000"}, "amount"),
        ({"amount": ""}, "amount"),
        ({"creditor_account": "not a number!"}, "creditor_account"),
        ({"creditor_bank_id": "Bank Of Nowhere"}, "creditor_bank_id"),
        ({"currency": "rubles"}, "currency"),
        ({"currency": "USD"}, "currency"),  # the account holds RUB
        ({"bank_id": "nobank"}, "bank_id"),
        ({"comment": "x" * 141}, "comment"),
    ],
)
async def test_bad_requests_are_refused_before_anything_is_recorded_or_asked(env, changes, field):
    user, k = "team200-1", key()
    with pytest.raises(InvalidArgument) as info:
        await env.service.create_payment(user, k, transfer(env, user, **changes))
    assert info.value.field == field, info.value.message
    assert await env.storage.by_key(user, k) is None  # the key stays free for a corrected request
    assert env.counts("vbank", user)["payment_consents"] == 0 and env.counts("vbank", user)["payments"] == 0


async def test_unknown_and_other_users_accounts_are_not_found_and_keys_are_checked(env):
    user = "team200-1"
    for account_id in ("acc-does-not-exist", env.checking("vbank", "team200-2").account_id):
        with pytest.raises(NotFound):
            await env.service.create_payment(user, key(), transfer(env, user, account_id=account_id))
    with pytest.raises(InvalidArgument):
        await env.service.create_payment(user, "k" * 256, transfer(env, user))
    with pytest.raises(InvalidArgument):
        await env.service.create_payment(user, "  ", transfer(env, user))
    with pytest.raises(InvalidArgument):  # paying an account from itself
        await env.service.create_payment(
            user, key(), transfer(env, user, creditor_account=env.checking("vbank", user).number)
        )
    # (A caller naming another user than its statement's is refused before the domain, by the services'
    # interceptor: tests/test_server_interceptor.py, tests/test_isolation.py.)
    assert env.counts("vbank", user)["payment_consents"] == 0 and env.counts("vbank", "team200-2")["payments"] == 0


def test_fingerprint_is_canonical():
    assert fingerprint({"a": "1", "b": "2"}) == fingerprint({"b": "2", "a": "1"})
    assert fingerprint({"a": "1"}) != fingerprint({"a": "2"})


# ------------------------------------------------------------------------------------------ idempotency


async def test_same_key_and_request_pays_once_and_then_answers_the_stored_payment(env):
    user, k = "team200-1", key()
    debtor, creditor = env.checking("vbank", user), env.checking("abank", user)
    before = (debtor.balance, creditor.balance)
    first = await env.service.create_payment(user, k, transfer(env, user, "150.20"))
    p = first.payment
    assert not first.replayed and p.status == "COMPLETED" and p.bank_payment_id.startswith("pay-")
    assert (p.amount, p.debtor_account, p.creditor_account) == (Decimal("150.20"), debtor.number, creditor.number)
    assert p.consent_id.startswith("pcon-") and not p.in_doubt and p.completed_at is not None
    assert (before[0] - debtor.balance, creditor.balance - before[1]) == (Decimal("150.20"), Decimal("150.20"))

    again = await env.service.create_payment(user, k, transfer(env, user, "150.20"))
    assert again.replayed and again.payment == p
    same_amount = await env.service.create_payment(user, k, transfer(env, user, "150.2"))  # the same request
    assert same_amount.replayed and same_amount.payment == p
    assert env.counts("vbank", user)["payments"] == 1 and env.counts("vbank", user)["payment_consents"] == 1
    assert debtor.balance == before[0] - Decimal("150.20")

    _, events = await env.service.get(user, p.payment_id)
    assert [e.source for e in events] == ["create", "consent", "bank_call", "bank_answer"]
    assert [e.new_status for e in events] == ["INITIATING", "INITIATING", "INITIATING", "COMPLETED"]


async def test_same_key_with_another_request_is_refused(env):
    user, k = "team200-1", key()
    paid = await env.service.create_payment(user, k, transfer(env, user, "10.00"))
    for other in (
        transfer(env, user, "10.01"),
        transfer(env, user, "10.00", comment="another"),
        transfer(env, user, "10.00", to_bank="vbank", creditor_bank_id="vbank"),
    ):
        with pytest.raises(AlreadyExists) as info:
            await env.service.create_payment(user, k, other)
        assert paid.payment.payment_id in info.value.message and "Idempotency-Key" in info.value.message
    loan = next(credit for credit in await env.data.loans(user) if credit.product_type == "loan")
    with pytest.raises(AlreadyExists):  # one key space for transfers and repayments
        await env.service.repay_loan(
            user, k, RepaymentRequest(loan.agreement_id, "vbank", paid.payment.account_id, "10.00", loan.bank_id)
        )
    assert env.counts("vbank", user)["payments"] == 1 and env.counts("vbank", user)["payment_consents"] == 1


async def test_twenty_concurrent_requests_with_one_key_make_one_bank_payment(env):
    user, k = "team200-3", key()
    results = await asyncio.gather(
        *(env.service.create_payment(user, k, transfer(env, user, "77.70")) for _ in range(20)), return_exceptions=True
    )
    paid = [r for r in results if isinstance(r, PaymentResult)]
    busy = [r for r in results if isinstance(r, Aborted)]
    assert len(paid) + len(busy) == 20, [r for r in results if not isinstance(r, (PaymentResult, Aborted))]
    assert paid and {r.payment.payment_id for r in paid} == {paid[0].payment.payment_id}
    assert all("in progress" in str(b) for b in busy)
    assert env.counts("vbank", user)["payments"] == 1 and env.counts("vbank", user)["payment_consents"] == 1
    final = await env.service.create_payment(user, k, transfer(env, user, "77.70"))
    assert final.replayed and final.payment.status == "COMPLETED"


async def test_bank_down_keeps_the_payment_pending_and_a_retry_completes_it(env):
    user, k = "team200-1", key()
    env.state("vbank").down = True
    with pytest.raises(Unavailable) as info:
        await env.service.create_payment(user, k, transfer(env, user, "20.00"))
    assert "retry with the same Idempotency-Key" in info.value.message
    pending = await env.storage.by_key(user, k)
    assert pending.status == "INITIATING" and pending.consent_id is None
    env.state("vbank").down = False

    async with env.storage.hold(pending):  # another request works on it
        with pytest.raises(Aborted):
            await env.service.create_payment(user, k, transfer(env, user, "20.00"))
        got, _ = await env.service.get(user, pending.payment_id)  # reads answer the stored state
        assert got.status == "INITIATING"
    with pytest.raises(LockBusy):
        async with env.storage.hold(pending), env.storage.hold(pending):
            pass
    done = await env.service.create_payment(user, k, transfer(env, user, "20.00"))
    assert done.replayed and done.payment.status == "COMPLETED" and done.payment.payment_id == pending.payment_id
    assert env.counts("vbank", user)["payments"] == 1


async def _consent_for(env: Env, payment) -> str:
    """What a first attempt did before it died: the payment's own consent, recorded, and the payment
    marked in doubt (sent, outcome unknown)."""
    client = env.service.clients.get(payment.bank_id)
    consent = await client.request_payment_consent(
        payment.user_id,
        debtor_account=payment.debtor_account,
        amount=payment.amount,
        currency=payment.currency,
        creditor_account=payment.creditor_account,
        reference=payment.payment_id,
    )
    await env.storage.update(
        payment,
        source="consent",
        consent_id=consent.consent_id,
        consent_status="APPROVED",
        consent_request_id=consent.request_id,
    )
    await env.storage.update(payment, source="bank_call", in_doubt=True, bank_attempts=1)
    return consent.consent_id


async def _recorded_but_not_sent(env: Env, user: str, k: str, amount: str):
    env.state("vbank").down = True
    with pytest.raises(Unavailable):
        await env.service.create_payment(user, k, transfer(env, user, amount))
    env.state("vbank").down = False
    return await env.storage.by_key(user, k)


async def test_a_payment_the_bank_made_before_we_died_is_found_not_repeated(env):
    user, k = "team200-2", key()
    payment = await _recorded_but_not_sent(env, user, k, "33.30")
    consent_id = await _consent_for(env, payment)
    # The bank executes the payment; its answer never reaches us (the process died).
    made = await env.service.clients.get("vbank").create_payment(
        user,
        consent_id,
        amount=payment.amount,
        currency="RUB",
        debtor_account=payment.debtor_account,
        creditor_account=payment.creditor_account,
        creditor_bank_code="abank",
    )
    assert env.counts("vbank", user)["payments"] == 1

    seen, events = await env.service.get(user, payment.payment_id)  # a read reconciles too, paying nothing
    assert seen.status == "COMPLETED" and seen.bank_payment_id == made.payment_id
    assert "reconcile" in [e.source for e in events]
    retried = await env.service.create_payment(user, k, transfer(env, user, "33.30"))
    assert retried.replayed and (retried.payment.status, retried.payment.bank_payment_id) == (
        "COMPLETED",
        made.payment_id,
    )
    assert env.counts("vbank", user)["payments"] == 1 and env.counts("vbank", user)["payment_consents"] == 1


async def test_an_unanswered_payment_whose_consent_is_unused_is_sent_once(env):
    user, k = "team200-2", key()
    payment = await _recorded_but_not_sent(env, user, k, "44.40")
    await _consent_for(env, payment)
    got, _ = await env.service.get(user, payment.payment_id)  # reads never pay
    assert got.status == "INITIATING" and not got.in_doubt and env.counts("vbank", user)["payments"] == 0
    done = await env.service.create_payment(user, k, transfer(env, user, "44.40"))
    assert done.payment.status == "COMPLETED" and done.payment.bank_attempts == 2
    assert env.counts("vbank", user)["payments"] == 1 and env.counts("vbank", user)["payment_consents"] == 1


async def test_bank_refusals_fail_with_the_banks_reason_and_are_answered_again_on_retry(env):
    user = "team200-1"
    k = key()
    too_much = transfer(env, user, str(env.checking("vbank", user).balance + 1))
    with pytest.raises(FailedPrecondition) as info:
        await env.service.create_payment(user, k, too_much)
    assert "Insufficient funds" in info.value.message
    failed = await env.storage.by_key(user, k)
    assert (failed.status, failed.error_code, failed.in_doubt) == ("FAILED", "INSUFFICIENT_FUNDS", False)
    with pytest.raises(FailedPrecondition) as again:
        await env.service.create_payment(user, k, too_much)
    assert again.value.message == info.value.message
    assert env.counts("vbank", user)["payment_consents"] == 1  # the replay asked the bank nothing

    k = key()
    with pytest.raises(InvalidArgument) as info:
        await env.service.create_payment(
            user, k, transfer(env, user, creditor_account="4081781000000000000", creditor_bank_id="")
        )
    assert "not found in any bank" in info.value.message
    assert (await env.storage.by_key(user, k)).error_code == "CREDITOR_NOT_FOUND"
    assert env.counts("vbank", user)["payments"] == 0


async def test_a_manual_bank_waits_for_the_customer_then_the_retry_pays(env):
    user, k = "team200-1", key()
    request = dataclasses.replace(
        transfer(env, user, "12.00"), bank_id="sbank", account_id=env.checking("sbank", user).account_id
    )
    waiting = await env.service.create_payment(user, k, request)
    assert waiting.payment.status == "AWAITING_AUTHORIZATION" and waiting.payment.consent_id is None
    assert waiting.payment.approval_url.endswith(f"/client/consents/{waiting.payment.consent_request_id}")
    still = await env.service.create_payment(user, k, request)
    assert still.payment.status == "AWAITING_AUTHORIZATION" and env.counts("sbank", user)["payment_consents"] == 1
    async with aiohttp.ClientSession() as session:
        await customer_signs(
            session, env.running.urls["sbank"], user, waiting.payment.consent_request_id, "payment-consents"
        )
    done = await env.service.create_payment(user, k, request)
    assert done.payment.status == "COMPLETED" and env.counts("sbank", user)["payments"] == 1


# ------------------------------------------------------------------------------------------ loans


async def test_loan_repayment_pays_the_dashboards_instalment_to_the_loans_account(env):
    user = "team200-8"
    loan = next(
        credit
        for credit in await env.data.loans(user)
        if credit.bank_id == "vbank" and credit.product_type == "loan" and credit.status == "active"
    )
    loan_account = next(a for a in env.state("vbank").customer(user).accounts if a.number == loan.account_number)
    series = repayments_by_key(await env.data.repayments(user))[("vbank", loan.agreement_id)]
    expected = obligation_of(series, today_of(dt.datetime.now(dt.UTC))).amount
    before = loan_account.balance

    request = RepaymentRequest(loan.agreement_id, "abank", env.checking("abank", user).account_id)
    result = await env.service.repay_loan(user, key(), request)
    p = result.payment
    assert (p.kind, p.status, p.amount, p.amount_source) == ("loan_repayment", "COMPLETED", expected, "detected")
    assert (p.creditor_account, p.creditor_bank_id, p.agreement_id) == (loan.account_number, "vbank", loan.agreement_id)
    assert f"average of {series.count} repayments" in p.amount_note
    assert p.comment == f"Платеж по кредиту №{loan.agreement_id}"
    assert loan_account.balance == before + expected
    assert loan_account.transactions[-1].draft.indicator == "Credit"

    given = await env.service.repay_loan(user, key(), dataclasses.replace(request, amount="1000"))
    assert (given.payment.amount, given.payment.amount_source) == (Decimal("1000.00"), "requested")

    with pytest.raises(NotFound):
        await env.service.repay_loan(user, key(), dataclasses.replace(request, agreement_id="loan-nope"))
    with pytest.raises(FailedPrecondition):  # a loan account holds the loan, it does not pay
        await env.service.repay_loan(
            user, key(), dataclasses.replace(request, bank_id="vbank", account_id=loan_account.account_id)
        )
    card = next(credit for credit in await env.data.loans(user) if credit.product_type == "card")
    with pytest.raises(FailedPrecondition):
        await env.service.repay_loan(
            user, key(), dataclasses.replace(request, agreement_id=card.agreement_id, loan_bank_id=card.bank_id)
        )
    assert env.counts("abank", user)["payments"] == 2


# ------------------------------------------------------------------------------------------ standing consents
# Users team200-11 … 17: each test's standing consent is the only one of its user in the database.


async def standing(env: Env, user: str, bank_id: str = "sbank", **limits: str) -> str:
    """The user's standing vrp consent at the bank, approved by the customer (as onboarding stores it)."""
    debtor = env.checking(bank_id, user).number
    result = await env.service.clients.get(bank_id).request_payment_consent(
        user, debtor_account=debtor, amount=None, consent_type="vrp", **(limits or ONBOARDING_VRP)
    )
    consent_id = result.consent_id
    if consent_id is None:
        async with aiohttp.ClientSession() as session:
            signed = await customer_signs(
                session, env.running.urls[bank_id], user, result.request_id, "payment-consents"
            )
        consent_id = signed["consent_id"]
    await env.consents.insert(
        NewConsent(
            user,
            bank_id,
            "payments",
            consent_id,
            result.request_id,
            "APPROVED",
            "Authorized",
            None,
            ("payment:vrp",),
            None,
            payment_type="vrp",
            debtor_account=debtor,
        )
    )
    return consent_id


async def repayment(env: Env, user: str, amount: str = "1000.00", bank_id: str = "sbank") -> RepaymentRequest:
    """A repayment of one of the user's active loans from their checking account at `bank_id`."""
    loan = next(
        credit for credit in await env.data.loans(user) if credit.product_type == "loan" and credit.status == "active"
    )
    return RepaymentRequest(loan.agreement_id, bank_id, env.checking(bank_id, user).account_id, amount, loan.bank_id)


async def test_loan_repayments_use_the_standing_consent_and_need_no_customer(env):
    user = "team200-11"
    consent_id = await standing(env, user)
    assert env.counts("sbank", user)["payment_consents"] == 1
    request = await repayment(env, user)
    first = (await env.service.repay_loan(user, key(), request)).payment
    assert (first.status, first.consent_id, first.consent_kind) == ("COMPLETED", consent_id, "vrp")
    assert (first.consent_used_count, first.consent_payment_ids, first.approval_url) == (0, (), None)
    second = (await env.service.repay_loan(user, key(), request)).payment
    assert (second.status, second.consent_id, second.consent_used_count) == ("COMPLETED", consent_id, 1)
    assert second.consent_payment_ids == (first.bank_payment_id,)
    assert (env.counts("sbank", user)["payments"], env.counts("sbank", user)["payment_consents"]) == (2, 1)
    _, events = await env.service.get(user, first.payment_id)
    assert [e.source for e in events] == ["create", "bank_call", "bank_answer"]

    # A transfer to any account keeps its own single-use consent (the customer approves it).
    transfer_at_sbank = dataclasses.replace(
        transfer(env, user, "10.00"), bank_id="sbank", account_id=env.checking("sbank", user).account_id
    )
    waiting = (await env.service.create_payment(user, key(), transfer_at_sbank)).payment
    assert (waiting.status, waiting.consent_kind) == ("AWAITING_AUTHORIZATION", "single_use")
    assert env.counts("sbank", user)["payment_consents"] == 2


async def test_repayments_on_one_standing_consent_are_serialised(env):
    """Concurrent repayments (other keys) through one standing consent take turns: each reads the uses
    left by the one before it, and none waits for a second pooled connection while holding one (more
    requests than the pool has connections)."""
    user = "team200-17"
    consent_id = await standing(env, user)
    request = await repayment(env, user, "100.00")
    results = await asyncio.gather(*(env.service.repay_loan(user, key(), request) for _ in range(8)))
    payments = [r.payment for r in results]
    assert {(p.status, p.consent_id) for p in payments} == {("COMPLETED", consent_id)}
    assert sorted(p.consent_used_count for p in payments) == list(range(8))
    assert (env.counts("sbank", user)["payments"], env.counts("sbank", user)["payment_consents"]) == (8, 1)


async def test_an_in_doubt_repayment_on_the_standing_consent_is_found_not_repeated(make_env):
    """The bank books the repayment but its answer comes after the client gave up: the retry with the
    same key reads the consent's uses, finds the new payment id, and records it; the bank pays once."""
    env = await make_env(timeout=1.0, max_retries=0)
    user, k = "team200-12", key()
    consent_id = await standing(env, user)
    request = await repayment(env, user, "2500.00")
    state = env.state("sbank")
    state.faults = dataclasses.replace(state.faults, payment_delay_ms=2000)
    with pytest.raises(Unavailable) as info:
        await env.service.repay_loan(user, k, request)
    assert "retry with the same Idempotency-Key" in info.value.message
    state.faults = dataclasses.replace(state.faults, payment_delay_ms=0)
    pending = await env.storage.by_key(user, k)
    assert (pending.status, pending.in_doubt, pending.consent_id, pending.consent_kind) == (
        "INITIATING",
        True,
        consent_id,
        "vrp",
    )
    assert (pending.consent_used_count, pending.consent_payment_ids) == (0, ())
    assert env.counts("sbank", user)["payments"] == 1  # booked

    done = await env.service.repay_loan(user, k, request)
    bank_payment = state.consents.find(None, consent_id).payment_ids[0]
    assert done.replayed and (done.payment.status, done.payment.bank_payment_id) == ("COMPLETED", bank_payment)
    assert not done.payment.in_doubt and done.payment.bank_attempts == 1
    again = await env.service.repay_loan(user, k, request)
    assert again.payment == done.payment
    assert (env.counts("sbank", user)["payments"], env.counts("sbank", user)["payment_consents"]) == (1, 1)
    _, events = await env.service.get(user, done.payment.payment_id)
    assert [e.source for e in events] == ["create", "bank_call", "reconcile"]


async def test_an_in_doubt_repayment_without_a_new_use_is_paid_once_and_blocks_the_consent_meanwhile(env):
    user, k = "team200-13", key()
    consent_id = await standing(env, user)
    request = await repayment(env, user, "300.00")
    env.state("sbank").down = True
    with pytest.raises(Unavailable):
        await env.service.repay_loan(user, k, request)
    env.state("sbank").down = False
    recorded = await env.storage.by_key(user, k)
    assert (recorded.consent_id, recorded.consent_kind, recorded.in_doubt) == (None, None, False)
    # What a first attempt that died right after committing its intent to pay would have left.
    in_doubt = await env.storage.update(
        recorded,
        source="bank_call",
        consent_id=consent_id,
        consent_kind="vrp",
        consent_used_count=0,
        consent_payment_ids=[],
        in_doubt=True,
        bank_attempts=1,
    )

    # Meanwhile another repayment does not use the consent (its new use could be taken for this one).
    other = (await env.service.repay_loan(user, key(), request)).payment
    assert (other.status, other.consent_kind, other.consent_id) == ("AWAITING_AUTHORIZATION", "single_use", None)
    assert env.counts("sbank", user)["payments"] == 0

    done = await env.service.repay_loan(user, k, request)
    assert done.payment.payment_id == in_doubt.payment_id and done.payment.status == "COMPLETED"
    assert done.payment.bank_attempts == 2 and done.payment.consent_id == consent_id
    assert env.counts("sbank", user)["payments"] == 1
    _, events = await env.service.get(user, in_doubt.payment_id)
    assert [e.source for e in events][-3:] == ["reconcile", "bank_call", "bank_answer"]
    assert "no new use" in events[-3].message


async def test_a_refused_standing_consent_falls_back_to_a_single_use_one(env):
    user = "team200-14"
    consent_id = await standing(env, user, vrp_max_individual_amount="500.00", vrp_daily_limit="1000.00")
    over_limit = (await env.service.repay_loan(user, key(), await repayment(env, user, "600.00"))).payment
    assert (over_limit.status, over_limit.consent_kind) == ("AWAITING_AUTHORIZATION", "single_use")
    assert over_limit.approval_url and env.counts("sbank", user)["payments"] == 0
    _, events = await env.service.get(user, over_limit.payment_id)
    assert any("refused standing consent" in (e.message or "") for e in events)
    async with aiohttp.ClientSession() as session:
        await customer_signs(
            session, env.running.urls["sbank"], user, over_limit.consent_request_id, "payment-consents"
        )
    retry = await env.service.repay_loan(user, over_limit.idempotency_key, await repayment(env, user, "600.00"))
    assert retry.payment.status == "COMPLETED" and retry.payment.consent_id != consent_id
    assert env.counts("sbank", user)["payments"] == 1

    within = (await env.service.repay_loan(user, key(), await repayment(env, user, "400.00"))).payment
    assert (within.status, within.consent_id) == ("COMPLETED", consent_id)

    # Revoked at the bank: recorded so, and the repayment takes a single-use consent.
    await env.service.clients.get("sbank").delete_payment_consent(consent_id)
    after = (await env.service.repay_loan(user, key(), await repayment(env, user, "100.00"))).payment
    assert (after.status, after.consent_kind) == ("AWAITING_AUTHORIZATION", "single_use")
    assert (await env.consents.by_consent_id("sbank", consent_id)).status == "REVOKED"


async def test_payments_through_a_bank_taking_only_the_nested_consent_form(make_env):
    calls: list = []
    env = await make_env({"payment_consent_form": {"vbank": "nested"}}, on_call=calls.append)
    user = "team200-15"
    first = await env.service.create_payment(user, key(), transfer(env, user, "11.00"))
    assert first.payment.status == "COMPLETED" and first.payment.consent_kind == "single_use"
    assert env.service.clients.get("vbank").payment_consent_form == "nested"
    second = await env.service.create_payment(user, key(), transfer(env, user, "12.00"))
    assert second.payment.status == "COMPLETED"
    # The flat form was sent once; the client remembered the nested one for vbank.
    assert [c.http_status for c in calls if c.bank_id == "vbank" and c.operation == "request_payment_consent"] == [
        422,
        200,
        200,
    ]
    assert (env.counts("vbank", user)["payments"], env.counts("vbank", user)["payment_consents"]) == (2, 2)
    consent = env.state("vbank").consents.find(None, second.payment.consent_id).terms
    assert (consent.amount, consent.creditor_account, consent.reference) == (
        Decimal("12.00"),
        env.checking("abank", user).number,
        second.payment.payment_id,
    )


async def test_a_bank_refusing_the_consent_call_is_consent_refused_not_unavailable(env):
    user, k = "team200-16", key()
    env.state("vbank").faults = dataclasses.replace(env.state("vbank").faults, refuse_payment_consents=True)
    with pytest.raises(FailedPrecondition) as info:  # 400 at the gateway, not 503
        await env.service.create_payment(user, k, transfer(env, user, "5.00"))
    assert "Insufficient permissions" in info.value.message
    failed = await env.storage.by_key(user, k)
    assert (failed.status, failed.error_code) == ("FAILED", "CONSENT_REFUSED")
    assert env.counts("vbank", user)["payments"] == 0


# ------------------------------------------------------------------------------------------ reads


async def test_get_hides_other_users_payments(env):
    user, k = "team200-1", key()
    paid = (await env.service.create_payment(user, k, transfer(env, user, "5.00"))).payment
    with pytest.raises(NotFound):
        await env.service.get("team200-2", paid.payment_id)
    with pytest.raises(NotFound):
        await env.service.get(user, "pmt-unknown")
    got, events = await env.service.get(user, paid.payment_id)
    assert got == paid and events[-1].new_status == "COMPLETED"


async def test_list_pages_newest_first(env):
    user = "team200-9"
    ids = [
        (await env.service.create_payment(user, key(), transfer(env, user, f"{n}.00"))).payment.payment_id
        for n in range(1, 6)
    ]
    seen, token = [], ""
    while True:
        page, token = await env.service.list(user, 2, token)
        assert len(page) <= 2
        seen += [p.payment_id for p in page]
        if not token:
            break
    mine = [pid for pid in seen if pid in ids]
    assert mine == list(reversed(ids))
    with pytest.raises(InvalidArgument):
        await env.service.list(user, 0, "garbage!")
    with pytest.raises(InvalidArgument):
        await env.service.list(user, 101, "")


async def test_a_completed_payment_queues_a_sync_of_the_connected_banks(env):
    user = "team200-4"
    for bank_id in ("vbank", "abank"):
        await env.consents.insert(
            NewConsent(
                user, bank_id, "accounts", f"consent-{uuid.uuid4().hex}", None, "APPROVED", "Authorized", None, (), None
            )
        )
    await env.service.create_payment(user, key(), transfer(env, user, "1.00"))
    assert env.data.synced == [(user, ["vbank", "abank"], "payment")]


# ------------------------------------------------------------------------------------------ storage


async def test_storage_records_the_intent_once_per_key(env):
    user, k = "team200-5", key()
    intent = PaymentIntent(
        user, k, "f" * 64, "transfer", "vbank", "acc-1", "40817", "40818", None, None, Decimal("1.00"), "RUB", None
    )
    first, created = await env.storage.insert("pmt-a-" + uuid.uuid4().hex, intent)
    second, created_again = await env.storage.insert("pmt-b-" + uuid.uuid4().hex, intent)
    assert created and not created_again and second == first and first.status == "INITIATING"
    failed = await env.storage.update(
        first, source="bank_answer", status="FAILED", error_code="BANK_REJECTED", error_message="no"
    )
    assert failed.completed_at is not None and failed.final
    assert [(e.old_status, e.new_status) for e in await env.storage.events(first)] == [
        (None, "INITIATING"),
        ("INITIATING", "FAILED"),
    ]
    with pytest.raises(ValueError):
        await env.storage.update(first, source="refresh", amount=Decimal(2))


# ------------------------------------------------------------------------------------------ gateway


def _route(method: str):
    return next(r for r in build_routes() if r.method_name == method)


def test_the_idempotency_key_comes_from_the_header():
    route = _route("CreatePayment")
    body = b'{"user_id": "u", "bank_id": "vbank", "account_id": "a", "creditor_account": "1", "amount": "1"}'
    message = build_request(route, body, {}, {}, headers={"Idempotency-Key": "k-1"})
    assert message.idempotency_key == "k-1"
    same = build_request(route, body[:-1] + b', "idempotency_key": "k-1"}', {}, {}, headers={"Idempotency-Key": "k-1"})
    assert same.idempotency_key == "k-1"
    with pytest.raises(ApiError) as info:
        build_request(route, body[:-1] + b', "idempotency_key": "k-2"}', {}, {}, headers={"Idempotency-Key": "k-1"})
    assert info.value.http_status == 400 and "Idempotency-Key" in info.value.message
    with pytest.raises(ApiError) as info:
        build_request(route, body, {}, {}, headers={})
    assert info.value.http_status == 400 and "idempotency_key is required" in info.value.message
    repay = build_request(
        _route("RepayLoan"),
        b'{"user_id": "u", "bank_id": "b", "account_id": "a"}',
        {},
        {"agreement_id": "loan-1"},
        headers={"Idempotency-Key": "k-3"},
    )
    assert (repay.idempotency_key, repay.agreement_id) == ("k-3", "loan-1")
    # Routes whose request has no such field ignore the header.
    banks = build_request(_route("ListBanks"), b"", {}, {}, headers={"Idempotency-Key": "k"})
    assert not banks.HasField("user_id")
