"""The emulator's mutable state on disk (`python -m bank_sandbox --state-dir DIR`).

One JSON file, `DIR/banks.json`, holds what changed after start at every bank of the process:
consents of every kind (terms, status, uses), payment records, the movements booked onto generated
accounts after start (payments, both sides; transactions added through the admin endpoint), the
fault knobs and outage switch set through the admin endpoint, and what the generated data and the
tokens depend on (the day the bank started, its token-signing key). The generated customers,
accounts, histories and products are not stored: they are rebuilt from the seed and that day.

The file is rewritten after every change, before the answer leaves (temporary file, fsync, rename,
fsync of the folder), so a kill -9 right after an answer loses nothing; it is read at start. One
process at a time uses a folder (`DIR/banks.lock`).

Records are (de)serialized from the dataclasses' own fields, so a field added to a consent, its terms,
a payment or a movement is stored without changes here, and a file written before the field existed
loads with the field's default.
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import fcntl
import json
import logging
import os
import shutil
import types
import typing
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from bank_sandbox.config import Faults
from bank_sandbox.consents import KINDS, Consent, ConsentBook
from bank_sandbox.models import Draft, Payment

if TYPE_CHECKING:
    from bank_sandbox.state import BankState

log = logging.getLogger("bank_sandbox")

FORMAT = "finpulse-bank-sandbox-state"
VERSION = 1
FILE_NAME = "banks.json"
LOCK_NAME = "banks.lock"
# What the generated data depends on: a bank stored under other values is another bank.
DATA_FIELDS = ("team_id", "seed", "history_days")


class StateError(Exception):
    """The state folder cannot be used (unreadable file, another process holds it)."""


# ------------------------------------------------------------------------------------ codec


def encode(value: Any) -> Any:
    """A JSON value for a dataclass instance (all its fields), enum (its name), Decimal, datetime, date,
    list, tuple or dict of those."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [encode(item) for item in value]
    if isinstance(value, dict):
        return {str(key): encode(item) for key, item in value.items()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__}")


def decode(kind: Any, raw: Any) -> Any:
    """The inverse of `encode` for a value of type `kind` (a type hint)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any:
        return raw
    if origin in (typing.Union, types.UnionType):
        if raw is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return decode(option, raw)
            except (TypeError, ValueError, KeyError, ArithmeticError) as exc:
                errors.append(exc)
        raise ValueError(f"{raw!r} fits none of {kind}: {errors}")
    if origin is list:
        return [decode(args[0], item) for item in _sequence(raw)]
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(decode(args[0], item) for item in _sequence(raw))
        items = _sequence(raw)
        if len(items) != len(args):
            raise ValueError(f"expected {len(args)} items, got {items!r}")
        return tuple(decode(a, item) for a, item in zip(args, items, strict=True))
    if origin is dict:
        if not isinstance(raw, dict):
            raise TypeError(f"expected an object, got {raw!r}")
        return {decode(args[0], key): decode(args[1], item) for key, item in raw.items()}
    if kind is Decimal:
        return Decimal(str(raw))
    if kind is datetime:
        moment = datetime.fromisoformat(raw)
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    if kind is date:
        return date.fromisoformat(raw)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return kind[raw]
    if dataclasses.is_dataclass(kind):
        return decode_record(kind, raw)
    if kind is float and isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return float(raw)
    if kind in (str, int, bool):
        if not isinstance(raw, kind) or (kind is int and isinstance(raw, bool)):
            raise TypeError(f"expected {kind.__name__}, got {raw!r}")
        return raw
    raise TypeError(f"cannot read a {kind}")


def _sequence(raw: Any) -> list[Any]:
    if not isinstance(raw, list):
        raise TypeError(f"expected a list, got {raw!r}")
    return raw


def decode_record(cls: type, raw: Any, **given: Any) -> Any:
    """An instance of the dataclass `cls` from `encode`'s object: stored fields are read by their type,
    missing ones take their defaults, unknown ones are ignored; `given` fields are taken as they are."""
    if not isinstance(raw, dict):
        raise TypeError(f"expected an object for {cls.__name__}, got {raw!r}")
    hints = typing.get_type_hints(cls)
    now: dict[str, Any] = {}
    later: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in given:
            value = given[f.name]
        elif f.name in raw:
            value = decode(hints[f.name], raw[f.name])
        elif f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
            continue
        else:
            raise ValueError(f"{cls.__name__}.{f.name} is not stored and has no default")
        (now if f.init else later)[f.name] = value
    record = cls(**now)
    for name, value in later.items():
        object.__setattr__(record, name, value)  # frozen or not
    return record


# ------------------------------------------------------------------------------------ one bank

KINDS_BY_NAME = {kind.name: kind for kind in KINDS}


def consents_of(book: ConsentBook) -> list[Consent]:
    """Every consent of the book once, oldest first (it indexes each by request and consent id)."""
    return list({id(c): c for c in book._by_id.values()}.values())  # no public listing


def encode_consent(consent: Consent) -> dict[str, Any]:
    stored = {f.name: encode(getattr(consent, f.name)) for f in dataclasses.fields(consent) if f.name != "kind"}
    stored["kind"] = consent.kind.name  # its terms' class comes with it
    return stored


def decode_consent(raw: dict[str, Any]) -> Consent:
    kind = KINDS_BY_NAME[raw["kind"]]
    terms = decode_record(kind.terms, raw.get("terms", {}))
    return decode_record(Consent, raw, kind=kind, terms=terms)


def bank_snapshot(bank: BankState) -> dict[str, Any]:
    """What bank `bank` has to keep: everything that changed after it started."""
    accounts: dict[str, dict[str, Any]] = {}
    for client_id, customer in bank.built_customers().items():
        generated = bank.generated_counts(client_id)
        for account in customer.accounts:
            first = generated.get(account.account_id, len(account.transactions))
            if len(account.transactions) > first:
                accounts.setdefault(client_id, {})[account.account_id] = {
                    "generated": first,
                    "movements": _movements(bank, client_id, account.account_id, account.transactions[first:]),
                }
    config = bank.config
    return {
        "data": {name: getattr(config, name) for name in DATA_FIELDS},
        "anchor": bank.anchor.isoformat(),
        "secret": bank.secret.hex(),
        "faults": {"configured": encode(config.faults()), "current": encode(bank.faults), "down": bank.down},
        "consents": [encode_consent(c) for c in consents_of(bank.consents)],
        "payments": [encode(p) for p in bank.payments.values()],
        "accounts": accounts,
    }


def _movements(bank: BankState, client_id: str, account_id: str, booked: list[Any]) -> list[Any]:
    """The encoded drafts of `booked`, the movements added to an account since it was generated. An
    account only ever appends frozen transactions: each is encoded once (an account topped up with
    thousands of transactions is not encoded again on every change)."""
    cached: list[Any] = bank.encoded_movements.setdefault((client_id, account_id), [])
    if len(cached) > len(booked):
        cached.clear()  # cannot happen while accounts only append; start over if it ever does
    cached.extend(encode(tx.draft) for tx in booked[len(cached) :])
    return cached


def restore_bank(bank: BankState, stored: dict[str, Any]) -> list[str]:
    """Put `stored` (a `bank_snapshot`) back into `bank`, just created; the problems met, each skipped."""
    problems: list[str] = []
    bank.anchor = decode(datetime, stored["anchor"])  # before any customer is built
    bank.secret = bytes.fromhex(stored["secret"])
    faults = stored.get("faults") or {}
    try:
        # Knobs set through the admin endpoint come back unless the emulator was started with other
        # knobs since (those win). Compared as records: a knob added since counts at its default.
        if decode_record(Faults, faults.get("configured", {})) == bank.config.faults():
            bank.faults = decode_record(Faults, faults.get("current", {}))
            bank.down = bool(faults.get("down", False))
    except (TypeError, ValueError, KeyError) as exc:
        problems.append(f"fault knobs: {exc}")
    for raw in stored.get("consents", []):
        try:
            consent = decode_consent(raw)
        except (TypeError, ValueError, KeyError, ArithmeticError) as exc:
            problems.append(f"consent {raw.get('request_id') if isinstance(raw, dict) else raw!r}: {exc}")
            continue
        bank.consents._index(consent)  # the book has no public insert
    for raw in stored.get("payments", []):
        try:
            payment = decode_record(Payment, raw)
        except (TypeError, ValueError, KeyError, ArithmeticError) as exc:
            problems.append(f"payment {raw.get('payment_id') if isinstance(raw, dict) else raw!r}: {exc}")
            continue
        bank.payments[payment.payment_id] = payment
    for client_id, by_account in (stored.get("accounts") or {}).items():
        try:
            customer = bank.customer(client_id)
        except Exception as exc:  # noqa: BLE001 - an ApiError 404: fewer customers than when it was stored
            problems.append(f"movements of {client_id}: {exc}")
            continue
        for account_id, entry in by_account.items():
            account = customer.account(account_id)
            if account is None:
                problems.append(f"movements of {client_id}'s account {account_id}: no such account")
                continue
            if entry.get("generated") != len(account.transactions):
                problems.append(
                    f"{client_id}'s account {account_id} was generated with {entry.get('generated')} "
                    f"transactions, now {len(account.transactions)}: its later ones are renumbered"
                )
            for raw in entry.get("movements", []):
                try:
                    account.book(decode_record(Draft, raw))
                except (TypeError, ValueError, KeyError, ArithmeticError) as exc:
                    problems.append(f"a movement of {client_id}'s account {account_id}: {exc}")
    return problems


# ------------------------------------------------------------------------------------ the file


class StateFile:
    """`DIR/banks.json`, held by this process (a lock on `DIR/banks.lock`) until `close`."""

    def __init__(self, directory: str):
        self.directory = os.path.abspath(directory)
        self.path = os.path.join(self.directory, FILE_NAME)
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        self._lock = os.open(os.path.join(self.directory, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise StateError(f"another bank emulator uses {self.directory}") from None
            raise
        self._written: bytes | None = None

    def load(self) -> dict[str, Any] | None:
        """The stored document, None when there is none yet; StateError when it cannot be used."""
        try:
            with open(self.path, "rb") as f:
                content = f.read()
        except FileNotFoundError:
            return None
        try:
            document = json.loads(content)
        except ValueError as exc:
            raise StateError(f"{self.path} is not valid JSON ({exc}): move it away to start the banks afresh") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise StateError(f"{self.path} is not a bank emulator state file: move it away to start afresh")
        if document.get("version") != VERSION:
            raise StateError(f"{self.path} has version {document.get('version')!r}, this emulator reads {VERSION}")
        self._written = content
        return document

    def keep_copy(self, reason: str) -> str | None:
        """Copy the file aside before a start that drops some of it; the copy's path."""
        if not os.path.exists(self.path):
            return None
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        copy = f"{self.path}.{stamp}.bak"
        shutil.copy2(self.path, copy)
        log.warning("bank state: %s; the file as it was is kept in %s", reason, copy)
        return copy

    def save(self, document: dict[str, Any]) -> bool:
        """Write `document` atomically and durably unless the file already holds it; whether it wrote."""
        content = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
        if content == self._written:
            return False
        temporary = f"{self.path}.{os.getpid()}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, self.path)
        folder = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(folder)  # the rename itself survives a crash of the machine
        finally:
            os.close(folder)
        self._written = content
        return True

    def close(self) -> None:
        if self._lock >= 0:
            os.close(self._lock)  # releases the lock
            self._lock = -1
