"""Secrets a local run makes for itself: created once under the data dir, readable by their owner only.

`make up` (and a service or the gateway started by hand in local mode) needs two secrets nobody
configured: the HS256 key of bearer tokens (`jwt-secret`) and the suite's internal secret
(`internal-secret`, svclib.internal_auth). Each is made the first time and kept under
`FINPULSE_DATA_DIR`, so every process of the same local suite, and a restart, uses the same one.
Production never uses these: its secrets are configured (FINPULSE_JWT_*, FINPULSE_INTERNAL_SECRET).
"""

from __future__ import annotations

import os
import secrets

MIN_LENGTH = 32


def new_secret() -> str:
    """A fresh 256-bit secret as URL-safe text."""
    return secrets.token_urlsafe(32)


def local_secret(data_dir: str, name: str) -> str:
    """The secret `name` under `data_dir`, created (owner-only) when missing or too short."""
    path = os.path.join(data_dir, name)
    try:
        with open(path, encoding="ascii") as f:
            secret = f.read().strip()
        if len(secret) >= MIN_LENGTH:
            return secret
    except FileNotFoundError:
        pass
    os.makedirs(data_dir, exist_ok=True)
    secret = new_secret()
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(secret + "\n")
    try:
        os.link(tmp, path)  # first writer wins: processes starting together agree on one secret
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    with open(path, encoding="ascii") as f:
        return f.read().strip()
