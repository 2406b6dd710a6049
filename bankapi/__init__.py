"""Typed async client of the banks' Open Banking API (docs/bank-api.md).

    bank = BankEndpoint("vbank", "https://vbank.example", approval_mode="auto")
    team = TeamCredentials("team200", secret)
    async with BankClient(bank, team, token_store=RedisTokenStore(redis), timeout=10) as client:
        consent = await client.request_account_consent("team200-1")
        accounts = await client.get_accounts("team200-1", consent.consent_id)

Modules: `config` (BankEndpoint, TeamCredentials: given by the caller, nothing is read from the
environment), `client` (BankClient, BankClients), `transport` (the HTTP exchange and its call
policy, CallRecord), `consents`, `data`, `payments` (the endpoints), `models` (typed results, status
normalisation), `errors` (BankError hierarchy), `tokens` (TokenStore, RedisTokenStore, token cache),
`breaker` (the per-bank circuit breaker). No gRPC and nothing of the suite here: the services map
these domain errors to status codes.
"""

from .client import DEFAULT_ACCOUNT_PERMISSIONS, MAX_PAGE_LIMIT, BankClient, BankClients, CallRecord, format_amount
from .config import BankEndpoint, TeamCredentials
from .errors import (
    AuthFailed,
    BadRequest,
    BankError,
    BankUnavailable,
    ConsentRequired,
    Forbidden,
    MalformedResponse,
    NotFound,
    RateLimited,
    UnknownBank,
)
from .models import (
    Account,
    Balance,
    ConsentKind,
    ConsentResult,
    ConsentStatus,
    Payment,
    PaymentStatus,
    Product,
    ProductAgreement,
    Transaction,
    TransactionPage,
    normalize_payment_status,
    normalize_status,
)
from .tokens import MemoryTokenStore, RedisTokenStore, TokenStore

__all__ = [
    "DEFAULT_ACCOUNT_PERMISSIONS",
    "MAX_PAGE_LIMIT",
    "Account",
    "AuthFailed",
    "BadRequest",
    "Balance",
    "BankClient",
    "BankClients",
    "BankEndpoint",
    "BankError",
    "BankUnavailable",
    "CallRecord",
    "ConsentKind",
    "ConsentRequired",
    "ConsentResult",
    "ConsentStatus",
    "Forbidden",
    "MalformedResponse",
    "MemoryTokenStore",
    "NotFound",
    "Payment",
    "PaymentStatus",
    "Product",
    "ProductAgreement",
    "RateLimited",
    "RedisTokenStore",
    "TeamCredentials",
    "TokenStore",
    "Transaction",
    "TransactionPage",
    "UnknownBank",
    "format_amount",
    "normalize_payment_status",
    "normalize_status",
]
