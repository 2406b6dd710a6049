"""`python -m gateway.token <user_id> [--hours N]` (or `make token USER_ID=<user_id>`): print a bearer token.

For local use and scripts: the token is signed with FINPULSE_JWT_SECRET, or, in local mode without
one, with the secret `make up` keeps in FINPULSE_DATA_DIR (so it works against a running `make up`).
Deployments that verify RS256 tokens get them from their identity provider instead.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import sys

from gateway.auth import mint_token
from svclib.config import ConfigError, load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("user_id")
    parser.add_argument("--hours", type=float, default=12.0, help="validity (default 12)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if not settings.jwt_secret:
        if settings.jwt_public_key or not settings.is_local:
            print("this deployment verifies RS256 tokens or has no FINPULSE_JWT_SECRET: "
                  "tokens come from its identity provider", file=sys.stderr)
            return 2
        from deploy.launcher import local_jwt_secret
        settings = dataclasses.replace(settings, jwt_secret=local_jwt_secret(settings.data_dir))
    if not 0 < args.hours <= 24 * 30:
        print("--hours must be between 0 and 720", file=sys.stderr)
        return 2
    print(mint_token(settings, args.user_id, ttl=dt.timedelta(hours=args.hours)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
