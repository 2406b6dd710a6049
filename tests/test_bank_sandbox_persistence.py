"""The bank emulator's state on disk (`--state-dir`, bank_sandbox.persistence): consents, payments and
their effects outlive a kill -9; the file is written atomically and read back leniently."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import sys
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from bank_sandbox import SandboxConfig, start_banks
from bank_sandbox.consents import Consent, PaymentTerms
from bank_sandbox.persistence import FILE_NAME, StateError, StateFile, decode_consent, decode_record, encode
from svclib.ports import PortReservations
from tests.test_bank_sandbox import CUSTOMER, TEAM, Bank

pytestmark = pytest.mark.timeout(120)
BANKS = ("vbank", "abank", "sbank")  # sbank approves manually


class Emulator:
    """`python -m bank_sandbox --state-dir DIR` as its own process, on ports from the OS that this object
    holds until `close()` (svclib.ports): a restarted emulator finds them again."""

    def __init__(self, state_dir: str, *extra: str):
        self.state_dir = state_dir
        self.reserved = PortReservations()
        self.ports = {bank: self.reserved.port() for bank in BANKS}
        self.extra = extra
        self.process: asyncio.subprocess.Process | None = None
        self.urls = {bank: f"http://127.0.0.1:{port}" for bank, port in self.ports.items()}

    async def start(self, session: aiohttp.ClientSession) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bank_sandbox",
            "--banks",
            ",".join(f"{b}={p}" for b, p in self.ports.items()),
            "--state-dir",
            self.state_dir,
            *self.extra,
            env={**os.environ, **self.reserved.env()},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        deadline = asyncio.get_running_loop().time() + 30
        for url in self.urls.values():
            while True:
                try:
                    async with session.get(f"{url}/__admin__/faults") as response:
                        assert response.status == 200
                        break
                except aiohttp.ClientConnectionError:
                    if self.process.returncode is not None:
                        raise AssertionError((await self.process.stderr.read()).decode()) from None
                    assert asyncio.get_running_loop().time() < deadline, f"no answer on {url}"
                    await asyncio.sleep(0.05)

    async def kill(self) -> None:
        self.process.kill()
        await self.process.wait()
        assert self.process.returncode == -signal.SIGKILL

    async def close(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        self.reserved.close()


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as opened:
        yield opened


async def _payment_consent(bank: Bank, debtor: str, **terms: Any) -> dict[str, Any]:
    answer = await bank.call(
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
    assert answer.status == 200, answer
    return answer.body


async def _pay(bank: Bank, consent_id: str, debtor: str, creditor: str, amount: str) -> dict[str, Any]:
    answer = await bank.call(
        "POST",
        "/payments",
        params={"client_id": CUSTOMER},
        headers={"X-Payment-Consent-Id": consent_id},
        json={
            "data": {
                "initiation": {
                    "instructedAmount": {"amount": amount, "currency": "RUB"},
                    "debtorAccount": {"schemeName": "RU.CBR.PAN", "identification": debtor},
                    "creditorAccount": {"schemeName": "RU.CBR.PAN", "identification": creditor, "bank_code": "abank"},
                }
            }
        },
    )
    assert answer.status == 201, answer
    return answer.body["data"]


async def test_consents_payments_and_their_effects_survive_kill_9(tmp_path, session):
    emulator = Emulator(str(tmp_path / "state"))
    try:
        await emulator.start(session)
        vbank, abank, sbank = (Bank(session, emulator.urls[b]) for b in BANKS)

        auto = await vbank.account_consent()
        assert auto["status"] == "approved"
        pending = await sbank.account_consent()
        signed = await sbank.account_consent("team200-2")
        client_token = (await sbank.login("team200-2")).body["access_token"]
        assert (await sbank.sign("/account-consents", client_token, signed["request_id"])).status == 200
        revoked = await vbank.account_consent("team200-3")
        assert (await vbank.call("DELETE", f"/account-consents/{revoked['consent_id']}")).status == 204
        product = await vbank.product_consent()

        payer = next(a for a in await vbank.accounts(auto["consent_id"]) if a["accountSubType"] == "Checking")
        payee_consent = (await abank.account_consent("team200-2"))["consent_id"]
        payee = (await abank.accounts(payee_consent, "team200-2"))[0]
        debtor, creditor = payer["account"][0]["identification"], payee["account"][0]["identification"]
        pay_consent = await _payment_consent(vbank, debtor, amount="250.00", creditor_account=creditor)
        paid = await _pay(vbank, pay_consent["consent_id"], debtor, creditor, "250.00")
        added = await vbank.admin(
            "POST", f"customers/{CUSTOMER}/transactions", json={"account_id": payer["accountId"], "count": 2}
        )
        assert added.status == 200
        assert (await vbank.admin("POST", "faults", json={"latency_ms": 5})).status == 200

        async def observed() -> dict[str, Any]:
            payer_rows, _ = await vbank.all_transactions(auto["consent_id"], payer["accountId"])
            payee_rows, _ = await abank.all_transactions(payee_consent, payee["accountId"], "team200-2")
            views = {}
            for bank, path, any_id in (
                (vbank, "/account-consents", auto["consent_id"]),
                (vbank, "/account-consents", auto["request_id"]),
                (sbank, "/account-consents", pending["request_id"]),
                (sbank, "/account-consents", signed["request_id"]),
                (vbank, "/account-consents", revoked["consent_id"]),
                (vbank, "/product-agreement-consents", product["consent_id"]),
                (vbank, "/payment-consents", pay_consent["consent_id"]),
            ):
                answer = await bank.call("GET", f"{path}/{any_id}")
                assert answer.status == 200, answer
                views[any_id] = answer.body
            payment = await vbank.call("GET", f"/payments/{paid['paymentId']}", params={"client_id": CUSTOMER})
            assert payment.status == 200
            return {
                "consents": views,
                "payment": payment.body,
                "payer_balance": await vbank.balance(auto["consent_id"], payer["accountId"]),
                "payee_balance": await abank.balance(payee_consent, payee["accountId"], "team200-2"),
                "payer_rows": payer_rows,
                "payee_rows": payee_rows,
                "counts": (await vbank.admin("GET", f"customers/{CUSTOMER}/counts")).body,
                "faults": (await vbank.admin("GET", "faults")).body,
            }

        before = await observed()
        assert before["consents"][pending["request_id"]]["data"]["status"] == "AwaitingAuthorization"
        assert before["consents"][signed["request_id"]]["data"]["status"] == "Authorized"
        assert before["consents"][revoked["consent_id"]]["data"]["status"] == "Revoked"
        assert before["consents"][product["consent_id"]]["status"] == "active"
        spent = before["consents"][pay_consent["consent_id"]]["data"]
        assert (spent["status"], spent["usedCount"], spent["paymentIds"]) == ("Consumed", 1, [paid["paymentId"]])
        assert before["payer_rows"][2]["transactionInformation"].startswith("Перевод клиенту")
        assert before["payee_rows"][0]["creditDebitIndicator"] == "Credit"
        assert (before["counts"]["payments"], before["counts"]["payment_consents"]) == (1, 1)

        await emulator.kill()  # right after the last answer
        await emulator.start(session)
        after = await observed()  # the same team token still works: the signing key is kept too
        assert after == before

        # The single-use consent stays spent, and the bank keeps working on the restored state.
        again = await vbank.call(
            "POST",
            "/payments",
            params={"client_id": CUSTOMER},
            headers={"X-Payment-Consent-Id": pay_consent["consent_id"]},
            json={
                "data": {
                    "initiation": {
                        "instructedAmount": {"amount": "1.00", "currency": "RUB"},
                        "debtorAccount": {"identification": debtor},
                        "creditorAccount": {"identification": creditor, "bank_code": "abank"},
                    }
                }
            },
        )
        assert again.status == 403 and again.body["detail"]["error"] == "INVALID_CONSENT"
        answer = await sbank.sign(
            "/account-consents", (await sbank.login(CUSTOMER)).body["access_token"], pending["request_id"]
        )
        assert answer.status == 200 and answer.body["status"] == "approved"
        second = await _pay(vbank, (await _payment_consent(vbank, debtor))["consent_id"], debtor, creditor, "1.00")
        assert await vbank.balance(auto["consent_id"], payer["accountId"]) == before["payer_balance"] - Decimal("1.00")
        await emulator.kill()
        await emulator.start(session)
        got = await sbank.call("GET", f"/account-consents/{answer.body['consent_id']}")
        assert got.body["data"]["status"] == "Authorized"
        assert (await vbank.call("GET", f"/payments/{second['paymentId']}")).status == 200
        assert not [name for name in os.listdir(emulator.state_dir) if name.endswith(".tmp")]
    finally:
        await emulator.close()


async def test_one_process_per_state_folder(tmp_path, session, ports):
    first = Emulator(str(tmp_path))
    try:
        await first.start(session)
        second = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bank_sandbox",
            "--banks",
            f"vbank={ports.port()}",
            "--state-dir",
            str(tmp_path),
            env={**os.environ, **ports.env()},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(second.communicate(), 30)
        assert second.returncode == 1 and b"another bank emulator uses" in stderr
    finally:
        await first.close()


async def test_without_a_state_folder_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    running = await start_banks(SandboxConfig(), {"vbank": 0})
    try:
        assert running.registry.store is None
        async with aiohttp.ClientSession() as session:
            await Bank(session, running.urls["vbank"]).account_consent()
    finally:
        await running.stop()
    assert os.listdir(tmp_path) == []


async def test_file_restores_in_process_and_config_changes_win(tmp_path):
    state_dir = str(tmp_path)
    running = await start_banks(SandboxConfig(), {"vbank": 0, "abank": 0}, state_dir=state_dir)
    try:
        async with aiohttp.ClientSession() as session:
            vbank = Bank(session, running.urls["vbank"])
            consent = await vbank.account_consent()
            await vbank.admin("POST", "faults", json={"error_rate": 0.5})
            await vbank.admin("POST", "down", json={"down": True})
    finally:
        await running.stop()
    with open(os.path.join(state_dir, FILE_NAME), encoding="utf-8") as f:
        stored = json.load(f)
    assert stored["format"] == "finpulse-bank-sandbox-state" and set(stored["banks"]) == {"vbank", "abank"}
    assert [c["request_id"] for c in stored["banks"]["vbank"]["consents"]] == [consent["request_id"]]

    # The same knobs configured: the admin's changes are back. Other knobs configured: they win.
    running = await start_banks(SandboxConfig(), {"vbank": 0}, state_dir=state_dir)
    try:
        from bank_sandbox.app import STATE

        bank = running.apps["vbank"][STATE]
        assert (bank.faults.error_rate, bank.down) == (0.5, True)
        assert bank.consents.find(None, consent["consent_id"]).client_id == CUSTOMER
    finally:
        await running.stop()
    running = await start_banks(SandboxConfig(latency_ms=1), {"vbank": 0}, state_dir=state_dir)
    try:
        bank = running.apps["vbank"][STATE]
        assert (bank.faults.error_rate, bank.faults.latency_ms, bank.down) == (0, 1, False)
        assert bank.consents.find(None, consent["consent_id"]).state.name == "AUTHORIZED"
    finally:
        await running.stop()
    with open(os.path.join(state_dir, FILE_NAME), encoding="utf-8") as f:
        assert set(json.load(f)["banks"]) == {"vbank", "abank"}, "a bank not served this time is kept"

    # Another seed makes other customers: the bank starts afresh, the old file is kept aside.
    running = await start_banks(SandboxConfig(seed=7), {"vbank": 0}, state_dir=state_dir)
    try:
        with pytest.raises(Exception, match="Consent not found"):
            running.apps["vbank"][STATE].consents.find(None, consent["consent_id"])
    finally:
        await running.stop()
    assert [name for name in os.listdir(state_dir) if name.endswith(".bak")]


async def test_an_unreadable_file_is_refused_not_overwritten(tmp_path):
    path = tmp_path / FILE_NAME
    path.write_text("{not json")
    with pytest.raises(StateError, match="not valid JSON"):
        await start_banks(SandboxConfig(), {"vbank": 0}, state_dir=str(tmp_path))
    assert path.read_text() == "{not json"
    with pytest.raises(StateError, match="another bank emulator"):
        held = StateFile(str(tmp_path / "held"))
        try:
            StateFile(str(tmp_path / "held"))
        finally:
            held.close()


def test_records_read_with_fields_added_or_removed_since():
    """A file written before a field existed loads with its default; one a field was dropped from,
    without it."""
    from bank_sandbox.consents import PAYMENT, ConsentBook
    from bank_sandbox.models import utcnow

    now = utcnow()
    consent = ConsentBook().create(
        PAYMENT,
        CUSTOMER,
        PaymentTerms("multi_use", "408", "RUB", max_uses=3, max_total_amount=Decimal("10.50")),
        manual=False,
        now=now,
        expires=now,
    )
    consent.payments.append((now, Decimal("1.25")))
    stored = {f.name: encode(getattr(consent, f.name)) for f in dataclasses.fields(Consent) if f.name != "kind"}
    stored["kind"] = "payment"
    assert decode_consent(json.loads(json.dumps(stored))) == consent

    old = json.loads(json.dumps(stored))
    del old["payment_ids"], old["terms"]["reference"]  # written before these fields existed
    old["terms"]["a_field_removed_since"] = 1
    old["a_field_removed_since"] = "x"
    back = decode_consent(old)
    assert back.payment_ids == [] and back.terms.reference is None and back.terms.max_uses == 3
    assert back.payments == [(now, Decimal("1.25"))] and back.terms.max_total_amount == Decimal("10.50")

    @dataclasses.dataclass(frozen=True)
    class Newer:
        name: str
        added: tuple[str, ...] = ("default",)
        later: int = dataclasses.field(default=0, init=False)

    assert decode_record(Newer, {"name": "n"}) == Newer("n")
    assert decode_record(Newer, {"name": "n", "later": 5}).later == 5
    with pytest.raises(ValueError, match="name is not stored"):
        decode_record(Newer, {})
