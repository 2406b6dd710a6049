"""The customer's side of a manual approval, for local demos: `/client/consents/{request_id}`.

A tiny page showing a consent request with Approve / Reject buttons; answering signs it as the
customer (as the bank's own app would after the customer logged in). With `?redirect_uri=...` the
customer is sent back there with `consent_id`, `request_id` and `status`, like a bank app's callback.
"""

from __future__ import annotations

import html

from aiohttp import web
from yarl import URL

from bank_sandbox.consents import Consent, State
from bank_sandbox.models import utcnow
from bank_sandbox.protocol import ApiError
from bank_sandbox.state import BankState

PAGE = """<!doctype html>
<html lang="ru"><head><meta charset="utf-8"><title>{bank}: согласие {request_id}</title></head>
<body style="font-family: sans-serif; max-width: 36rem; margin: 2rem auto">
<h1>{bank}</h1>
<p>{team} запрашивает согласие ({kind}) клиента <b>{client_id}</b>:</p>
<ul>{permissions}</ul>
<p>Статус: <b>{status}</b> {consent_id}</p>
{form}
</body></html>
"""
FORM = """<form method="post">
<input type="hidden" name="redirect_uri" value="{redirect_uri}">
<button name="action" value="approve">Одобрить</button> <button name="action" value="reject">Отклонить</button>
</form>"""


class Portal:
    def __init__(self, state: BankState):
        self.state = state

    def register(self, router: web.UrlDispatcher) -> None:
        router.add_get("/client/consents/{request_id}", self.show)
        router.add_post("/client/consents/{request_id}", self.answer)

    def _page(self, consent: Consent, redirect_uri: str) -> web.Response:
        state = consent.state_at(utcnow())
        text = {
            key: html.escape(str(value))
            for key, value in {
                "bank": self.state.bank_id,
                "request_id": consent.request_id,
                "team": self.state.config.team_id,
                "kind": consent.kind.name,
                "client_id": consent.client_id,
                "status": state.ob,
                "consent_id": consent.consent_id or "",
                "redirect_uri": redirect_uri,
            }.items()
        }
        permissions = "".join(f"<li>{html.escape(p)}</li>" for p in consent.terms.permissions())
        form = FORM.format(**text) if state is State.AWAITING else ""
        return web.Response(text=PAGE.format(**text, permissions=permissions, form=form), content_type="text/html")

    async def show(self, request: web.Request) -> web.Response:
        consent = self.state.consents.find(None, request.match_info["request_id"])
        return self._page(consent, request.query.get("redirect_uri", ""))

    async def answer(self, request: web.Request) -> web.Response:
        consent = self.state.consents.find(None, request.match_info["request_id"])
        form = await request.post()
        action = form.get("action")
        if action not in ("approve", "reject"):
            raise ApiError(422, "action must be approve or reject")
        self.state.consents.sign(consent.kind, consent.request_id, consent.client_id, action == "approve", utcnow())
        redirect_uri = str(form.get("redirect_uri") or "")
        if redirect_uri:
            answer = {"request_id": consent.request_id, "status": consent.state.answer}
            if consent.consent_id:
                answer["consent_id"] = consent.consent_id
            raise web.HTTPSeeOther(URL(redirect_uri).update_query(answer))
        return self._page(consent, "")
