"""The banks' public product catalogues (no gRPC): stored copies, refreshed from the banks when old.

Rules:
- A bank's catalogue is read with the bank token only (`GET /products`, every product type at once)
  and stored whole (`CatalogueStorage.replace`).
- It is refreshed when it is older than `max_age` (6 hours) or was never read, at most once per
  `retry_every` (5 minutes) after a failed refresh, by one caller at a time per process.
- A caller waits for a refresh at most `wait` seconds (longer when nothing is stored yet); past that,
  or when the bank fails, the stored copy is answered (the refresh goes on in the background and its
  failure is recorded with the bank's state). A catalogue changes rarely; an offer computed from a
  copy a few hours old is still a real offer, and no answer waits on a bank that is down.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from svclib.config import BankConfig
from svclib.errors import InvalidArgument, NotFound
from sync_svc.catalogue_storage import CatalogueState, CatalogueStorage, NewProduct, StoredProduct

log = logging.getLogger("sync_svc.catalogue")

PRODUCT_TYPES = ("loan", "deposit", "card")
# Keys a bank may name a one-off fee with (the sandbox's catalogue has none).
_COMMISSION_KEYS = ("commission", "fee", "arrangementFee", "arrangement_fee", "issueFee")

# bank id -> the bank's catalogue as bankapi models (objects with product_id, product_type, ... and raw)
FetchCatalogue = Callable[[str], Awaitable[list[Any]]]


def _decimal(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        result = Decimal(str(value))
    except InvalidOperation:
        return None
    return result if result.is_finite() else None


def stored_product(bank_id: str, item: Any) -> NewProduct | None:
    """A bankapi catalogue entry as stored; None for an entry without an id or a type."""
    raw: Mapping[str, Any] = getattr(item, "raw", None) or {}
    product_type = (item.product_type or "").strip().lower()
    if not item.product_id or not product_type:
        return None
    commission = next((_decimal(raw[k]) for k in _COMMISSION_KEYS if raw.get(k) is not None), None)
    return NewProduct(
        StoredProduct(
            bank_id=bank_id,
            product_id=str(item.product_id)[:200],
            product_type=product_type[:32],
            product_name=(item.product_name or "")[:300],
            interest_rate=item.interest_rate,
            min_amount=item.min_amount,
            max_amount=item.max_amount,
            term_months=item.term_months,
            commission=commission,
        ),
        dict(raw),
    )


class Catalogues:
    def __init__(
        self,
        storage: CatalogueStorage,
        banks: Iterable[BankConfig],
        fetch: FetchCatalogue,
        *,
        max_age: dt.timedelta = dt.timedelta(hours=6),
        retry_every: dt.timedelta = dt.timedelta(minutes=5),
        wait: float = 2.0,
        first_wait: float = 8.0,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ):
        self.storage = storage
        self.banks = [b for b in banks]
        self.fetch = fetch
        self.max_age = max_age
        self.retry_every = retry_every
        self.wait = wait
        self.first_wait = first_wait
        self.clock = clock
        self._refreshing: dict[str, asyncio.Task] = {}

    def _due(self, state: CatalogueState | None, now: dt.datetime) -> bool:
        if state is not None and state.last_error_at is not None and now - state.last_error_at < self.retry_every:
            return False
        return state is None or state.fetched_at is None or now - state.fetched_at >= self.max_age

    async def products(
        self, bank_ids: list[str], product_type: str
    ) -> tuple[list[StoredProduct], list[tuple[str, CatalogueState | None]]]:
        """The stored products of `bank_ids` (every configured bank with a URL when empty), of one type
        or all, refreshing old catalogues first (see the module docstring); and each bank's state."""
        configured = {b.id: b for b in self.banks}
        for bank_id in bank_ids:
            if bank_id not in configured:
                raise NotFound(
                    f"Bank '{bank_id}' is not supported.", reason="BANK_NOT_FOUND", metadata={"bank_id": bank_id}
                )
        if product_type and product_type not in PRODUCT_TYPES:
            raise InvalidArgument(
                f"product_type: expected one of {', '.join(PRODUCT_TYPES)}", "product_type", reason="INVALID_VALUE"
            )
        wanted = bank_ids or [b.id for b in self.banks if b.base_url]
        now = self.clock()
        states = await self.storage.states(wanted)
        due = [b for b in wanted if configured[b].base_url and self._due(states.get(b), now)]
        if due:
            tasks = [self._refresh_task(b) for b in due]
            wait = (
                self.first_wait
                if any(states.get(b) is None or states[b].fetched_at is None for b in due)
                else self.wait
            )
            await asyncio.wait(tasks, timeout=wait)
            states = await self.storage.states(wanted)
        order = {b: i for i, b in enumerate(wanted)}
        products = sorted(
            await self.storage.products(wanted, product_type or None), key=lambda p: (order[p.bank_id], p.product_id)
        )
        return products, [(b, states.get(b)) for b in wanted]

    def _refresh_task(self, bank_id: str) -> asyncio.Task:
        task = self._refreshing.get(bank_id)
        if task is None or task.done():
            task = self._refreshing[bank_id] = asyncio.create_task(self._refresh(bank_id), name=f"catalogue-{bank_id}")
        return task

    async def _refresh(self, bank_id: str) -> None:
        try:
            items = await self.fetch(bank_id)
            products = [p for p in (stored_product(bank_id, item) for item in items) if p is not None]
            await self.storage.replace(bank_id, products, self.clock())
            log.info("catalogue refreshed", extra={"bank_id": bank_id, "products": len(products)})
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bank or database failure: keep the stored copy
            log.warning("catalogue refresh failed", extra={"bank_id": bank_id, "error": str(exc)})
            try:
                await self.storage.record_failure(bank_id, str(exc) or type(exc).__name__, self.clock())
            except Exception:  # noqa: BLE001
                log.warning("could not record the catalogue failure", extra={"bank_id": bank_id})

    async def close(self) -> None:
        for task in self._refreshing.values():
            task.cancel()
        await asyncio.gather(*self._refreshing.values(), return_exceptions=True)
