"""Configuration of the bank emulator: the team it serves, its sample data and its fault knobs.

One set of checks validates every value, whether it comes from the constructor, the environment
(`SandboxConfig.from_env`), the command line or the admin endpoint (`Faults`), so a bad value always
fails with a `ValueError` that names it.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from svclib.config import DEFAULT_TEAM_ID, DEFAULT_TEAM_SECRET, KNOWN_BANKS

APPROVAL_MODES = ("auto", "manual")
# Body forms of a payment-consent request a bank takes (docs/bank-api.md, "Payment consent"): the flat
# one (the default), only the nested Open Banking one (the flat one is answered 422 `body.data: Field
# required`, as some deployments do), or both.
PAYMENT_CONSENT_FORMS = ("flat", "nested", "both")
# The suite's own defaults for the known banks: the emulator listens where the suite looks by default.
DEFAULT_APPROVAL = {bank: spec["approval"] for bank, spec in KNOWN_BANKS.items()}
DEFAULT_PORTS = {bank: urlparse(spec["url"]).port for bank, spec in KNOWN_BANKS.items()}
# Customer numbers take three digits inside account numbers and transaction ids.
MAX_CUSTOMERS = 999

Check = Callable[[Any], "str | None"]


def _number(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "expected a finite number"
    return None


def _share(value: Any) -> str | None:
    return _number(value) or (None if 0 <= value <= 1 else "must be between 0 and 1")


def _non_negative(value: Any) -> str | None:
    return _number(value) or (None if value >= 0 else "must not be negative")


def _flag(value: Any) -> str | None:
    return None if isinstance(value, bool) else "expected true or false"


def _text(value: Any) -> str | None:
    return None if isinstance(value, str) and value.strip() else "expected a non-empty string"


def _whole(lo: int | None = None, hi: int | None = None) -> Check:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return "expected an integer"
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            return f"must be between {lo} and {hi}" if hi is not None else f"must be at least {lo}"
        return None

    return check


FAULT_CHECKS: dict[str, Check] = {
    "latency_ms": _non_negative,
    "payment_delay_ms": _non_negative,
    "error_rate": _share,
    "rate_limit_rate": _share,
    "sticky_awaiting": _flag,
    "refuse_payment_consents": _flag,
}
CONFIG_CHECKS: dict[str, Check] = {
    **FAULT_CHECKS,
    "team_id": _text,
    "team_secret": _text,
    "customers": _whole(1, MAX_CUSTOMERS),
    "token_ttl": _whole(0),  # 0: every token is born expired (handy to test refreshes)
    "seed": _whole(),
    "history_days": _whole(1, 3650),
}


def _problems(values: Mapping[str, Any], checks: Mapping[str, Check]) -> list[str]:
    return [
        f"{name}={values[name]!r}: {problem}"
        for name, check in checks.items()
        if (problem := check(values[name])) is not None
    ]


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean")


@dataclass(frozen=True)
class Faults:
    """The knobs a test may turn while a bank runs (`POST /__admin__/faults`)."""

    latency_ms: float = 0.0
    error_rate: float = 0.0
    rate_limit_rate: float = 0.0
    sticky_awaiting: bool = False
    # A payment is booked, then its answer waits this long: a caller can die after the bank acted
    # and before it learnt the outcome (the case an idempotent payment must reconcile).
    payment_delay_ms: float = 0.0
    # Payment-consent requests are answered 401 `Insufficient permissions` (a deployment that will not
    # take this call from the team's token).
    refuse_payment_consents: bool = False

    def __post_init__(self) -> None:
        problems = _problems(dataclasses.asdict(self), FAULT_CHECKS)
        if problems:
            raise ValueError("; ".join(problems))


# Environment variable -> (field, parser of its text).
ENVIRONMENT: dict[str, tuple[str, Callable[[str], Any]]] = {
    "BANK_SANDBOX_LATENCY_MS": ("latency_ms", float),
    "BANK_SANDBOX_ERROR_RATE": ("error_rate", float),
    "BANK_SANDBOX_RATE_LIMIT_RATE": ("rate_limit_rate", float),
    "BANK_SANDBOX_STICKY_AWAITING": ("sticky_awaiting", parse_bool),
    "BANK_SANDBOX_PAYMENT_DELAY_MS": ("payment_delay_ms", float),
    "BANK_SANDBOX_REFUSE_PAYMENT_CONSENTS": ("refuse_payment_consents", parse_bool),
    "BANK_SANDBOX_SEED": ("seed", int),
    "FINPULSE_TEAM_ID": ("team_id", str),
    "FINPULSE_TEAM_SECRET": ("team_secret", str),
}
_EXPECTED = {float: "a number", int: "an integer", parse_bool: "true or false"}


@dataclass
class SandboxConfig:
    team_id: str = DEFAULT_TEAM_ID
    team_secret: str = DEFAULT_TEAM_SECRET
    customers: int = 10  # customers <team>-1 ... <team>-<customers>
    latency_ms: float = 0.0  # added latency per request
    error_rate: float = 0.0  # share of requests answered 503 / 500
    rate_limit_rate: float = 0.0  # share of requests answered 429 with Retry-After
    sticky_awaiting: bool = False  # GET by request id keeps answering AwaitingAuthorization after signing
    payment_delay_ms: float = 0.0  # a booked payment's answer waits this long
    token_ttl: int = 86400
    seed: int = 42
    history_days: int = 365
    approval: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_APPROVAL))  # bank id -> auto | manual
    refuse_payment_consents: bool = False  # payment-consent requests answered 401 Insufficient permissions
    # bank id -> the payment-consent body form it takes (PAYMENT_CONSENT_FORMS); unnamed banks: flat
    payment_consent_form: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = _problems(dataclasses.asdict(self), CONFIG_CHECKS)
        problems += [
            f"approval[{bank!r}]={mode!r}: expected one of {', '.join(APPROVAL_MODES)}"
            for bank, mode in self.approval.items()
            if mode not in APPROVAL_MODES
        ]
        problems += [
            f"payment_consent_form[{bank!r}]={form!r}: expected one of {', '.join(PAYMENT_CONSENT_FORMS)}"
            for bank, form in self.payment_consent_form.items()
            if form not in PAYMENT_CONSENT_FORMS
        ]
        if problems:
            raise ValueError("invalid bank sandbox configuration: " + "; ".join(problems))

    def approval_mode(self, bank_id: str) -> str:
        """A bank not named in `approval` approves automatically."""
        return self.approval.get(bank_id, "auto")

    def payment_consent_form_of(self, bank_id: str) -> str:
        """The payment-consent body form `bank_id` takes (flat unless configured)."""
        return self.payment_consent_form.get(bank_id, "flat")

    def faults(self) -> Faults:
        return Faults(
            self.latency_ms,
            self.error_rate,
            self.rate_limit_rate,
            self.sticky_awaiting,
            self.payment_delay_ms,
            self.refuse_payment_consents,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SandboxConfig:
        """Defaults overridden by ENVIRONMENT's variables, the suite's FINPULSE_BANK_<ID>_APPROVAL and
        BANK_SANDBOX_PAYMENT_CONSENT_FORM ("sbank=nested,abank=both": banks taking another body form of
        the payment-consent request than the flat one)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        problems: list[str] = []
        for variable, (name, parse) in ENVIRONMENT.items():
            raw = env.get(variable, "").strip()
            if not raw:
                continue
            try:
                value = parse(raw)
            except ValueError:
                problems.append(f"{variable}={raw!r}: expected {_EXPECTED[parse]}")
                continue
            problem = CONFIG_CHECKS[name](value)
            if problem is None:
                values[name] = value
            else:
                problems.append(f"{variable}={raw!r}: {problem}")
        approval = dict(DEFAULT_APPROVAL)
        for bank in DEFAULT_APPROVAL:
            variable = f"FINPULSE_BANK_{bank.upper()}_APPROVAL"
            mode = env.get(variable, "").strip()
            if mode and mode not in APPROVAL_MODES:
                problems.append(f"{variable}={mode!r}: expected one of {', '.join(APPROVAL_MODES)}")
            elif mode:
                approval[bank] = mode
        forms: dict[str, str] = {}
        raw_forms = env.get("BANK_SANDBOX_PAYMENT_CONSENT_FORM", "").strip()
        for item in filter(None, (part.strip() for part in raw_forms.split(","))):
            bank, sep, form = (text.strip() for text in item.partition("="))
            if not sep or not bank or form not in PAYMENT_CONSENT_FORMS:
                problems.append(
                    f"BANK_SANDBOX_PAYMENT_CONSENT_FORM={raw_forms!r}: expected bank=form,... with form "
                    f"one of {', '.join(PAYMENT_CONSENT_FORMS)}, got {item!r}"
                )
                continue
            forms[bank] = form
        if problems:
            raise ValueError("invalid bank sandbox environment: " + "; ".join(problems))
        return cls(**values, approval=approval, payment_consent_form=forms)
