"""Surviving a database (or Redis) that goes away and comes back, without restarting anything.

- `is_unavailable(exc)`: the failures that mean "the database cannot be reached right now" (refused
  or dropped connections, a server starting up or shutting down, a pool that cannot connect in time).
  The server interceptor answers them UNAVAILABLE with a `retry-after` trailer (the gateway: 503 with
  `Retry-After`), never INTERNAL: a briefly unavailable database is not a bug.
- `LoopHealth` and `run_forever`: every long-running loop of a service (sync workers, listeners,
  readiness watch) runs its body again after any exception, logs it, backs off (capped), and beats a
  heartbeat on each pass. The service's health check turns NOT_SERVING when a registered loop has not
  beaten within its allowed silence (dead, or stuck), so an orchestrator can restart what cannot
  recover by itself; it turns SERVING again when the loop beats again.
- `Listener`: LISTEN on a connection of its own (not borrowed from the pool, so a dead one never goes
  back to it), re-established after the server restarts; callers also poll, so a notification lost
  while it reconnects only delays work.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import asyncpg

log = logging.getLogger("svclib.resilience")

#: Seconds a client is told to wait before retrying when the database is unavailable.
RETRY_AFTER_SECONDS = 2
#: Longest pause of a `run_forever` loop between two tries while the database is unavailable.
UNAVAILABLE_BACKOFF = 2.0

_UNAVAILABLE_STATES = {
    "08000",
    "08003",
    "08006",
    "08001",
    "08004",
    "08P01",  # connection exceptions
    "57P01",
    "57P02",
    "57P03",  # admin shutdown, crash shutdown, cannot connect now
    "53300",  # too many connections
}


#: asyncpg's words for a connection that broke under its user (see `is_unavailable`).
_BROKEN_CONNECTION = (
    "connection is closed",
    "connection was closed",
    "pool is closing",
    # asyncpg detaches a pooled connection's proxy the moment the server drops it:
    # whatever its holder does with it next (a rollback, an unlock, the next statement
    # of the transaction) says this.
    "connection has been released back to the pool",
)


def is_unavailable(exc: BaseException) -> bool:
    """True when `exc` means the database (or the network to it) is unavailable right now: a failure
    of that kind itself, or a database error raised while handling one (a cleanup that met the same
    dead connection: its `__cause__` / `__context__` chain holds the original). Only asyncpg's own
    errors are followed down the chain: a domain or bank error is never taken for a database outage
    because something under it was a network error."""
    seen = 0
    while exc is not None and seen < 8:
        if _unavailable(exc):
            return True
        if not isinstance(exc, _ASYNCPG_ERRORS):
            return False
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


_ASYNCPG_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)


def _unavailable(exc: BaseException) -> bool:
    if isinstance(
        exc,
        (
            asyncpg.ConnectionDoesNotExistError,
            asyncpg.CannotConnectNowError,
            asyncpg.TooManyConnectionsError,
            asyncpg.ConnectionFailureError,
            ConnectionError,
            asyncio.TimeoutError,
        ),
    ):
        return True
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
        return True  # refused, reset, unreachable
    if isinstance(exc, asyncpg.PostgresError) and getattr(exc, "sqlstate", None) in _UNAVAILABLE_STATES:
        return True
    if isinstance(exc, asyncpg.InterfaceError):
        text = str(exc).lower()
        return any(words in text for words in _BROKEN_CONNECTION)
    if isinstance(exc, asyncpg.InternalClientError):
        # A pooled connection whose server just sent its FATAL goodbye (a shutdown) is handed out before
        # the end of its socket arrives: its protocol is still consuming that error, and the next
        # statement finds "cannot switch to state N; another operation (2) is in progress".
        return "cannot switch to state" in str(exc)
    return False


def connection_lost(conn) -> bool:
    """True when `conn` (a connection, or a pool's proxy of one) can no longer be used: closed, or its
    proxy already detached by asyncpg because the server dropped it."""
    try:
        return conn.is_closed()
    except asyncpg.InterfaceError:  # "connection has been released back to the pool"
        return True


class LoopHealth:
    """Heartbeats of a service's long-running loops; `healthy()` tells whether all of them beat recently."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._loops: dict[str, tuple[float, float]] = {}  # name -> (last beat, allowed silence)

    def register(self, name: str, allowed_silence: float) -> None:
        self._loops[name] = (self._clock(), allowed_silence)

    def beat(self, name: str) -> None:
        if name in self._loops:
            self._loops[name] = (self._clock(), self._loops[name][1])

    def unregister(self, name: str) -> None:
        self._loops.pop(name, None)

    def stale(self) -> list[str]:
        now = self._clock()
        return sorted(name for name, (beat, silence) in self._loops.items() if now - beat > silence)

    def healthy(self) -> bool:
        return not self.stale()


async def run_forever(
    name: str,
    body: Callable[[], Awaitable[None]],
    health: LoopHealth | None = None,
    *,
    allowed_silence: float = 60.0,
    backoff: float = 0.5,
    max_backoff: float = 10.0,
) -> None:
    """Run `body()` again and again until cancelled; an exception is logged and retried after a capped,
    doubling backoff (reset by a pass that succeeds; at most `UNAVAILABLE_BACKOFF` while the database
    is unavailable). `body` should beat `health` itself when one pass lasts long (a worker waiting for
    jobs); each completed pass beats too."""
    if health is not None:
        health.register(name, allowed_silence)
    delay = backoff
    try:
        while True:
            try:
                await body()
                delay = backoff
                if health is not None:
                    health.beat(name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the loop must outlive any failure
                if is_unavailable(exc):
                    # Asking again costs one refused connection: retry often enough that the loop is back
                    # within a couple of seconds of the database (a sync worker idling 10 s after a restart
                    # is a bootstrap answering stale data).
                    delay = min(delay, UNAVAILABLE_BACKOFF)
                    log.warning(
                        "%s: the database is unavailable; retrying",
                        name,
                        extra={"error": repr(exc), "retry_in_s": delay},
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, max_backoff, UNAVAILABLE_BACKOFF)
                    continue
                log.exception("%s failed; retrying", name, extra={"retry_in_s": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_backoff)
    finally:
        if health is not None:
            health.unregister(name)


class Listener:
    """`LISTEN channel` on a connection of its own, kept alive across database restarts."""

    def __init__(
        self,
        dsn: str,
        channel: str,
        callback: Callable[..., None],
        *,
        server_settings=None,
        check_every: float = 1.0,
        health: LoopHealth | None = None,
    ):
        self.dsn = dsn
        self.channel = channel
        self.callback = callback
        self.server_settings = server_settings or {}
        self.check_every = check_every
        self.health = health
        self.connected = asyncio.Event()
        self._conn: asyncpg.Connection | None = None

    async def run(self) -> None:
        await run_forever(
            f"listener:{self.channel}", self._hold, self.health, allowed_silence=max(30.0, self.check_every * 10)
        )

    async def _hold(self) -> None:
        """Connect and LISTEN, then stay until the connection is lost (then `run_forever` reconnects)."""
        lost = asyncio.Event()
        conn = await asyncpg.connect(self.dsn, server_settings=self.server_settings, timeout=5)
        self._conn = conn
        try:
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(self.channel, self.callback)
            self.connected.set()
            # Whatever was notified while we were away: let the owner look once (its poll would anyway).
            self.callback(conn, 0, self.channel, "")
            while not lost.is_set():
                if self.health is not None:
                    self.health.beat(f"listener:{self.channel}")
                try:
                    await asyncio.wait_for(lost.wait(), self.check_every)
                except TimeoutError:
                    if conn.is_closed():
                        break
                    await conn.execute("SELECT 1", timeout=5)  # a dead socket shows here
            raise ConnectionError(f"LISTEN {self.channel}: the connection was lost")
        finally:
            self.connected.clear()
            self._conn = None
            if not conn.is_closed():
                conn.terminate()

    async def close(self) -> None:
        if self._conn is not None and not self._conn.is_closed():
            self._conn.terminate()
