"""Small proto <-> Python conversions shared by the servicers."""

from __future__ import annotations

import datetime as dt

from google.protobuf.message import Message


def set_timestamp(msg: Message, field: str, value: dt.datetime | None) -> None:
    """Set a google.protobuf.Timestamp field from an aware datetime; leave it unset for None."""
    if value is not None:
        getattr(msg, field).FromDatetime(value.astimezone(dt.UTC))


def optional(msg: Message, field: str) -> str | None:
    """The value of a proto3 `optional` field, or None when unset."""
    return getattr(msg, field) if msg.HasField(field) else None
