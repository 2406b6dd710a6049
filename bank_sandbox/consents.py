"""The three consent kinds (accounts, product agreements, payments) on one shared machinery.

A consent is requested by the team, approved at once (auto banks) or signed by the customer (manual
banks), read by consent id or request id, revoked, and presented on data calls in the kind's header.
What differs per kind is its `Terms`: how the request body is read, what the answers show, which
permissions it grants, and for payments which payments it allows.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar

from bank_sandbox.models import Customer, iso_naive, iso_z, money
from bank_sandbox.protocol import ApiError, Fields, body_error

DEFAULT_LIFETIME = timedelta(days=365)


class State(enum.Enum):
    """A consent's state, named in the banks' three vocabularies: OpenBanking GETs, flat GETs (product
    consents), and the answers to a request or a signature."""

    AWAITING = ("AwaitingAuthorization", "pending", "pending")
    AUTHORIZED = ("Authorized", "active", "approved")
    REJECTED = ("Rejected", "rejected", "rejected")
    REVOKED = ("Revoked", "revoked", "revoked")
    EXPIRED = ("Expired", "expired", "expired")

    def __init__(self, ob: str, flat: str, answer: str):
        self.ob = ob
        self.flat = flat
        self.answer = answer


class Problem(enum.Enum):
    MISSING = "missing"  # no consent presented, or unknown
    INVALID = "invalid"  # not authorized (pending, rejected, revoked, expired, used up, lacking a permission)
    MISMATCH = "mismatch"  # another customer's, or not covering this operation


@dataclass(frozen=True)
class ConsentKind:
    name: str
    path: str
    request_prefix: str
    consent_prefix: str
    header: str  # carries the consent id on data calls
    terms: type[Terms]
    error_codes: dict[Problem, str]
    client_in_query: bool = False  # the request names the customer in the query (body too, for older banks)
    requesting_bank_header: bool = True  # the request must carry X-Requesting-Bank

    def refusal(self, problem: Problem, message: str) -> ApiError:
        return ApiError(
            403, {"error": self.error_codes[problem], "message": message, "consent_request_url": f"{self.path}/request"}
        )


@dataclass
class Consent:
    kind: ConsentKind
    request_id: str
    client_id: str
    terms: Terms
    created: datetime
    expires: datetime
    manual: bool  # created pending, for the customer to sign
    updated: datetime
    consent_id: str | None = None
    state: State = State.AWAITING
    payments: list[tuple[datetime, Decimal]] = field(default_factory=list)  # what payment consents were used for
    payment_ids: list[str] = field(default_factory=list)  # the payments made with a payment consent

    def state_at(self, now: datetime) -> State:
        return State.EXPIRED if self.state is State.AUTHORIZED and now >= self.expires else self.state

    def change(self, state: State, now: datetime) -> None:
        if state is State.AUTHORIZED:
            self.consent_id = f"{self.kind.consent_prefix}-{uuid.uuid4().hex[:12]}"
        self.state = state
        self.updated = now

    def creation_json(self) -> dict[str, Any]:
        approved = self.state is State.AUTHORIZED
        return {
            "request_id": self.request_id,
            "consent_id": self.consent_id,
            "status": self.state.answer,
            "message": "Согласие одобрено автоматически" if approved else "Требуется одобрение клиента",
            "auto_approved": approved,
            **self.terms.creation_fields(self),
        }

    def view(self, requested_id: str, now: datetime, sticky_awaiting: bool) -> dict[str, Any]:
        """The GET answer. With `sticky_awaiting`, reading a signed manual consent by its request id
        keeps showing it pending, as the organisers' server does."""
        if sticky_awaiting and self.manual and requested_id == self.request_id:
            return self.terms.view(self, State.AWAITING, None, requested_id)
        return self.terms.view(self, self.state_at(now), self.consent_id, requested_id)

    def signature_json(self, granted_to: str, now: datetime) -> dict[str, Any]:
        return {
            "consent_id": self.consent_id,
            "status": self.state.answer,
            "granted_to": granted_to,
            "permissions": self.terms.permissions(),
            "expires_at": iso_z(self.expires),
            "signed_at": iso_z(now),
        }


def _ob_view(
    consent: Consent, state: State, consent_id: str | None, requested_id: str, details: dict[str, Any]
) -> dict[str, Any]:
    """The OpenBanking envelope of account and payment consents; pending, `consentId` echoes the request id."""
    return {
        "data": {
            "consentId": consent_id or consent.request_id,
            "status": state.ob,
            "creationDateTime": iso_z(consent.created),
            "statusUpdateDateTime": iso_z(consent.updated),
            **details,
            "expirationDateTime": iso_z(consent.expires),
        },
        "links": {"self": f"{consent.kind.path}/{requested_id}"},
        "meta": {},
    }


class Terms:
    """What a consent of one kind allows; subclasses read it from the request body."""

    @classmethod
    def parse(cls, fields: Fields) -> Terms:
        raise NotImplementedError

    def verify(self, customer: Customer) -> None:
        """Checks that need the customer or the whole request (400); none by default."""

    def permissions(self) -> list[str]:
        raise NotImplementedError

    def creation_fields(self, consent: Consent) -> dict[str, Any]:
        return {"valid_until": iso_z(consent.expires)}

    def view(self, consent: Consent, state: State, consent_id: str | None, requested_id: str) -> dict[str, Any]:
        raise NotImplementedError


@dataclass(frozen=True)
class AccountTerms(Terms):
    granted: tuple[str, ...]

    @classmethod
    def parse(cls, fields: Fields) -> AccountTerms:
        return cls(tuple(fields.text_list("permissions", required=True) or ()))

    def verify(self, customer: Customer) -> None:
        if not self.granted:
            raise ApiError(400, "At least one permission must be requested")

    def permissions(self) -> list[str]:
        return list(self.granted)

    def creation_fields(self, consent: Consent) -> dict[str, Any]:
        return {"created_at": iso_naive(consent.created)}

    def view(self, consent: Consent, state: State, consent_id: str | None, requested_id: str) -> dict[str, Any]:
        return _ob_view(consent, state, consent_id, requested_id, {"permissions": self.permissions()})


@dataclass(frozen=True)
class ProductTerms(Terms):
    FLAGS: ClassVar[tuple[str, ...]] = (
        "read_product_agreements",
        "open_product_agreements",
        "close_product_agreements",
    )
    flags: tuple[bool, ...]
    allowed_product_types: list[str] | None
    max_amount: Decimal | None

    @classmethod
    def parse(cls, fields: Fields) -> ProductTerms:
        flags = tuple(fields.flag(name) for name in cls.FLAGS)
        return cls(flags, fields.text_list("allowed_product_types"), fields.decimal("max_amount"))

    def verify(self, customer: Customer) -> None:
        if not any(self.flags):
            raise ApiError(400, "At least one permission must be requested")

    def permissions(self) -> list[str]:
        return [name for name, granted in zip(self.FLAGS, self.flags, strict=True) if granted]

    def view(self, consent: Consent, state: State, consent_id: str | None, requested_id: str) -> dict[str, Any]:
        """Flat, as the banks answer for this kind (status `active` when authorized)."""
        return {
            "consent_id": consent_id,
            "request_id": consent.request_id,
            "client_id": consent.client_id,
            "status": state.flat,
            **dict(zip(self.FLAGS, self.flags, strict=True)),
            "allowed_product_types": self.allowed_product_types,
            "max_amount": None if self.max_amount is None else float(self.max_amount),
            "created_at": iso_z(consent.created),
            "valid_until": iso_z(consent.expires),
        }


PAYMENT_TYPES = ("single_use", "multi_use", "vrp")


@dataclass(frozen=True)
class PaymentTerms(Terms):
    consent_type: str
    debtor_account: str
    currency: str
    amount: Decimal | None = None  # single use: the most one payment may move
    creditor_account: str | None = None
    creditor_name: str | None = None
    reference: str | None = None
    max_uses: int | None = None  # multi use
    max_amount_per_payment: Decimal | None = None
    max_total_amount: Decimal | None = None
    allowed_creditor_accounts: list[str] | None = None
    vrp_max_individual_amount: Decimal | None = None  # variable recurring payments
    vrp_daily_limit: Decimal | None = None
    vrp_monthly_limit: Decimal | None = None

    @classmethod
    def parse(cls, fields: Fields) -> PaymentTerms:
        amounts = {
            name: fields.decimal(name, positive=True)
            for name in (
                "amount",
                "max_amount_per_payment",
                "max_total_amount",
                "vrp_max_individual_amount",
                "vrp_daily_limit",
                "vrp_monthly_limit",
            )
        }
        return cls(
            consent_type=fields.text("consent_type", default="single_use", choices=PAYMENT_TYPES) or "single_use",
            debtor_account=fields.text("debtor_account", required=True) or "",
            currency=fields.text("currency", default="RUB") or "RUB",
            creditor_account=fields.text("creditor_account"),
            creditor_name=fields.text("creditor_name"),
            reference=fields.text("reference"),
            max_uses=fields.integer("max_uses", default=0, ge=1) or None,  # absent: no cap
            allowed_creditor_accounts=fields.text_list("allowed_creditor_accounts"),
            **amounts,
        )

    def verify(self, customer: Customer) -> None:
        if customer.account_by_number(self.debtor_account) is None:
            raise ApiError(400, f"Debtor account {self.debtor_account} not found")

    def permissions(self) -> list[str]:
        return [f"payment:{self.consent_type}"]

    def creation_fields(self, consent: Consent) -> dict[str, Any]:
        return {"consent_type": self.consent_type, **super().creation_fields(consent)}

    def view(self, consent: Consent, state: State, consent_id: str | None, requested_id: str) -> dict[str, Any]:
        details = {
            "consentType": self.consent_type,
            "currency": self.currency,
            "debtorAccount": self.debtor_account,
            "usedCount": len(consent.payments),
            "paymentIds": list(consent.payment_ids),
        }
        optional = {
            "amount": self.amount,
            "creditorAccount": self.creditor_account,
            "creditorName": self.creditor_name,
            "reference": self.reference,
            "maxUses": self.max_uses,
            "maxAmountPerPayment": self.max_amount_per_payment,
            "maxTotalAmount": self.max_total_amount,
            "allowedCreditorAccounts": self.allowed_creditor_accounts,
            "vrpMaxIndividualAmount": self.vrp_max_individual_amount,
            "vrpDailyLimit": self.vrp_daily_limit,
            "vrpMonthlyLimit": self.vrp_monthly_limit,
        }
        details.update(
            {
                key: money(value) if isinstance(value, Decimal) else value
                for key, value in optional.items()
                if value is not None
            }
        )
        view = _ob_view(consent, state, consent_id, requested_id, details)
        if state is State.AUTHORIZED and self.consent_type == "single_use" and consent.payments:
            view["data"]["status"] = "Consumed"  # OpenBanking's word for a spent single-use consent
        return view

    def authorize(
        self, consent: Consent, debtor: str, creditor: str, amount: Decimal, currency: str, now: datetime
    ) -> None:
        """Refuse a payment this consent does not cover (403 INVALID_CONSENT / CONSENT_MISMATCH)."""
        kind = consent.kind
        used = [paid for _, paid in consent.payments]
        if self.consent_type == "single_use" and used:
            raise kind.refusal(Problem.INVALID, "Single-use consent has already been used")
        if self.max_uses is not None and len(used) >= self.max_uses:
            raise kind.refusal(Problem.INVALID, f"Consent has been used {len(used)} times of {self.max_uses}")
        today = [paid for when, paid in consent.payments if when.date() == now.date()]
        this_month = [paid for when, paid in consent.payments if (when.year, when.month) == (now.year, now.month)]
        limits: Sequence[tuple[bool, str]] = (
            (debtor != self.debtor_account, f"Debtor account {debtor} is not the consent's {self.debtor_account}"),
            (currency != self.currency, f"Currency {currency} is not the consent's {self.currency}"),
            (
                self.creditor_account is not None and creditor != self.creditor_account,
                f"Creditor account {creditor} is not the consent's {self.creditor_account}",
            ),
            (
                self.allowed_creditor_accounts is not None and creditor not in self.allowed_creditor_accounts,
                f"Creditor account {creditor} is not allowed by the consent",
            ),
            (_over(self.amount, amount), f"Amount {money(amount)} exceeds the consent's amount"),
            (_over(self.max_amount_per_payment, amount), "Amount exceeds the consent's limit per payment"),
            (_over(self.vrp_max_individual_amount, amount), "Amount exceeds the consent's limit per payment"),
            (_over(self.max_total_amount, amount, used), "Amount exceeds the consent's total limit"),
            (_over(self.vrp_daily_limit, amount, today), "Amount exceeds the consent's daily limit"),
            (_over(self.vrp_monthly_limit, amount, this_month), "Amount exceeds the consent's monthly limit"),
        )
        for broken, message in limits:
            if broken:
                raise kind.refusal(Problem.MISMATCH, message)


def payment_request_fields(body: dict[str, Any], query: Mapping[str, str], form: str) -> dict[str, Any]:
    """The flat fields of a payment-consent request sent in the body form `form` allows (flat, nested or
    both; bank_sandbox.config.PAYMENT_CONSENT_FORMS). The nested Open Banking form names the customer in
    the query: `{"data": {"initiation": {"instructedAmount", "debtorAccount", "creditorAccount",
    "comment"}, <consent_type, limits, valid_until>}}`. A bank taking only the nested form answers the
    flat one 422 `body.data: Field required`."""
    nested = isinstance(body.get("data"), dict)
    if form == "nested" and not nested:
        raise body_error("missing", "Field required", body, ("body", "data"))
    if form == "flat" or not nested:
        return body
    fields = Fields(body, ("body",))
    client_id = Fields(query, ("query",), fields.errors).text("client_id", required=True)
    initiation = fields.nested("data").nested("initiation")
    debtor = initiation.nested("debtorAccount").text("identification", required=True)
    fields.done()
    raw = body["data"]["initiation"]
    instructed = raw.get("instructedAmount") if isinstance(raw.get("instructedAmount"), dict) else {}
    creditor = raw.get("creditorAccount") if isinstance(raw.get("creditorAccount"), dict) else {}
    flat = {key: value for key, value in body["data"].items() if key != "initiation"}
    flat.update(
        {
            "client_id": client_id,
            "debtor_account": debtor,
            "amount": instructed.get("amount"),
            "creditor_account": creditor.get("identification"),
            "creditor_name": creditor.get("name"),
            "reference": raw.get("comment"),
        }
    )
    if instructed.get("currency") is not None:
        flat["currency"] = instructed["currency"]
    return {key: value for key, value in flat.items() if value is not None}


def _over(limit: Decimal | None, amount: Decimal, earlier: Sequence[Decimal] = ()) -> bool:
    return limit is not None and sum(earlier, amount) > limit


_DATA_ERRORS = dict.fromkeys(Problem, "CONSENT_REQUIRED")
ACCOUNT = ConsentKind("account", "/account-consents", "req", "consent", "X-Consent-Id", AccountTerms, _DATA_ERRORS)
PRODUCT = ConsentKind(
    "product",
    "/product-agreement-consents",
    "pagcr",
    "pagc",
    "X-Product-Agreement-Consent-Id",
    ProductTerms,
    _DATA_ERRORS,
    client_in_query=True,
    requesting_bank_header=False,
)
PAYMENT = ConsentKind(
    "payment",
    "/payment-consents",
    "pcr",
    "pcon",
    "X-Payment-Consent-Id",
    PaymentTerms,
    {
        Problem.MISSING: "PAYMENT_CONSENT_REQUIRED",
        Problem.INVALID: "INVALID_CONSENT",
        Problem.MISMATCH: "CONSENT_MISMATCH",
    },
)
KINDS = (ACCOUNT, PRODUCT, PAYMENT)


class ConsentBook:
    """One bank's consents of every kind, found by request id or consent id."""

    def __init__(self) -> None:
        self._by_id: dict[str, Consent] = {}

    def create(
        self, kind: ConsentKind, client_id: str, terms: Terms, *, manual: bool, now: datetime, expires: datetime
    ) -> Consent:
        consent = Consent(
            kind, f"{kind.request_prefix}-{uuid.uuid4().hex[:12]}", client_id, terms, now, expires, manual, updated=now
        )
        if not manual:
            consent.change(State.AUTHORIZED, now)
        self._index(consent)
        return consent

    def count(self, kind: ConsentKind, client_id: str) -> int:
        """How many consents of a kind a customer was asked for."""
        unique = {id(c): c for c in self._by_id.values()}
        return sum(1 for c in unique.values() if c.kind is kind and c.client_id == client_id)

    def _index(self, consent: Consent) -> None:
        self._by_id[consent.request_id] = consent
        if consent.consent_id:
            self._by_id[consent.consent_id] = consent

    def find(self, kind: ConsentKind | None, any_id: str, client_id: str | None = None) -> Consent:
        """By consent or request id (of any kind when `kind` is None); 404 unless it is `client_id`'s."""
        consent = self._by_id.get(any_id)
        if consent is None or kind not in (None, consent.kind) or client_id not in (None, consent.client_id):
            raise ApiError(404, "Consent not found")
        return consent

    def sign(self, kind: ConsentKind | None, request_id: str, client_id: str, approve: bool, now: datetime) -> Consent:
        """The customer's answer to a pending request; only their own, only once."""
        consent = self.find(kind, request_id)
        if consent.client_id != client_id:
            raise ApiError(403, "Consent request belongs to another client")
        if consent.state is not State.AWAITING:
            raise ApiError(400, f"Consent request is already {consent.state.flat}")
        consent.change(State.AUTHORIZED if approve else State.REJECTED, now)
        self._index(consent)
        return consent

    def revoke(self, kind: ConsentKind, any_id: str, client_id: str | None, now: datetime) -> None:
        consent = self.find(kind, any_id, client_id)
        if consent.state is not State.REVOKED:
            consent.change(State.REVOKED, now)

    def require(
        self,
        kind: ConsentKind,
        consent_id: str | None,
        client_id: str | None,
        permissions: Sequence[str],
        now: datetime,
    ) -> Consent:
        """The authorized consent presented on a data call (403 in the kind's vocabulary otherwise).
        `client_id` None: any customer's (the call names none); `permissions`: any one of them."""
        if not consent_id:
            raise kind.refusal(Problem.MISSING, f"Header {kind.header} is required")
        consent = self._by_id.get(consent_id)
        if consent is None or consent.kind is not kind or consent.consent_id != consent_id:
            raise kind.refusal(Problem.MISSING, f"Consent {consent_id} not found")
        if client_id is not None and consent.client_id != client_id:
            raise kind.refusal(Problem.MISMATCH, f"Consent {consent_id} was not given by {client_id}")
        state = consent.state_at(now)
        if state is not State.AUTHORIZED:
            raise kind.refusal(Problem.INVALID, f"Consent {consent_id} is {state.ob}")
        if permissions and not set(permissions) & set(consent.terms.permissions()):
            raise kind.refusal(Problem.INVALID, f"Consent {consent_id} lacks the permission {' or '.join(permissions)}")
        return consent
