"""SQL of the banks' stored product catalogues (`bank_products`, `catalogue_state`)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Iterable
from decimal import Decimal

import asyncpg

_ERROR_LIMIT = 500


@dataclasses.dataclass(frozen=True)
class StoredProduct:
    bank_id: str
    product_id: str
    product_type: str
    product_name: str
    interest_rate: Decimal | None
    min_amount: Decimal | None
    max_amount: Decimal | None
    term_months: int | None
    commission: Decimal | None


@dataclasses.dataclass(frozen=True)
class CatalogueState:
    bank_id: str
    fetched_at: dt.datetime | None
    last_error: str | None
    last_error_at: dt.datetime | None


@dataclasses.dataclass(frozen=True)
class NewProduct:
    product: StoredProduct
    raw: dict


class CatalogueStorage:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def states(self, bank_ids: Iterable[str]) -> dict[str, CatalogueState]:
        rows = await self.pool.fetch(
            "SELECT bank_id, fetched_at, last_error, last_error_at FROM catalogue_state WHERE bank_id = ANY($1)",
            list(bank_ids),
        )
        return {r["bank_id"]: CatalogueState(**dict(r)) for r in rows}

    async def products(self, bank_ids: Iterable[str], product_type: str | None) -> list[StoredProduct]:
        rows = await self.pool.fetch(
            """
            SELECT bank_id, product_id, product_type, product_name, interest_rate, min_amount, max_amount,
                   term_months, commission
            FROM bank_products WHERE bank_id = ANY($1) AND ($2::text IS NULL OR product_type = $2)
            ORDER BY bank_id, product_id
            """,
            list(bank_ids),
            product_type,
        )
        return [StoredProduct(**dict(r)) for r in rows]

    async def replace(self, bank_id: str, products: list[NewProduct], fetched_at: dt.datetime) -> None:
        """A bank's whole catalogue as just read (products it no longer lists are dropped)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM bank_products WHERE bank_id = $1", bank_id)
            await conn.executemany(
                """
                INSERT INTO bank_products (bank_id, product_id, product_type, product_name, interest_rate,
                                           min_amount, max_amount, term_months, commission, raw, fetched_at)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, $11)
                """,
                [
                    (
                        bank_id,
                        p.product.product_id,
                        p.product.product_type,
                        p.product.product_name,
                        p.product.interest_rate,
                        p.product.min_amount,
                        p.product.max_amount,
                        p.product.term_months,
                        p.product.commission,
                        json.dumps(p.raw, default=str),
                        fetched_at,
                    )
                    for p in products
                ],
            )
            await conn.execute(
                """
                INSERT INTO catalogue_state (bank_id, fetched_at, last_error, last_error_at)
                VALUES ($1, $2, NULL, NULL)
                ON CONFLICT (bank_id) DO UPDATE SET fetched_at = EXCLUDED.fetched_at, last_error = NULL,
                    last_error_at = NULL
                """,
                bank_id,
                fetched_at,
            )

    async def record_failure(self, bank_id: str, error: str, at: dt.datetime) -> None:
        await self.pool.execute(
            """
            INSERT INTO catalogue_state (bank_id, last_error, last_error_at) VALUES ($1, $2, $3)
            ON CONFLICT (bank_id) DO UPDATE SET last_error = EXCLUDED.last_error, last_error_at = EXCLUDED.last_error_at
            """,
            bank_id,
            error[:_ERROR_LIMIT],
            at,
        )
