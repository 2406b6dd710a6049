"""Dates: "today" of a timestamp (its UTC date) and month arithmetic clamped to the month's length."""

from __future__ import annotations

import calendar
import datetime as dt


def today_of(now: dt.datetime) -> dt.date:
    if now.tzinfo is None:
        return now.date()
    return now.astimezone(dt.UTC).date()


def month_day(year: int, month: int, day: int) -> dt.date:
    """`day` of the given month (months past 12 or below 1 roll over), clamped to the month's length."""
    year, month = year + (month - 1) // 12, (month - 1) % 12 + 1
    return dt.date(year, month, min(max(day, 1), calendar.monthrange(year, month)[1]))


def add_months(value: dt.date, months: int, day: int | None = None) -> dt.date:
    """`value` moved by whole months, on `day` (default `value.day`), clamped to the month's length."""
    return month_day(value.year, value.month + months, value.day if day is None else day)
