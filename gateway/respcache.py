"""The gateway's own copy of replies that a service declared reusable.

A service marks a reply with the trailing metadata `finpulse-cache-until` (svclib.cache
`CACHE_UNTIL_METADATA`) when the same caller asking the same will get exactly that reply until then,
unless an announcement (`Cache.announce_change`) for the user comes first; the dashboard does this
for answers it serves from its own cache. The gateway then answers repeats of that request (same
route, same authenticated user, same query string) from memory, after authentication and the rate
limit but without the gRPC hop, and drops a user's entries the moment an announcement for that user
arrives on the change feed.

Correctness rests on three rules:
- entries are keyed by the authenticated user: one user's reply is never served to another;
- a reply is stored only if no announcement for its user arrived since its request started (else
  it may predate the change), checked with a change counter;
- without a live change feed (Redis down, reconnecting) nothing is stored or served, and everything
  kept is dropped when the feed is lost or comes back (announcements in between are lost).
Only GET routes are cached. Bounded LRU, per process.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable, Hashable


@dataclasses.dataclass(frozen=True)
class _Entry:
    body: bytes
    until: float  # Unix seconds
    user: str


class ResponseCache:
    def __init__(self, size: int = 10_000, changes_kept: int = 100_000, clock: Callable[[], float] = time.time):
        """`clock`: Unix seconds, against which a reply's `until` is checked (a test passes its own)."""
        self.size = size
        self._clock = clock
        self.changes_kept = changes_kept
        self.enabled = False  # only while the change feed is live
        self._entries: collections.OrderedDict[Hashable, _Entry] = collections.OrderedDict()
        self._keys_by_user: dict[str, set[Hashable]] = {}
        self._counter = 0  # bumped on every announcement and every reset
        self._last_change: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._floor = 0  # stamps below it are refused (a forgotten change may be newer than them)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> bytes | None:
        if not self.enabled:
            return None
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.until <= self._clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry.body

    def stamp(self) -> int:
        """Taken before the backend is asked; `put` refuses the reply if the user changed since."""
        return self._counter

    def put(self, key: Hashable, user: str, body: bytes, until: float, stamp: int) -> bool:
        if not self.enabled or stamp < self._floor or self._last_change.get(user, -1) > stamp or until <= self._clock():
            return False
        self._drop(key)
        self._entries[key] = _Entry(body, until, user)
        self._keys_by_user.setdefault(user, set()).add(key)
        while len(self._entries) > self.size:
            self._drop(next(iter(self._entries)))
        return True

    def changed(self, user: str) -> None:
        """An announcement for `user`: forget its replies, and refuse those asked for before now."""
        self._counter += 1
        self._last_change[user] = self._counter
        self._last_change.move_to_end(user)
        while len(self._last_change) > self.changes_kept:
            _, forgotten = self._last_change.popitem(last=False)
            self._floor = max(self._floor, forgotten + 1)
        for key in self._keys_by_user.pop(user, ()):
            self._entries.pop(key, None)

    def feed_state(self, live: bool) -> None:
        """The change feed came up (True) or went down (False): either way, drop everything."""
        self._counter += 1
        self._floor = self._counter
        self._entries.clear()
        self._keys_by_user.clear()
        self._last_change.clear()
        self.enabled = live

    def _drop(self, key: Hashable) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            keys = self._keys_by_user.get(entry.user)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._keys_by_user[entry.user]
