"""The shapes of the bank data in the `sync` schema (the storage: `sync_svc.bank_storage`).

What readers get: small frozen dataclasses with `Decimal` money and aware-UTC datetimes (the pool's
session time zone is UTC); what a write reports (`WriteStats`); the rows a write stores (bank models
to columns); and the SQL and query helpers the read and write sides share.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, TypeVar

import asyncpg

from bankapi.jsonbody import JSONObject
from bankapi.models import Account, Balance, ProductAgreement, Transaction

MAX_PAGE = 1000
R = TypeVar("R")  # a result dataclass
_MESSAGE_LIMIT = 2000  # characters of a bank call's message kept in bank_status_log


# ---------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class TableStats:
    """What one write did to one table. `unchanged` counts fetched rows identical to the stored ones."""

    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.inserted or self.updated or self.deleted)


@dataclass(frozen=True)
class WriteStats:
    """Outcome of `write_bank_data`. `skipped` counts transactions with neither a booking nor a value
    time (they cannot be placed in time and are not stored); `data_version` is the user's version
    after the write (bumped only when `changed`: a row changed, or the bank was failing until this write
    and answers again, which changes the dashboard too)."""

    accounts: TableStats
    balances: TableStats
    transactions: TableStats
    credits: TableStats
    skipped: int
    watermark: datetime | None
    data_version: int
    changed: bool

    def _total(self, name: str) -> int:
        return sum(getattr(t, name) for t in (self.accounts, self.balances, self.transactions, self.credits))

    @property
    def inserted(self) -> int:
        return self._total("inserted")

    @property
    def updated(self) -> int:
        return self._total("updated")

    @property
    def deleted(self) -> int:
        return self._total("deleted")

    @property
    def unchanged(self) -> int:
        return self._total("unchanged")


@dataclass(frozen=True)
class SyncState:
    """Per (user, bank). `watermark` is the newest booking time stored; the counts are running totals
    kept in each write's transaction (`BankDataStorage.counts` recounts the tables)."""

    user_id: str
    bank_id: str
    watermark: datetime | None
    last_success_at: datetime | None
    last_changed_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    accounts_count: int
    balances_count: int
    transactions_count: int
    credits_count: int
    updated_at: datetime


@dataclass(frozen=True)
class Counts:
    accounts: int
    balances: int
    transactions: int
    credits: int


@dataclass(frozen=True)
class BankCall:
    """One bank call for `bank_status_log` (a Mapping with the same keys is accepted too)."""

    bank_id: str
    operation: str
    outcome: str
    user_id: str | None = None
    http_status: int | None = None
    latency_ms: float | None = None
    interaction_id: str | None = None
    message: str | None = None
    at: datetime | None = None  # defaults to the time of logging


@dataclass(frozen=True)
class StoredAccount:
    bank_id: str
    account_id: str
    status: str | None
    currency: str | None
    account_type: str | None
    account_sub_type: str | None
    nickname: str | None
    opening_date: date | None
    account_number: str | None
    owner_name: str | None
    first_seen_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class StoredBalance:
    bank_id: str
    account_id: str
    balance_type: str
    amount: Decimal
    signed_amount: Decimal  # negative for a Debit balance
    currency: str | None
    credit_debit_indicator: str | None
    as_of: datetime
    fetched_at: datetime


@dataclass(frozen=True)
class StoredCredit:
    bank_id: str
    agreement_id: str
    product_id: str | None
    product_type: str | None
    product_name: str | None
    amount: Decimal  # principal, deposited sum or card limit: not a debt
    interest_rate: Decimal | None
    status: str | None
    start_date: datetime | None
    end_date: datetime | None
    account_number: str | None
    account_balance: Decimal | None
    updated_at: datetime


@dataclass(frozen=True)
class StoredTransaction:
    bank_id: str
    account_id: str
    transaction_id: str
    amount: Decimal
    signed_amount: Decimal  # negative for a debit
    currency: str | None
    direction: str  # credit | debit
    status: str | None
    booking_time: datetime
    value_time: datetime | None
    description: str | None
    bank_code: str | None
    merchant: str | None
    category: str | None
    mcc: str | None
    agreement_id: str | None
    first_seen_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class TransactionCursor:
    """Keyset position in the (booking_time, bank_id, account_id, transaction_id) DESC order: the last
    row of a page. `token()`/`from_token()` turn it into an opaque page token and back."""

    booking_time: datetime
    bank_id: str
    account_id: str
    transaction_id: str

    def token(self) -> str:
        text = json.dumps(
            [self.booking_time.isoformat(), self.bank_id, self.account_id, self.transaction_id],
            ensure_ascii=False,
            separators=(",", ":"),
        )
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    @classmethod
    def from_token(cls, token: str) -> TransactionCursor:
        """ValueError when the token was not made by `token()`."""
        try:
            text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
            when, bank_id, account_id, transaction_id = json.loads(text)
            moment = datetime.fromisoformat(when)
            if moment.tzinfo is None or not all(isinstance(v, str) for v in (bank_id, account_id, transaction_id)):
                raise ValueError
        except (ValueError, TypeError, UnicodeDecodeError):
            raise ValueError("invalid page token") from None
        return cls(moment, bank_id, account_id, transaction_id)


@dataclass(frozen=True)
class MonthlyCashFlow:
    month: date  # first day of the calendar month (UTC)
    currency: str | None
    income: Decimal  # sum of credits
    spending: Decimal  # sum of debits, positive
    count: int


@dataclass(frozen=True)
class CategorySpending:
    category: str | None  # merchant category; None for debits without a merchant (transfers, repayments)
    currency: str | None
    total: Decimal  # positive
    count: int


@dataclass(frozen=True)
class LoanRepayments:
    """Debits naming a loan agreement ("Платеж по кредиту №<agreement_id>")."""

    bank_id: str
    agreement_id: str
    currency: str | None
    count: int
    total: Decimal
    average: Decimal  # rounded to cents
    last_paid_at: datetime
    typical_day: int  # most common day of month (UTC); the earliest such day on a tie
    months: list[date]  # first day of every calendar month (UTC) with a repayment, oldest first


@dataclass(frozen=True)
class DayIncome:
    """Income credits of one UTC day in one currency."""

    day: date
    currency: str | None
    total: Decimal
    count: int


# ---------------------------------------------------------------------- rows (bank models -> the tables' columns)


def _json_default(value: Any) -> Any:
    """JSON for what the bank client leaves in `raw`: Decimal numbers (it parses floats as Decimal)
    stay numbers whenever a float carries the exact same value, else become strings."""
    if isinstance(value, Decimal):
        if value == value.to_integral_value():
            return int(value)
        as_float = float(value)
        return as_float if Decimal(repr(as_float)) == value else str(value)
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    return str(value)


# check_circular off: `raw` comes from json.loads, it cannot hold a cycle (and the check costs ~8%)
_to_json = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), default=_json_default, check_circular=False
).encode


def _account_row(a: Account) -> tuple:
    return (
        a.account_id,
        a.status,
        a.currency,
        a.account_type,
        a.account_sub_type,
        a.nickname,
        a.opening_date,
        a.account_number,
        a.owner_name,
        _raw_json(a.raw),
    )


def _credit_row(p: ProductAgreement) -> tuple:
    return (
        p.agreement_id,
        p.product_id,
        p.product_type,
        p.product_name,
        p.amount,
        p.interest_rate,
        p.status,
        p.start_date,
        p.end_date,
        p.account_number,
        p.account_balance,
        _raw_json(p.raw),
    )


def _balance_row(b: Balance) -> tuple:
    return (b.account_id, b.type or "", b.amount, b.currency, b.credit_debit_indicator, b.as_of, _raw_json(b.raw))


def _raw_json(raw: Mapping[str, Any]) -> str:
    """The `raw` column: the bank's own text when the client kept it (a `JSONObject`: no re-encoding,
    and numbers stay exactly as the bank wrote them), else the mapping encoded."""
    return raw.text if type(raw) is JSONObject else _to_json(raw)


def _transaction_row(t: Transaction, head: tuple = ()) -> tuple:
    """`head` + the TRANSACTIONS columns (head: user and bank, for a COPY straight into the table): the
    COPY record itself, made from the decoded `Transaction` with no other object in between."""
    indicator, value_time = t.credit_debit_indicator, t.value_time
    return (
        *head,
        t.account_id,
        t.transaction_id,
        t.amount,
        "debit" if indicator is not None and indicator.lower() == "debit" else "credit",
        t.currency,
        t.status,
        t.booking_time or value_time,
        value_time,
        t.description,
        t.bank_code,
        t.merchant_name,
        t.merchant_category,
        t.mcc,
        t.agreement_id,
        _raw_json(t.raw),
    )


# ---------------------------------------------------------------------------------------------- shared SQL

_BUMP_VERSION = """
    INSERT INTO user_data_version AS v (user_id, version) VALUES ($1, 1)
    ON CONFLICT (user_id) DO UPDATE SET version = v.version + 1, updated_at = now()
    RETURNING version
"""
_DATA_VERSION = "SELECT version FROM user_data_version WHERE user_id = $1"

_BANK_CALL_COLUMNS = (
    "at",
    "user_id",
    "bank_id",
    "operation",
    "outcome",
    "http_status",
    "latency_ms",
    "interaction_id",
    "message",
)


# ---------------------------------------------------------------------------------------------- helpers


@functools.cache
def _select(cls: type) -> str:
    """The select list of a result dataclass: its field names are the column names."""
    return ", ".join(f.name for f in dataclasses.fields(cls))


def _build(cls: type[R], records: Iterable[asyncpg.Record]) -> list[R]:
    return [cls(**dict(r)) for r in records]


def _aware(value: datetime | None, name: str) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware")
    return value


def _lock_name(user_id: str, bank_id: str) -> str:
    return f"finpulse:sync:bank-data:{user_id}\x1f{bank_id}"


def _field(record: Any, name: str) -> Any:
    return record.get(name) if isinstance(record, Mapping) else getattr(record, name, None)


class _Where:
    """AND-ed conditions with numbered parameters, for the reads with optional filters."""

    def __init__(self) -> None:
        self.clauses: list[str] = []
        self.args: list[Any] = []

    def arg(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}"

    def add(self, clause: str, *values: Any) -> _Where:
        """`clause` with `{}` placeholders for `values`."""
        self.clauses.append(clause.format(*(self.arg(v) for v in values)))
        return self

    def maybe(self, clause: str, value: Any) -> _Where:
        return self.add(clause, value) if value is not None else self

    def __str__(self) -> str:
        return " AND ".join(self.clauses) or "true"
