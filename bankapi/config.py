"""What `bankapi` needs to know of a bank and of the team calling it, given by its caller.

`bankapi` reads no environment and no suite settings: the caller builds these (the suite's services
from their settings, tests and benchmarks directly) and passes them to `BankClient` /
`BankClients` with the call options (timeout, retries, hooks).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BankEndpoint:
    """One bank's Open Banking API."""

    id: str  # e.g. "vbank"; in messages, logs and call records
    base_url: str | None  # None: not configured (its client raises UnknownBank)
    approval_mode: str = "auto"  # "auto": the bank approves consents itself; "manual": the customer does


@dataclass(frozen=True)
class TeamCredentials:
    """The team's credentials at every bank: `client_id` (the team code, e.g. team200, also sent as
    `X-Requesting-Bank` / `requesting_bank`) and `client_secret` get the bank token; `name` is shown to
    the customer in consent requests."""

    client_id: str
    client_secret: str
    name: str = "FinPulse"
