"""Configuration from FINPULSE_* environment variables, validated once at start-up: the common part.

Every process reads the settings all of them share through `load_settings()`: environment, stores,
the team and its banks, the services' addresses, logging, shutdown, timeouts, internal secret. What
only one process needs is its own section, a dataclass read in its own module with the same
`EnvReader`: the gateway's (`gateway/settings.py`: listen address, CORS, tokens, per-user limits),
sync_svc's (`sync_svc/settings.py`: workers, bank rate limit) and dashboard_svc's
(`dashboard_svc/settings.py`: base currency, safety buffer); a service declares its section loader
in its `ServiceSpec` (svclib.runtime), which reads it at start next to these. A bad or missing value
raises `ConfigError` listing every problem at once, each naming its variable, so a process fails
fast with a message an operator can act on.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import TypeVar
from urllib.parse import urlparse

DEFAULT_TEAM_ID = "team200"
# Development-only secret shared by the local bank emulator and the suite (shown in the README).
DEFAULT_TEAM_SECRET = "finpulse-dev-secret"

# Known banks of the sandbox, in the order the frontend lists them, with local emulator defaults.
KNOWN_BANKS: dict[str, dict[str, str]] = {
    "vbank": {"name": "VBank", "url": "http://127.0.0.1:9101", "approval": "auto"},
    "abank": {"name": "ABank", "url": "http://127.0.0.1:9102", "approval": "auto"},
    "sbank": {"name": "SBank", "url": "http://127.0.0.1:9103", "approval": "manual"},
}

SERVICE_PORTS = {"onboarding": 50051, "consent": 50052, "sync": 50053, "dashboard": 50054}

_ID_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


class ConfigError(Exception):
    """One or more configuration values are bad; the message lists each with its variable."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n  - " + "\n  - ".join(problems))


@dataclasses.dataclass(frozen=True)
class BankConfig:
    id: str
    name: str
    base_url: str | None  # None: not configured (listed as missing_url)
    approval_mode: str  # "auto" | "manual"
    # Template of the page where the customer approves a manual consent ({request_id}, {client_id}).
    approval_url_template: str | None = None

    def approval_url(self, request_id: str, client_id: str) -> str | None:
        if not self.approval_url_template:
            return None
        return self.approval_url_template.format(
            request_id=request_id, client_id=client_id, base_url=self.base_url or ""
        )


@dataclasses.dataclass(frozen=True)
class TeamCredentials:
    client_id: str  # team code, e.g. team200; also X-Requesting-Bank
    client_secret: str
    name: str = "FinPulse"


@dataclasses.dataclass(frozen=True)
class Settings:
    env: str  # "local" | "production"
    database_url: str | None  # None: embedded Postgres (local mode only)
    redis_url: str | None  # None: embedded Redis (local mode only)
    redis_prefix: str  # every key the suite writes starts with it (several suites can share one Redis)
    team: TeamCredentials
    banks: tuple[BankConfig, ...]
    service_addrs: Mapping[str, str]  # service name -> host:port of its gRPC server
    grpc_host: str
    grpc_port: int | None  # override of this process's own port (else SERVICE_PORTS)
    log_level: str
    shutdown_grace: float
    bank_timeout: float
    bank_max_retries: int
    migrate_on_start: bool
    data_dir: str  # where embedded Postgres/Redis keep their data
    rpc_timeout: float  # deadline of a service-to-service or gateway-to-service call
    # service name -> host:port where that service serves its Prometheus metrics over HTTP (None: off)
    metrics_addrs: Mapping[str, str | None] = dataclasses.field(default_factory=dict)
    startup_wait: float = 60.0  # seconds a starting service waits for its database before it exits 1
    # Language of texts for people when a request's Accept-Language names none we have (svclib.i18n).
    default_language: str = "ru"
    # Signs and verifies the statements of calls between the suite's processes (svclib.internal_auth);
    # None in local mode: a secret kept under data_dir (svclib.localsecrets) is used.
    internal_secret: str | None = None
    # service name -> the URL that service connects with (FINPULSE_<SVC>_DATABASE_URL: its own Postgres
    # role, which its migrations create and grant); unset: the service uses `database_url`
    service_database_urls: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def is_local(self) -> bool:
        return self.env == "local"

    def bank(self, bank_id: str) -> BankConfig | None:
        for bank in self.banks:
            if bank.id == bank_id:
                return bank
        return None

    def database_url_for(self, service: str) -> str | None:
        """The URL `service` connects with: its own (FINPULSE_<SVC>_DATABASE_URL), else the shared one."""
        return self.service_database_urls.get(service) or self.database_url

    def shutdown_grace_for(self, calls_banks: bool) -> float:
        """Seconds in-flight calls get at shutdown: the configured grace, and for a service that calls
        the banks at least two bank timeouts (a payment's consent and payment calls), so a payment in
        flight finishes and answers instead of a 503 for something the bank already did."""
        return max(self.shutdown_grace, 2 * self.bank_timeout + 1) if calls_banks else self.shutdown_grace

    def resolved_internal_secret(self) -> str:
        """The internal secret: configured, or (local mode) the one kept under the data dir."""
        if self.internal_secret:
            return self.internal_secret
        if not self.is_local:
            raise ConfigError(
                [
                    "FINPULSE_INTERNAL_SECRET: required when FINPULSE_ENV=production (every service and "
                    "the gateway sign and verify their calls to each other with it)"
                ]
            )
        from svclib.localsecrets import local_secret

        return local_secret(self.data_dir, "internal-secret")

    def port_for(self, service: str) -> int:
        if self.grpc_port is not None:
            return self.grpc_port
        return SERVICE_PORTS[service]


class EnvReader:
    """Reads FINPULSE_* variables, each checked; `problems` collects what is wrong, each naming its variable."""

    def __init__(self, environ: Mapping[str, str]):
        self.env = environ
        self.problems: list[str] = []

    def text(self, name: str, default: str | None = None) -> str | None:
        value = self.env.get(name)
        if value is None or value.strip() == "":
            return default
        return value.strip()

    def integer(self, name: str, default: int, lo: int, hi: int) -> int:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            self.problems.append(f"{name}={raw!r}: not an integer")
            return default
        if not lo <= value <= hi:
            self.problems.append(f"{name}={value}: must be between {lo} and {hi}")
        return value

    def number(self, name: str, default: float, lo: float, hi: float) -> float:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            self.problems.append(f"{name}={raw!r}: not a number")
            return default
        if not lo <= value <= hi:
            self.problems.append(f"{name}={value}: must be between {lo} and {hi}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        raw = self.text(name)
        if raw is None:
            return default
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        self.problems.append(f"{name}={raw!r}: expected true/false")
        return default

    def url(self, name: str, schemes: tuple[str, ...]) -> str | None:
        raw = self.text(name)
        if raw is None:
            return None
        parsed = urlparse(raw)
        if parsed.scheme not in schemes:
            got = parsed.scheme or "none"
            self.problems.append(f"{name}: scheme must be one of {', '.join(schemes)} (got {got!r})")
        return raw

    def currency(self, name: str, default: str) -> str:
        raw = (self.text(name, default) or default).upper()
        if not re.fullmatch(r"[A-Z]{3}", raw):
            self.problems.append(f"{name}={raw!r}: expected a three-letter currency code")
        return raw

    def money(self, name: str, default: str) -> Decimal:
        raw = self.text(name, default) or default
        try:
            value = Decimal(raw)
        except InvalidOperation:
            self.problems.append(f"{name}={raw!r}: not a decimal amount")
            return Decimal(default)
        if not value.is_finite() or value < 0 or value != value.quantize(Decimal("0.01")):
            self.problems.append(f"{name}={raw!r}: expected a non-negative amount with at most two decimals")
        return value

    def addr(self, name: str, default: str) -> str:
        raw = self.text(name, default)
        host, sep, port = raw.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            self.problems.append(f"{name}={raw!r}: expected host:port")
        return raw


T = TypeVar("T")


def load_section(read: Callable[[EnvReader], T], environ: Mapping[str, str] | None = None) -> T:
    """A process's own section of the settings: `read` builds it from an `EnvReader`; raises
    `ConfigError` with every problem it found."""
    r = EnvReader(os.environ if environ is None else environ)
    section = read(r)
    if r.problems:
        raise ConfigError(r.problems)
    return section


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    r = EnvReader(os.environ if environ is None else environ)
    env = r.text("FINPULSE_ENV", "local")
    if env not in ("local", "production"):
        r.problems.append(f"FINPULSE_ENV={env!r}: expected 'local' or 'production'")
    database_url = r.url("FINPULSE_DATABASE_URL", ("postgres", "postgresql"))
    redis_url = r.url("FINPULSE_REDIS_URL", ("redis", "rediss", "unix"))
    service_database_urls = {
        name: url
        for name in SERVICE_PORTS
        if (url := r.url(f"FINPULSE_{name.upper()}_DATABASE_URL", ("postgres", "postgresql"))) is not None
    }
    for name, url in service_database_urls.items():
        if not urlparse(url).username:
            r.problems.append(
                f"FINPULSE_{name.upper()}_DATABASE_URL: must name the service's own role "
                "(postgresql://ROLE:PASSWORD@host:port/db)"
            )
    if env == "production":
        # A service needs FINPULSE_DATABASE_URL or its own FINPULSE_<SVC>_DATABASE_URL (checked by
        # svclib.runtime, which knows the service); the gateway needs no database.
        if redis_url is None:
            r.problems.append("FINPULSE_REDIS_URL: required when FINPULSE_ENV=production")

    team_id = r.text("FINPULSE_TEAM_ID", DEFAULT_TEAM_ID)
    # Production: required by the services that call the banks (svclib.runtime checks), and given to
    # those only; the gateway, the other services and migrations never see it.
    team_secret = r.text("FINPULSE_TEAM_SECRET", DEFAULT_TEAM_SECRET if env == "local" else None)
    team = TeamCredentials(team_id, team_secret or "", r.text("FINPULSE_TEAM_NAME", "FinPulse"))

    bank_ids = [b.strip() for b in (r.text("FINPULSE_BANKS", ",".join(KNOWN_BANKS)) or "").split(",") if b.strip()]
    if not bank_ids:
        r.problems.append("FINPULSE_BANKS: at least one bank id is needed")
    if len(set(bank_ids)) != len(bank_ids):
        r.problems.append(f"FINPULSE_BANKS: duplicate bank id in {bank_ids}")
    banks = []
    for bank_id in bank_ids:
        if not _ID_RE.match(bank_id):
            r.problems.append(f"FINPULSE_BANKS: bank id {bank_id!r} must be lowercase letters, digits, - or _")
            continue
        known = KNOWN_BANKS.get(bank_id, {})
        prefix = f"FINPULSE_BANK_{bank_id.upper().replace('-', '_')}_"
        url = r.url(prefix + "URL", ("http", "https"))
        if url is None and env == "local":
            url = known.get("url")
        approval = r.text(prefix + "APPROVAL", known.get("approval", "auto"))
        if approval not in ("auto", "manual"):
            r.problems.append(f"{prefix}APPROVAL={approval!r}: expected 'auto' or 'manual'")
        banks.append(
            BankConfig(
                id=bank_id,
                name=r.text(prefix + "NAME", known.get("name", bank_id)),
                base_url=url.rstrip("/") if url else None,
                approval_mode=approval,
                approval_url_template=r.text(
                    prefix + "APPROVAL_URL",
                    "{base_url}/client/consents/{request_id}" if env == "local" and url else None,
                ),
            )
        )

    service_addrs = {
        name: r.addr(f"FINPULSE_{name.upper()}_ADDR", f"127.0.0.1:{port}") for name, port in SERVICE_PORTS.items()
    }
    metrics_addrs = {  # unset: that service serves no metrics
        name: r.addr(f"FINPULSE_{name.upper()}_METRICS_ADDR", "")
        if r.text(f"FINPULSE_{name.upper()}_METRICS_ADDR") is not None
        else None
        for name in SERVICE_PORTS
    }
    grpc_port_raw = r.text("FINPULSE_GRPC_PORT")
    grpc_port = r.integer("FINPULSE_GRPC_PORT", 0, 1, 65535) if grpc_port_raw is not None else None
    log_level = (r.text("FINPULSE_LOG_LEVEL", "INFO") or "INFO").upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        r.problems.append(f"FINPULSE_LOG_LEVEL={log_level!r}: expected DEBUG, INFO, WARNING or ERROR")
    internal_secret = r.text("FINPULSE_INTERNAL_SECRET")
    if internal_secret is not None and len(internal_secret) < 32:
        r.problems.append("FINPULSE_INTERNAL_SECRET: must be at least 32 characters")
    default_language = (r.text("FINPULSE_DEFAULT_LANGUAGE", "ru") or "ru").lower()
    if default_language not in ("ru", "en"):
        r.problems.append(f"FINPULSE_DEFAULT_LANGUAGE={default_language!r}: expected 'ru' or 'en'")

    settings = Settings(
        env=env,
        default_language=default_language,
        internal_secret=internal_secret,
        database_url=database_url,
        redis_url=redis_url,
        redis_prefix=r.text("FINPULSE_REDIS_PREFIX", "finpulse:"),
        team=team,
        banks=tuple(banks),
        service_addrs=service_addrs,
        # Local runs listen on loopback only; containers (production) on every interface.
        grpc_host=r.text("FINPULSE_GRPC_HOST", "127.0.0.1" if env == "local" else "0.0.0.0"),
        grpc_port=grpc_port,
        log_level=log_level,
        shutdown_grace=r.number("FINPULSE_SHUTDOWN_GRACE", 5.0, 0.0, 300.0),
        bank_timeout=r.number("FINPULSE_BANK_TIMEOUT", 10.0, 0.1, 300.0),
        bank_max_retries=r.integer("FINPULSE_BANK_MAX_RETRIES", 3, 0, 20),
        migrate_on_start=r.flag("FINPULSE_MIGRATE_ON_START", env == "local"),
        data_dir=r.text("FINPULSE_DATA_DIR", os.path.join(os.getcwd(), ".finpulse")),
        rpc_timeout=r.number("FINPULSE_RPC_TIMEOUT", 15.0, 0.1, 600.0),
        metrics_addrs=metrics_addrs,
        service_database_urls=service_database_urls,
        startup_wait=r.number("FINPULSE_STARTUP_WAIT", 60.0, 0.0, 3600.0),
    )
    if r.problems:
        raise ConfigError(r.problems)
    return settings
