"""HS256 JSON Web Tokens with the standard library, as the banks issue theirs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any


class InvalidToken(Exception):
    """Malformed, wrongly signed or expired."""


def _encode_part(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _decode_part(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(signing_input: str, secret: bytes) -> bytes:
    return hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()


_HEADER = _encode_part(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())


def encode(claims: dict[str, Any], secret: bytes) -> str:
    signing_input = f"{_HEADER}.{_encode_part(json.dumps(claims, separators=(',', ':')).encode())}"
    return f"{signing_input}.{_encode_part(_sign(signing_input, secret))}"


def decode(token: str, secret: bytes, now: float | None = None) -> dict[str, Any]:
    """The claims of a token signed with `secret` whose `exp` is still ahead of `now`."""
    try:
        header_part, claims_part, signature_part = token.split(".")
        header = json.loads(_decode_part(header_part))
        claims = json.loads(_decode_part(claims_part))
        signature = _decode_part(signature_part)
    except ValueError:  # wrong number of parts, bad base64, bad JSON (all ValueErrors)
        raise InvalidToken("malformed token") from None
    if not isinstance(header, dict) or header.get("alg") != "HS256" or not isinstance(claims, dict):
        raise InvalidToken("unsupported token")
    if not hmac.compare_digest(signature, _sign(f"{header_part}.{claims_part}", secret)):
        raise InvalidToken("bad signature")
    expires = claims.get("exp")
    if isinstance(expires, bool) or not isinstance(expires, (int, float)):
        raise InvalidToken("no expiry")
    if expires <= (time.time() if now is None else now):
        raise InvalidToken("expired")
    return claims
