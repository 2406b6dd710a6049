"""The language of texts meant for people (explanations, reasons, triggers, error messages).

The app is Russian; texts come in Russian or English by the request's `Accept-Language`, with a
configurable default (`FINPULSE_DEFAULT_LANGUAGE`, `ru`). The gateway negotiates the language once
per request and sends it to the services as gRPC metadata `x-language`; every service's interceptor
puts it in `language_var`, and the service clients pass it on to the next hop, so a service answers
in the language of the person who asked. Codes (statuses, trigger types, error reasons) never depend
on it.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Mapping

LANGUAGES = ("ru", "en")
DEFAULT_LANGUAGE = "ru"
METADATA_KEY = "x-language"

language_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("language", default=None)


@functools.lru_cache(maxsize=256)  # a browser sends the same header on every request
def negotiate(accept_language: str | None, default: str = DEFAULT_LANGUAGE) -> str:
    """The first supported language of an `Accept-Language` header by its q-values (RFC 9110), else
    `default`. `ru-RU` counts as `ru`; `*` means the default; malformed parts are skipped."""
    if not accept_language:
        return default
    best, best_q = None, 0.0
    for part in accept_language[:512].split(","):
        tag, _, params = part.strip().partition(";")
        tag = tag.strip().lower()
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if not 0 < q <= 1:
            continue
        primary = default if tag == "*" else tag.split("-", 1)[0]
        if primary in LANGUAGES and q > best_q:
            best, best_q = primary, q
    return best or default


def current_language(default: str = DEFAULT_LANGUAGE) -> str:
    """The language of the call being served (set from `x-language`), else `default`."""
    return language_var.get() or default


def pick(texts: Mapping[str, str], language: str | None = None) -> str:
    """`texts[language]` (the current one by default), falling back to Russian, then English."""
    lang = language or current_language()
    return texts.get(lang) or texts.get(DEFAULT_LANGUAGE) or texts["en"]


def supported(language: str) -> bool:
    return language in LANGUAGES
