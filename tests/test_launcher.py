"""`make up`'s launcher: starts every process, serves the gateway, restarts a process that dies, and on
Ctrl-C (or when it is killed) leaves no process behind."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest

from deploy.children import grpc_serving
from svclib.config import KNOWN_BANKS, SERVICE_PORTS

pytestmark = pytest.mark.timeout(120)


def _children_alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        with open(f"/proc/{pid}/stat") as f:
            if f.read().split()[2] != "Z":
                alive.append(pid)
    return alive


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        child, parent = map(int, line.split())
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@pytest.fixture
def launcher_env(fresh_database, tmp_path, ports):
    """The launcher's settings, on ports this test holds for its children (svclib.ports)."""
    backing = fresh_database("launcher")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINPULSE_")}
    env.update(
        FINPULSE_DATABASE_URL=backing.database_url,
        FINPULSE_REDIS_URL=backing.redis_url,
        FINPULSE_REDIS_PREFIX=f"finpulse-launcher-{uuid.uuid4().hex[:8]}:",
        FINPULSE_DATA_DIR=str(tmp_path),
        FINPULSE_GATEWAY_HOST="127.0.0.1",
        FINPULSE_GATEWAY_PORT=str(ports.port()),
        FINPULSE_GRPC_HOST="127.0.0.1",
        FINPULSE_SHUTDOWN_GRACE="1",
    )
    for name in SERVICE_PORTS:
        env[f"FINPULSE_{name.upper()}_ADDR"] = ports.addr()
    for bank in KNOWN_BANKS:
        env[f"FINPULSE_BANK_{bank.upper()}_URL"] = ports.url()
    env.update(ports.env())
    return env


def _start(env, stderr=subprocess.DEVNULL) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "deploy.launcher"], env=env, stdout=subprocess.PIPE, stderr=stderr, text=True
    )
    deadline = time.monotonic() + 60
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if "Press Ctrl-C to stop." in line:  # the banner's last line
            return proc, "".join(lines)
        if proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError("the launcher did not come up:\n" + "".join(lines))


def test_ctrl_c_stops_every_process(launcher_env):
    proc, banner = _start(launcher_env)
    gateway = f"http://127.0.0.1:{launcher_env['FINPULSE_GATEWAY_PORT']}"
    assert gateway in banner
    token = re.search(r"Authorization: Bearer ([\w.-]+)", banner).group(1)
    request = urllib.request.Request(f"{gateway}/api/banks", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 200, "the demo token in the banner is accepted"
    try:
        urllib.request.urlopen(f"{gateway}/api/banks", timeout=10)
        raise AssertionError("a request without a token must be refused")
    except urllib.error.HTTPError as exc:
        assert exc.code == 401
    children = _descendants(proc.pid)
    assert len(children) >= 6, "emulator, four services and the gateway"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0
    deadline = time.monotonic() + 10
    while _children_alive(children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _children_alive(children) == []


def test_killed_launcher_leaves_no_orphans(launcher_env):
    proc, _ = _start(launcher_env)
    children = _descendants(proc.pid)
    proc.kill()
    proc.wait(10)
    deadline = time.monotonic() + 20
    while _children_alive(children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _children_alive(children) == [], "children die with the launcher"


def test_bad_configuration_fails_fast_naming_the_variable(launcher_env):
    env = {**launcher_env, "FINPULSE_GATEWAY_PORT": "eighty"}
    result = subprocess.run(
        [sys.executable, "-m", "deploy.launcher"], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2 and "FINPULSE_GATEWAY_PORT" in result.stderr


def _child(launcher_pid: int, module: str) -> int:
    """The pid of the launcher's child running `python -m <module>`."""
    for pid in _descendants(launcher_pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except FileNotFoundError:
            continue
        if b"-m" in argv and argv[argv.index(b"-m") + 1] == module.encode() and _children_alive([pid]):
            return pid
    raise AssertionError(f"no child runs {module}")


def _wait_for_line(path, pattern: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        found = re.search(pattern, text)
        if found:
            return found.group(0)
        if time.monotonic() > deadline:
            raise AssertionError(f"no line matching {pattern!r} within {timeout} s in:\n{text[-4000:]}")
        time.sleep(0.1)


def _bank(url: str, method: str, path: str, body: dict | None = None, token: str | None = None) -> dict:
    headers = {"X-Requesting-Bank": "team200", "Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        url + path, method=method, headers=headers, data=json.dumps(body).encode() if body is not None else None
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.load(resp)


def test_dead_children_are_restarted_and_ctrl_c_still_stops_all(launcher_env, tmp_path):
    stderr_path = tmp_path / "launcher-stderr.log"
    with open(stderr_path, "w") as stderr:
        proc, banner = _start(launcher_env, stderr)
    try:
        # kill -9 of a service: reported, restarted after the first delay, healthy again.
        sync = _child(proc.pid, "sync_svc")
        os.kill(sync, signal.SIGKILL)
        _wait_for_line(
            stderr_path,
            r"launcher: sync exited with code -9 \(signal SIGKILL\); "
            r"restarting in 0\.5 s, restart #1",
        )
        _wait_for_line(stderr_path, r"launcher: sync is healthy again")
        assert _child(proc.pid, "sync_svc") != sync
        assert asyncio.run(grpc_serving(launcher_env["FINPULSE_SYNC_ADDR"]))

        # A SIGTERM from elsewhere to the gateway: it stops cleanly, and is started again all the same.
        os.kill(_child(proc.pid, "gateway"), signal.SIGTERM)
        _wait_for_line(stderr_path, r"launcher: gateway exited with code [^;]*; restarting in 0\.5 s, restart #1")
        _wait_for_line(stderr_path, r"launcher: gateway is healthy again")
        token = re.search(r"Authorization: Bearer ([\w.-]+)", banner).group(1)
        gateway = f"http://127.0.0.1:{launcher_env['FINPULSE_GATEWAY_PORT']}"
        request = urllib.request.Request(f"{gateway}/api/banks", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 200

        # kill -9 of the emulator: its consents come back with it (its state is under the data dir).
        sbank = launcher_env["FINPULSE_BANK_SBANK_URL"]
        bank_token = _bank(sbank, "POST", "/auth/bank-token?client_id=team200&client_secret=finpulse-dev-secret")
        bank_token = bank_token["access_token"]
        consent = _bank(
            sbank,
            "POST",
            "/account-consents/request",
            {"client_id": "team200-1", "permissions": ["ReadAccountsDetail"]},
            bank_token,
        )
        os.kill(_child(proc.pid, "bank_sandbox"), signal.SIGKILL)
        _wait_for_line(stderr_path, r"launcher: bank_sandbox is healthy again")
        got = _bank(sbank, "GET", f"/account-consents/{consent['request_id']}", token=bank_token)
        assert got["data"]["status"] == "AwaitingAuthorization"
        assert os.path.exists(os.path.join(launcher_env["FINPULSE_DATA_DIR"], "bank_sandbox", "banks.json"))

        children = _descendants(proc.pid)
        assert len(children) >= 6
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        deadline = time.monotonic() + 10
        while _children_alive(children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _children_alive(children) == []
        with open(stderr_path, encoding="utf-8") as f:
            text = f.read()
        assert "launcher: stopping..." in text and "restart #2" not in text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_local_processes_listen_on_loopback_and_containers_on_every_interface():
    from gateway.settings import load_gateway_settings
    from tests.test_deploy_manifests import _interpolate, compose

    local = load_gateway_settings({"FINPULSE_ENV": "local"})
    assert (local.grpc_host, local.gateway_host) == ("127.0.0.1", "127.0.0.1")
    told = load_gateway_settings({"FINPULSE_GRPC_HOST": "0.0.0.0", "FINPULSE_GATEWAY_HOST": "::"})
    assert (told.grpc_host, told.gateway_host) == ("0.0.0.0", "::")
    services = compose()["services"]
    for name in (*SERVICE_PORTS, "gateway"):  # the containers run in production mode: every interface
        settings = load_gateway_settings(_interpolate(services[name]["environment"], {}))
        assert (settings.env, settings.grpc_host, settings.gateway_host) == ("production", "0.0.0.0", "0.0.0.0")
