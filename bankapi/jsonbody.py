"""A bank's JSON object kept as its text until someone reads it (`JSONObject`), so a typed decoder
(bankapi/wire.py) can decode the text straight into structs and no dict is ever built.

`JSONObject` is a read-only Mapping: the first key access decodes the text exactly as the client always
did (`json.loads(..., parse_float=Decimal)`: exact decimals), so every tolerant `from_api` parser and
every error mapping sees the same values as from a dict. `decode_json(text)` is what the transport
gets for a body (through `bankapi.errors.decode_body`): None when empty, a `JSONObject` for valid
JSON whose top level is an object, otherwise the decoded value, or the text itself when it is not
JSON. Validity is checked up front (msgspec skims the text without building objects), so a body that
is not JSON is still the raw text, never a Mapping that fails later; anything msgspec refuses
(`NaN`, lone surrogates…) goes the old way through `json.loads`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any

import msgspec

_skim = msgspec.json.Decoder(msgspec.Raw).decode


class JSONObject(Mapping[str, Any]):
    """A JSON object held as text (`text`), decoded on first access (`value`, a dict)."""

    __slots__ = ("_value", "text")

    def __init__(self, text: str, value: dict[str, Any] | None = None) -> None:
        self.text = text
        self._value = value

    @property
    def decoded(self) -> bool:
        return self._value is not None

    @property
    def value(self) -> dict[str, Any]:
        if self._value is None:
            value = json.loads(self.text, parse_float=Decimal)
            if not isinstance(value, dict):  # only made for validated object texts
                raise TypeError(f"not a JSON object: {type(value).__name__}")
            self._value = value
        return self._value

    def __getitem__(self, key: str) -> Any:
        return self.value[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.value.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self.value

    def __iter__(self) -> Iterator[str]:
        return iter(self.value)

    def __len__(self) -> int:
        return len(self.value)

    def __repr__(self) -> str:
        return repr(self.value)


def plain(value: Any) -> Any:
    """`value` with a `JSONObject` replaced by its dict (for code that needs a real dict: json.dumps…)."""
    return value.value if isinstance(value, JSONObject) else value


def decode_json(text: str) -> Any:
    """None when blank; a `JSONObject` for a valid JSON object; the decoded value for other valid JSON
    (exact decimals); the text itself when it is not JSON."""
    if not text.strip():
        return None
    if text.lstrip()[:1] == "{":
        try:
            _skim(text)
        except msgspec.DecodeError:
            pass  # invalid, or JSON that only the standard library accepts (NaN…): decided below
        else:
            return JSONObject(text)
    try:
        return json.loads(text, parse_float=Decimal)
    except ValueError:
        return text
