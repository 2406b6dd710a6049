"""The banks' HTTP conventions (they are FastAPI apps): `{"detail": ...}` errors, 422 validation lists.

Handlers read the query string or a JSON body through `Fields`, which collects every problem as
FastAPI (pydantic v2) reports it, `{"type", "loc", "msg", "input"}`, and raises them together.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from aiohttp import web


class ApiError(Exception):
    """An answer `{"detail": detail}` with an HTTP status, raised anywhere below a handler."""

    def __init__(self, status: int, detail: Any, headers: Mapping[str, str] | None = None):
        super().__init__(status, detail)
        self.status = status
        self.detail = detail
        self.headers = dict(headers or {})


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=functools.partial(json.dumps, ensure_ascii=False))


def error_response(status: int, detail: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    response = json_response({"detail": detail}, status)
    response.headers.update(headers or {})
    return response


def _either(choices: Sequence[str]) -> str:
    quoted = [f"'{choice}'" for choice in choices]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


class Fields:
    """Typed reads of one object (query string or JSON body); problems become one 422 at `done()`."""

    def __init__(
        self,
        values: Mapping[str, Any],
        loc: Sequence[str | int] = ("query",),
        errors: list[dict[str, Any]] | None = None,
        absent: bool = False,
    ):
        self._values = values
        self._loc = tuple(loc)
        self._absent = absent  # a missing parent object: already reported, its fields are not
        self.errors: list[dict[str, Any]] = [] if errors is None else errors

    def _fail(self, name: str | int, kind: str, msg: str, value: Any, **ctx: Any) -> None:
        error: dict[str, Any] = {"type": kind, "loc": [*self._loc, name], "msg": msg, "input": value}
        if ctx:
            error["ctx"] = ctx
        self.errors.append(error)

    def _get(self, name: str | int, required: bool) -> Any:
        value = self._values.get(name)
        if value is None and required and not self._absent:
            self._fail(name, "missing", "Field required", None)
        return value

    def text(
        self,
        name: str | int,
        *,
        required: bool = False,
        default: str | None = None,
        choices: Sequence[str] | None = None,
    ) -> str | None:
        value = self._get(name, required)
        if value is None:
            return default
        if not isinstance(value, str):
            self._fail(name, "string_type", "Input should be a valid string", value)
            return default
        if choices is not None and value not in choices:
            self._fail(name, "enum", f"Input should be {_either(choices)}", value, expected=_either(choices))
            return default
        return value

    def integer(self, name: str, *, default: int, ge: int | None = None, le: int | None = None) -> int:
        value = self._get(name, False)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            self._fail(name, "int_type", "Input should be a valid integer", value)
            return default
        try:
            number = int(value)
        except ValueError:
            self._fail(
                name, "int_parsing", "Input should be a valid integer, unable to parse string as an integer", value
            )
            return default
        if ge is not None and number < ge:
            self._fail(name, "greater_than_equal", f"Input should be greater than or equal to {ge}", value, ge=ge)
            return default
        if le is not None and number > le:
            self._fail(name, "less_than_equal", f"Input should be less than or equal to {le}", value, le=le)
            return default
        return number

    def decimal(self, name: str, *, required: bool = False, positive: bool = False) -> Decimal | None:
        value = self._get(name, required)
        if value is None:
            return None
        try:
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise InvalidOperation
            number = Decimal(str(value))
            if not number.is_finite():
                raise InvalidOperation
        except InvalidOperation:
            self._fail(name, "decimal_parsing", "Input should be a valid decimal", value)
            return None
        if positive and number <= 0:
            self._fail(name, "greater_than", "Input should be greater than 0", value, gt=0)
            return None
        return number

    def flag(self, name: str, *, required: bool = False, default: bool = False) -> bool:
        value = self._get(name, required)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        self._fail(name, "bool_parsing", "Input should be a valid boolean", value)
        return default

    def text_list(self, name: str, *, required: bool = False) -> list[str] | None:
        value = self._get(name, required)
        if value is None:
            return None
        if not isinstance(value, list):
            self._fail(name, "list_type", "Input should be a valid list", value)
            return None
        items = Fields(dict(enumerate(value)), (*self._loc, name), self.errors)
        texts = [items.text(index, required=True) for index in range(len(value))]
        return value if all(isinstance(text, str) for text in texts) else None

    def moment(self, name: str) -> datetime | None:
        """An ISO 8601 date-time (Z, an offset, or none: UTC) or date; aware, in UTC."""
        value = self._get(name, False)
        if value is None:
            return None
        try:
            moment = datetime.fromisoformat(value) if isinstance(value, str) else None
        except ValueError:
            moment = None
        if moment is None:
            self._fail(name, "datetime_parsing", "Input should be a valid datetime", value)
            return None
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)

    def nested(self, name: str) -> Fields:
        """The fields of a required sub-object."""
        value = self._get(name, True)
        if value is not None and not isinstance(value, dict):
            self._fail(name, "model_type", "Input should be a valid dictionary or object to extract fields from", value)
        present = isinstance(value, dict)
        return Fields(value if present else {}, (*self._loc, name), self.errors, absent=not present)

    def done(self) -> None:
        if self.errors:
            raise ApiError(422, self.errors)


def body_error(kind: str, msg: str, value: Any, loc: Sequence[str | int] = ("body",)) -> ApiError:
    return ApiError(422, [{"type": kind, "loc": list(loc), "msg": msg, "input": value}])


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body (422 when absent, malformed or not an object)."""
    raw = await request.read()
    if not raw.strip():
        raise body_error("missing", "Field required", None)
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise body_error("json_invalid", "JSON decode error", {}, ("body", getattr(exc, "pos", 0))) from None
    if not isinstance(body, dict):
        raise body_error(
            "model_attributes_type", "Input should be a valid dictionary or object to extract fields from", body
        )
    return body
