"""The suite's processes on one machine, for `make up` (deploy/launcher.py) and the end-to-end tests:
the bank emulator (when the banks point at this machine), the four gRPC services, each possibly in
several replicas, and the gateway, each a `Child` (deploy/children.py) with the settings, environment
and ports it needs; started, waited for until healthy, stopped in order (the gateway first).

Supervision: a child that exits without being asked to (a crash, kill -9, a SIGTERM from elsewhere) is
started again after a delay that doubles from 0.5 s up to 30 s while it keeps exiting within 60 s of
its start, and is back to 0.5 s once it stayed up that long (`Supervisor`); each exit, restart and
recovery is reported (on stderr by default; the bookkeeping: deploy/supervisor.py). One dead child
never stops the suite. `Suite.supervise()` (a coroutine) and `Suite.supervise_in_background()` (a
thread) run it. The bank emulator keeps its state under `<FINPULSE_DATA_DIR>/bank_sandbox`, so its
restart loses no consent or payment.

Ports: `make up` uses the fixed ports of the settings (50051.., 8080, the banks' 9001..). A port the
settings leave open (a local service's metrics exporter, replicas beyond the first) comes from the OS
and is held by the suite until it closes (`svclib.ports.PortReservations`): nobody else can take it
between the suite picking it and the child binding it, nor while the child restarts. Tests reserve
every port of their suite the same way and hand the reservations in (`Suite(ports=...)`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from urllib.parse import urlparse

from deploy.children import Child, grpc_serving, port_open
from deploy.supervisor import RestartPolicy, Supervisor, describe_exit
from gateway.auth import local_jwt_secret
from gateway.settings import GatewaySettings, with_gateway_section
from svclib import db
from svclib.config import SERVICE_PORTS, Settings
from svclib.embedded import BackingServices
from svclib.ports import PortReservations

__all__ = ["LOCAL_HOSTS", "SERVICES", "Suite", "Supervision", "emulator_ports", "report_to_stderr"]

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


def report_to_stderr(message: str) -> None:
    print(f"launcher: {message}", file=sys.stderr, flush=True)


class Suite:
    """The suite's processes: start, wait until healthy, stop (or kill) and start again; and, while
    `supervise()` (or `supervise_in_background()`) runs, restart those that exit unexpectedly."""

    def __init__(
        self,
        settings: Settings,
        backing: BackingServices,
        *,
        base_env: Mapping[str, str] | None = None,
        log_dir: str | None = None,
        emulator_args: list[str] | None = None,
        replicas: Mapping[str, int] | None = None,
        restart_policy: RestartPolicy | None = None,
        ports: PortReservations | None = None,
    ):
        """`replicas`: processes per service name (or "gateway"), 1 by default. Replica i > 1 of X is
        the child "X-i" on a port of its own; with several, every caller reaches X through the target
        `ipv4:host:p1,host:p2,...` that svclib.clients spreads round robin. The bank emulator keeps its
        state in `<data_dir>/bank_sandbox` unless `emulator_args` name another `--state-dir`.
        `ports`: the reservations holding the ports the settings name (svclib.ports); the ports the
        suite picks itself are reserved too; `close()` releases both."""
        self.ports = PortReservations()  # the ports the suite picks itself, held until close()
        self._given_ports = ports
        self.supervisor = Supervisor(restart_policy)
        self._lock = threading.RLock()  # starts, stops and restarts, whichever thread does them
        self._supervising = 0  # supervision loops running
        # The suite runs the gateway and signs local tokens: the common settings and the gateway's section.
        settings = with_gateway_section(settings, os.environ if base_env is None else base_env)
        if not settings.jwt_secret and not settings.jwt_public_key:
            # Local runs sign their own tokens: a secret kept with the data, so tokens outlive a restart.
            settings = dataclasses.replace(settings, jwt_secret=local_jwt_secret(settings.data_dir))
        # Every process of the suite signs its calls to the others with one secret (svclib.internal_auth).
        settings = dataclasses.replace(settings, internal_secret=settings.resolved_internal_secret())
        self.settings: GatewaySettings = settings
        self.backing = backing
        self.log_dir = log_dir
        env = dict(os.environ if base_env is None else base_env)
        env.update(
            FINPULSE_DATABASE_URL=backing.database_url,
            FINPULSE_REDIS_URL=backing.redis_url,
            FINPULSE_MIGRATE_ON_START="false",
            PYTHONUNBUFFERED="1",
        )
        if settings.jwt_secret:
            env["FINPULSE_JWT_SECRET"] = settings.jwt_secret
        env["FINPULSE_INTERNAL_SECRET"] = settings.internal_secret
        # Each service's Prometheus exporter: where configured, else (local runs) on a free loopback port.
        metrics_addrs = dict(settings.metrics_addrs)
        for name in SERVICES:
            if not metrics_addrs.get(name) and settings.is_local:
                metrics_addrs[name] = env[f"FINPULSE_{name.upper()}_METRICS_ADDR"] = f"127.0.0.1:{self.ports.port()}"
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
            service_ports[name] = [int(port)] + [self.ports.port(host) for _ in range(counts[name] - 1)]
            if counts[name] > 1:
                try:
                    socket.inet_aton(host)
                except OSError:
                    raise ValueError(f"replicas of {name} need an IPv4 address in its address, not {host!r}") from None
                env[f"FINPULSE_{name.upper()}_ADDR"] = "ipv4:" + ",".join(f"{host}:{p}" for p in service_ports[name])
            for i, p in enumerate(service_ports[name], 1):
                self.grpc_addrs[name if i == 1 else f"{name}-{i}"] = f"{host}:{p}"
        bank_ports = emulator_ports(settings)
        if bank_ports is not None and env.get("FINPULSE_BANK_EMULATOR", "on") != "off":
            banks = ",".join(f"{bank}={port}" for bank, port in bank_ports.items())
            state = (
                []
                if "--state-dir" in (emulator_args or [])
                else ["--state-dir", os.path.join(settings.data_dir, "bank_sandbox")]
            )  # consents outlive a restart
            self._add(
                "bank_sandbox",
                ["-m", "bank_sandbox", "--host", "127.0.0.1", "--banks", banks, *state, *(emulator_args or [])],
            )
        for name in SERVICES:
            for i, port in enumerate(service_ports[name], 1):
                child = name if i == 1 else f"{name}-{i}"
                extra = {"FINPULSE_GRPC_PORT": str(port)}
                if i > 1 and self.settings.metrics_addrs.get(name):  # each replica exports on its own port
                    extra[f"FINPULSE_{name.upper()}_METRICS_ADDR"] = f"127.0.0.1:{self.ports.port()}"
                self._add(child, ["-m", f"{name}_svc", "serve"], **extra)
                self.kinds[child] = name
        for i in range(1, counts["gateway"] + 1):
            child = "gateway" if i == 1 else f"gateway-{i}"
            port = settings.gateway_port if i == 1 else self.ports.port(self.gateway_host())
            self._add(child, ["-m", "gateway"], **({} if i == 1 else {"FINPULSE_GATEWAY_PORT": str(port)}))
            self.kinds[child] = "gateway"
            self.gateway_ports[child] = port
        # Each child binds with SO_REUSEPORT the ports held for it (svclib.ports), and only those.
        for child in self.children.values():
            for held in (self._given_ports, self.ports):
                if held is None:
                    continue
                child.env.update(held.env(child.env))

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
        """Start children (all by default); one already running is left as it is."""
        with self._lock:
            for name in names or list(self.children):
                child = self.children[name]
                if not child.alive():
                    child.start()
                    self.supervisor.started(name)
                child.wanted = True

    async def wait_healthy(self, names: list[str] | None = None, timeout: float = 60.0) -> None:
        """Until each child answers its health check. A child that exits fails it (RuntimeError), unless
        supervision runs: then it waits for the restart, within the same `timeout`."""
        deadline = time.monotonic() + timeout
        for name in names or list(self.children):
            child = self.children[name]
            while not await self._healthy(name):
                if not child.alive() and not (self._supervising and child.wanted):
                    code = child.proc.returncode if child.proc is not None else None
                    raise RuntimeError(f"{name} exited with {describe_exit(code)}{self._log_hint(name)}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not become healthy within {timeout:.0f} s{self._log_hint(name)}")
                await asyncio.sleep(0.1)

    def _log_hint(self, name: str) -> str:
        return f" (log: {self.children[name].log_path})" if self.children[name].log_path else ""

    async def _healthy(self, name: str) -> bool:
        if name == "bank_sandbox":
            return all(port_open("127.0.0.1", p) for p in (emulator_ports(self.settings) or {}).values())
        if name in self.gateway_ports:
            return port_open(self.gateway_host(), self.gateway_ports[name])
        if name in self.grpc_addrs:
            return await grpc_serving(self.grpc_addrs[name])
        if name in self.settings.service_addrs:
            return await grpc_serving(self.settings.service_addrs[name])
        return False  # a child added by hand has no health check the suite knows

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
        """Stop children (the gateway first, the emulator last), killing any that outlive their grace.
        Supervision leaves them stopped (until `start`)."""
        order = [
            n
            for kind in ("gateway", *reversed(SERVICES), "bank_sandbox")
            for n in self.children
            if self.kinds.get(n, n) == kind
        ]
        targets = [n for n in order if names is None or n in names]
        with self._lock:
            for name in targets:
                self.children[name].wanted = False
                self.supervisor.forget(name)
                self.children[name].signal(sig)
        grace = self.settings.shutdown_grace + 5
        for name in targets:
            if not self.children[name].wait(grace):
                self.children[name].signal(signal.SIGKILL)
                self.children[name].wait(5)

    def close(self) -> None:
        """Stop every child and release the ports held for them."""
        self.stop()
        self.ports.close()
        if self._given_ports is not None:
            self._given_ports.close()

    def exited(self) -> list[str]:
        return [name for name, child in self.children.items() if child.proc is not None and not child.alive()]

    # ------------------------------------------------------------------------------ supervision

    def check_children(self, report: Callable[[str], None] = report_to_stderr) -> list[str]:
        """One round of supervision: schedule the restart of each child that exited unexpectedly, and
        start again those whose delay is over; the names started again."""
        restarted = []
        with self._lock:
            for name, child in self.children.items():
                if not child.wanted or child.proc is None:
                    continue
                if child.alive():
                    if self.supervisor.pending(name):  # started again by someone else meanwhile
                        self.supervisor.started(name)
                    continue
                if not self.supervisor.pending(name):
                    plan = self.supervisor.exited(name)
                    message = (
                        f"{name} exited with {describe_exit(child.proc.returncode)}; "
                        f"restarting in {plan.delay:.1f} s, restart #{plan.number}"
                    )
                    if plan.capped:
                        message += (
                            f" (it exited within {self.supervisor.policy.stable_after:g} s of its start "
                            f"{plan.quick_exits} times in a row: retrying every "
                            f"{self.supervisor.policy.max_delay:g} s{self._log_hint(name)})"
                        )
                    report(message)
                if self.supervisor.due(name):
                    try:
                        child.start()
                    except OSError as exc:  # cannot fork or exec right now: try again later
                        plan = self.supervisor.exited(name)
                        report(f"cannot start {name} ({exc}); trying again in {plan.delay:.1f} s")
                        continue
                    self.supervisor.started(name)
                    report(f"{name} started again (pid {child.proc.pid}), restart #{self.supervisor.restarts(name)}")
                    restarted.append(name)
        return restarted

    async def supervise(
        self, report: Callable[[str], None] = report_to_stderr, poll: float = 0.25, until: threading.Event | None = None
    ) -> None:
        """Supervise the started children until cancelled (or `until` is set): restart each that exits
        unexpectedly (`check_children`), and report when it answers its health check again. Children
        stopped with `stop()` stay stopped. Children it restarts are started from the thread running
        this loop, and die with it (PR_SET_PDEATHSIG is per thread): run it where the suite lives."""
        recovering: set[str] = set()
        with self._lock:
            self._supervising += 1
        try:
            while until is None or not until.is_set():
                try:
                    recovering.update(self.check_children(report))
                    for name in sorted(recovering):
                        child = self.children[name]
                        if not (child.wanted and child.alive()):
                            recovering.discard(name)  # stopped, or exited again (already reported)
                        elif await self._healthy(name):
                            recovering.discard(name)
                            report(f"{name} is healthy again")
                except Exception as exc:  # noqa: BLE001 - supervision goes on whatever one round met
                    report(f"supervision: {exc!r}")
                await asyncio.sleep(poll)
        finally:
            with self._lock:
                self._supervising -= 1

    def supervise_in_background(
        self, report: Callable[[str], None] = report_to_stderr, poll: float = 0.25
    ) -> Supervision:
        """`supervise()` in a thread of its own (for synchronous callers, such as a session fixture);
        `.stop()` ends it. The thread outlives that while a child it restarted runs, since a child dies
        with the thread that started it; it is a daemon, and `Suite.stop()` ends those children."""
        return Supervision(self, report, poll)


class Supervision:
    """A running `Suite.supervise_in_background()`."""

    def __init__(self, suite: Suite, report: Callable[[str], None], poll: float):
        self.suite = suite
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(report, poll), name="suite-supervision", daemon=True)
        self._thread.start()

    def _run(self, report: Callable[[str], None], poll: float) -> None:
        try:
            asyncio.run(self.suite.supervise(report, poll, self._stop))
        except Exception as exc:  # noqa: BLE001 - reported, not raised into nowhere
            report(f"supervision failed: {exc!r}; dead children are no longer restarted")
        finally:
            me = threading.get_ident()
            while any(child.spawner == me and child.alive() for child in self.suite.children.values()):
                time.sleep(poll)  # keep the children this thread started alive (see Suite.supervise)

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set()

    def stop(self) -> None:
        """Stop restarting children (those it restarted keep running)."""
        self._stop.set()
