"""Texts for people that the dashboard calculation produces, in Russian (the app's language) and English.

Pure: no I/O. Every sentence the calculation (`dashboard_svc.domain`) shows to people is a
template here, with named format parameters; codes (OK/DANGER, income_source, health status, trigger
types, urgency, loan kinds) are language-neutral and never come from here.

- `language(lang)`: "en…" (any case, e.g. "en-US") -> "en"; anything else -> "ru" (the default).
- `text(lang, key, **params)`: the template of `key` in that language, formatted.
- The `fmt_*` helpers write numbers, money, percents, dates and counts the way each language does:
  ru "150 000,00 ₽", "19,9 %", "04.12.2025", "14 дней"; en "150,000.00 RUB", "19.9%", "2025-12-04",
  "14 days". They take exact Decimals and never round money (the caller rounds first).
"""

from __future__ import annotations

import datetime as dt
from decimal import ROUND_HALF_UP, Decimal

LANGUAGES = ("ru", "en")
DEFAULT_LANGUAGE = "ru"


def language(lang: str | None) -> str:
    """ "en", "EN", "en-US", "en_GB" -> "en"; anything else (None, "", "ru", "ru-RU", unknown) -> "ru"."""
    return "en" if (lang or "").strip().lower()[:2] == "en" else DEFAULT_LANGUAGE


# ---------------------------------------------------------------------------------------------- catalogue

TEXTS: dict[str, dict[str, str]] = {
    # ------------------------------------------------------------------ safe-to-spend
    "sts.no_data": {
        "ru": "нет данных из банков: подключите банк",
        "en": "no bank data yet: connect a bank",
    },
    "sts.shortfall": {
        "ru": "не хватает {shortfall}: на счетах {spendable}, а обязательные платежи {mandatory} и резерв "
        "{buffer} больше этой суммы",
        "en": "shortfall of {shortfall}: spendable {spendable} is less than mandatory payments {mandatory} + "
        "safety buffer {buffer}",
    },
    "sts.no_income": {
        "ru": "в ближайшие {days} доход не ожидается: в истории операций его нет, и зарплата в ваших данных не указана",
        "en": "no income expected in the next {days}: no income found in history and no salary in your inputs",
    },
    "sts.working": {
        "ru": "доступно {spendable} − обязательные платежи {mandatory} − резерв {buffer} = {left} на {days} "
        "{until} → {amount} в день",
        "en": "spendable {spendable} − mandatory payments {mandatory} − safety buffer {buffer} = {left} over "
        "{days} {until} → {amount} per day",
    },
    "sts.until_income": {"ru": "до дохода {date}", "en": "until income on {date}"},
    "sts.until_default": {
        "ru": "(дата дохода неизвестна: взят горизонт по умолчанию)",
        "en": "(no known income date: default horizon)",
    },
    "sts.income": {"ru": "{note}", "en": "income: {note}"},
    "impact.stable": {"ru": "Стабильный прогноз", "en": "Stable forecast"},
    # ------------------------------------------------------------------ banks whose data is missing
    "bank.failing": {
        "ru": "данные {bank} не обновляются: банк не отвечает ({error}); {since}",
        "en": "{bank} data is not up to date: the bank is failing ({error}); {since}",
    },
    "bank.reconsent": {
        "ru": "данные {bank} не обновляются: согласие нужно выдать заново ({error}); {since}",
        "en": "{bank} data is not up to date: the consent must be given again ({error}); {since}",
    },
    "bank.last_data": {"ru": "последние данные от {when}", "en": "last data from {when}"},
    "bank.no_data_yet": {"ru": "данных из этого банка ещё нет", "en": "no data from this bank yet"},
    "impact.income_tomorrow": {"ru": "После завтрашнего дохода", "en": "After tomorrow's income"},
    "credit.replaces": {
        "ru": "платеж по кредиту из ваших данных заменяет платежи, найденные в истории",
        "en": "the credit payment from your inputs replaces detected loan repayments",
    },
    "credit.ignored": {
        "ru": "дата платежа по кредиту указана без суммы, а платежей в истории нет: дата не учтена",
        "en": "a credit payment date without an amount was given and no repayments were detected: ignored",
    },
    # ------------------------------------------------------------------ income notes
    "income.biweekly": {
        "ru": "доход раз в две недели: {amount}",
        "en": "biweekly income of {amount} detected",
    },
    "income.monthly": {"ru": "ежемесячный доход: {streams}", "en": "monthly income detected: {streams}"},
    "income.monthly_stream": {"ru": "{amount} около {day}-го числа", "en": "{amount} around day {day}"},
    "income.irregular": {
        "ru": "нерегулярный доход, в среднем {amount} в месяц, точной даты нет",
        "en": "irregular income, {amount} a month on average, no reliable date",
    },
    "income.none": {"ru": "за последние 180 дней доходов нет", "en": "no income in the last 180 days"},
    "income.user_dated": {
        "ru": "зарплата {amount} {date} (из ваших данных)",
        "en": "salary {amount} on {date} from your inputs",
    },
    "income.user_scaled": {
        "ru": "зарплата {amount} в месяц из ваших данных, даты по истории ({schedule})",
        "en": "salary {amount} a month from your inputs, dates detected ({schedule})",
    },
    "income.user_undated": {
        "ru": "зарплата {amount} в месяц из ваших данных, дата неизвестна",
        "en": "salary {amount} a month from your inputs, date unknown",
    },
    "schedule.monthly": {"ru": "ежемесячно", "en": "monthly"},
    "schedule.biweekly": {"ru": "раз в две недели", "en": "biweekly"},
    # ------------------------------------------------------------------ events
    "event.salary": {"ru": "Получение зарплаты", "en": "Salary"},
    "event.loan_payment": {"ru": "Платеж по кредиту", "en": "Loan payment"},
    # ------------------------------------------------------------------ health
    "health.label.spend_vs_income": {"ru": "Расходы и доходы", "en": "Spending vs income"},
    "health.label.liquid_savings": {"ru": "Финансовая подушка", "en": "Liquid savings"},
    "health.label.debt_load": {"ru": "Долговая нагрузка", "en": "Debt load"},
    "health.label.on_time_repayments": {"ru": "Платежи в срок", "en": "On-time repayments"},
    "health.weak.spend_vs_income": {
        "ru": "расходы велики по сравнению с доходом",
        "en": "spending is high compared with income",
    },
    "health.weak.liquid_savings": {
        "ru": "мало свободных денег по сравнению с ежемесячными расходами",
        "en": "little liquid money compared with monthly spending",
    },
    "health.weak.debt_load": {
        "ru": "платежи по кредитам забирают большую часть дохода",
        "en": "loan payments take a large share of income",
    },
    "health.weak.on_time_repayments": {
        "ru": "часть платежей по кредитам пропущена",
        "en": "some loan repayments were missed",
    },
    "health.reason": {
        "ru": "{label}: {score} из 100 — {weak}: {explanation}",
        "en": "{label} {score}/100: {weak}: {explanation}",
    },
    "health.not_enough": {
        "ru": "Недостаточно данных для оценки финансового здоровья. Не хватает: {missing}",
        "en": "Not enough data for a health score: missing {missing}",
    },
    "health.missing.monthly_income": {"ru": "доходы за месяц", "en": "monthly income"},
    "health.missing.monthly_spending": {"ru": "расходы за месяц", "en": "monthly spending"},
    "health.missing.balances": {"ru": "остатки на счетах", "en": "balances"},
    "health.missing.bank_data": {"ru": "данные банков", "en": "bank data"},
    "health.missing.loan_payments": {"ru": "платежи по кредитам", "en": "loan payments"},
    "health.spend.none": {
        "ru": "за последние 3 полных месяца доходов нет",
        "en": "no income in the last 3 complete months",
    },
    "health.spend": {
        "ru": "расходы составляют {ratio} дохода (100 баллов при ≤ 70 %, 0 при ≥ 120 %)",
        "en": "spending is {ratio} of income (100 at ≤ 70%, 0 at ≥ 120%)",
    },
    "health.liquid.none": {
        "ru": "нет остатков на счетах или истории расходов",
        "en": "no balances or no spending history",
    },
    "health.liquid": {
        "ru": "свободных денег хватит на {months} мес. расходов (6 месяцев → 100 баллов)",
        "en": "liquid money covers {months} months of spending (6 months → 100)",
    },
    "health.no_bank_data": {"ru": "нет данных из банков", "en": "no bank data"},
    "health.debt.unseen": {
        "ru": "кредит открыт, но платежей по нему не найдено",
        "en": "a loan is open but no repayments were seen",
    },
    "health.debt.none": {"ru": "платежей по кредитам нет", "en": "no loan payments"},
    "health.debt.no_income": {
        "ru": "нет дохода, с которым можно сравнить платежи по кредитам",
        "en": "no income to compare loan payments with",
    },
    "health.debt": {
        "ru": "платежи по кредитам забирают {ratio} дохода (100 баллов при ≤ 10 %, 0 при ≥ 50 %)",
        "en": "loan payments take {ratio} of income (100 at ≤ 10%, 0 at ≥ 50%)",
    },
    "health.on_time.none_due": {
        "ru": "сроки платежей по кредитам еще не наступали",
        "en": "no loan repayment due yet",
    },
    "health.on_time": {
        "ru": "платежи были в {paid} из {expected} месяцев, когда их нужно было вносить",
        "en": "{paid} of {expected} due months had a repayment",
    },
    # ------------------------------------------------------------------ loans
    "loan.type.mortgage": {"ru": "Ипотека", "en": "Mortgage"},
    "loan.type.auto": {"ru": "Автокредит", "en": "Car loan"},
    "loan.type.consumer": {"ru": "Потребительский кредит", "en": "Consumer loan"},
    "loan.type.other": {"ru": "Кредит", "en": "Loan"},
    "speed.conservative": {"ru": "спокойная", "en": "conservative"},
    "speed.optimal": {"ru": "оптимальная", "en": "optimal"},
    "speed.fast": {"ru": "быстрая", "en": "fast"},
    "strategy.avalanche": {
        "ru": "по стратегии «лавина» дополнительные платежи идут сначала на кредит с самой высокой ставкой",
        "en": "with the avalanche strategy extra payments go first to the loan with the highest rate",
    },
    "strategy.snowball": {
        "ru": "по стратегии «снежный ком» дополнительные платежи идут сначала на самый маленький долг",
        "en": "with the snowball strategy extra payments go first to the smallest debt",
    },
    "adp.none": {
        "ru": "Обязательных платежей по кредитам нет, поэтому дополнительный платеж не предлагается.",
        "en": "There are no mandatory loan payments, so no additional payment is suggested.",
    },
    "adp.share": {
        "ru": "Скорость погашения «{speed}»: +{percent} к обязательному платежу, {mdp} × {share} = {adp} в день; "
        "{strategy}.",
        "en": 'Repayment speed "{speed}": +{percent} on top of the mandatory payment, {mdp} × {share} = {adp} '
        "a day; {strategy}.",
    },
    "adp.capped": {
        "ru": "Скорость погашения «{speed}»: +{percent} к обязательному платежу, {mdp} × {share} = {raw} в день, "
        "но сегодня без риска можно потратить только {sts} в день, поэтому предлагается {adp}; "
        "{strategy}.",
        "en": 'Repayment speed "{speed}": +{percent} on top of the mandatory payment, {mdp} × {share} = {raw} '
        "a day, but today's safe-to-spend is only {sts} a day, so {adp} is suggested; {strategy}.",
    },
    # ------------------------------------------------------------------ refinancing offers
    "offer.commission": {
        "ru": " (включая комиссию {commission})",
        "en": " (including a commission of {commission})",
    },
    "offer.refinance_one": {
        "ru": "Перекредитовать «{loan}» в {bank} под {rate} на {term}: платеж {payment} вместо {current_payment}, "
        "переплата {new_interest}{commission} вместо {current_interest} — экономия {savings}.",
        "en": 'Refinance "{loan}" at {bank} at {rate} over {term}: payment {payment} instead of '
        "{current_payment}, interest {new_interest}{commission} instead of {current_interest}: "
        "you save {savings}.",
    },
    "offer.consolidation": {
        "ru": "Объединить {count} ({loans}) в один кредит в {bank} под {rate} на {term}: платеж {payment} вместо "
        "{current_payment}, переплата {new_interest}{commission} вместо {current_interest} — экономия "
        "{savings}.",
        "en": "Combine {count} ({loans}) into one loan at {bank} at {rate} over {term}: payment {payment} "
        "instead of {current_payment}, interest {new_interest}{commission} instead of {current_interest}: "
        "you save {savings}.",
    },
    # ------------------------------------------------------------------ financing-need triggers
    "trigger.missed_payment.title": {"ru": "Пропущен платеж по кредиту", "en": "Missed loan payment"},
    "trigger.missed_payment.description": {
        "ru": "По кредиту «{loan}» ({bank}) не найдено платежа за {month}; остаток долга около {balance}.",
        "en": 'No repayment of "{loan}" ({bank}) was found for {month}; about {balance} is still owed.',
    },
    "trigger.missed_payment.usual": {
        "ru": " Обычный платеж — {payment}.",
        "en": " The usual payment is {payment}.",
    },
    "trigger.missed_payment.action": {"ru": "Внести платеж", "en": "Make a payment"},
    "trigger.gap_risk.title": {
        "ru": "Не хватает денег на обязательные платежи",
        "en": "Not enough money for mandatory payments",
    },
    "trigger.gap_risk.description": {
        "ru": "До {until} не хватает {shortfall}: на счетах {spendable}, а обязательные платежи {mandatory} "
        "плюс резерв {buffer}.",
        "en": "{shortfall} short before {until}: spendable {spendable}, but mandatory payments are {mandatory} "
        "plus a safety buffer of {buffer}.",
    },
    "trigger.gap_risk.action": {"ru": "Пополнить счет", "en": "Top up an account"},
    "trigger.high_dti.title": {"ru": "Высокая долговая нагрузка", "en": "High debt load"},
    "trigger.high_dti.description": {
        "ru": "Платежи по кредитам — {payments} в месяц, это {ratio} среднего дохода {income} (больше 50 %).",
        "en": "Loan payments of {payments} a month take {ratio} of the average income of {income} (over 50%).",
    },
    "trigger.high_dti.action": {"ru": "Снизить платежи", "en": "Lower the payments"},
    "trigger.refi_opportunity.title": {"ru": "Можно переплатить меньше", "en": "A cheaper loan is available"},
    "trigger.refi_opportunity.description": {
        "ru": "«{loan}» ({loan_bank}, {loan_rate}): {bank} предлагает {rate} на {term}, экономия {savings}.",
        "en": '"{loan}" ({loan_bank}, {loan_rate}): {bank} offers {rate} over {term}, saving {savings}.',
    },
    "trigger.refi_opportunity.action": {"ru": "Сравнить предложения", "en": "Compare offers"},
}

RU_MONTHS = (
    "январь",
    "февраль",
    "март",
    "апрель",
    "май",
    "июнь",
    "июль",
    "август",
    "сентябрь",
    "октябрь",
    "ноябрь",
    "декабрь",
)
EN_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


def text(lang: str, key: str, **params: object) -> str:
    """The template `key` in `lang` (see `language`), formatted with `params`."""
    return TEXTS[key][language(lang)].format(**params)


# ---------------------------------------------------------------------------------------------- formatting


def fmt_number(value: Decimal, lang: str, places: int = 2) -> str:
    """A number with `places` decimals (ROUND_HALF_UP) and thousands grouped:
    ru "150 000,00" (space, comma), en "150,000.00"."""
    quantum = Decimal(1).scaleb(-places)
    rounded = Decimal(value).quantize(quantum, rounding=ROUND_HALF_UP)
    if rounded == 0:
        rounded = abs(rounded)
    grouped = f"{rounded:,.{places}f}"
    if language(lang) == "ru":
        return grouped.replace(",", " ").replace(".", ",")
    return grouped


def fmt_amount(value: Decimal, lang: str) -> str:
    """Money without its currency, two decimals, grouped."""
    return fmt_number(value, lang, 2)


def currency_sign(currency: str, lang: str) -> str:
    """ru writes roubles as "₽"; every other currency, and every currency in en, as its ISO code."""
    return "₽" if language(lang) == "ru" and currency == "RUB" else currency


def fmt_money(value: Decimal, currency: str, lang: str) -> str:
    """Money with its currency: ru "25 000,00 ₽", en "25,000.00 RUB"."""
    return f"{fmt_amount(value, lang)} {currency_sign(currency, lang)}"


def fmt_decimal(value: Decimal, lang: str, max_places: int = 2) -> str:
    """A number with at most `max_places` decimals and no trailing zeros: "19,9" / "19.9", "8" / "8"."""
    rounded = f"{Decimal(value).quantize(Decimal(1).scaleb(-max_places), rounding=ROUND_HALF_UP):f}"
    if "." in rounded:
        rounded = rounded.rstrip("0").rstrip(".")
    if rounded in ("-0", ""):
        rounded = "0"
    return rounded.replace(".", ",") if language(lang) == "ru" else rounded


def fmt_percent(value: Decimal, lang: str, max_places: int = 2) -> str:
    """A percent value (19.9 means 19.9 %): ru "19,9 %", en "19.9%"."""
    number = fmt_decimal(value, lang, max_places)
    return f"{number} %" if language(lang) == "ru" else f"{number}%"


def fmt_date(value: dt.date, lang: str) -> str:
    """ru "04.12.2025", en "2025-12-04"."""
    return value.strftime("%d.%m.%Y") if language(lang) == "ru" else value.isoformat()


def fmt_datetime(value: dt.datetime, lang: str) -> str:
    """A moment in UTC: ru "04.12.2025 09:30 UTC", en "2025-12-04 09:30 UTC"."""
    value = value.astimezone(dt.UTC)
    return f"{fmt_date(value.date(), lang)} {value:%H:%M} UTC"


def fmt_month(value: dt.date, lang: str) -> str:
    """A calendar month: ru "октябрь 2025", en "October 2025"."""
    names = RU_MONTHS if language(lang) == "ru" else EN_MONTHS
    return f"{names[value.month - 1]} {value.year}"


def plural_ru(n: int, one: str, few: str, many: str) -> str:
    """The Russian plural form for n: 1 день, 2 дня, 5 дней, 11 дней, 21 день, 22 дня."""
    n = abs(n)
    if n % 10 == 1 and n % 100 != 11:
        return one
    if 2 <= n % 10 <= 4 and not 12 <= n % 100 <= 14:
        return few
    return many


def fmt_days(n: int, lang: str) -> str:
    """ru "14 дней", en "14 days" ("1 day")."""
    if language(lang) == "ru":
        return f"{n} {plural_ru(n, 'день', 'дня', 'дней')}"
    return f"{n} day" if n == 1 else f"{n} days"


def fmt_months(n: int, lang: str) -> str:
    """ru "24 месяца", en "24 months" ("1 month")."""
    if language(lang) == "ru":
        return f"{n} {plural_ru(n, 'месяц', 'месяца', 'месяцев')}"
    return f"{n} month" if n == 1 else f"{n} months"


def fmt_loans(n: int, lang: str) -> str:
    """ru "2 кредита", en "2 loans"."""
    if language(lang) == "ru":
        return f"{n} {plural_ru(n, 'кредит', 'кредита', 'кредитов')}"
    return f"{n} loan" if n == 1 else f"{n} loans"
