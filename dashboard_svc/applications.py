"""Refinancing applications (no gRPC): recorded for one of the user's current offers, honestly.

Rules:
- The offer is looked up among the user's CURRENT offers (the refinance part of their dashboard
  computation, the same one `GET /api/refinance/optimize-loans` shows); an id that is not among them
  is NOT_FOUND, unless the user already applied for it (then that application is answered again).
- The loans come from the offer: the app sends `loan_ids: []`; a non-empty list must be exactly the
  offer's loans.
- One application per (user, offer): applying again answers the recorded one (`replayed`), so a
  retried request never records two.
- The banks' Open Banking API has no call that opens a loan for an app's customer, so nothing is sent
  to a bank: the application is `recorded`, never `approved`, and the message says what happens next
  (take the product at the offering bank; the new loan and the closed old ones show after the next
  sync). The phone is checked for shape and not stored: the app sends a fixed placeholder.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable

from dashboard_svc.storage import DashboardStorage, StoredApplication
from svclib import i18n
from svclib.errors import InvalidArgument, NotFound, require

OFFER_ID_MAX = 64
MAX_LOANS = 20
_PHONE_RE = re.compile(r"^[0-9+()\- ]{0,32}$")

_NEXT_STEP = {
    "ru": (
        "Заявка {application_id} сохранена в FinPulse. Банк {bank} не принимает заявки на рефинансирование "
        "через Open Banking API, поэтому в банк ничего не отправлено: оформите «{product}» в приложении или "
        "отделении банка {bank} и погасите им {loans}. Новый кредит и закрытые старые появятся в FinPulse "
        "после следующей синхронизации."
    ),
    "en": (
        "Application {application_id} is recorded in FinPulse. {bank} does not take refinancing applications "
        "through the Open Banking API, so nothing was sent to the bank: take out \u201c{product}\u201d in "
        "{bank}'s app or branch and repay {loans} with it. The new loan and the closed old ones show in "
        "FinPulse after the next sync."
    ),
}


def next_step(application: StoredApplication, language: str | None = None) -> str:
    """What happens next, for people, in `language` (the current one by default)."""
    offer = application.offer
    loans = ", ".join(offer.get("loan_ids") or []) or "—"
    return i18n.pick(_NEXT_STEP, language).format(
        application_id=application.application_id,
        bank=offer.get("bank") or offer.get("bank_id", ""),
        product=offer.get("product_name") or offer.get("product_id", ""),
        loans=loans,
    )


# user id -> the user's current offers (dicts of the RefinanceOffer JSON shape)
CurrentOffers = Callable[[str], Awaitable[list[dict]]]


class RefinanceApplications:
    def __init__(self, storage: DashboardStorage, offers: CurrentOffers):
        self.storage = storage
        self.offers = offers

    async def apply(
        self, user_id: str, offer_id: str, loan_ids: list[str], phone: str
    ) -> tuple[StoredApplication, bool]:
        user_id = require(user_id, "user_id")
        offer_id = require(offer_id, "offer_id", max_len=OFFER_ID_MAX)
        if len(loan_ids) > MAX_LOANS:
            raise InvalidArgument(
                f"loan_ids: at most {MAX_LOANS} loans",
                "loan_ids",
                reason="LIMIT_EXCEEDED",
                metadata={"limit": MAX_LOANS},
            )
        named = [require(loan_id, f"loan_ids[{i}]") for i, loan_id in enumerate(loan_ids)]
        if not _PHONE_RE.match(phone or ""):
            raise InvalidArgument(
                "phone: at most 32 digits, spaces, '+', '-', '(' or ')'", "phone", reason="INVALID_FORMAT"
            )
        existing = await self.storage.application_for_offer(user_id, offer_id)
        if existing is not None:
            _check_loans(named, existing.offer)
            return existing, True
        offer = next((o for o in await self.offers(user_id) if o.get("id") == offer_id), None)
        if offer is None:
            raise NotFound(
                f"Offer {offer_id} is not among your current offers: ask for them again "
                "(GET /api/refinance/optimize-loans)",
                reason="OFFER_NOT_FOUND",
            )
        _check_loans(named, offer)
        return await self.storage.record_application(f"rfa-{uuid.uuid4().hex[:20]}", user_id, offer_id, offer)

    async def get(self, user_id: str, application_id: str) -> StoredApplication:
        user_id = require(user_id, "user_id")
        application_id = require(application_id, "application_id", max_len=OFFER_ID_MAX)
        found = await self.storage.application(application_id)
        if found is None or found.user_id != user_id:
            raise NotFound(f"Application {application_id} not found", reason="APPLICATION_NOT_FOUND")
        return found

    async def list(self, user_id: str) -> list[StoredApplication]:
        return await self.storage.applications(require(user_id, "user_id"))


def _check_loans(named: list[str], offer: dict) -> None:
    if named and sorted(set(named)) != sorted(offer.get("loan_ids") or []):
        raise InvalidArgument(
            f"loan_ids: the offer refinances {', '.join(offer.get('loan_ids') or [])}; send those or none",
            "loan_ids",
            reason="LOANS_MISMATCH",
        )
