"""Authentication and per-user isolation at the gateway.

Every `/api/...` request carries `Authorization: Bearer <JWT>`. The token is verified with PyJWT:
HS256 with `GatewaySettings.jwt_secret` or RS256 with `GatewaySettings.jwt_public_key` (exactly one algorithm is
accepted, so an RS256 public key can never be used as an HS256 secret), with issuer, audience,
expiry and `sub` required. The user of the request is the token's `sub`.

Isolation is applied to the request message before the call (`bind_user`): its top-level `user_id`
field is filled with the token's user when the request omits it, and a request naming another user
is refused with 403. The user also travels as gRPC metadata `x-user-id` (see
`svclib.clients.ServiceClients`), which the services use to check the owner of resources addressed
by their own ids (an onboarding session, a consent, a payment): another user's resource is NOT_FOUND.

Missing, malformed, badly signed or expired tokens get 401 with a `WWW-Authenticate: Bearer` header
(RFC 6750) saying why. For local development only, `FINPULSE_AUTH_DEV_TRUST_USER=1` lets a request
without an `Authorization` header act as the user it names (the seed frontend sends none); a token
that is sent is still verified.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import time
from collections.abc import Callable
from typing import Any

import grpc
import jwt
import redis.asyncio as aioredis
from aiohttp import web

from gateway.errors import ApiError
from gateway.settings import GatewaySettings
from svclib import localsecrets
from svclib.config import ConfigError
from svclib.ratelimit import RateLimiter

#: Clock skew tolerated on `exp`, `nbf` and `iat`.
LEEWAY = dt.timedelta(seconds=30)
#: Longest accepted user id (the services' own limit on `user_id`).
MAX_USER_ID = 128
REALM = "finpulse"
#: Verified tokens remembered by one gateway process.
VERIFIED_KEPT = 10_000


class Unauthenticated(ApiError):
    """401 with the RFC 6750 challenge."""

    def __init__(self, message: str, error: str | None = "invalid_token", reason: str = "TOKEN_INVALID"):
        challenge = f'Bearer realm="{REALM}"'
        if error:
            description = message.replace('"', "'")
            challenge += f', error="{error}", error_description="{description}"'
        super().__init__(
            grpc.StatusCode.UNAUTHENTICATED, message, headers={"WWW-Authenticate": challenge}, reason=reason
        )


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who a request acts for. `user_id` is None only in development mode without a token."""

    user_id: str | None
    authenticated: bool
    token: str | None = dataclasses.field(default=None, repr=False)  # the verified bearer token


_NOBODY = Principal(None, authenticated=False)


class Authenticator:
    """Verifies bearer tokens against the configured key."""

    def __init__(self, settings: GatewaySettings, clock: Callable[[], float] = time.time):
        """`clock`: Unix seconds, until which a verified token is remembered (a test passes its own)."""
        self._clock = clock
        if settings.jwt_secret and settings.jwt_public_key:
            raise ConfigError(["FINPULSE_JWT_SECRET and FINPULSE_JWT_PUBLIC_KEY: set one of them, not both"])
        if settings.jwt_public_key:
            self.algorithm, self.key = "RS256", settings.jwt_public_key
        elif settings.jwt_secret:
            self.algorithm, self.key = "HS256", settings.jwt_secret
        elif settings.auth_dev_trust_user:
            self.algorithm, self.key = None, None  # tokens cannot be verified: only header-less requests pass
        else:
            raise ConfigError(
                [
                    "FINPULSE_JWT_SECRET or FINPULSE_JWT_PUBLIC_KEY: the gateway needs a key to verify "
                    "bearer tokens (or FINPULSE_AUTH_DEV_TRUST_USER=1 for local development)"
                ]
            )
        self.issuer = settings.jwt_issuer
        self.audience = settings.jwt_audience
        self.dev_trust_user = settings.auth_dev_trust_user
        self._verified: dict[str, tuple[str, float]] = {}  # token -> (sub, exp + leeway), oldest first
        self._principals: dict[str, tuple[Principal, float]] = {}  # Authorization header -> (principal, as above)

    def principal(self, request: web.Request, *, anonymous: bool = False) -> Principal:
        """The principal of `request`, or Unauthenticated. With `anonymous`, a request without an
        Authorization header passes as nobody (the local login, which names its user and gets a token)."""
        header = request.headers.get("Authorization")
        if header is None:
            if self.dev_trust_user or anonymous:
                return _NOBODY
            raise Unauthenticated("an Authorization: Bearer token is required", error=None, reason="TOKEN_MISSING")
        # The principal of a header seen before, until its token expires (every request pays this lookup).
        known = self._principals.get(header)
        if known is not None and self._clock() < known[1]:
            return known[0]
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("the Authorization header must be 'Bearer <token>'", error="invalid_request")
        token = token.strip()
        principal = Principal(self.verify(token), authenticated=True, token=token)
        self._principals.pop(header, None)
        self._principals[header] = (principal, self._verified[token][1])
        if len(self._principals) > VERIFIED_KEPT:
            self._principals.pop(next(iter(self._principals)))
        return principal

    def verify(self, token: str) -> str:
        """The user id (`sub`) of a valid token.

        A token that verified is remembered until its expiry (bounded, oldest forgotten first): a
        client sends the same token many times, and its signature and claims cannot change.
        """
        known = self._verified.get(token)
        if known is not None and self._clock() < known[1]:
            return known[0]
        self._verified.pop(token, None)
        subject, expires = self._verify(token)
        self._verified[token] = (subject, expires + LEEWAY.total_seconds())
        if len(self._verified) > VERIFIED_KEPT:
            self._verified.pop(next(iter(self._verified)))
        return subject

    def _verify(self, token: str) -> tuple[str, float]:
        if self.key is None:
            raise Unauthenticated("this gateway has no token key configured")
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=[self.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY,
                options={"require": ["exp", "sub", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token has expired", reason="TOKEN_EXPIRED") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated("the token's signature is not valid") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(f"the token is not for this audience ({self.audience})") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated(f"the token is not from the expected issuer ({self.issuer})") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"the token has no '{exc.claim}' claim") from None
        except jwt.InvalidAlgorithmError:
            raise Unauthenticated(f"the token must be signed with {self.algorithm}") from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated("the token is not valid yet") from None
        except jwt.InvalidTokenError:
            raise Unauthenticated("the token is malformed") from None
        subject = claims.get("sub")
        if (
            not isinstance(subject, str)
            or not subject.strip()
            or len(subject) > MAX_USER_ID
            or any(ord(ch) < 32 or ord(ch) == 127 for ch in subject)
        ):
            raise Unauthenticated("the token's 'sub' is not a valid user id")
        return subject, float(claims["exp"])


class Gatekeeper:
    """What every routed request passes first: authentication, then the per-user rate limit.

    The limit (`GatewaySettings.user_rate_limit` per second, `user_rate_burst` at once) is a GCRA bucket per
    user in Redis, shared by every gateway replica; over it the answer is 429 with `Retry-After`.
    Development-mode requests without a token are limited per client address. When Redis is down
    each replica applies the limit on its own.
    """

    def __init__(self, settings: GatewaySettings, redis: aioredis.Redis | None):
        self.authenticator = Authenticator(settings)
        # Slots are leased in batches (one Redis call per batch): a quarter of the burst, at most 50 or
        # 50 ms worth of the rate, whichever is more.
        lease = min(settings.user_rate_burst // 4, max(50, int(settings.user_rate_limit * 0.05)))
        self.limiter = RateLimiter(
            redis,
            settings.user_rate_limit,
            burst=settings.user_rate_burst,
            prefix=settings.redis_prefix + "rl:user:",
            lease=max(1, lease),
        )

    def admit_now(self, request: web.Request, *, anonymous: bool = False) -> Principal | None:
        """`admit` when it can decide without waiting (the caller's slots are leased here, or it was just
        refused): the principal, or the 401/429; None when the rate limit must ask Redis first."""
        principal = self.authenticator.principal(request, anonymous=anonymous)
        wait = self.limiter.admit_now(principal.user_id if principal.user_id is not None else f"addr:{request.remote}")
        if wait is None:
            return None
        if wait > 0:
            raise _rate_limited(wait)
        return principal

    async def admit(self, request: web.Request, *, anonymous: bool = False) -> Principal:
        """The principal of `request` if it may be served now: 401 without a valid token, 429 over the
        caller's rate limit."""
        principal = self.authenticator.principal(request, anonymous=anonymous)
        key = principal.user_id if principal.user_id is not None else f"addr:{request.remote}"
        wait = await self.limiter.admit(key)
        if wait > 0:
            raise _rate_limited(wait)
        return principal


def _rate_limited(wait: float) -> ApiError:
    retry_after = max(1, math.ceil(wait))
    return ApiError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"too many requests; retry after {retry_after} s",
        headers={"Retry-After": str(retry_after)},
        reason="RATE_LIMITED",
        retry_after=retry_after,
    )


def bind_user(message: Any, principal: Principal) -> str | None:
    """Apply the principal to the request message; the user the call acts for.

    A message with a top-level `user_id` gets the token's user when it names none, and a request
    naming another user is refused (403). In development mode without a token, the named user is
    trusted.
    """
    field = message.DESCRIPTOR.fields_by_name.get("user_id")
    named = message.user_id if field is not None else ""
    if principal.user_id is None:  # development mode, no token
        return named or None
    if field is None:
        return principal.user_id
    if not named:
        message.user_id = principal.user_id
    elif named != principal.user_id:
        raise ApiError(
            grpc.StatusCode.PERMISSION_DENIED,
            "this token's user may not act for another user (user_id does not match the token)",
            reason="USER_MISMATCH",
            metadata={"field": "user_id"},
        )
    return principal.user_id


def mint_token(
    settings: GatewaySettings,
    user_id: str,
    *,
    ttl: dt.timedelta = dt.timedelta(hours=12),
    now: dt.datetime | None = None,
) -> str:
    """An HS256 token for `user_id`, signed with the configured secret (local use and tests)."""
    if not settings.jwt_secret:
        raise ValueError("minting tokens needs FINPULSE_JWT_SECRET (HS256)")
    issued = now or dt.datetime.now(dt.UTC)
    claims = {
        "sub": user_id,
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "iat": issued,
        "exp": issued + ttl,
    }
    return jwt.encode(claims, settings.jwt_secret, algorithm="HS256")


def new_secret() -> str:
    """A fresh HS256 secret (256 bits, URL-safe text)."""
    return localsecrets.new_secret()


def local_jwt_secret(data_dir: str) -> str:
    """The local HS256 secret `make up` signs with, created once under `data_dir` (owner-only)."""
    return localsecrets.local_secret(data_dir, "jwt-secret")
