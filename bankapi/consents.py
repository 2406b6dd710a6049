"""Consent endpoints of `BankClient`: request, read and revoke account, product-agreement and
payment consents (docs/bank-api.md, "Consents")."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from .errors import BadRequest
from .models import ConsentKind, ConsentResult, to_decimal
from .payments import ACCOUNT_SCHEME, format_amount
from .transport import BankTransport

log = logging.getLogger("bankapi")

DEFAULT_ACCOUNT_PERMISSIONS: tuple[str, ...] = ("ReadAccountsDetail", "ReadBalances", "ReadTransactionsDetail")
DEFAULT_PRODUCT_TYPES: tuple[str, ...] = ("deposit", "loan", "card")
# The two bodies of a payment-consent request (docs/bank-api.md, "Payment consent"): flat, with the
# customer in the body, or the nested Open Banking form with the customer in the query.
PAYMENT_CONSENT_FORMS = ("flat", "nested")


@dataclass(frozen=True)
class ConsentEndpoint:
    """How one consent kind is requested, read and revoked, and how data calls present it."""

    name: str  # account | product | payment (used in operation names)
    base: str  # path prefix
    data_header: str  # header that carries the consent id on data calls
    customer_in_query: bool  # client_id also in the query string (product-agreement consents)
    requesting_bank_header: bool  # X-Requesting-Bank on the request call


CONSENT_ENDPOINTS: dict[ConsentKind, ConsentEndpoint] = {
    ConsentKind.ACCOUNTS: ConsentEndpoint("account", "/account-consents", "X-Consent-Id", False, True),
    ConsentKind.PRODUCTS: ConsentEndpoint(
        "product", "/product-agreement-consents", "X-Product-Agreement-Consent-Id", True, False
    ),
    ConsentKind.PAYMENTS: ConsentEndpoint("payment", "/payment-consents", "X-Payment-Consent-Id", False, True),
}


class ConsentEndpoints(BankTransport):
    """Consents of the three kinds; `client_id` arguments are the bank customer's id."""

    # The payment-consent body form this bank takes, once learnt (None: not known yet, the flat
    # form is tried first). Kept by this client, so per process: another replica learns it again
    # with one refused request.
    payment_consent_form: str | None = None

    @property
    def auto_approves(self) -> bool:
        """True when this bank approves consents without the customer (configuration, not bank name)."""
        return self.bank.approval_mode == "auto"

    async def request_account_consent(
        self,
        client_id: str,
        permissions: Iterable[str] = DEFAULT_ACCOUNT_PERMISSIONS,
        reason: str = "Aggregation of accounts in FinPulse",
    ) -> ConsentResult:
        """Ask for an account consent. Each call creates a new consent: reuse a stored one when valid."""
        return await self._request_consent(
            ConsentKind.ACCOUNTS,
            client_id,
            {"permissions": list(permissions), "reason": reason, "requesting_bank_name": self.team.name},
        )

    async def get_account_consent(self, consent_or_request_id: str) -> ConsentResult:
        return await self._get_consent(ConsentKind.ACCOUNTS, consent_or_request_id)

    async def delete_account_consent(self, consent_id: str) -> None:
        await self._delete_consent(ConsentKind.ACCOUNTS, consent_id)

    async def request_product_consent(
        self,
        client_id: str,
        *,
        read_agreements: bool = True,
        open_agreements: bool = False,
        close_agreements: bool = False,
        product_types: Iterable[str] = DEFAULT_PRODUCT_TYPES,
        max_amount: Decimal | int | str | None = None,
        valid_until: datetime | None = None,
        reason: str = "Overview of loans, deposits and cards in FinPulse",
    ) -> ConsentResult:
        """Ask for a product-agreement consent (customer id in the query and the body)."""
        if not (read_agreements or open_agreements or close_agreements):
            raise ValueError("at least one of read/open/close_agreements must be true")
        body: dict[str, Any] = {
            "read_product_agreements": read_agreements,
            "open_product_agreements": open_agreements,
            "close_product_agreements": close_agreements,
            "allowed_product_types": list(product_types),
            "reason": reason,
            "valid_until": valid_until or (datetime.now(UTC) + timedelta(days=365)).replace(microsecond=0),
        }
        if max_amount is not None:
            body["max_amount"] = to_decimal(max_amount)
        return await self._request_consent(ConsentKind.PRODUCTS, client_id, body)

    async def get_product_consent(self, consent_or_request_id: str, client_id: str) -> ConsentResult:
        return await self._get_consent(ConsentKind.PRODUCTS, consent_or_request_id, client_id)

    async def delete_product_consent(self, consent_id: str, client_id: str) -> None:
        await self._delete_consent(ConsentKind.PRODUCTS, consent_id, client_id)

    async def request_payment_consent(
        self,
        client_id: str,
        *,
        debtor_account: str,
        amount: Decimal | int | str | None,
        currency: str = "RUB",
        creditor_account: str | None = None,
        creditor_name: str | None = None,
        reference: str | None = None,
        consent_type: str = "single_use",
        creditor_bank_code: str | None = None,
        **extra: Any,
    ) -> ConsentResult:
        """Ask for a payment consent. Accounts are account numbers (`Account.account_number`), not ids.
        `extra` carries the multi_use / vrp fields (max_uses, vrp_daily_limit, valid_until, …).

        The flat body is sent first; a bank that answers it 422 `body.data: Field required` takes only
        the nested Open Banking form (customer in the query): the request is sent again in that form,
        and this client remembers it for the bank (`payment_consent_form`), so later requests go nested
        at once. `creditor_bank_code` is sent in the nested form only (the flat one has no such field)."""
        fields = {
            "consent_type": consent_type,
            "currency": currency,
            "debtor_account": debtor_account,
            "amount": None if amount is None else to_decimal(amount),
            "creditor_account": creditor_account,
            "creditor_name": creditor_name,
            "reference": reference,
            **extra,
        }
        fields = {k: v for k, v in fields.items() if v is not None}
        if self.payment_consent_form != "nested":
            try:
                result = await self._request_consent(ConsentKind.PAYMENTS, client_id, fields)
            except BadRequest as exc:
                if not _wants_nested_form(exc):
                    raise
                log.info(
                    "bank=%s takes payment consents in the nested form only",
                    self.bank_id,
                    extra={"bank_id": self.bank_id, "operation": "request_payment_consent"},
                )
                self.payment_consent_form = "nested"
            else:
                self.payment_consent_form = "flat"
                return result
        body = _nested_payment_consent(fields, creditor_bank_code)
        answer = await self._call(
            "request_payment_consent",
            "POST",
            "/payment-consents/request",
            params={"client_id": client_id},
            body=body,
            headers=self._requesting_bank(),
        )
        return self._parse("request_payment_consent", answer, lambda b: ConsentResult.from_api(ConsentKind.PAYMENTS, b))

    async def get_payment_consent(self, consent_or_request_id: str) -> ConsentResult:
        return await self._get_consent(ConsentKind.PAYMENTS, consent_or_request_id)

    async def delete_payment_consent(self, consent_id: str) -> None:
        await self._delete_consent(ConsentKind.PAYMENTS, consent_id)

    async def _request_consent(self, kind: ConsentKind, client_id: str, fields: Mapping[str, Any]) -> ConsentResult:
        ep = CONSENT_ENDPOINTS[kind]
        body = {"requesting_bank": self.team.client_id, "client_id": client_id, **fields}
        operation = f"request_{ep.name}_consent"
        answer = await self._call(
            operation,
            "POST",
            f"{ep.base}/request",
            body=body,
            params={"client_id": client_id} if ep.customer_in_query else None,
            headers=self._requesting_bank() if ep.requesting_bank_header else None,
        )
        return self._parse(operation, answer, lambda b: ConsentResult.from_api(kind, b))

    async def _get_consent(self, kind: ConsentKind, consent_id: str, client_id: str | None = None) -> ConsentResult:
        ep = CONSENT_ENDPOINTS[kind]
        operation = f"get_{ep.name}_consent"
        answer = await self._call(
            operation,
            "GET",
            f"{ep.base}/{quote(consent_id, safe='')}",
            params={"client_id": client_id} if ep.customer_in_query else None,
        )
        return self._parse(operation, answer, lambda b: ConsentResult.from_api(kind, b, queried_id=consent_id))

    async def _delete_consent(self, kind: ConsentKind, consent_id: str, client_id: str | None = None) -> None:
        ep = CONSENT_ENDPOINTS[kind]
        await self._call(
            f"delete_{ep.name}_consent",
            "DELETE",
            f"{ep.base}/{quote(consent_id, safe='')}",
            params={"client_id": client_id} if ep.customer_in_query else None,
        )


def _wants_nested_form(exc: BadRequest) -> bool:
    """The 422 of a bank that takes payment consents only in the nested form: `body.data` is missing."""
    if exc.http_status != 422:
        return False
    if isinstance(exc.detail, list):
        return any(isinstance(item, Mapping) and list(item.get("loc") or ()) == ["body", "data"] for item in exc.detail)
    return "body.data" in exc.message


def _nested_payment_consent(fields: Mapping[str, Any], creditor_bank_code: str | None) -> dict[str, Any]:
    """The nested Open Banking body of a payment-consent request, from the flat fields: the payment's
    initiation (amount, debtor, creditor, comment), and the standing consent's type and limits beside it."""
    initiation: dict[str, Any] = {
        "debtorAccount": {"schemeName": ACCOUNT_SCHEME, "identification": fields["debtor_account"]}
    }
    if "amount" in fields:
        initiation["instructedAmount"] = {"amount": format_amount(fields["amount"]), "currency": fields["currency"]}
    if "creditor_account" in fields:
        creditor: dict[str, Any] = {"schemeName": ACCOUNT_SCHEME, "identification": fields["creditor_account"]}
        if "creditor_name" in fields:
            creditor["name"] = fields["creditor_name"]
        if creditor_bank_code:
            creditor["bank_code"] = creditor_bank_code
        initiation["creditorAccount"] = creditor
    if "reference" in fields:
        initiation["comment"] = fields["reference"]
    data: dict[str, Any] = {"initiation": initiation}
    rest = {
        k: v
        for k, v in fields.items()
        if k not in ("debtor_account", "amount", "creditor_account", "creditor_name", "reference")
    }
    if rest.get("consent_type") == "single_use" and "amount" in fields:
        rest = {}  # a single payment: the initiation says it all
    data.update(rest)
    return {"data": data}
