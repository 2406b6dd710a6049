"""Payment endpoints of `BankClient`: initiate a payment under a payment consent, read one back."""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from urllib.parse import quote

from .models import Payment, to_decimal
from .transport import BankTransport

ACCOUNT_SCHEME = "RU.CBR.PAN"


def format_amount(amount: Decimal | str | int) -> str:
    """A positive amount with exactly two decimals ("1000.00"); ValueError if it needs more precision."""
    value = to_decimal(amount)
    cents = value.quantize(Decimal("0.01"))
    if cents != value:
        raise ValueError(f"amount {amount!r} has more than two decimals")
    if cents <= 0:
        raise ValueError(f"amount {amount!r} must be positive")
    return f"{cents:.2f}"


class PaymentEndpoints(BankTransport):
    """Payments (docs/bank-api.md, "Payments"). Accounts are account numbers, not ids."""

    async def create_payment(
        self,
        client_id: str,
        payment_consent_id: str,
        *,
        amount: Decimal | str | int,
        currency: str,
        debtor_account: str,
        creditor_account: str,
        creditor_bank_code: str | None = None,
        comment: str | None = None,
        interaction_id: str | None = None,
    ) -> Payment:
        """Initiate a payment. NEVER retried on 5xx/transport errors/timeouts (the API has no idempotency
        key: a repeat could pay twice): those raise `BankUnavailable` and the caller must reconcile (e.g.
        by `get_payment` or the debtor account's transactions). Pass `interaction_id` to know the bank-side
        request id in advance (persist it before calling). Accounts are account numbers."""
        creditor: dict[str, Any] = {"schemeName": ACCOUNT_SCHEME, "identification": creditor_account}
        if creditor_bank_code:
            creditor["bank_code"] = creditor_bank_code
        initiation: dict[str, Any] = {
            "instructedAmount": {"amount": format_amount(amount), "currency": currency},
            "debtorAccount": {"schemeName": ACCOUNT_SCHEME, "identification": debtor_account},
            "creditorAccount": creditor,
        }
        if comment:
            initiation["comment"] = comment
        answer = await self._call(
            "create_payment",
            "POST",
            "/payments",
            params={"client_id": client_id},
            body={"data": {"initiation": initiation}},
            retry=False,
            headers={**self._requesting_bank(), "X-Payment-Consent-Id": payment_consent_id},
            interaction_id=interaction_id,
        )
        return self._parse("create_payment", answer, Payment.from_api)

    async def get_payment(self, client_id: str, payment_id: str) -> Payment:
        answer = await self._call(
            "get_payment",
            "GET",
            f"/payments/{quote(payment_id, safe='')}",
            params={"client_id": client_id},
            headers=self._requesting_bank(),
        )
        return self._parse("get_payment", answer, Payment.from_api)
