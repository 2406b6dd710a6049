"""Tolerant parsing of the banks' JSON values: exact money, aware-UTC times, dates, lists, identifiers.

The building blocks of the models' `from_api` constructors (bankapi/models.py): money through
`to_decimal` (never float arithmetic), timestamps with or without `Z`/offset/fractional seconds (naive
ones taken as UTC), the first present key among camelCase/snake_case spellings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any


def to_decimal(value: Any) -> Decimal:
    """Exact Decimal from a str/int/Decimal (floats go through `str`, never arithmetic). ValueError if invalid."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"not an amount: {value!r}")
    if isinstance(value, Decimal):
        result = value
    else:
        try:
            result = Decimal(str(value).strip())
        except InvalidOperation:
            raise ValueError(f"not an amount: {value!r}") from None
    if not result.is_finite():
        raise ValueError(f"not a finite amount: {value!r}")
    return result


def _opt_decimal(value: Any) -> Decimal | None:
    return None if value is None or value == "" else to_decimal(value)


def parse_datetime(value: Any) -> datetime | None:
    """Aware-UTC datetime from an ISO-8601 string (`Z`, offset, naive = UTC, date only = midnight UTC)
    or epoch seconds; None when missing or unparseable."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, date):
        dt = datetime(value.year, value.month, value.day)
    elif isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
        return datetime.fromtimestamp(float(value), tz=UTC)
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith(("z", "Z")):
            text = text[:-1] + "+00:00"
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            return None
    else:
        return None
    if dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def parse_date(value: Any) -> date | None:
    """A calendar date from "2024-10-30" or a full timestamp; None when missing or unparseable."""
    if isinstance(value, str) and len(value.strip()) == 10:
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            return None
    dt = parse_datetime(value)
    return dt.date() if dt else None


def _pick(obj: Mapping[str, Any], *keys: str, default: Any = None) -> Any:
    """The first present, non-null value among `keys`."""
    for key in keys:
        value = obj.get(key)
        if value is not None:
            return value
    return default


def _req(obj: Mapping[str, Any], *keys: str, default: Any = None) -> str:
    """A required identifier: the first present value among `keys` (or `default`); ValueError if none."""
    value = _pick(obj, *keys, default=default)
    if value is None or value == "":
        raise ValueError(f"missing {keys[0]}")
    return str(value)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def items_of(data: Any, *keys: str) -> Iterable[Mapping[str, Any]]:
    """The list inside `data`: `data` itself when it is a list, else the first list under `keys`."""
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        for key in keys:
            value = data.get(key)
            if isinstance(value, list):
                return value
            if isinstance(value, dict):
                return [value]
    return []


_AGREEMENT_RE = re.compile(r"(?:Плат[её]ж\s+по\s+кредиту|Проценты\s+по\s+депозиту)\s*№\s*([\w.-]*\w)", re.IGNORECASE)


def agreement_id_from_text(text: str | None) -> str | None:
    """The agreement id embedded in "Платеж по кредиту №<id>" / "Проценты по депозиту №<id>", else None."""
    if not text or "№" not in text:  # the pattern needs one: most descriptions are done here
        return None
    match = _AGREEMENT_RE.search(text)
    return match.group(1) if match else None
