"""The gateway's section of the settings, next to the common part (`svclib.config.Settings`).

`GatewaySettings` is the common settings plus what only the gateway reads: where it listens, the CORS
origins, how bearer tokens are verified (or, in development, trusted), the per-user rate limit and
where its metrics are served. `load_gateway_settings()` reads both from FINPULSE_* variables;
`with_gateway_section(settings, environ)` adds the section to common settings already read (the
launcher, which runs the gateway and signs local tokens).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

from svclib.config import ConfigError, EnvReader, Settings, load_section, load_settings


@dataclasses.dataclass(frozen=True)
class GatewaySettings(Settings):
    """The common settings and the gateway's section."""

    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8000
    cors_origins: tuple[str, ...] = ()
    # Bearer JWTs signed with `jwt_secret` (HS256) or verified with `jwt_public_key` (RS256, PEM);
    # issuer and audience are checked, and the user is the token's `sub`.
    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    jwt_issuer: str = "finpulse"
    jwt_audience: str = "finpulse-api"
    # Development only: a request without a token acts as the user it names (a trusted local frontend).
    auth_dev_trust_user: bool = False
    user_rate_limit: float = 20.0  # requests per second per user, shared through Redis
    user_rate_burst: int = 40  # requests a user may send at once above that rate
    # The metrics on their own address (not the public port); None: GET /metrics on the public port.
    gateway_metrics_addr: str | None = None


def read_gateway_section(r: EnvReader) -> dict[str, Any]:
    """The gateway's fields of `GatewaySettings`, read and checked."""
    env = r.text("FINPULSE_ENV", "local")
    cors_default = "http://localhost:3000" if env == "local" else ""
    cors = tuple(o.strip() for o in (r.text("FINPULSE_CORS_ORIGINS", cors_default) or "").split(",") if o.strip())
    for origin in cors:
        if urlparse(origin).scheme not in ("http", "https"):
            r.problems.append(f"FINPULSE_CORS_ORIGINS: {origin!r} is not an http(s) origin")
    jwt_public_key = r.text("FINPULSE_JWT_PUBLIC_KEY")
    key_file = r.text("FINPULSE_JWT_PUBLIC_KEY_FILE")
    if key_file is not None:
        try:
            with open(key_file, encoding="ascii") as f:
                jwt_public_key = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            r.problems.append(f"FINPULSE_JWT_PUBLIC_KEY_FILE={key_file!r}: cannot read it ({exc.__class__.__name__})")
    if jwt_public_key is not None and "-----BEGIN PUBLIC KEY-----" not in jwt_public_key:
        r.problems.append("FINPULSE_JWT_PUBLIC_KEY: expected a PEM public key (-----BEGIN PUBLIC KEY-----)")
    jwt_secret = r.text("FINPULSE_JWT_SECRET")
    if jwt_secret is not None and len(jwt_secret) < 32:
        r.problems.append("FINPULSE_JWT_SECRET: must be at least 32 characters (HS256 wants a 256-bit key)")
    dev_trust = r.flag("FINPULSE_AUTH_DEV_TRUST_USER", False)
    if dev_trust and env == "production":
        r.problems.append("FINPULSE_AUTH_DEV_TRUST_USER: a development switch, refused when FINPULSE_ENV=production")
    return dict(
        # Local runs listen on loopback only; containers (production) on every interface.
        gateway_host=r.text("FINPULSE_GATEWAY_HOST", "127.0.0.1" if env == "local" else "0.0.0.0"),
        gateway_port=r.integer("FINPULSE_GATEWAY_PORT", 8000, 1, 65535),
        cors_origins=cors,
        jwt_secret=jwt_secret,
        jwt_public_key=jwt_public_key,
        jwt_issuer=r.text("FINPULSE_JWT_ISSUER", "finpulse"),
        jwt_audience=r.text("FINPULSE_JWT_AUDIENCE", "finpulse-api"),
        auth_dev_trust_user=dev_trust,
        user_rate_limit=r.number("FINPULSE_USER_RATE_LIMIT", 20.0, 0.1, 100000.0),
        user_rate_burst=r.integer("FINPULSE_USER_RATE_BURST", 40, 1, 100000),
        gateway_metrics_addr=(
            r.addr("FINPULSE_GATEWAY_METRICS_ADDR", "") if r.text("FINPULSE_GATEWAY_METRICS_ADDR") is not None else None
        ),
    )


def with_section(settings: Settings, section: dict[str, Any]) -> GatewaySettings:
    common = {field.name: getattr(settings, field.name) for field in dataclasses.fields(Settings)}
    return GatewaySettings(**common, **section)


def with_gateway_section(settings: Settings, environ: Mapping[str, str] | None = None) -> GatewaySettings:
    """`settings` (common, already read) with the gateway's section read from `environ`."""
    if isinstance(settings, GatewaySettings):
        return settings
    return with_section(settings, load_section(read_gateway_section, environ))


def load_gateway_settings(environ: Mapping[str, str] | None = None) -> GatewaySettings:
    """The common settings and the gateway's section; `ConfigError` lists every problem of both."""
    problems = []
    try:
        settings = load_settings(environ)
    except ConfigError as exc:
        problems, settings = exc.problems, None
    try:
        section = load_section(read_gateway_section, environ)
    except ConfigError as exc:
        problems = problems + exc.problems
    if problems:
        raise ConfigError(problems)
    return with_section(settings, section)
