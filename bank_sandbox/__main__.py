"""`python -m bank_sandbox`: serve the banks until SIGTERM or SIGINT, then stop cleanly.

Settings: defaults, then the environment (see `SandboxConfig.from_env`), then these flags.
With --state-dir DIR the banks keep what changes (consents, payments and their effects, fault knobs)
in DIR/banks.json, written before each answer, and start from it again; without it, in memory only.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal
import sys
from collections.abc import Callable
from typing import TypeVar

from bank_sandbox.app import start_banks
from bank_sandbox.config import APPROVAL_MODES, DEFAULT_PORTS, SandboxConfig, parse_bool
from bank_sandbox.persistence import StateError
from svclib.logging import setup_logging
from svclib.process import die_with_parent

log = logging.getLogger("bank_sandbox")
T = TypeVar("T")


def _pairs(convert: Callable[[str], T]) -> Callable[[str], dict[str, T]]:
    """An argparse type for "bank=value,bank=value"."""

    def parse(text: str) -> dict[str, T]:
        pairs: dict[str, T] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            bank, sep, value = item.partition("=")
            try:
                if not sep or not bank.strip():
                    raise ValueError
                pairs[bank.strip()] = convert(value.strip())
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected bank=value, got {item!r}") from None
        if not pairs:
            raise argparse.ArgumentTypeError("expected at least one bank=value")
        return pairs

    return parse


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port < 65536:
        raise ValueError(text)
    return port


def _approval(text: str) -> str:
    if text not in APPROVAL_MODES:
        raise ValueError(text)
    return text


def parse_args(argv: list[str] | None = None) -> tuple[SandboxConfig, dict[str, int], str, str | None]:
    parser = argparse.ArgumentParser(prog="python -m bank_sandbox", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--banks",
        type=_pairs(_port),
        default=dict(DEFAULT_PORTS),
        help="bank=port,... (port 0: any free port); default: "
        + ",".join(f"{bank}={port}" for bank, port in DEFAULT_PORTS.items()),
    )
    parser.add_argument("--approval", type=_pairs(_approval), help="bank=auto|manual,...")
    parser.add_argument("--latency-ms", type=float)
    parser.add_argument("--error-rate", type=float)
    parser.add_argument("--rate-limit-rate", type=float)
    parser.add_argument("--sticky-awaiting", type=parse_bool, metavar="BOOL")
    parser.add_argument("--payment-delay-ms", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--customers", type=int)
    parser.add_argument("--history-days", type=int)
    parser.add_argument("--token-ttl", type=int)
    parser.add_argument("--team-id")
    parser.add_argument("--team-secret")
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        help="keep the banks' changes in DIR/banks.json and start from it (default: memory only)",
    )
    args = parser.parse_args(argv)
    fields = {f.name for f in dataclasses.fields(SandboxConfig)}
    overrides = {name: value for name, value in vars(args).items() if name in fields and value is not None}
    try:
        config = SandboxConfig.from_env()
        if args.approval:
            overrides["approval"] = {**config.approval, **args.approval}
        config = dataclasses.replace(config, **overrides)
    except ValueError as exc:
        parser.error(str(exc))
    return config, args.banks, args.host, args.state_dir


async def serve(config: SandboxConfig, ports: dict[str, int], host: str, state_dir: str | None = None) -> None:
    running = await start_banks(config, ports, host, state_dir)
    log.info("banks started", extra={"banks": running.urls, "state_dir": state_dir})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await running.stop()
        log.info("banks stopped")


def main(argv: list[str] | None = None) -> int:
    die_with_parent()
    config, ports, host, state_dir = parse_args(argv)
    setup_logging("bank_sandbox")
    try:
        asyncio.run(serve(config, ports, host, state_dir))
    except (OSError, StateError) as exc:  # a port already taken; a state folder in use or unreadable
        log.error("cannot serve the banks: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
