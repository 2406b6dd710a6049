"""When the launcher restarts a child that exited unexpectedly: the backoff bookkeeping, no processes.

A child is started again after a delay that doubles from 0.5 s up to 30 s while it keeps exiting
within 60 s of its start, and is back to 0.5 s once it stayed up that long (`RestartPolicy`). The
suite (deploy/suite.py, which the launcher runs) reports starts and exits to a `Supervisor` and asks
it when to restart.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from collections.abc import Callable


@dataclasses.dataclass
class RestartPolicy:
    """Delays before restarting a child: `first_delay`, times `factor` for each further exit within
    `stable_after` seconds of its start, at most `max_delay`; an exit after a stable run starts over."""

    first_delay: float = 0.5
    factor: float = 2.0
    max_delay: float = 30.0
    stable_after: float = 60.0


@dataclasses.dataclass(frozen=True)
class Restart:
    """The supervisor's answer to an exit: start `name` again in `delay` seconds."""

    name: str
    delay: float
    number: int  # this child's restarts so far, this one included
    uptime: float  # how long the process that exited had run
    quick_exits: int  # exits in a row within `stable_after` of their start, this one included
    capped: bool  # the delay is at `max_delay`: it keeps exiting soon after start


@dataclasses.dataclass
class _Track:
    started_at: float | None = None
    quick_exits: int = 0
    restarts: int = 0
    due_at: float | None = None  # a restart is scheduled for then


class Supervisor:
    """When to restart which child: the bookkeeping only, with the time from `clock` (a test passes its
    own). The caller reports each start (`started`) and each unexpected exit (`exited`, which answers
    with the delay), asks `due` before starting again, and `forget`s a child it stops on purpose."""

    def __init__(self, policy: RestartPolicy | None = None, clock: Callable[[], float] = time.monotonic):
        self.policy = policy or RestartPolicy()
        self.clock = clock
        self._tracks: dict[str, _Track] = {}

    def _track(self, name: str) -> _Track:
        return self._tracks.setdefault(name, _Track())

    def started(self, name: str) -> None:
        track = self._track(name)
        track.started_at = self.clock()
        track.due_at = None

    def exited(self, name: str) -> Restart:
        """`name` exited unexpectedly: schedule its restart and say when."""
        policy, track, now = self.policy, self._track(name), self.clock()
        uptime = now - track.started_at if track.started_at is not None else 0.0
        if uptime >= policy.stable_after:
            track.quick_exits = 0  # it had recovered: start the backoff over
        delay = min(policy.max_delay, policy.first_delay * policy.factor**track.quick_exits)
        track.quick_exits += 1
        track.restarts += 1
        track.started_at = None
        track.due_at = now + delay
        return Restart(name, delay, track.restarts, uptime, track.quick_exits, delay >= policy.max_delay)

    def pending(self, name: str) -> bool:
        """A restart of `name` is scheduled."""
        return self._track(name).due_at is not None

    def due(self, name: str) -> bool:
        """The scheduled restart of `name` may happen now."""
        due_at = self._track(name).due_at
        return due_at is not None and self.clock() >= due_at

    def forget(self, name: str) -> None:
        """`name` is stopped on purpose: no restart pending; the backoff is kept for its next exit."""
        self._track(name).due_at = None

    def restarts(self, name: str) -> int:
        return self._track(name).restarts


def describe_exit(code: int | None) -> str:
    """ "code 1", "code -9 (signal SIGKILL)"."""
    if code is not None and code < 0:
        try:
            return f"code {code} (signal {signal.Signals(-code).name})"
        except ValueError:
            return f"code {code} (signal {-code})"
    return f"code {code}"
