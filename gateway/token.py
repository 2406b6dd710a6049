"""`python -m gateway.token <user_id> [--hours N]` (or `make token USER_ID=<user_id>`): print a bearer token.

For local use and scripts. Where the token comes from, first that applies:
1. `FINPULSE_JWT_SECRET` is set: signed with it (`--hours` sets its lifetime).
2. A local suite answers on `FINPULSE_GATEWAY_PORT` (8000) of this machine: its login endpoint signs
   it (12 hours), so the token always matches the running suite's secret, whatever data dir it uses.
3. Otherwise: signed with the secret `make up` keeps in `FINPULSE_DATA_DIR` (`./.finpulse`), the one a
   suite started later with the same data dir will use; a note on stderr says so.
Deployments that verify RS256 tokens, and production, get tokens from their identity provider.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import sys
import urllib.error
import urllib.request

from gateway.auth import local_jwt_secret, mint_token
from gateway.settings import GatewaySettings, load_gateway_settings
from svclib.config import ConfigError


def from_running_gateway(settings: GatewaySettings, user_id: str, timeout: float = 2.0) -> str | None:
    """A token from the login endpoint of the suite running on this machine, or None when none answers."""
    host = "127.0.0.1" if settings.gateway_host in ("0.0.0.0", "::", "") else settings.gateway_host
    request = urllib.request.Request(
        f"http://{host}:{settings.gateway_port}/api/auth/login",
        data=json.dumps({"user_id": user_id}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return json.loads(answer.read())["token"] or None
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")[:300]
        raise SystemExit(f"the running gateway refused the login ({exc.code}): {detail}") from None
    except (OSError, ValueError, KeyError):
        return None  # nothing listens there (or not a FinPulse gateway)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("user_id")
    parser.add_argument("--hours", type=float, default=12.0, help="validity when signed here (default 12)")
    args = parser.parse_args(argv)
    try:
        settings = load_gateway_settings()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if not 0 < args.hours <= 24 * 30:
        print("--hours must be between 0 and 720", file=sys.stderr)
        return 2
    if not settings.jwt_secret:
        if settings.jwt_public_key or not settings.is_local:
            print(
                "this deployment verifies RS256 tokens or has no FINPULSE_JWT_SECRET: "
                "tokens come from its identity provider",
                file=sys.stderr,
            )
            return 2
        token = from_running_gateway(settings, args.user_id)
        if token is not None:
            print(token)
            return 0
        print(
            f"no suite answers on port {settings.gateway_port}: signed with the secret in {settings.data_dir} "
            "(the one `make up` uses with this FINPULSE_DATA_DIR)",
            file=sys.stderr,
        )
        settings = dataclasses.replace(settings, jwt_secret=local_jwt_secret(settings.data_dir))
    print(mint_token(settings, args.user_id, ttl=dt.timedelta(hours=args.hours)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
