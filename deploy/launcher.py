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


def local_jwt_secret(data_dir: str) -> str:
    """The local HS256 secret, created once under `data_dir` (readable by its owner only)."""
    from gateway.auth import new_secret

    path = os.path.join(data_dir, "jwt-secret")
    try:
        with open(path, encoding="ascii") as f:
            secret = f.read().strip()
        if len(secret) >= 32:
            return secret
    except FileNotFoundError:
        pass
    os.makedirs(data_dir, exist_ok=True)
    secret = new_secret()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(secret + "\n")
    return secret


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
                 log_dir: str | None = None, emulator_args: list[str] | None = None,
                 replicas: Mapping[str, int] | None = None):
        """`replicas`: processes per service name (or "gateway"), 1 by default. Replica i > 1 of X is
        the child "X-i" on a port of its own; with several, every caller reaches X through the target
        `ipv4:host:p1,host:p2,...` that svclib.clients spreads round robin."""
        if not settings.jwt_secret and not settings.jwt_public_key:
            # Local runs sign their own tokens: a secret kept with the data, so tokens outlive a restart.
            settings = dataclasses.replace(settings, jwt_secret=local_jwt_secret(settings.data_dir))
        self.settings = settings
        self.backing = backing
        self.log_dir = log_dir
        env = dict(os.environ if base_env is None else base_env)
        env.update(FINPULSE_DATABASE_URL=backing.database_url, FINPULSE_REDIS_URL=backing.redis_url,
                   FINPULSE_MIGRATE_ON_START="false", PYTHONUNBUFFERED="1")
        if settings.jwt_secret:
            env["FINPULSE_JWT_SECRET"] = settings.jwt_secret
        # Each service's Prometheus exporter: where configured, else (local runs) on a free loopback port.
        metrics_addrs = dict(settings.metrics_addrs)
        for name in SERVICES:
            if not metrics_addrs.get(name) and settings.is_local:
                metrics_addrs[name] = env[f"FINPULSE_{name.upper()}_METRICS_ADDR"] = f"127.0.0.1:{free_port()}"
        self.settings = settings = dataclasses.replace(settings, metrics_addrs=metrics_addrs)
        self.env = env
        self.children: dict[str, Child] = {}
        self.kinds: dict[str, str] = {}  # child name -> what it runs ("sync" for "sync-2")
        self.grpc_addrs: dict[str, str] = {}  # service child name -> its own host:port
        self.gateway_ports: dict[str, int] = {}  # gateway child name -> its port
        counts = {name: max(1, int((replicas or {}).get(name, 1))) for name in (*SERVICES, "gateway")}
        service_ports: dict[str, list[int]] = {}
        for name in SERVICES:
            host, _, port = settings.service_addrs[name].rpartition(":")
            service_ports[name] = [int(port)] + [free_port() for _ in range(counts[name] - 1)]
            if counts[name] > 1:
                try:
                    socket.inet_aton(host)
                except OSError:
                    raise ValueError(f"replicas of {name} need an IPv4 address in its address, not {host!r}") from None
                env[f"FINPULSE_{name.upper()}_ADDR"] = "ipv4:" + ",".join(f"{host}:{p}" for p in service_ports[name])
            for i, p in enumerate(service_ports[name], 1):
                self.grpc_addrs[name if i == 1 else f"{name}-{i}"] = f"{host}:{p}"
        ports = emulator_ports(settings)
        if ports is not None and env.get("FINPULSE_BANK_EMULATOR", "on") != "off":
            banks = ",".join(f"{bank}={port}" for bank, port in ports.items())
            self._add("bank_sandbox", ["-m", "bank_sandbox", "--host", "127.0.0.1", "--banks", banks,
                                       *(emulator_args or [])])
        for name in SERVICES:
            for i, port in enumerate(service_ports[name], 1):
                child = name if i == 1 else f"{name}-{i}"
                extra = {"FINPULSE_GRPC_PORT": str(port)}
                if i > 1 and self.settings.metrics_addrs.get(name):  # each replica exports on its own port
                    extra[f"FINPULSE_{name.upper()}_METRICS_ADDR"] = f"127.0.0.1:{free_port()}"
                self._add(child, ["-m", f"{name}_svc", "serve"], **extra)
                self.kinds[child] = name
        for i in range(1, counts["gateway"] + 1):
            child = "gateway" if i == 1 else f"gateway-{i}"
            port = settings.gateway_port if i == 1 else free_port()
            self._add(child, ["-m", "gateway"], **({} if i == 1 else {"FINPULSE_GATEWAY_PORT": str(port)}))
            self.kinds[child] = "gateway"
            self.gateway_ports[child] = port

    def token(self, user_id: str) -> str:
        """A bearer token for `user_id`, accepted by this suite's gateway."""
        from gateway.auth import mint_token
        return mint_token(self.settings, user_id)

    def _add(self, name: str, args: list[str], **extra_env: str) -> None:
        log_path = os.path.join(self.log_dir, f"{name}.log") if self.log_dir else None
        self.children[name] = Child(name, [sys.executable, *args], {**self.env, **extra_env}, log_path)

    async def migrate(self) -> None:
        from consent_svc.__main__ import SPEC as consent
        from dashboard_svc.__main__ import SPEC as dashboard
        from onboarding_svc.__main__ import SPEC as onboarding
        from sync_svc.__main__ import SPEC as sync

        for spec in (onboarding, consent, sync, dashboard):
            own_url = self.settings.service_database_urls.get(spec.name)  # its own role, when configured
            role = db.ServiceRole.from_url(own_url) if own_url else None
            await db.migrate(self.backing.database_url, spec.schema, spec.migrations, role)

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
        if name in self.gateway_ports:
            return _port_open(self.gateway_host(), self.gateway_ports[name])
        if name in self.grpc_addrs:
            return await grpc_serving(self.grpc_addrs[name])
        return await grpc_serving(self.settings.service_addrs[name])

    def gateway_host(self) -> str:
        return "127.0.0.1" if self.settings.gateway_host in ("0.0.0.0", "::") else self.settings.gateway_host

    @property
    def gateway_url(self) -> str:
        return f"http://{self.gateway_host()}:{self.settings.gateway_port}"

    @property
    def gateway_urls(self) -> list[str]:
        """Every gateway replica's URL (the first is `gateway_url`)."""
        return [f"http://{self.gateway_host()}:{port}" for port in self.gateway_ports.values()]

    def stop(self, names: list[str] | None = None, sig: int = signal.SIGTERM) -> None:
        """Stop children (the gateway first, the emulator last), killing any that outlive their grace."""
        order = [n for kind in ("gateway", *reversed(SERVICES), "bank_sandbox")
                 for n in self.children if self.kinds.get(n, n) == kind]
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


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    user = f"{suite.settings.team.client_id}-1"
    auth = f"-H 'Authorization: Bearer {suite.token(user)}'" if suite.settings.jwt_secret else "-H 'Authorization: Bearer <token>'"
    lines = [
        "",
        f"FinPulse is up: gateway {url}",
        "  services: " + ", ".join(f"{n} {suite.settings.service_addrs[n]}" for n in SERVICES),
        f"  metrics: gateway {url}/metrics" + "".join(f", {n} http://{addr}/metrics" for n, addr in
                                                       suite.settings.metrics_addrs.items() if addr),
        f"  database: {'embedded' if suite.backing.postgres else 'configured'}, "
        f"redis: {'embedded' if suite.backing.redis else 'configured'}",
        f"Demo user {user}; its token (valid 12 h) is in the commands below.",
        "Try:",
        f"  curl -s {auth} '{url}/api/banks'",
        f"  curl -s {auth} -X POST {url}/api/onboarding/start -H 'Content-Type: application/json' -d '{{}}'",
        f"  curl -s {auth} '{url}/api/dashboard'",
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
