"""`make up`: the whole suite on one machine, each part its own process.

Starts embedded Postgres and Redis unless FINPULSE_DATABASE_URL / FINPULSE_REDIS_URL are set, runs
every service's migrations, then the bank emulator (when the banks point at this machine), the four
gRPC services and the gateway; waits until each one answers its health check, prints where the
gateway is with a first curl command, and on Ctrl-C (or SIGTERM) stops everything in order: children
get SIGTERM and their grace period, stragglers are killed, the embedded servers stop, data is kept.
Children also die with the launcher (`svclib.process.die_with_parent`), so a killed launcher leaves
no orphans.

The `Suite` class is the same machinery for the end-to-end tests.
"""
from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Mapping
from urllib.parse import urlparse

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from svclib import db
from svclib.config import SERVICE_PORTS, ConfigError, Settings, load_settings
from svclib.embedded import BackingServices, ensure_backing_services
from svclib.process import PARENT_ENV

SERVICES = tuple(SERVICE_PORTS)  # onboarding, consent, sync, dashboard
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def emulator_ports(settings: Settings) -> dict[str, int] | None:
    """Ports for the bank emulator when every configured bank points at this machine, else None."""
    ports = {}
    for bank in settings.banks:
        if not bank.base_url:
            return None
        url = urlparse(bank.base_url)
        if url.hostname not in LOCAL_HOSTS or url.port is None:
            return None
        ports[bank.id] = url.port
    return ports


@dataclasses.dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: str | None = None
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        out = open(self.log_path, "ab") if self.log_path else None
        env = {**self.env, PARENT_ENV: str(os.getpid())}  # the child dies with us (svclib.process)
        self.proc = subprocess.Popen(self.argv, env=env, stdout=out, stderr=subprocess.STDOUT if out else None,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        if out:
            out.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> bool:
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False


class Suite:
    """The suite's processes: start, wait until healthy, stop (or kill) and start again."""

    def __init__(self, settings: Settings, backing: BackingServices, *, base_env: Mapping[str, str] | None = None,
                 log_dir: str | None = None, emulator_args: list[str] | None = None):
        self.settings = settings
        self.backing = backing
        self.log_dir = log_dir
        env = dict(os.environ if base_env is None else base_env)
        env.update(FINPULSE_DATABASE_URL=backing.database_url, FINPULSE_REDIS_URL=backing.redis_url,
                   FINPULSE_MIGRATE_ON_START="false", PYTHONUNBUFFERED="1")
        self.env = env
        self.children: dict[str, Child] = {}
        ports = emulator_ports(settings)
        if ports is not None and env.get("FINPULSE_BANK_EMULATOR", "on") != "off":
            banks = ",".join(f"{bank}={port}" for bank, port in ports.items())
            self._add("bank_sandbox", ["-m", "bank_sandbox", "--host", "127.0.0.1", "--banks", banks,
                                       *(emulator_args or [])])
        for name in SERVICES:
            port = settings.service_addrs[name].rpartition(":")[2]
            self._add(name, ["-m", f"{name}_svc", "serve"], FINPULSE_GRPC_PORT=port)
        self._add("gateway", ["-m", "gateway"])

    def _add(self, name: str, args: list[str], **extra_env: str) -> None:
        log_path = os.path.join(self.log_dir, f"{name}.log") if self.log_dir else None
        self.children[name] = Child(name, [sys.executable, *args], {**self.env, **extra_env}, log_path)

    async def migrate(self) -> None:
        from consent_svc.__main__ import SPEC as consent
        from dashboard_svc.__main__ import SPEC as dashboard
        from onboarding_svc.__main__ import SPEC as onboarding
        from sync_svc.__main__ import SPEC as sync

        for spec in (onboarding, consent, sync, dashboard):
            await db.migrate(self.backing.database_url, spec.schema, spec.migrations)

    def start(self, names: list[str] | None = None) -> None:
        for name in names or list(self.children):
            self.children[name].start()

    async def wait_healthy(self, names: list[str] | None = None, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        for name in names or list(self.children):
            child = self.children[name]
            while not await self._healthy(name):
                if not child.alive():
                    raise RuntimeError(f"{name} exited with code {child.proc.returncode}{self._log_hint(name)}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not become healthy within {timeout:.0f} s{self._log_hint(name)}")
                await asyncio.sleep(0.1)

    def _log_hint(self, name: str) -> str:
        return f" (log: {self.children[name].log_path})" if self.children[name].log_path else ""

    async def _healthy(self, name: str) -> bool:
        if name == "bank_sandbox":
            return all(_port_open("127.0.0.1", p) for p in (emulator_ports(self.settings) or {}).values())
        if name == "gateway":
            return _port_open(self.gateway_host(), self.settings.gateway_port)
        return await grpc_serving(self.settings.service_addrs[name])

    def gateway_host(self) -> str:
        return "127.0.0.1" if self.settings.gateway_host in ("0.0.0.0", "::") else self.settings.gateway_host

    @property
    def gateway_url(self) -> str:
        return f"http://{self.gateway_host()}:{self.settings.gateway_port}"

    def stop(self, names: list[str] | None = None, sig: int = signal.SIGTERM) -> None:
        """Stop children (the gateway first, the emulator last), killing any that outlive their grace."""
        order = [n for n in ("gateway", *reversed(SERVICES), "bank_sandbox") if n in self.children]
        targets = [n for n in order if names is None or n in names]
        for name in targets:
            self.children[name].signal(sig)
        grace = self.settings.shutdown_grace + 5
        for name in targets:
            if not self.children[name].wait(grace):
                self.children[name].signal(signal.SIGKILL)
                self.children[name].wait(5)

    def exited(self) -> list[str]:
        return [name for name, child in self.children.items() if child.proc is not None and not child.alive()]


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.3):
            return True
    except OSError:
        return False


async def grpc_serving(addr: str) -> bool:
    async with grpc.aio.insecure_channel(addr) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.aio.AioRpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def _banner(suite: Suite) -> str:
    url = suite.gateway_url
    lines = [
        "",
        f"FinPulse is up: gateway {url}",
        "  services: " + ", ".join(f"{n} {suite.settings.service_addrs[n]}" for n in SERVICES),
        f"  database: {'embedded' if suite.backing.postgres else 'configured'}, "
        f"redis: {'embedded' if suite.backing.redis else 'configured'}",
        "Try:",
        f"  curl -s '{url}/api/banks?user_id={suite.settings.team.client_id}-1'",
        f"  curl -s -X POST {url}/api/onboarding/start -H 'Content-Type: application/json' "
        f"-d '{{\"user_id\": \"{suite.settings.team.client_id}-1\"}}'",
        "Press Ctrl-C to stop.",
        "",
    ]
    return "\n".join(lines)


async def run(settings: Settings) -> int:
    backing = ensure_backing_services(settings.database_url, settings.redis_url, settings.data_dir)
    suite = Suite(settings, backing)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    code = 0
    try:
        await suite.migrate()
        suite.start()
        await suite.wait_healthy()
        print(_banner(suite), flush=True)
        while not stop.is_set():
            dead = suite.exited()
            if dead:
                print(f"launcher: {', '.join(dead)} exited unexpectedly; stopping the suite", file=sys.stderr)
                code = 1
                break
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except asyncio.TimeoutError:
                pass
    except RuntimeError as exc:
        print(f"launcher: {exc}", file=sys.stderr)
        code = 1
    finally:
        print("launcher: stopping...", file=sys.stderr)
        suite.stop()
        backing.stop()
        print("launcher: stopped (data kept in " + settings.data_dir + ")", file=sys.stderr)
    return code


def main() -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"launcher: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(run(settings))


if __name__ == "__main__":
    sys.exit(main())
