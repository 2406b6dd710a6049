"""One bank's in-memory state, and the registry through which the banks of one process pay each other
(and, with a state folder, keep what changed on disk: bank_sandbox.persistence)."""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from bank_sandbox import data, persistence
from bank_sandbox.config import SandboxConfig
from bank_sandbox.consents import PAYMENT, Consent, ConsentBook
from bank_sandbox.models import Account, Customer, Draft, Payment, Transaction, utcnow
from bank_sandbox.protocol import ApiError

log = logging.getLogger("bank_sandbox")


class BankState:
    """Customers (built on first use, deterministically), consents, payments and the fault knobs."""

    def __init__(self, bank_id: str, config: SandboxConfig, anchor: datetime | None = None):
        self.bank_id = bank_id
        self.config = config
        # Histories end at the start of the day the bank started: two banks started the same day agree.
        self.anchor = anchor or utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
        self.catalogue = data.catalogue(config.seed, bank_id)
        self.profiles = {
            who.client_id: who
            for who in (data.profile(config.seed, config.team_id, index) for index in range(1, config.customers + 1))
        }
        self.consents = ConsentBook()
        self.payments: dict[str, Payment] = {}
        self.faults = config.faults()
        self.fault_rng = data.rng(config.seed, bank_id, "faults")
        self.down = False  # every API call answers 503
        # API requests that reached this bank since start (or the last reset), by path template:
        # what a test counts to bound how often the suite calls a failing bank (GET /__admin__/requests).
        self.requests: dict[str, int] = {}
        self.secret = secrets.token_bytes(32)  # signs this bank's tokens, and only them
        self._customers: dict[str, Customer] = {}
        self._generated: dict[str, dict[str, int]] = {}  # client id -> account id -> generated transactions
        # (client id, account id) -> the movements added since, as stored (persistence's cache)
        self.encoded_movements: dict[tuple[str, str], list[Any]] = {}
        # Called after a change that must outlive the process (the registry's save, when it has a file);
        # the app calls it after every request that may change something, `pay` at once.
        self.on_change: Callable[[], None] = lambda: None

    @property
    def manual_approval(self) -> bool:
        return self.config.approval_mode(self.bank_id) == "manual"

    def customer(self, client_id: str) -> Customer:
        customer = self._customers.get(client_id)
        if customer is None:
            who = self.profiles.get(client_id)
            if who is None:
                raise ApiError(404, f"Client {client_id} not found")
            customer = data.build_customer(
                self.config.seed, self.bank_id, who, self.catalogue, self.anchor, self.config.history_days
            )
            self._customers[client_id] = customer
            self._generated[client_id] = {
                account.account_id: len(account.transactions) for account in customer.accounts
            }
        return customer

    def built_customers(self) -> dict[str, Customer]:
        """The customers built so far (the others are as generated)."""
        return dict(self._customers)

    def generated_counts(self, client_id: str) -> dict[str, int]:
        """How many transactions each account of a built customer had when generated."""
        return dict(self._generated.get(client_id, {}))

    def account_numbers(self) -> Iterator[tuple[str, str]]:
        """(account number, customer id) of every account, without building the customers."""
        for who in self.profiles.values():
            for position in range(len(who.accounts)):
                yield data.account_number(self.config.seed, self.bank_id, who.index, position), who.client_id

    def pay(
        self,
        customer: Customer,
        consent: Consent,
        source: Account,
        target: tuple[Customer, Account],
        amount: Decimal,
        comment: str | None,
    ) -> Payment:
        """Move `amount` from `source` to `target` (at this bank or another), booking both sides at once."""
        if amount > source.balance:
            raise ApiError(400, "Insufficient funds")
        now = utcnow()
        creditor, target_account = target
        note = f": {comment}" if comment else ""
        source.book(Draft(now, "Debit", amount, f"Перевод клиенту {creditor.name}{note}"))
        target_account.book(Draft(now, "Credit", amount, f"Перевод от клиента {customer.name}{note}"))
        consent.payments.append((now, amount))
        payment = Payment(f"pay-{uuid.uuid4().hex[:12]}", customer.client_id, amount, now)
        consent.payment_ids.append(payment.payment_id)
        self.payments[payment.payment_id] = payment
        self.on_change()  # on disk before the answer, even one the fault knobs delay
        return payment

    def append_transactions(self, customer: Customer, account: Account, count: int) -> list[Transaction]:
        """`count` new movements dated now, the same ones for the same seed and history."""
        r = data.rng(
            self.config.seed, self.bank_id, customer.client_id, account.account_id, "extra", len(account.transactions)
        )
        now = utcnow()
        return [
            account.book(data.extra_activity(r, account, customer.city, now + timedelta(microseconds=i)))
            for i in range(count)
        ]

    def counts(self, customer: Customer) -> dict[str, Any]:
        by_account = {account.account_id: len(account.transactions) for account in customer.accounts}
        now = utcnow()
        return {
            "accounts": len(customer.accounts),
            "transactions": sum(by_account.values()),
            "transactions_by_account": by_account,
            "balances": sum(len(account.balances_json(now)) for account in customer.accounts),
            "agreements": len(customer.agreements),
            # payments this customer made at this bank, and payment consents asked for them
            "payments": sum(1 for p in self.payments.values() if p.client_id == customer.client_id),
            "payment_consents": self.consents.count(PAYMENT, customer.client_id),
        }


class Registry:
    """Which bank of this process holds each account number. A payment to another bank's account
    credits it at once through here, so the banks that pay each other run in one process (as
    `python -m bank_sandbox` and the launcher start them): banks in separate processes would not
    see each other's accounts ("Target account … not found in any bank").

    With a `store`, the registry keeps every bank's changes in that one file (a payment changes two
    banks at once): `restore` once every bank is added, then `save` after each change."""

    def __init__(self, store: persistence.StateFile | None = None) -> None:
        self._banks: dict[str, BankState] = {}
        self._owners: dict[str, tuple[BankState, str]] = {}
        self.store = store
        self._others: dict[str, Any] = {}  # stored banks this process does not serve: kept as they are

    def add(self, bank: BankState) -> None:
        if bank.bank_id in self._banks:
            raise ValueError(f"bank {bank.bank_id!r} is already registered")
        owners: dict[str, tuple[BankState, str]] = {}
        for number, client_id in bank.account_numbers():
            if number in self._owners or number in owners:
                raise ValueError(f"account number {number} of {bank.bank_id} is already taken: use another seed")
            owners[number] = (bank, client_id)
        self._banks[bank.bank_id] = bank
        self._owners.update(owners)
        bank.on_change = self.save

    def snapshot(self) -> dict[str, Any]:
        banks = {**self._others, **{bank_id: persistence.bank_snapshot(bank) for bank_id, bank in self._banks.items()}}
        return {"format": persistence.FORMAT, "version": persistence.VERSION, "banks": banks}

    def save(self) -> None:
        """Write every bank's changes to the store (nothing when they are already there, or no store)."""
        if self.store is not None:
            self.store.save(self.snapshot())

    def restore(self) -> None:
        """Load the store's banks into the banks added so far (call before serving them)."""
        if self.store is None:
            return
        document = self.store.load()
        if document is None:
            return
        stored = document.get("banks") or {}
        dropped: list[str] = []
        for bank_id, entry in stored.items():
            bank = self._banks.get(bank_id)
            if bank is None:
                self._others[bank_id] = entry
                continue
            expected = {name: getattr(bank.config, name) for name in persistence.DATA_FIELDS}
            if entry.get("data") != expected:
                dropped.append(f"{bank_id} was stored for {entry.get('data')}, now {expected}: it starts afresh")
                continue
            dropped += [f"{bank_id}: {problem}" for problem in persistence.restore_bank(bank, entry)]
        if dropped:
            self.store.keep_copy("; ".join(dropped))
        log.info(
            "bank state restored", extra={"path": self.store.path, "banks": sorted(set(stored) & set(self._banks))}
        )

    def locate(self, number: str, bank_code: str | None = None) -> tuple[Customer, Account] | None:
        """The customer and account holding `number` (at bank `bank_code`, when given)."""
        owner = self._owners.get(number)
        if owner is None or bank_code not in (None, owner[0].bank_id):
            return None
        customer = owner[0].customer(owner[1])
        account = customer.account_by_number(number)
        assert account is not None  # numbers are derived the same way for the registry and the customers
        return customer, account
