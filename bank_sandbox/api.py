"""The banks' Open Banking API (docs/bank-api.md), answered from one bank's in-memory state."""

from __future__ import annotations

import asyncio
import hmac
import math
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

from aiohttp import web

from bank_sandbox import tokens
from bank_sandbox.consents import (
    ACCOUNT,
    DEFAULT_LIFETIME,
    KINDS,
    PAYMENT,
    PRODUCT,
    ConsentKind,
    PaymentTerms,
    payment_request_fields,
)
from bank_sandbox.models import Account, Customer, utcnow
from bank_sandbox.protocol import ApiError, Fields, json_response, read_json
from bank_sandbox.state import BankState, Registry

READ_ACCOUNTS = ("ReadAccountsDetail", "ReadAccountsBasic")
READ_BALANCES = ("ReadBalances",)
READ_TRANSACTIONS = ("ReadTransactionsDetail", "ReadTransactionsBasic")
READ_AGREEMENTS = ("read_product_agreements",)
UNAUTHORIZED = ApiError(401, "Could not validate credentials", {"WWW-Authenticate": "Bearer"})


class BankApi:
    def __init__(self, state: BankState, registry: Registry):
        self.state = state
        self.registry = registry
        self.team_id = state.config.team_id

    def register(self, router: web.UrlDispatcher) -> None:
        router.add_post("/auth/bank-token", self.bank_token)
        router.add_post("/auth/login", self.login)
        for kind in KINDS:
            router.add_post(f"{kind.path}/request", partial(self.request_consent, kind))
            router.add_post(f"{kind.path}/sign", partial(self.sign_consent, kind))
            router.add_get(f"{kind.path}/{{consent_id}}", partial(self.get_consent, kind))
            router.add_delete(f"{kind.path}/{{consent_id}}", partial(self.revoke_consent, kind))
        router.add_get("/accounts", self.accounts)
        router.add_get("/accounts/{account_id}", self.account)
        router.add_get("/accounts/{account_id}/balances", self.balances)
        router.add_get("/accounts/{account_id}/transactions", self.transactions)
        router.add_get("/product-agreements", self.agreements)
        router.add_get("/product-agreements/{agreement_id}", self.agreement)
        router.add_get("/products", self.products)
        router.add_post("/payments", self.create_payment)
        router.add_get("/payments/{payment_id}", self.payment)

    # ------------------------------------------------------------------------------ identities

    def _issue(self, subject: str, token_type: str) -> str:
        now = int(time.time())
        return tokens.encode(
            {
                "sub": subject,
                "client_id": subject,
                "type": token_type,
                "iss": self.state.bank_id,
                "aud": "openbanking",
                "iat": now,
                "exp": now + self.state.config.token_ttl,
            },
            self.state.secret,
        )

    def _claims(self, request: web.Request, token_type: str) -> dict[str, Any]:
        """The verified claims of the request's bearer token: this bank's, unexpired, of `token_type`."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            raise UNAUTHORIZED
        try:
            claims = tokens.decode(token.strip(), self.state.secret)
        except tokens.InvalidToken:
            raise UNAUTHORIZED from None
        if claims.get("iss") != self.state.bank_id or claims.get("type") != token_type:
            raise UNAUTHORIZED
        return claims

    def _team(self, request: web.Request, *, requesting_bank: bool) -> None:
        """A team call; with `requesting_bank`, X-Requesting-Bank must name the team."""
        self._claims(request, "team")
        if requesting_bank:
            self._check_requesting_bank(request)

    def _check_requesting_bank(self, request: web.Request) -> None:
        value = request.headers.get("X-Requesting-Bank")
        if value != self.team_id:
            got = f"got {value!r}" if value else "the header is missing"
            raise ApiError(403, f"X-Requesting-Bank must be the team id {self.team_id!r} ({got})")

    def _consented(
        self, request: web.Request, kind: ConsentKind, client_id: str | None, permissions: Sequence[str]
    ) -> Customer:
        """The customer whose consent, in the kind's header, allows this call."""
        if client_id is not None:
            self.state.customer(client_id)  # an unknown customer is 404 before any consent question
        consent = self.state.consents.require(kind, request.headers.get(kind.header), client_id, permissions, utcnow())
        return self.state.customer(consent.client_id)

    async def bank_token(self, request: web.Request) -> web.Response:
        query = Fields(request.query)
        client_id = query.text("client_id", required=True)
        secret = query.text("client_secret", required=True) or ""
        query.done()
        if client_id != self.team_id:
            raise ApiError(401, "Invalid client_id")
        if not hmac.compare_digest(secret.encode(), self.state.config.team_secret.encode()):
            raise ApiError(401, "Invalid client_secret")
        return json_response(
            {
                "access_token": self._issue(self.team_id, "team"),
                "token_type": "bearer",
                "client_id": self.team_id,
                "algorithm": "HS256",
                "expires_in": self.state.config.token_ttl,
            }
        )

    async def login(self, request: web.Request) -> web.Response:
        """A customer's own login (their password is the team secret, as on the organisers' banks)."""
        body = Fields(await read_json(request), ("body",))
        username = body.text("username", required=True) or ""
        password = body.text("password", required=True) or ""
        body.done()
        if username not in self.state.profiles or not hmac.compare_digest(
            password.encode(), self.state.config.team_secret.encode()
        ):
            raise ApiError(401, "Incorrect username or password", {"WWW-Authenticate": "Bearer"})
        return json_response(
            {
                "access_token": self._issue(username, "client"),
                "token_type": "bearer",
                "client_id": username,
                "expires_in": self.state.config.token_ttl,
            }
        )

    # ------------------------------------------------------------------------------ consents

    async def request_consent(self, kind: ConsentKind, request: web.Request) -> web.Response:
        self._team(request, requesting_bank=kind.requesting_bank_header or "X-Requesting-Bank" in request.headers)
        raw = await read_json(request)
        if kind is PAYMENT:
            if self.state.faults.refuse_payment_consents:
                raise ApiError(401, "Insufficient permissions")
            raw = payment_request_fields(
                raw, request.query, self.state.config.payment_consent_form_of(self.state.bank_id)
            )
        body = Fields(raw, ("body",))
        query_client = request.query.get("client_id") if kind.client_in_query else None
        client_id = query_client or body.text("client_id", required=query_client is None) or ""
        valid_until = body.moment("valid_until")
        terms = kind.terms.parse(body)
        body.done()
        customer = self.state.customer(client_id)
        terms.verify(customer)
        now = utcnow()
        expires = valid_until or now + DEFAULT_LIFETIME
        if expires <= now:
            raise ApiError(400, "valid_until must be in the future")
        consent = self.state.consents.create(
            kind, client_id, terms, manual=self.state.manual_approval, now=now, expires=expires
        )
        return json_response(consent.creation_json())

    async def get_consent(self, kind: ConsentKind, request: web.Request) -> web.Response:
        self._team(request, requesting_bank=False)
        requested_id = request.match_info["consent_id"]
        consent = self.state.consents.find(kind, requested_id, request.query.get("client_id"))
        return json_response(consent.view(requested_id, utcnow(), self.state.faults.sticky_awaiting))

    async def revoke_consent(self, kind: ConsentKind, request: web.Request) -> web.Response:
        self._team(request, requesting_bank=False)
        self.state.consents.revoke(kind, request.match_info["consent_id"], request.query.get("client_id"), utcnow())
        return web.Response(status=204)

    async def sign_consent(self, kind: ConsentKind, request: web.Request) -> web.Response:
        """The customer (client token) approves or rejects one of their pending requests."""
        client_id = self._claims(request, "client")["sub"]
        body = Fields(await read_json(request), ("body",))
        request_id = body.text("request_id", required=True) or ""
        action = body.text("action", required=True, choices=("approve", "reject"))
        body.text("signature")  # type-checked only: the sandbox does not verify signatures
        body.done()
        now = utcnow()
        consent = self.state.consents.sign(kind, request_id, client_id, action == "approve", now)
        return json_response(consent.signature_json(self.team_id, now))

    # ------------------------------------------------------------------------------ accounts

    def _account(self, request: web.Request, client_id: str | None, permissions: Sequence[str]) -> Account:
        """The account of the path, of the customer whose consent allows the call."""
        customer = self._consented(request, ACCOUNT, client_id, permissions)
        account = customer.account(request.match_info["account_id"])
        if account is None:
            raise ApiError(404, "Account not found")
        return account

    async def accounts(self, request: web.Request) -> web.Response:
        self._team(request, requesting_bank=True)
        query = Fields(request.query)
        client_id = query.text("client_id", required=True)
        query.done()
        customer = self._consented(request, ACCOUNT, client_id, READ_ACCOUNTS)
        return json_response(
            {
                "data": {"account": [a.to_json(customer.name) for a in customer.accounts]},
                "links": {"self": "/accounts"},
                "meta": {"totalPages": 1},
            }
        )

    async def account(self, request: web.Request) -> web.Response:
        self._team(request, requesting_bank=True)
        account = self._account(request, request.query.get("client_id"), READ_ACCOUNTS)
        return json_response({"data": {"account": [account.to_json()]}})

    async def balances(self, request: web.Request) -> web.Response:
        self._team(request, requesting_bank=True)
        account = self._account(request, request.query.get("client_id"), READ_BALANCES)
        return json_response({"data": {"balance": account.balances_json(utcnow())}})

    async def transactions(self, request: web.Request) -> web.Response:
        self._team(request, requesting_bank=True)
        query = Fields(request.query)
        page = query.integer("page", default=1, ge=1)
        limit = query.integer("limit", default=50, ge=1, le=100)
        since = query.moment("from_booking_date_time")
        until = query.moment("to_booking_date_time")
        query.done()
        account = self._account(request, request.query.get("client_id"), READ_TRANSACTIONS)
        rows = [
            tx
            for tx in reversed(account.transactions)
            if (since is None or tx.draft.booked >= since) and (until is None or tx.draft.booked <= until)
        ]
        pages = math.ceil(len(rows) / limit)
        link = f"/accounts/{account.account_id}/transactions?page={{}}&limit={limit}"
        links = {"self": link.format(page)}
        if page < pages:
            links["next"] = link.format(page + 1)
        if page > 1:
            links["prev"] = link.format(page - 1)
        return json_response(
            {
                "data": {"transaction": [tx.to_json() for tx in rows[(page - 1) * limit : page * limit]]},
                "links": links,
                "meta": {"totalPages": pages, "totalRecords": len(rows), "currentPage": page, "pageSize": limit},
            }
        )

    # ------------------------------------------------------------------------------ products

    async def agreements(self, request: web.Request) -> web.Response:
        self._team(request, requesting_bank=True)
        customer = self._consented(request, PRODUCT, request.query.get("client_id"), READ_AGREEMENTS)
        return json_response(
            {"data": [a.to_json() for a in customer.agreements], "meta": {"total": len(customer.agreements)}}
        )

    async def agreement(self, request: web.Request) -> web.Response:
        self._team(request, requesting_bank=True)
        customer = self._consented(request, PRODUCT, request.query.get("client_id"), READ_AGREEMENTS)
        wanted = request.match_info["agreement_id"]
        found = next((a for a in customer.agreements if a.agreement_id == wanted), None)
        if found is None:
            raise ApiError(404, "Agreement not found")
        return json_response({"data": found.to_json(detailed=True)})

    async def products(self, request: web.Request) -> web.Response:
        self._team(request, requesting_bank=False)
        wanted = request.query.get("product_type")
        return json_response(
            {
                "data": {
                    "product": [p.to_json() for p in self.state.catalogue.products if wanted in (None, p.product_type)]
                }
            }
        )

    # ------------------------------------------------------------------------------ payments

    async def create_payment(self, request: web.Request) -> web.Response:
        self._team(request, requesting_bank=True)
        query = Fields(request.query)
        client_id = query.text("client_id", required=True) or ""
        query.done()
        initiation = Fields(await read_json(request), ("body",)).nested("data").nested("initiation")
        instructed = initiation.nested("instructedAmount")
        amount = instructed.decimal("amount", required=True, positive=True)
        currency = instructed.text("currency", default="RUB") or "RUB"
        debtor = initiation.nested("debtorAccount").text("identification", required=True) or ""
        creditor_fields = initiation.nested("creditorAccount")
        creditor = creditor_fields.text("identification", required=True) or ""
        bank_code = creditor_fields.text("bank_code")
        comment = initiation.text("comment")
        initiation.done()
        assert amount is not None  # done() raised otherwise
        now = utcnow()
        customer = self.state.customer(client_id)
        consent = self.state.consents.require(PAYMENT, request.headers.get(PAYMENT.header), client_id, (), now)
        source = customer.account_by_number(debtor)
        if source is None:
            raise ApiError(400, "Source account not found")
        assert isinstance(consent.terms, PaymentTerms)
        consent.terms.authorize(consent, debtor, creditor, amount, currency, now)
        target = self.registry.locate(creditor, bank_code)
        if target is None:
            raise ApiError(400, f"Target account {creditor} not found in any bank")
        payment = self.state.pay(customer, consent, source, target, amount, comment)
        if self.state.faults.payment_delay_ms:  # booked: only the answer is late
            await asyncio.sleep(self.state.faults.payment_delay_ms / 1000)
        return json_response(payment.to_json(), status=201)

    async def payment(self, request: web.Request) -> web.Response:
        self._team(request, requesting_bank=False)
        found = self.state.payments.get(request.match_info["payment_id"])
        if found is None or request.query.get("client_id") not in (None, found.client_id):
            raise ApiError(404, "Payment not found")
        return json_response(found.to_json())
