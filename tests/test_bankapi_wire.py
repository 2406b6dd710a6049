"""Transaction pages decoded straight from the bank's text (bankapi/wire.py) against the tolerant
parser they replace on the hot path (`TransactionPage.from_api` over `json.loads(parse_float=Decimal)`):
the same values for every shape, exact decimals, aware-UTC times, the bank's own text as `raw`, and
the same errors for pages that cannot be read, through a real HTTP exchange."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from aiohttp import web

from bankapi import BankClient, BankEndpoint, TeamCredentials
from bankapi.errors import BankUnavailable, MalformedResponse, decode_body, error_for_status
from bankapi.jsonbody import JSONObject
from bankapi.models import Transaction, TransactionPage
from bankapi.wire import decode_transaction_page
from sync_svc.bank_records import _to_json, _transaction_row

TX: dict[str, Any] = {  # the documented shape (docs/bank-api.md, "Transactions")
    "accountId": "acc-3693",
    "transactionId": "tx-vbank-00665500",
    "amount": {"amount": "4971.71", "currency": "RUB"},
    "creditDebitIndicator": "Debit",
    "status": "completed",
    "bookingDateTime": "2025-11-08T08:30:15.285567Z",
    "valueDateTime": "2025-11-08T08:30:15.285567Z",
    "transactionInformation": "Дикси - Москва",
    "bankTransactionCode": {"code": "01"},
    "merchant": {"merchantId": "m-1", "name": "Дикси", "mccCode": "5411", "category": "grocery", "city": "Москва"},
    "card": {"cardId": "c-1", "cardNumber": "****8759", "cardType": "debit"},
    "counterparty": None,
}


def page_text(*items: Any, data: Any = None, meta: Any = None, links: Any = None, **extra: Any) -> str:
    body = {
        "data": {"transaction": list(items)} if data is None else data,
        "links": links if links is not None else {"self": "/x?page=1", "next": "/x?page=2"},
        "meta": meta if meta is not None else {"totalPages": 6, "totalRecords": 294, "currentPage": 1},
        **extra,
    }
    return json.dumps(body, ensure_ascii=False)


def tx(**changes: Any) -> dict[str, Any]:
    item = copy.deepcopy(TX)
    for key, value in changes.items():
        if value is ...:
            item.pop(key, None)
        else:
            item[key] = value
    return item


def fast(text: str, account_id: str | None = "acc-default") -> TransactionPage:
    body = decode_body(text)
    assert isinstance(body, JSONObject)
    page = decode_transaction_page(body, account_id)
    return page


def tolerant(text: str, account_id: str | None = "acc-default") -> TransactionPage:
    return TransactionPage.from_api(json.loads(text, parse_float=Decimal), account_id=account_id)


def took_fast_path(text: str) -> bool:
    body = decode_body(text)
    decode_transaction_page(body, "acc-default")
    return not body.decoded  # the fallback reads the body as a mapping


def fields(t: Transaction) -> tuple:
    return (*(getattr(t, f) for f in Transaction.__struct_fields__ if f != "raw"), dict(t.raw))


def test_documented_page_is_decoded_typed_without_a_dict():
    text = page_text(tx(), tx(transactionId="tx-2", merchant=None, card=None, bankTransactionCode={"code": "02"}))
    assert took_fast_path(text)
    page = fast(text)
    first = page.transactions[0]
    assert (first.account_id, first.transaction_id, first.amount, first.currency) == (
        "acc-3693",
        "tx-vbank-00665500",
        Decimal("4971.71"),
        "RUB",
    )
    assert first.booking_time == datetime(2025, 11, 8, 8, 30, 15, 285567, tzinfo=UTC)
    assert first.booking_time.tzinfo is UTC and first.signed_amount == Decimal("-4971.71")
    assert (first.merchant_name, first.merchant_category, first.mcc, first.bank_code) == (
        "Дикси",
        "grocery",
        "5411",
        "01",
    )
    assert page.transactions[1].merchant_name is None and page.transactions[1].bank_code == "02"
    assert (page.total_pages, page.total_records, page.current_page, page.next_link) == (6, 294, 1, "/x?page=2")
    # the item's own text is kept as raw: a mapping equal to what the tolerant parser keeps
    assert isinstance(first.raw, JSONObject) and json.loads(first.raw.text) == TX
    assert page == tolerant(text)


@pytest.mark.parametrize(
    "amount,expected",
    [
        ('"0.1"', "0.1"),
        ("0.1", "0.1"),
        ('"12345678.90"', "12345678.90"),
        ("12345678.90", "12345678.90"),
        ("12345678901234567890.123456789", "12345678901234567890.123456789"),
        ('"0.30000000000000004441"', "0.30000000000000004441"),
        ("1e-7", "1E-7"),
        ("100", "100"),
        ('"-0.00"', "-0.00"),
    ],
)
def test_amounts_are_exact_decimals_from_strings_and_numbers(amount: str, expected: str):
    text = page_text(tx()).replace('"amount": "4971.71"', f'"amount": {amount}')
    assert took_fast_path(text)
    got = fast(text).transactions[0].amount
    assert type(got) is Decimal and str(got) == expected  # the digits as written, scale included
    assert got == tolerant(text).transactions[0].amount
    # the stored raw keeps the bank's value as written (string or number, every digit)
    row = _transaction_row(fast(text).transactions[0], ("u", "b"))
    assert json.loads(row[-1], parse_float=Decimal)["amount"]["amount"] == json.loads(amount, parse_float=Decimal)


def test_missing_optional_fields_are_none():
    text = page_text({"transactionId": "tx-1", "amount": {"amount": "5.00"}}, meta={}, links={})
    assert took_fast_path(text)
    only = fast(text, "acc-9").transactions[0]
    assert only.account_id == "acc-9"  # the account asked for
    assert only.currency is None and only.booking_time is None and only.value_time is None
    assert only.credit_debit_indicator is None and only.signed_amount == Decimal("5.00")
    assert (only.description, only.bank_code, only.merchant_name, only.mcc, only.agreement_id) == (None,) * 5
    page = fast(text, "acc-9")
    assert (page.total_pages, page.total_records, page.current_page, page.next_link) == (None,) * 4
    assert page == tolerant(text, "acc-9")


@pytest.mark.parametrize(
    "text",
    [
        # other spellings and shapes the tolerant parser has always read: same values either way
        page_text(
            {
                "account_id": "a",
                "transaction_id": "t",
                "amount": {"amount": 1.5},
                "currency": "USD",
                "credit_debit_indicator": "debit",
                "booking_date_time": "2025-01-02T03:04:05",
                "value_date_time": "2025-01-02T06:04:05+03:00",
                "description": "Платеж по кредиту №loan-1",
                "merchant": {"mcc": "1234"},
            },
            meta={"total_pages": 2, "total_records": 3, "current_page": 1},
        ),
        page_text(tx(amount="12.30", currency="RUB")),  # flat amount
        page_text(tx(amount={"amount": "1.00", "currency": ""}, currency="EUR")),
        page_text(tx(bookingDateTime="2025-11-08")),  # date only
        page_text(tx(bookingDateTime="2025-11-08T11:30:15.5+03:00")),  # an offset
        page_text(tx(bookingDateTime="2025-11-08T08:30:15.1234567Z")),  # 7 digits: truncated, as ever
        page_text(tx(bookingDateTime=1731054615)),  # epoch seconds
        page_text(tx(bookingDateTime="garbage", valueDateTime="")),
        page_text(tx(bookingDateTime=" 2025-11-08T08:30:15Z ")),
        page_text(tx(status=3, creditDebitIndicator="DEBIT")),  # a number where a string belongs
        page_text(tx(merchant="Дикси", bankTransactionCode="01")),
        page_text(tx(accountId=None, account_id="acc-b")),
        page_text(tx(transactionId=None, transaction_id="tx-b")),
        page_text(tx(transactionInformation=None, transaction_information="Доход")),
        page_text(data=[tx()]),  # a bare list
        page_text(data={"transaction": tx()}),  # a single object
        page_text(data={"transaction": None, "transactions": [tx()]}),
        page_text(data={"other": []}),
        page_text(meta={"totalPages": "6", "currentPage": True}),
        page_text(links={"next": ""}),
        page_text(tx()).replace('"links": {"self": "/x?page=1", "next": "/x?page=2"}', '"links": null'),
    ],
)
def test_every_other_shape_reads_as_the_tolerant_parser_reads_it(text: str):
    got, expected = fast(text), tolerant(text)
    assert [fields(t) for t in got.transactions] == [fields(t) for t in expected.transactions]
    assert got == expected
    assert all(t.booking_time is None or t.booking_time.tzinfo is UTC for t in got.transactions)


@pytest.mark.parametrize(
    "item,message",
    [
        (tx(amount={"amount": "abc"}), "not an amount: 'abc'"),
        (tx(amount={"amount": True}), "not an amount: True"),
        (tx(amount={"amount": None}), "not an amount: None"),
        (tx(amount={"amount": "NaN"}), "not a finite amount: 'NaN'"),
        (tx(amount={"amount": "-Infinity"}), "not a finite amount: '-Infinity'"),
        (tx(amount=...), "not an amount: None"),
        (tx(transactionId=...), "missing transactionId"),
        (tx(transactionId=""), "missing transactionId"),
    ],
)
def test_wrong_values_fail_as_before(item: dict, message: str):
    text = page_text(item)
    with pytest.raises(ValueError) as tolerant_error:
        tolerant(text)
    with pytest.raises(ValueError) as fast_error:
        fast(text)
    assert str(fast_error.value) == str(tolerant_error.value) == message


def test_missing_account_id_fails_as_before():
    text = page_text(tx(accountId=...))
    for parse in (fast, tolerant):
        with pytest.raises(ValueError, match="missing accountId"):
            parse(text, None)


def test_decode_body_keeps_every_answer_kind():
    assert decode_body("") is None and decode_body("  \n") is None
    assert decode_body("not json {") == "not json {" and decode_body('{"a": 1,') == '{"a": 1,'
    assert decode_body("[1, 2.50]") == [1, Decimal("2.50")]
    assert decode_body('"text"') == "text" and decode_body("3") == 3
    nan = decode_body('{"a": NaN}')  # only the standard library reads it: decoded the old way
    assert isinstance(nan, dict) and nan["a"] != nan["a"]
    body = decode_body(' {"a": 0.1, "b": {"c": [1]}} ')
    assert isinstance(body, JSONObject) and not body.decoded
    assert body == {"a": Decimal("0.1"), "b": {"c": [1]}} and body["a"] == Decimal("0.1") and body.decoded
    assert list(body) == ["a", "b"] and len(body) == 2 and "b" in body and body.get("x", 5) == 5


def test_errors_read_a_json_object_body_as_a_dict():
    ctx = {"bank_id": "vbank", "operation": "op", "interaction_id": "iid"}
    error = error_for_status(503, decode_body('{"status": "down", "retry": 0.5}'), **ctx)
    assert isinstance(error, BankUnavailable) and type(error.detail) is dict
    assert error.detail == {"status": "down", "retry": Decimal("0.5")}
    assert error.message == '{"status": "down", "retry": "0.5"}'  # JSON of the dict (as ever), not a repr
    assert error_for_status(404, decode_body('{"detail": "Account not found"}'), **ctx).message == "Account not found"


def test_rows_carry_the_banks_text_and_the_same_columns():
    text = page_text(tx(), tx(transactionId="tx-2", amount={"amount": 0.1, "currency": "RUB"}))
    for new, old in zip(fast(text).transactions, tolerant(text).transactions, strict=True):
        new_row, old_row = _transaction_row(new, ("user", "vbank")), _transaction_row(old, ("user", "vbank"))
        assert new_row[:-1] == old_row[:-1]
        assert json.loads(new_row[-1], parse_float=Decimal) == json.loads(_to_json(old.raw), parse_float=Decimal)
        assert new_row[-1] == new.raw.text  # no re-encoding


# ------------------------------------------------------------------------ through a real HTTP exchange


@pytest.fixture
async def bank():
    """A bank on a free loopback port answering transaction pages with `answers[account_id]`."""
    answers: dict[str, str] = {}

    async def token(request: web.Request) -> web.Response:
        return web.json_response({"access_token": "t", "expires_in": 3600})

    async def transactions(request: web.Request) -> web.Response:
        return web.Response(text=answers[request.match_info["account"]], content_type="application/json")

    app = web.Application()
    app.router.add_post("/auth/bank-token", token)
    app.router.add_get("/accounts/{account}/transactions", transactions)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    client = BankClient(BankEndpoint("vbank", f"http://127.0.0.1:{port}"), TeamCredentials("team200", "s"))
    try:
        yield client, answers
    finally:
        await client.close()
        await runner.cleanup()


async def test_client_pages_through_the_fast_path_and_names_bad_pages(bank):
    client, answers = bank
    answers["good"] = page_text(tx(accountId=...), tx(accountId=..., transactionId="tx-2"), links={})
    page = await client.get_transactions_page("team200-1", "consent-1", "good")
    assert [t.account_id for t in page.transactions] == ["good", "good"]
    assert all(isinstance(t.raw, JSONObject) for t in page.transactions)

    cases = {
        "amount": (page_text(tx(amount={"amount": "12,5"})), "unexpected answer shape: not an amount: '12,5'"),
        "id": (page_text(tx(transactionId=...)), "unexpected answer shape: missing transactionId"),
        "list": ("[]", "unexpected answer shape: expected a JSON object, got list"),
        "text": ("<html>oops</html>", "unexpected answer shape: expected a JSON object, got str"),
        "item": (page_text(None), "unexpected answer shape: 'NoneType' object has no attribute 'get'"),
    }
    for account, (text, message) in cases.items():
        answers[account] = text
        with pytest.raises(MalformedResponse) as failure:
            await client.get_transactions_page("team200-1", "consent-1", account)
        assert failure.value.message == message and failure.value.operation == "get_transactions"
