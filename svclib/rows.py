"""What the storage modules need to type their asyncpg calls (mypy reads asyncpg through asyncpg-stubs)."""

from __future__ import annotations

from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

#: A connection as a storage module holds one: its own, or one of the pool's (`pool.acquire()`).
Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"


def returned(row: asyncpg.Record | None, what: str) -> asyncpg.Record:
    """The row of a statement that always returns one (an INSERT … RETURNING, an UPDATE of a row held FOR
    UPDATE, an aggregate); RuntimeError naming `what` when it returned none."""
    if row is None:
        raise RuntimeError(f"{what}: the statement returned no row")
    return row
