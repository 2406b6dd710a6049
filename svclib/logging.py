"""JSON logs, one schema for every process, carrying the current request id.

Each line: {"ts", "level", "logger", "service", "request_id", "msg", ...extra}. The request id lives
in a context variable set by the gRPC server interceptor (from `x-request-id` metadata) or by the
gateway (from the `X-Request-Id` header or a new one), so every log line of one request carries it.
With tracing on (svclib.tracing), a line written while a span is current also has "trace_id" and
"span_id" (hex, as the trace backend shows them); with it off, neither field is there.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import itertools
import json
import logging
import secrets
import sys
from collections.abc import Callable

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
user_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("user_id", default=None)

#: Set by svclib.tracing when tracing is on: (trace id, span id) of the current span, or None.
trace_ids: Callable[[], tuple[str, str] | None] | None = None

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


_ID_PREFIX = secrets.token_hex(10)  # per process: ids of different processes never collide
_id_counter = itertools.count(1)


def new_request_id() -> str:
    """A new 32-hex-digit request id: a random per-process prefix and a counter (cheap on every
    request; ids need to be unique, not secret)."""
    return f"{_ID_PREFIX}{next(_id_counter):012x}"


def current_request_id() -> str | None:
    return request_id_var.get()


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "service": self.service,
            "request_id": request_id_var.get(),
            "msg": record.getMessage(),
        }
        user_id = user_id_var.get()
        if user_id:
            entry["user_id"] = user_id
        if trace_ids is not None:
            ids = trace_ids()
            if ids is not None:
                entry["trace_id"], entry["span_id"] = ids
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def setup_logging(service: str, level: str = "INFO") -> None:
    """Route every logger of the process to one JSON handler on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's own access log is replaced by ours.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
