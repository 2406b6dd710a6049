"""`make up`'s launcher: starts every process, serves the gateway, and on Ctrl-C (or when it is killed)
leaves no process behind."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from svclib.config import KNOWN_BANKS, SERVICE_PORTS
from tests.conftest import free_port

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
def launcher_env(fresh_database, tmp_path):
    backing = fresh_database("launcher")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINPULSE_")}
    env.update(FINPULSE_DATABASE_URL=backing.database_url, FINPULSE_REDIS_URL=backing.redis_url,
               FINPULSE_REDIS_PREFIX=f"finpulse-launcher-{free_port()}:", FINPULSE_DATA_DIR=str(tmp_path),
               FINPULSE_GATEWAY_HOST="127.0.0.1", FINPULSE_GATEWAY_PORT=str(free_port()),
               FINPULSE_GRPC_HOST="127.0.0.1", FINPULSE_SHUTDOWN_GRACE="1")
    for name in SERVICE_PORTS:
        env[f"FINPULSE_{name.upper()}_ADDR"] = f"127.0.0.1:{free_port()}"
    for bank in KNOWN_BANKS:
        env[f"FINPULSE_BANK_{bank.upper()}_URL"] = f"http://127.0.0.1:{free_port()}"
    return env


def _start(env) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "deploy.launcher"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
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
    result = subprocess.run([sys.executable, "-m", "deploy.launcher"], env=env, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2 and "FINPULSE_GATEWAY_PORT" in result.stderr
