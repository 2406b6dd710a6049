"""Events of the next 30 days (expected income, loan payments due) and safe-to-spend per day until the next
income (pure)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from decimal import ROUND_DOWN, Decimal
from typing import Any

from dashboard_svc.domain import texts
from dashboard_svc.domain.common import is_loan_account, is_spendable_account, legacy, money, sum_by_currency
from dashboard_svc.domain.income import IncomePlan
from dashboard_svc.model import AccountView, DashboardData
from finance.loans import Obligation
from finance.money import CENT, ZERO, round_money

EVENTS_DAYS = 30
EVENTS_MAX = 20


# ================================================================================================ events


def event(
    when: dt.date,
    kind: str,
    amount: Decimal,
    currency: str,
    *,
    bank_id: str | None = None,
    agreement_id: str | None = None,
    lang: str = "ru",
) -> dict[str, Any]:
    """An Event as the seed shapes it (`amount` a number) plus the exact amount and its currency; the
    description in `lang` (ru "Получение зарплаты" / "Платеж по кредиту")."""
    entry: dict[str, Any] = {
        "date": when.isoformat(),
        "type": kind,
        "amount": legacy(amount),
        "description": texts.text(lang, "event.salary" if kind == "salary" else "event.loan_payment"),
        "amount_exact": money(amount),
        "currency": currency,
    }
    if agreement_id is not None:
        entry["agreement_id"] = agreement_id
    if bank_id is not None:
        entry["bank_id"] = bank_id
    return entry


def obligation_events(
    obligations: Iterable[Obligation], start: dt.date, end: dt.date, currency: str | None = None, lang: str = "ru"
) -> list[dict[str, Any]]:
    """Loan payments due in [start, end] (only `currency` when given), by date."""
    items = [
        event(when, "loan_payment", o.amount, o.currency, bank_id=o.bank_id, agreement_id=o.agreement_id, lang=lang)
        for o in obligations
        if currency is None or o.currency == currency
        for when in o.occurrences(start, end)
    ]
    return sorted(items, key=lambda e: (e["date"], e.get("bank_id") or "", e.get("agreement_id") or ""))


def events_next_30d(
    plan: IncomePlan, obligations: Iterable[Obligation], base: str, today: dt.date, lang: str = "ru"
) -> list[dict[str, Any]]:
    """Expected income dates (type "salary", with the expected amount) and loan due dates in
    [today, today + 30], sorted by date (income first on a tie), at most 20. Irregular income has no
    date and gives no event."""
    end = today + dt.timedelta(days=EVENTS_DAYS)
    incomes = [
        event(when, "salary", s.amount, base, lang=lang) for s in plan.streams for when in s.occurrences(today, end)
    ]
    items = incomes + obligation_events(obligations, today, end, lang=lang)
    items.sort(key=lambda e: (e["date"], e["type"] != "salary"))
    return items[:EVENTS_MAX]


# ================================================================================================ STS


def per_day(available: Decimal, days: int) -> Decimal:
    """max(0, available ÷ days), ROUND_DOWN to cents: never overstated."""
    return max(ZERO, available / max(days, 1)).quantize(CENT, rounding=ROUND_DOWN)


def spendable_balance(accounts: Iterable[AccountView], base: str) -> Decimal:
    """Σ available of the spendable accounts (see `is_spendable_account`)."""
    return sum((a.available for a in accounts if is_spendable_account(a, base) and a.available is not None), ZERO)


def excluded_balances(accounts: Iterable[AccountView], base: str) -> list[dict[str, str]]:
    """Non-loan balances in other currencies: shown per currency, not converted, not in safe-to-spend."""
    return sum_by_currency(
        (
            (a.currency, a.available)
            for a in accounts
            if not is_loan_account(a) and a.currency != base and a.available is not None
        ),
        base,
    )


def safe_to_spend(
    data: DashboardData,
    plan: IncomePlan,
    obligations: list[Obligation],
    credit_note: str,
    today: dt.date,
    lang: str = "ru",
) -> dict[str, Any]:
    """Safe-to-spend per day until the next income.

    horizon = the next income date, or today + config.horizon_days_without_income when it is unknown;
    days_left = days from today (exclusive) to the horizon (inclusive), at least 1;
    mandatory = base-currency loan payments due in [today, horizon];
    per day = max(0, (spendable − mandatory − buffer) ÷ days_left), ROUND_DOWN.
    Status DANGER when spendable < mandatory + buffer (the shortfall is named), when no income is
    expected, or when there is no bank data at all; else OK.
    Tomorrow: the same figure, unless income is expected tomorrow; then (spendable − mandatory + that
    income − payments of the next cycle − buffer) ÷ the next cycle's days (tomorrow to the following
    income), impact "После завтрашнего дохода" (else "Стабильный прогноз"). Texts in `lang`."""
    config = data.config
    base = config.base_currency
    spendable = spendable_balance(data.accounts, base)
    buffer = config.safety_buffer
    next_date = plan.next_date
    horizon = next_date or today + dt.timedelta(days=config.horizon_days_without_income)
    days_left = max(1, (horizon - today).days)
    items = obligation_events(obligations, today, horizon, base, lang=lang)
    mandatory = sum((Decimal(i["amount_exact"]) for i in items), ZERO)
    left = spendable - mandatory - buffer
    amount = per_day(left, days_left)
    expected_income = plan.amount_on(next_date) if next_date else plan.amount_without_date
    spent = sum((c.total for c in data.spent_today if c.currency == base), ZERO)

    def m(value: Decimal) -> str:
        return texts.fmt_money(round_money(value), base, lang)

    reasons = []
    until = (
        texts.text(lang, "sts.until_income", date=texts.fmt_date(next_date, lang))
        if next_date
        else texts.text(lang, "sts.until_default")
    )
    working = texts.text(
        lang,
        "sts.working",
        spendable=m(spendable),
        mandatory=m(mandatory),
        buffer=m(buffer),
        left=m(left),
        days=texts.fmt_days(days_left, lang),
        until=until,
        amount=m(amount),
    )
    if not data.accounts:
        status, reasons = "DANGER", [texts.text(lang, "sts.no_data")]
    else:
        if left < 0:
            reasons.append(
                texts.text(
                    lang,
                    "sts.shortfall",
                    shortfall=m(-left),
                    spendable=m(spendable),
                    mandatory=m(mandatory),
                    buffer=m(buffer),
                )
            )
        if plan.source == "none":
            reasons.append(texts.text(lang, "sts.no_income", days=texts.fmt_days(days_left, lang)))
        status = "DANGER" if reasons else "OK"
        reasons.append(working)
        reasons.append(texts.text(lang, "sts.income", note=plan.note))
        if credit_note:
            reasons.append(credit_note)

    tomorrow = today + dt.timedelta(days=1)
    tomorrow_amount, impact = amount, texts.text(lang, "impact.stable")
    if next_date == tomorrow and data.accounts:
        following = plan.next_after(tomorrow) or tomorrow + dt.timedelta(days=config.horizon_days_without_income)
        next_cycle = sum(
            (
                o.amount
                for o in obligations
                if o.currency == base
                for _ in o.occurrences(tomorrow + dt.timedelta(days=1), following)
            ),
            ZERO,
        )
        tomorrow_amount = per_day(
            spendable - mandatory + expected_income - next_cycle - buffer, (following - tomorrow).days
        )
        impact = texts.text(lang, "impact.income_tomorrow")

    detail: dict[str, Any] = {
        "amount_per_day": money(amount),
        "currency": base,
        "spendable_balance": money(spendable),
        "expected_income": money(expected_income),
        "income_source": plan.source,
        "mandatory_payments": money(mandatory),
        "mandatory_items": items,
        "safety_buffer": money(buffer),
        "days_left": days_left,
        "status": status,
        "reason": "; ".join(reasons),
        "spent_today": money(spent),
        "excluded_balances": excluded_balances(data.accounts, base),
    }
    if next_date:
        detail["next_income_date"] = next_date.isoformat()
    return {
        "amount": legacy(amount),
        "spent": legacy(spent),
        "tomorrow": {"amount": legacy(tomorrow_amount), "impact": impact},
        "detail": detail,
    }
