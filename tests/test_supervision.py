"""Supervision of the suite's processes (deploy.suite): the backoff bookkeeping on a fake clock, then
real processes restarted by `Suite.supervise()` and `Suite.supervise_in_background()`."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time

import aiohttp
import pytest

from deploy.children import Child
from deploy.suite import Suite
from deploy.supervisor import RestartPolicy, Supervisor, describe_exit
from svclib.config import KNOWN_BANKS, load_settings

pytestmark = pytest.mark.timeout(120)
TEAM, SECRET = "team200", "finpulse-dev-secret"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_backoff_doubles_to_its_cap_while_the_child_keeps_failing_at_start():
    clock = Clock()
    supervisor = Supervisor(RestartPolicy(first_delay=0.5, factor=2, max_delay=30, stable_after=60), clock)
    supervisor.started("sync")
    plans = []
    for _ in range(9):
        clock.now += 2  # up for 2 s, then it exits
        plan = supervisor.exited("sync")
        plans.append(plan)
        assert supervisor.pending("sync") and not supervisor.due("sync")
        clock.now += plan.delay - 0.01
        assert not supervisor.due("sync")
        clock.now += 0.01
        assert supervisor.due("sync")
        supervisor.started("sync")
        assert not supervisor.pending("sync")
    assert [p.delay for p in plans] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert [p.number for p in plans] == list(range(1, 10))
    assert [p.capped for p in plans] == [False] * 6 + [True] * 3
    assert plans[-1].quick_exits == 9 and plans[0].uptime == 2


def test_backoff_starts_over_once_the_child_stayed_up_long_enough():
    clock = Clock()
    supervisor = Supervisor(RestartPolicy(), clock)
    supervisor.started("gateway")
    for expected in (0.5, 1.0, 2.0):
        clock.now += 1
        assert supervisor.exited("gateway").delay == expected
        clock.now += expected
        supervisor.started("gateway")
    clock.now += 59.9
    assert supervisor.exited("gateway").delay == 4.0, "59.9 s is not yet a stable run"
    clock.now += 4
    supervisor.started("gateway")
    clock.now += 60
    plan = supervisor.exited("gateway")
    assert (plan.delay, plan.quick_exits, plan.number, plan.uptime) == (0.5, 1, 5, 60)
    clock.now += 0.5
    supervisor.started("gateway")
    clock.now += 1
    assert supervisor.exited("gateway").delay == 1.0


def test_children_are_tracked_apart_and_a_deliberate_stop_cancels_the_restart():
    clock = Clock()
    supervisor = Supervisor(clock=clock)
    supervisor.started("sync")
    supervisor.started("consent")
    clock.now += 1
    assert supervisor.exited("sync").delay == 0.5
    assert supervisor.exited("sync").delay == 1.0  # exited again before it was started: counts as quick
    assert supervisor.exited("consent").delay == 0.5
    supervisor.forget("sync")
    clock.now += 10
    assert not supervisor.pending("sync") and not supervisor.due("sync") and supervisor.due("consent")


def test_exit_descriptions():
    assert describe_exit(-9) == "code -9 (signal SIGKILL)"
    assert describe_exit(-15) == "code -15 (signal SIGTERM)"
    assert describe_exit(1) == "code 1"


# ------------------------------------------------------------------------------ real processes


@pytest.fixture
def emulator_suite(tmp_path, fresh_database, ports):
    """A Suite whose only started child is the bank emulator (its health: its ports answer)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINPULSE_")}
    env.update(
        FINPULSE_ENV="local",
        FINPULSE_DATA_DIR=str(tmp_path / "data"),
        FINPULSE_SHUTDOWN_GRACE="1",
        FINPULSE_GATEWAY_PORT=str(ports.port()),
    )
    for bank_id in KNOWN_BANKS:
        env[f"FINPULSE_BANK_{bank_id.upper()}_URL"] = ports.url()
    suite = Suite(
        load_settings(env),
        fresh_database("supervision"),
        base_env=env,
        log_dir=str(tmp_path),
        restart_policy=RestartPolicy(first_delay=0.2, max_delay=1.0, stable_after=30),
        ports=ports,
    )
    yield suite
    suite.close()


class Reports:
    """What supervision reports, with a wait on a line appearing (thread-safe)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()

    def __call__(self, line: str) -> None:
        with self._changed:
            self.lines.append(line)
            self._changed.notify_all()

    def wait_for(self, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = next((line for line in self.lines if text in line), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no report with {text!r} in {timeout} s: {self.lines}")
                self._changed.wait(left)

    async def async_wait_for(self, text: str, timeout: float = 30) -> str:
        return await asyncio.to_thread(self.wait_for, text, timeout)


async def _consent(session: aiohttp.ClientSession, url: str) -> dict:
    async with session.post(f"{url}/auth/bank-token", params={"client_id": TEAM, "client_secret": SECRET}) as r:
        token = (await r.json())["access_token"]
    headers = {"Authorization": f"Bearer {token}", "X-Requesting-Bank": TEAM}
    async with session.post(
        f"{url}/account-consents/request",
        headers=headers,
        json={"client_id": "team200-1", "permissions": ["ReadAccountsDetail"]},
    ) as r:
        assert r.status == 200
        consent = await r.json()
    return {"token": token, **consent}


async def _status(session: aiohttp.ClientSession, url: str, token: str, consent_id: str) -> str:
    async with session.get(f"{url}/account-consents/{consent_id}", headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status == 200, await r.text()
        return (await r.json())["data"]["status"]


async def test_background_supervision_brings_a_killed_emulator_back_with_its_consents(emulator_suite):
    suite = emulator_suite
    suite.start(["bank_sandbox"])
    await suite.wait_healthy(["bank_sandbox"])
    reports = Reports()
    supervision = suite.supervise_in_background(reports, poll=0.05)
    urls = {bank.id: bank.base_url for bank in suite.settings.banks}
    try:
        async with aiohttp.ClientSession() as session:
            auto, manual = await _consent(session, urls["vbank"]), await _consent(session, urls["sbank"])
            first = suite.children["bank_sandbox"].proc
            first.kill()
            line = await reports.async_wait_for("bank_sandbox exited")
            assert line == "bank_sandbox exited with code -9 (signal SIGKILL); restarting in 0.2 s, restart #1"
            await reports.async_wait_for("bank_sandbox is healthy again")
            assert suite.children["bank_sandbox"].proc.pid != first.pid
            await suite.wait_healthy(["bank_sandbox"], timeout=10)
            # The same token (the bank's signing key is kept) reads both consents as they were.
            assert await _status(session, urls["vbank"], auto["token"], auto["consent_id"]) == "Authorized"
            assert (
                await _status(session, urls["sbank"], manual["token"], manual["request_id"]) == "AwaitingAuthorization"
            )

            # A SIGTERM from elsewhere: a clean exit, still unexpected.
            suite.children["bank_sandbox"].signal(signal.SIGTERM)
            line = await reports.async_wait_for("restart #2")
            assert line.startswith("bank_sandbox exited with code 0; restarting in 0.4 s")
            await reports.async_wait_for("started again (pid")
            await suite.wait_healthy(["bank_sandbox"], timeout=30)  # waits for the restart, no error
    finally:
        supervision.stop()
    # Stopped on purpose: it stays stopped.
    suite.stop(["bank_sandbox"])
    assert suite.check_children(reports) == [] and not suite.children["bank_sandbox"].alive()


async def test_a_child_failing_at_start_keeps_being_retried_with_the_capped_backoff(emulator_suite):
    suite = emulator_suite
    suite.children["flaky"] = Child("flaky", [sys.executable, "-c", "import sys; sys.exit(3)"], {}, None)
    suite.supervisor.policy = RestartPolicy(first_delay=0.05, factor=2, max_delay=0.2, stable_after=30)
    reports = Reports()
    suite.start(["flaky"])
    supervising = asyncio.create_task(suite.supervise(reports, poll=0.02))
    try:
        line = await reports.async_wait_for("restart #5")
        assert line.startswith(
            "flaky exited with code 3; restarting in 0.2 s, restart #5 (it exited within 30 s "
            "of its start 5 times in a row: retrying every 0.2 s"
        )
        delays = [line.split("restarting in ")[1].split(" s")[0] for line in reports.lines if "exited" in line]
        assert delays[:5] == ["0.1", "0.1", "0.2", "0.2", "0.2"]  # 0.05, 0.1, 0.2 (capped), ... at one decimal
        with pytest.raises(RuntimeError, match="did not become healthy"):
            await suite.wait_healthy(["flaky"], timeout=0.5)  # supervised: it waits, then names it
    finally:
        supervising.cancel()
        await asyncio.gather(supervising, return_exceptions=True)
    suite.children["flaky"].wait(10)
    with pytest.raises(RuntimeError, match="flaky exited with code 3"):
        await suite.wait_healthy(["flaky"], timeout=5)  # unsupervised: an exit is an error at once
