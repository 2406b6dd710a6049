"""Typed async client of the banks' Open Banking API (docs/bank-api.md).

    async with BankClient(bank_config, team, token_store=RedisTokenStore(redis)) as bank:
        consent = await bank.request_account_consent("team200-1")
        accounts = await bank.get_accounts("team200-1", consent.consent_id)

Modules: `client` (BankClient, BankClients, CallRecord), `models` (typed results, status
normalisation), `errors` (BankError hierarchy), `tokens` (TokenStore, RedisTokenStore, token cache).
No gRPC here: the services map these domain errors to status codes.
"""
from .client import DEFAULT_ACCOUNT_PERMISSIONS, MAX_PAGE_LIMIT, BankClient, BankClients, CallRecord, format_amount
from .errors import (AuthFailed, BadRequest, BankError, BankUnavailable, ConsentRequired, Forbidden, MalformedResponse,
                     NotFound, RateLimited, UnknownBank)
from .models import (Account, Balance, ConsentKind, ConsentResult, ConsentStatus, Payment, PaymentStatus, Product,
                     ProductAgreement, Transaction, TransactionPage, normalize_payment_status, normalize_status)
from .tokens import MemoryTokenStore, RedisTokenStore, TokenStore

__all__ = [
    "BankClient", "BankClients", "CallRecord", "DEFAULT_ACCOUNT_PERMISSIONS", "MAX_PAGE_LIMIT", "format_amount",
    "BankError", "AuthFailed", "BadRequest", "BankUnavailable", "ConsentRequired", "Forbidden", "MalformedResponse",
    "NotFound", "RateLimited", "UnknownBank",
    "Account", "Balance", "ConsentKind", "ConsentResult", "ConsentStatus", "Payment", "PaymentStatus", "Product",
    "ProductAgreement", "Transaction", "TransactionPage", "normalize_payment_status", "normalize_status",
    "MemoryTokenStore", "RedisTokenStore", "TokenStore",
]
