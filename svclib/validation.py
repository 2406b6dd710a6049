"""Parsing of user-supplied values into exact domain types, with errors that name the field."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal, InvalidOperation

from svclib.errors import InvalidArgument

MAX_AMOUNT = Decimal("1000000000000")  # 10^12: far beyond any personal-finance figure
_AMOUNT_RE = re.compile(r"^\d{1,13}(\.\d{1,2})?$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_amount(text: str, field: str) -> Decimal:
    """A positive money amount with at most two decimals, e.g. "1200.50"."""
    raw = text.strip()
    if not _AMOUNT_RE.match(raw):
        raise InvalidArgument(
            f'{field}: {text!r} is not a positive amount with at most two decimals (e.g. "1200.50")',
            field,
            reason="INVALID_AMOUNT",
        )
    try:
        value = Decimal(raw)
    except InvalidOperation:  # pragma: no cover - the regex admits only valid decimals
        raise InvalidArgument(f"{field}: {text!r} is not a number", field, reason="INVALID_AMOUNT") from None
    if value <= 0:
        raise InvalidArgument(f"{field}: must be greater than zero", field, reason="INVALID_AMOUNT")
    if value >= MAX_AMOUNT:
        raise InvalidArgument(f"{field}: {text} is too large", field, reason="OUT_OF_RANGE")
    return value.quantize(Decimal("0.01"))


def parse_date(
    text: str, field: str, *, earliest: dt.date = dt.date(2000, 1, 1), latest: dt.date = dt.date(2100, 12, 31)
) -> dt.date:
    """A real calendar date written YYYY-MM-DD within a sane range."""
    raw = text.strip()
    if not _DATE_RE.match(raw):
        raise InvalidArgument(f"{field}: {text!r} is not a date in YYYY-MM-DD form", field, reason="INVALID_DATE")
    try:
        value = dt.date.fromisoformat(raw)
    except ValueError:
        raise InvalidArgument(f"{field}: {text!r} is not a real calendar date", field, reason="INVALID_DATE") from None
    if not earliest <= value <= latest:
        raise InvalidArgument(f"{field}: {raw} is outside {earliest}..{latest}", field, reason="OUT_OF_RANGE")
    return value


def format_amount(value: Decimal) -> str:
    return f"{value.quantize(Decimal('0.01'))}"
