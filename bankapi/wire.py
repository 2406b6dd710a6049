"""Transaction pages decoded straight from the bank's text into typed structs (msgspec), no dict built.

`decode_transaction_page(body, account_id)` is what `get_transactions_page` applies to a page. When the
body is still text (a `JSONObject` nobody has read, bankapi/jsonbody.py) and has the documented shape
(docs/bank-api.md: `{"data": {"transaction": [...]}, "links": {...}, "meta": {...}}`, nested `amount`
objects, string fields as strings), msgspec decodes it in C: amounts straight to exact `Decimal`
(from a JSON string or number alike, never through float), each transaction's own text kept as its
`raw` (a `JSONObject`, so storing it needs no re-encoding). Anything else — a flat `amount`, a
number where a string belongs, a date-only timestamp, a missing id, NaN, a bare list — leaves the
fast path, and the page goes through the tolerant `TransactionPage.from_api`, which gives exactly the
values or errors it always gave. Both paths give equal `Transaction`s (tests/test_bankapi_wire.py).
"""

from __future__ import annotations

import codecs
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec

from .jsonbody import JSONObject
from .models import Transaction, TransactionPage
from .parsing import agreement_id_from_text, parse_datetime

_S = str | None


class _Amount(msgspec.Struct, gc=False):
    amount: Decimal
    currency: _S = None


class _Code(msgspec.Struct, gc=False):
    code: _S = None


class _Merchant(msgspec.Struct, gc=False):
    name: _S = None
    category: _S = None
    mccCode: _S = None
    mcc: _S = None


class _Transaction(msgspec.Struct, gc=False):
    """Every key `Transaction.from_api` reads, in both spellings, with the documented types."""

    amount: _Amount
    accountId: _S = None
    account_id: _S = None
    transactionId: _S = None
    transaction_id: _S = None
    currency: _S = None
    creditDebitIndicator: _S = None
    credit_debit_indicator: _S = None
    status: _S = None
    bookingDateTime: _S = None
    booking_date_time: _S = None
    valueDateTime: _S = None
    value_date_time: _S = None
    transactionInformation: _S = None
    transaction_information: _S = None
    description: _S = None
    bankTransactionCode: _Code | None = None
    merchant: _Merchant | None = None


class _Data(msgspec.Struct, gc=False):
    transaction: list[msgspec.Raw] | None = None
    transactions: list[msgspec.Raw] | None = None


class _Links(msgspec.Struct, gc=False):
    next: _S = None


class _Meta(msgspec.Struct, gc=False):
    totalPages: int | None = None
    total_pages: int | None = None
    totalRecords: int | None = None
    total_records: int | None = None
    currentPage: int | None = None
    current_page: int | None = None


class _Page(msgspec.Struct, gc=False):
    data: _Data
    links: _Links | None = None
    meta: _Meta | None = None


_page = msgspec.json.Decoder(_Page).decode
_item = msgspec.json.Decoder(_Transaction).decode
_utf8 = codecs.utf_8_decode
_fromiso = datetime.fromisoformat


class _Unusual(Exception):
    """The page leaves the fast path (internal)."""


def decode_transaction_page(body: Mapping[str, Any], account_id: str | None = None) -> TransactionPage:
    """The page in `body` (a transactions answer), typed; see the module docstring. Raises what
    `TransactionPage.from_api` raises for a page it cannot read."""
    if isinstance(body, JSONObject) and not body.decoded:
        try:
            return _fast_page(body.text, account_id)
        except (msgspec.DecodeError, _Unusual):
            pass
    return TransactionPage.from_api(body, account_id=account_id)


def _fast_page(text: str, account_id: str | None) -> TransactionPage:
    page = _page(text)
    data = page.data
    items = data.transaction if data.transaction is not None else data.transactions
    if items is None:
        raise _Unusual
    meta = page.meta or _Meta()
    return TransactionPage(
        transactions=tuple([_fast_transaction(raw, account_id) for raw in items]),
        total_pages=_first(meta.totalPages, meta.total_pages),
        total_records=_first(meta.totalRecords, meta.total_records),
        current_page=_first(meta.currentPage, meta.current_page),
        next_link=(page.links.next or None) if page.links is not None else None,
    )


def _first(a: Any, b: Any) -> Any:
    return a if a is not None else b


def _fast_transaction(raw: msgspec.Raw, account_id: str | None) -> Transaction:
    t = _item(raw)
    owner = t.accountId if t.accountId is not None else t.account_id
    if owner is None:
        owner = account_id
    tid = t.transactionId if t.transactionId is not None else t.transaction_id
    if not owner or not tid:
        raise _Unusual  # from_api names the missing id
    amount = t.amount.amount
    if not amount.is_finite():
        raise _Unusual
    info = t.transactionInformation
    if info is None:
        info = t.transaction_information if t.transaction_information is not None else t.description
    code, merchant = t.bankTransactionCode, t.merchant
    indicator = t.creditDebitIndicator if t.creditDebitIndicator is not None else t.credit_debit_indicator
    return Transaction(
        owner,
        tid,
        amount,
        t.amount.currency or t.currency,
        indicator,
        t.status,
        _utc(t.bookingDateTime if t.bookingDateTime is not None else t.booking_date_time),
        _utc(t.valueDateTime if t.valueDateTime is not None else t.value_date_time),
        info,
        code.code if code is not None else None,
        merchant.name if merchant is not None else None,
        merchant.category if merchant is not None else None,
        (merchant.mccCode if merchant.mccCode is not None else merchant.mcc) if merchant is not None else None,
        agreement_id_from_text(info),
        JSONObject(_utf8(raw)[0]),
    )


def _utc(text: str | None) -> datetime | None:
    """`parse_datetime` for a string, with the common case (a UTC timestamp) at C speed."""
    if text is None:
        return None
    try:
        moment = _fromiso(text)
    except ValueError:
        return parse_datetime(text)
    return moment if moment.tzinfo is UTC else parse_datetime(text)
