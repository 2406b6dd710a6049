"""`POST /api/auth/login` (OnboardingService.Login): where bearer tokens come from, per mode.

onboarding_svc stores the user's profile and answers it; the token is the gateway's business, since
only the gateway holds the key that verifies tokens:

- **Local mode** (`FINPULSE_ENV=local`) with an HS256 secret (`make up` always has one): the request
  needs no token, and the gateway signs one for the user the request names, exactly the kind
  `make token` prints (12 hours). This is what lets the FinPulse web app, which sends no token, and a
  developer's curl sign in. A request that carries a token must name that token's user.
- **Production** (`FINPULSE_ENV=production`): the gateway never mints a token. Tokens come from the
  identity provider whose key the gateway verifies with (`FINPULSE_JWT_PUBLIC_KEY` or a secret shared
  with it): the request must carry such a token, for the same user it names; the answer is the
  profile and that same token. Without one it is 401 saying where tokens come from, so the endpoint
  can never hand out another user's token.
"""

from __future__ import annotations

import datetime as dt

import grpc

from gateway.auth import Principal, Unauthenticated, mint_token
from gateway.errors import ApiError
from gateway.settings import GatewaySettings

#: The RPC behind POST /api/auth/login.
LOGIN_METHOD = "/finpulse.onboarding.v1.OnboardingService/Login"
#: Lifetime of a token signed at login (as `make token`).
TOKEN_TTL = dt.timedelta(hours=12)


class LoginPolicy:
    """Admission and the token of the login route."""

    def __init__(self, settings: GatewaySettings):
        self.settings = settings
        self.mints = settings.is_local and bool(settings.jwt_secret)

    def check(self, principal: Principal) -> None:
        """Refuse what can never get a token, before any service is called."""
        if principal.authenticated or self.mints:
            return
        if self.settings.is_local:
            raise ApiError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "this local gateway has no secret to sign tokens with: set FINPULSE_JWT_SECRET "
                "(make up does) or send a token",
                reason="TOKEN_SIGNING_UNAVAILABLE",
            )
        raise Unauthenticated(
            f"sign in with the identity provider (issuer {self.settings.jwt_issuer!r}) and send its token as "
            "'Authorization: Bearer <token>': in production this gateway never issues tokens",
            error=None,
            reason="TOKEN_MISSING",
        )

    def complete(self, reply, principal: Principal, user_id: str, now: dt.datetime | None = None) -> None:
        """Put the token in the login reply: the one presented (identity provider, or a token this gateway
        signed), else a new one signed here (local mode)."""
        if principal.authenticated and principal.token:
            reply.token = principal.token
            return
        issued = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)  # JWT times are whole seconds
        reply.token = mint_token(self.settings, user_id, ttl=TOKEN_TTL, now=issued)
        reply.token_expires_at.FromDatetime(issued + TOKEN_TTL)
