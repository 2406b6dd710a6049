"""Who is calling a service, and for which user: short-lived statements signed inside the suite.

A service port is reachable by whatever shares its network; a network position is not an identity.
So every call between the suite's processes carries gRPC metadata
`authorization: Bearer <statement>`, a JWT (HS256) signed with the suite's internal secret
(`FINPULSE_INTERNAL_SECRET`, which only the suite's processes hold) saying:

- `caller`: the process that makes the call (`gateway`, `onboarding`, `consent`, `sync`, `dashboard`,
  or `operator` for a person debugging with grpcurl);
- `user`: the user the call acts for, when it acts for one (the gateway's authenticated user, passed
  on hop by hop; absent for a service's own work, such as a sync job's background calls);
- `aud` `finpulse-services`, and a lifetime of 60 seconds (`iat`, `exp`).

Every service's interceptor (svclib.server) verifies the statement before the servicer runs: no
statement, a bad signature, an expired one: UNAUTHENTICATED. The acting user is the statement's
`user` and nothing else: an `x-user-id` header (how the user travelled before) is ignored, so a forged
one changes nothing. Health checks and reflection stay open for probes and grpcurl.

That is the one identity path: the gateway binds its authenticated user to the request once
(gateway.auth.bind_user) and signs it into the statement; each service's interceptor verifies the
statement and checks the request's `user_id` against it once (svclib.server). A servicer that needs
the user for a request addressed otherwise (e.g. a session by its id) reads `acting_user()` and
passes it to its domain as an argument; nothing below the servicer reads it from the context.

Signing and verifying cost microseconds, and both are cached: a signer reuses a user's statement
until 10 seconds before it expires; a verifier remembers statements it verified until they expire.
Mutual TLS would authenticate the peer processes too; it is left to the platform (a service mesh),
since the statement already proves the caller holds the suite's secret.
"""

from __future__ import annotations

import collections
import dataclasses
import time

import jwt

from svclib.logging import user_id_var

METADATA_KEY = "authorization"
AUDIENCE = "finpulse-services"
LIFETIME = 60.0  # seconds
OPERATOR = "operator"  # a person debugging with grpcurl (`make grpc-token`)
OPERATOR_LIFETIME = 3600.0
REUSE_MARGIN = 10.0  # a cached statement is renewed this long before it expires
LEEWAY = 5.0  # clock skew tolerated between processes
MIN_SECRET = 32
#: Methods anyone may call: the standard health and reflection services.
OPEN_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
_KEPT = 10_000


class InvalidStatement(Exception):
    """The call's statement is missing or cannot be verified; the message says why (for the caller)."""


@dataclasses.dataclass(frozen=True)
class Caller:
    """A verified caller: the process that called and the user it acts for (None: its own work)."""

    name: str
    user: str | None


class Signer:
    """Makes the statements a process attaches to its outgoing calls."""

    def __init__(self, secret: str, caller: str, *, clock=time.time, lifetime: float = LIFETIME):
        if len(secret) < MIN_SECRET:
            raise ValueError(f"the internal secret must be at least {MIN_SECRET} characters")
        self._secret = secret
        self.caller = caller
        self._clock = clock
        self.lifetime = lifetime
        self._cache: collections.OrderedDict[str | None, tuple[str, float]] = collections.OrderedDict()

    def statement(self, user: str | None) -> str:
        now = self._clock()
        cached = self._cache.get(user)
        if cached is not None and now < cached[1] - REUSE_MARGIN:
            return cached[0]
        issued = int(now)
        claims = {"caller": self.caller, "aud": AUDIENCE, "iat": issued, "exp": issued + int(self.lifetime)}
        if user:
            claims["user"] = user
        token = jwt.encode(claims, self._secret, algorithm="HS256")
        self._cache[user] = (token, issued + self.lifetime)
        self._cache.move_to_end(user)
        if len(self._cache) > _KEPT:
            self._cache.popitem(last=False)
        return token

    def metadata(self, user: str | None) -> tuple[str, str]:
        return METADATA_KEY, "Bearer " + self.statement(user)


class Verifier:
    """Checks the statements of incoming calls."""

    def __init__(self, secret: str, *, clock=time.time):
        if len(secret) < MIN_SECRET:
            raise ValueError(f"the internal secret must be at least {MIN_SECRET} characters")
        self._secret = secret
        self._clock = clock
        self._known: collections.OrderedDict[str, tuple[Caller, float]] = collections.OrderedDict()

    def verify(self, header: str | None) -> Caller:
        if not header:
            raise InvalidStatement(
                "this service accepts only calls signed inside the suite: send 'authorization: Bearer <internal token>'"
            )
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise InvalidStatement("the authorization metadata must be 'Bearer <internal token>'")
        token = token.strip()
        now = self._clock()
        known = self._known.get(token)
        if known is not None and now < known[1] + LEEWAY:
            return known[0]
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                audience=AUDIENCE,
                leeway=LEEWAY,
                options={"require": ["exp", "iat", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidStatement("the internal token has expired") from None
        except jwt.InvalidTokenError:
            raise InvalidStatement("the internal token is not valid (bad signature, audience or form)") from None
        name, user = claims.get("caller"), claims.get("user")
        if not isinstance(name, str) or not name or (user is not None and (not isinstance(user, str) or not user)):
            raise InvalidStatement("the internal token names no caller")
        longest = OPERATOR_LIFETIME if name == OPERATOR else LIFETIME
        if float(claims["exp"]) - float(claims["iat"]) > longest + LEEWAY:
            raise InvalidStatement("the internal token lives too long")
        caller = Caller(name, user)
        self._known[token] = (caller, float(claims["exp"]))
        if len(self._known) > _KEPT:
            self._known.popitem(last=False)
        return caller


def acting_user() -> str | None:
    """The user of the verified statement of the RPC being handled (set by the interceptor, which
    verified it); None for a call made for no user."""
    return user_id_var.get()


def is_open(method: str) -> bool:
    """Health and reflection: callable without a statement."""
    return method.startswith(OPEN_PREFIXES)


def main(argv: list[str] | None = None) -> int:
    """`python -m svclib.internal_auth [--user U]` (`make grpc-token`): a statement for grpcurl, valid
    one hour, signed with this machine's suite secret (FINPULSE_INTERNAL_SECRET, else the local one)."""
    import argparse
    import sys

    from svclib.config import ConfigError, load_settings

    parser = argparse.ArgumentParser(prog="python -m svclib.internal_auth", description=main.__doc__)
    parser.add_argument("--user", help="the user the calls act for (omit for a service's own view)")
    args = parser.parse_args(argv)
    try:
        secret = load_settings().resolved_internal_secret()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(Signer(secret, OPERATOR, lifetime=OPERATOR_LIFETIME).statement(args.user or None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
