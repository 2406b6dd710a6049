"""What the dashboard shows of accounts, savings, deposits, cards, recent transactions and the banks
(statuses, freshness, notes on missing or stale data), and the deposits route's answer (pure)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from decimal import ROUND_UP, Decimal
from typing import Any

from dashboard_svc.domain import loan_math, texts
from dashboard_svc.domain.common import (
    HUNDRED,
    is_loan_account,
    is_spendable_account,
    iso_datetime,
    legacy,
    money,
    one_decimal,
    sum_by_currency,
)
from dashboard_svc.model import AccountView, CreditView, DashboardData, ProductView
from finance.dates import add_months
from finance.money import CENT, ZERO


def deposits_total(credits: Iterable[CreditView], base: str) -> Decimal:
    """Active deposits in the base currency: their amount counts as savings."""
    return sum(
        (
            c.amount
            for c in credits
            if c.product_type.strip().lower() == "deposit"
            and c.status.strip().lower() == "active"
            and c.currency == base
        ),
        ZERO,
    )


def savings_summary(data: DashboardData, today: dt.date) -> dict[str, float]:
    """total_saved = active deposits + Savings-account balances (base currency);
    target = the goal's target amount when positive, else config.default_savings_target;
    daily_payment = (target − saved) ÷ days to the goal's date when both are known and positive (rounded
    up to cents, so the target is reached); 0 when the target is already reached (refinement); else
    config.default_savings_daily. A goal without a date but with `horizon_months` is due
    horizon_months × 30 days from today (the app's 12- or 24-month horizon, counted in 30-day months);
    target stays > 0 always;
    progress_percent = saved ÷ target × 100, one decimal, within [0, 100]."""
    base = data.config.base_currency
    saved = deposits_total(data.credits, base) + sum(
        (
            a.available
            for a in data.accounts
            if a.sub_type.strip().lower() == "savings" and a.currency == base and a.available is not None
        ),
        ZERO,
    )
    goal = data.goals.target_amount
    target = goal if goal is not None and goal > 0 else data.config.default_savings_target
    remaining = target - saved
    if data.goals.target_date:
        days = (data.goals.target_date - today).days
    elif data.goals.horizon_months and data.goals.horizon_months > 0:
        days = data.goals.horizon_months * 30
    else:
        days = 0
    if remaining <= 0:
        daily = ZERO
    elif goal is not None and goal > 0 and days > 0:
        daily = (remaining / days).quantize(CENT, rounding=ROUND_UP)
    else:
        daily = data.config.default_savings_daily
    progress = min(HUNDRED, max(ZERO, saved / target * HUNDRED)) if target > 0 else HUNDRED
    return {
        "total_saved": legacy(saved),
        "daily_payment": legacy(daily),
        "target": legacy(target),
        "progress_percent": float(one_decimal(progress)),
    }


def debit_cards_balance(accounts: Iterable[AccountView], base: str) -> Decimal:
    """Σ available of current accounts ("Checking", also "Current") in the base currency: the accounts
    the debit cards draw on."""
    return sum(
        (
            a.available
            for a in accounts
            if a.sub_type.strip().lower() in ("checking", "current") and a.currency == base and a.available is not None
        ),
        ZERO,
    )


def balances(accounts: Iterable[AccountView], base: str) -> list[dict[str, Any]]:
    """Every account with its balance; `spendable` tells whether it is in safe-to-spend."""
    rows = []
    for a in accounts:
        row: dict[str, Any] = {
            "bank_id": a.bank_id,
            "bank_name": a.bank_name,
            "account_id": a.account_id,
            "account_type": a.sub_type,
            "nickname": a.nickname,
            "currency": a.currency,
            "spendable": is_spendable_account(a, base),
        }
        if a.available is not None:
            row["available"] = money(a.available)
        rows.append(row)
    return rows


def is_deposit(credit: CreditView) -> bool:
    return credit.product_type.strip().lower() == "deposit"


def catalogue_product(credit: CreditView, products: Iterable[ProductView]) -> ProductView | None:
    """The catalogue product with the agreement's bank_id and product_id (None without a product id)."""
    if not credit.product_id:
        return None
    return next((p for p in products if p.bank_id == credit.bank_id and p.product_id == credit.product_id), None)


def deposit_term(credit: CreditView, products: Iterable[ProductView]) -> int | None:
    """A deposit's term in months: its catalogue product's term_months (`catalogue_product`), else unknown."""
    product = catalogue_product(credit, products)
    if product is None or product.term_months is None or product.term_months <= 0:
        return None
    return product.term_months


def deposit_maturity(credit: CreditView, term: int | None) -> dt.date | None:
    """When a deposit ends: the agreement's end_date, else start_date + term months, else unknown."""
    if credit.end_date is not None:
        return credit.end_date
    if credit.start_date is not None and term is not None:
        return add_months(credit.start_date, term)
    return None


def deposit_rows(
    credits: Iterable[CreditView],
    products: Sequence[ProductView] = (),
    bank_name: Callable[[str], str] = lambda bank_id: bank_id,
) -> list[dict[str, Any]]:
    """Every deposit agreement with its bank's name, term (catalogue), maturity and status."""
    rows = []
    for c in credits:
        if not is_deposit(c):
            continue
        row: dict[str, Any] = {
            "bank_id": c.bank_id,
            "agreement_id": c.agreement_id,
            "name": c.product_name,
            "amount": money(c.amount),
            "currency": c.currency,
            "bank_name": bank_name(c.bank_id),
            "status": c.status,
        }
        if c.interest_rate is not None:
            row["interest_rate"] = f"{Decimal(c.interest_rate):f}"
        term = deposit_term(c, products)
        if term is not None:
            row["term_months"] = term
        ends = deposit_maturity(c, term)
        if ends is not None:
            row["maturity_date"] = ends.isoformat()
        rows.append(row)
    return rows


def card_rows(credits: Iterable[CreditView]) -> list[dict[str, Any]]:
    """Cards: `amount` is the limit (0 for a debit card), never debt (the API has no card debt)."""
    rows = []
    for c in credits:
        if c.product_type.strip().lower() != "card":
            continue
        row: dict[str, Any] = {
            "bank_id": c.bank_id,
            "agreement_id": c.agreement_id,
            "name": c.product_name,
            "limit": money(c.amount),
            "currency": c.currency,
        }
        if c.account_balance is not None:
            row["linked_balance"] = money(c.account_balance)
        rows.append(row)
    return rows


def deposits_response(
    credits: Iterable[CreditView],
    products: Sequence[ProductView],
    savings: dict[str, float],
    bank_name: Callable[[str], str],
) -> dict[str, Any]:
    """GetDepositsResponse: status "ok", the active deposits (type = the product's name, rate ≤ 2 decimals
    or 0, term from the catalogue or 0, maturity by `deposit_maturity`), and the dashboard's
    savings_summary figures (total_saved, sdp, target, progress_percent)."""
    items = []
    for c in credits:
        if not is_deposit(c) or c.status.strip().lower() != "active":
            continue
        term = deposit_term(c, products)
        item: dict[str, Any] = {
            "id": c.agreement_id,
            "bank": bank_name(c.bank_id),
            "type": c.product_name,
            "balance": legacy(c.amount),
            "rate": loan_math.rate_number(c.interest_rate) if c.interest_rate is not None else 0.0,
            "term_months": term or 0,
            "bank_id": c.bank_id,
            "currency": c.currency,
            "balance_exact": money(c.amount),
        }
        ends = deposit_maturity(c, term)
        if ends is not None:
            item["maturity_date"] = ends.isoformat()
        items.append(item)
    return {
        "status": "ok",
        "deposits": items,
        "total_saved": savings["total_saved"],
        "sdp": savings["daily_payment"],
        "target": savings["target"],
        "progress_percent": savings["progress_percent"],
    }


def last_transactions(data: DashboardData) -> list[dict[str, Any]]:
    rows = []
    for t in data.recent_transactions[:10]:
        row: dict[str, Any] = {
            "bank_id": t.bank_id,
            "account_id": t.account_id,
            "transaction_id": t.transaction_id,
            "booking_time": iso_datetime(t.booking_time),
            "amount": money(t.signed_amount),
            "currency": t.currency,
            "description": t.description,
        }
        if t.category is not None:
            row["category"] = t.category
        rows.append(row)
    return rows


def spending_by_category(data: DashboardData) -> list[dict[str, Any]]:
    """The last 30 days' debits per category and currency, largest total first."""
    ordered = sorted(data.spending_30d, key=lambda c: (-c.total, c.category, c.currency))
    return [
        {"category": c.category, "total": money(c.total), "currency": c.currency, "count": c.count} for c in ordered
    ]


def bank_statuses(data: DashboardData) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per bank (every bank in data.banks): status, last successful sync, last error; and its freshness,
    only for banks with a last successful sync (a never-synced bank has no age: leaving it out keeps
    `age_minutes`, added by the service at answer time, always a number; bank_statuses says why)."""
    statuses, freshness = [], []
    for b in data.banks:
        status: dict[str, Any] = {"bank_id": b.bank_id, "bank_name": b.bank_name, "status": b.status}
        if b.last_success_at is not None:
            status["fetched_at"] = iso_datetime(b.last_success_at)
            freshness.append({"bank_id": b.bank_id, "fetched_at": status["fetched_at"]})
        if b.last_error:
            status["error"] = b.last_error
        statuses.append(status)
    return statuses, freshness


def bank_data_notes(data: DashboardData, lang: str = "ru") -> list[str]:
    """One line per connected bank whose data is missing or stale, saying why (for people): a bank whose
    last sync failed (`error`: the bank fails or refuses, with its message and the last data's time) or
    whose consent needs renewing (`needs_reconsent`). The figures then come from the other banks (and
    the failing bank's last stored data), so the answer says so instead of a silent 0."""
    notes = []
    for b in data.banks:
        if b.status not in ("error", "needs_reconsent"):
            continue
        since = (
            texts.text(lang, "bank.last_data", when=texts.fmt_datetime(b.last_success_at, lang))
            if b.last_success_at
            else texts.text(lang, "bank.no_data_yet")
        )
        key = "bank.reconsent" if b.status == "needs_reconsent" else "bank.failing"
        notes.append(
            texts.text(lang, key, bank=b.bank_name or b.bank_id, error=(b.last_error or "")[:300], since=since)
        )
    return notes


def totals_by_currency(accounts: Iterable[AccountView], base: str) -> list[dict[str, str]]:
    """Totals per currency of the account balances, Loan accounts left out (their balance is disbursed
    loan money, not the user's: counting it doubled a user's total)."""
    return sum_by_currency(
        ((a.currency, a.available) for a in accounts if a.available is not None and not is_loan_account(a)), base
    )


def bank_name_of(data: DashboardData) -> Callable[[str], str]:
    """Bank id -> display name: data.bank_names, else the name in data.banks, else in the accounts, else
    the id."""
    names: dict[str, str] = {}
    for a in data.accounts:
        if a.bank_name:
            names.setdefault(a.bank_id, a.bank_name)
    for b in data.banks:
        if b.bank_name:
            names[b.bank_id] = b.bank_name
    for bank_id, name in data.bank_names.items():
        if name:
            names[bank_id] = name
    return lambda bank_id: names.get(bank_id) or bank_id
