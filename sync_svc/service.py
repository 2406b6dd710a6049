"""Sync domain logic (no gRPC): the bank list and job queueing."""
from __future__ import annotations

import dataclasses
import logging
from typing import Awaitable, Callable, Iterable

from svclib.config import BankConfig
from svclib.errors import InvalidArgument, NotFound, require

from sync_svc.storage import JobRef, SyncStorage

log = logging.getLogger("sync_svc")

# user id -> ids of the banks where the user has an approved account consent (asked of consent_svc).
ConnectedBanks = Callable[[str], Awaitable[set[str]]]


@dataclasses.dataclass(frozen=True)
class BankListing:
    bank: BankConfig
    connected: bool


class SyncService:
    def __init__(self, storage: SyncStorage, banks: Iterable[BankConfig], connected_banks: ConnectedBanks):
        self.storage = storage
        self.banks = tuple(banks)
        self.connected_banks = connected_banks

    async def list_banks(self, user_id: str | None) -> list[BankListing]:
        connected: set[str] = set()
        if user_id is not None and user_id.strip():
            connected = await self.connected_banks(require(user_id, "user_id"))
        return [BankListing(bank, bank.id in connected) for bank in self.banks]

    async def start_sync(self, user_id: str, bank_ids: list[str], reason: str) -> list[JobRef]:
        user_id = require(user_id, "user_id")
        known = {bank.id for bank in self.banks}
        if len(set(bank_ids)) != len(bank_ids):
            raise InvalidArgument("bank_ids: a bank is named twice", "bank_ids")
        unknown = [b for b in bank_ids if b not in known]
        if unknown:
            raise NotFound(f"Bank '{unknown[0]}' is not supported.")
        connected = await self.connected_banks(user_id)
        targets = bank_ids or [bank.id for bank in self.banks if bank.id in connected]
        not_connected = [b for b in targets if b not in connected]
        if not_connected:
            raise InvalidArgument(
                f"bank_ids: no approved account consent at {', '.join(not_connected)} for this user", "bank_ids")
        jobs = [await self.storage.enqueue(user_id, bank_id, reason or "refresh") for bank_id in targets]
        log.info("sync requested", extra={"banks": targets, "joined": [j.bank_id for j in jobs if j.joined]})
        return jobs
