"""Deterministic sample data: customers, accounts, product agreements and about a year of history.

Every value comes from a `random.Random` seeded with a string naming what it is for (seed, bank,
customer, account...), so one configuration always yields the same data, whichever customers are
touched first. What identifies a customer (name, city, account ids and subtypes) is drawn without
the bank, so a customer has the same `accountId`s at every bank; account numbers, agreements and
histories are drawn per bank. History is replayed oldest first from an opening balance, skipping a
purchase or transfer the balance cannot cover and topping up before a loan repayment, so a balance
always equals opening + credits - debits and never goes below zero.
"""

from __future__ import annotations

import calendar
import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from bank_sandbox.models import CENT, UTC, Account, Agreement, Card, Customer, Draft, Merchant, Product

CITIES = ("Москва", "Санкт-Петербург", "Казань", "Екатеринбург", "Новосибирск")
MALE_NAMES = ("Александр", "Дмитрий", "Максим", "Сергей", "Андрей", "Алексей", "Иван", "Михаил")
FEMALE_NAMES = ("Анна", "Мария", "Елена", "Ольга", "Наталья", "Екатерина", "Татьяна", "Ирина")
SURNAMES = ("Иванов", "Смирнов", "Кузнецов", "Попов", "Соколов", "Лебедев", "Козлов", "Новиков", "Морозов", "Волков")
PATRONYMIC_ROOTS = ("Александров", "Дмитриев", "Сергеев", "Андреев", "Иванов", "Михайлов", "Петров")
INCOME_LABELS = ("Доход", "Доход", "Доход от бизнеса")
LOAN_REPAYMENT_SHARE = Decimal("0.05")  # of the principal, every month


@dataclass(frozen=True)
class Category:
    name: str
    mcc: str
    low: int  # RUB
    high: int
    weight: int
    merchants: tuple[str, ...]


CATEGORIES = (
    Category("grocery", "5411", 1_000, 5_000, 65, ("Дикси", "Пятёрочка", "Перекрёсток", "Магнит", "ВкусВилл")),
    Category("restaurants", "5812", 2_000, 50_000, 20, ("Кофемания", "Шоколадница", "Теремок", "Якитория")),
    Category("online_retail", "5399", 10_000, 80_000, 8, ("Ozon", "Wildberries", "Яндекс Маркет")),
    Category("clothing", "5651", 11_000, 98_000, 7, ("Zara", "Gloria Jeans", "Befree", "Спортмастер")),
)
_CATEGORY_WEIGHTS = [category.weight for category in CATEGORIES]


@dataclass(frozen=True)
class Activity:
    """How busy an account is: ranges per month, and its opening balance (RUB)."""

    incomes: tuple[int, int]
    income_amount: tuple[int, int]
    purchases: tuple[int, int]
    transfers: tuple[int, int]
    opening: tuple[int, int]


ACTIVITY = {
    "Checking": Activity(
        incomes=(4, 7), income_amount=(30_000, 110_000), purchases=(15, 25), transfers=(1, 3), opening=(20_000, 150_000)
    ),
    "Savings": Activity(
        incomes=(3, 6), income_amount=(5_000, 40_000), purchases=(0, 0), transfers=(2, 4), opening=(100_000, 900_000)
    ),
}


def rng(*parts: object) -> random.Random:
    """A generator for one purpose; string seeds are hashed with SHA-512, so stable across runs."""
    return random.Random("|".join(map(str, parts)))


def _amount(r: random.Random, low: int, high: int) -> Decimal:
    return Decimal(r.randint(low * 100, high * 100)).scaleb(-2)


# ------------------------------------------------------------------------------------ catalogue


@dataclass(frozen=True)
class Catalogue:
    loans: tuple[Product, ...]
    deposits: tuple[Product, ...]
    debit_card: Product
    credit_card: Product

    @property
    def products(self) -> tuple[Product, ...]:
        return (*self.loans, *self.deposits, self.debit_card, self.credit_card)


def catalogue(seed: int, bank_id: str) -> Catalogue:
    r = rng(seed, bank_id, "catalogue")

    def line(
        product_type: str, number: int, title: str, rates: tuple[int, int], low: int, high: int | None, term: int | None
    ) -> Product:
        rate = Decimal(r.randint(*rates)).scaleb(-1)  # one decimal, e.g. 9.3
        return Product(
            f"prod-{bank_id}-{product_type}-{number:03d}",
            product_type,
            title if product_type == "card" else f"{title} {rate}%",
            rate,
            Decimal(low),
            None if high is None else Decimal(high),
            term,
        )

    return Catalogue(
        loans=(
            line("loan", 1, "Потребительский кредит", (129, 199), 50_000, 3_000_000, 36),
            line("loan", 2, "Ипотека", (75, 115), 500_000, None, 240),
            line("loan", 3, "Автокредит", (99, 159), 200_000, 5_000_000, 60),
        ),
        deposits=(
            line("deposit", 1, "Вклад Надёжный", (140, 190), 10_000, None, 12),
            line("deposit", 2, "Вклад Максимальный", (150, 200), 100_000, None, 6),
        ),
        debit_card=line("card", 1, "Дебетовая карта", (0, 0), 0, None, None),
        credit_card=line("card", 2, "Кредитная карта", (249, 349), 10_000, 1_000_000, None),
    )


# ------------------------------------------------------------------------------------ customers


@dataclass(frozen=True)
class AccountSpec:
    account_id: str
    subtype: str


@dataclass(frozen=True)
class Profile:
    """What does not depend on the bank."""

    client_id: str
    index: int
    name: str
    city: str
    accounts: tuple[AccountSpec, ...]


def profile(seed: int, team_id: str, index: int) -> Profile:
    client_id = f"{team_id}-{index}"
    r = rng(seed, client_id, "profile")
    female = r.random() < 0.5
    surname = r.choice(SURNAMES) + ("а" if female else "")
    first = r.choice(FEMALE_NAMES if female else MALE_NAMES)
    patronymic = r.choice(PATRONYMIC_ROOTS) + ("на" if female else "ич")
    subtypes = ["Checking"]
    for subtype, chance in (("Savings", 0.5), ("Loan", 0.35), ("Checking", 0.2)):
        if r.random() < chance:
            subtypes.append(subtype)
    # acc-<customer number><3 digits>: distinct within and across customers.
    suffixes = r.sample(range(100, 1000), len(subtypes))
    accounts = tuple(
        AccountSpec(f"acc-{index}{suffix}", subtype) for suffix, subtype in zip(suffixes, subtypes, strict=True)
    )
    return Profile(client_id, index, f"{surname} {first} {patronymic}", r.choice(CITIES), accounts)


def account_number(seed: int, bank_id: str, index: int, position: int) -> str:
    """40817810 + bank code (2) + customer (3) + account position (1) + 5 drawn digits: 19 digits."""
    drawn = rng(seed, bank_id, index, position, "number").randrange(100_000)
    return f"40817810{zlib.crc32(bank_id.encode()) % 100:02d}{index:03d}{position}{drawn:05d}"


def build_customer(
    seed: int, bank_id: str, who: Profile, products: Catalogue, anchor: datetime, history_days: int
) -> Customer:
    """The customer as `bank_id` knows them, with history over the `history_days` before `anchor`."""
    r = rng(seed, bank_id, who.client_id, "customer")
    window_start = anchor - timedelta(days=history_days)
    accounts = [
        Account(
            spec.account_id,
            spec.subtype,
            account_number(seed, bank_id, who.index, position),
            opening_date=(window_start - timedelta(days=r.randint(30, 1500))).date(),
            balance=Decimal(0),
            tx_prefix=f"tx-{bank_id}-{who.index:03d}{position}",
            card=Card(f"card-{r.randrange(16**8):08x}", f"{r.randrange(10_000):04d}")
            if spec.subtype == "Checking"
            else None,
        )
        for position, spec in enumerate(who.accounts)
    ]
    agreements = _agreements(r, who, accounts, products, anchor)
    for account in accounts:
        _replay(
            rng(seed, bank_id, who.client_id, account.account_id, "history"),
            account,
            who.city,
            agreements,
            payer=accounts[0],
            window=(window_start, anchor),
        )
    return Customer(who.client_id, who.index, who.name, who.city, accounts, agreements)


def _agreements(
    r: random.Random, who: Profile, accounts: list[Account], products: Catalogue, anchor: datetime
) -> list[Agreement]:
    """0-2 loans (at least one when there is a Loan account, linked to it), 0-1 deposit, a debit card,
    often a credit card. The first account is always the customer's main Checking account."""
    checking = accounts[0]
    savings = next((a for a in accounts if a.subtype == "Savings"), None)
    loan_account = next((a for a in accounts if a.subtype == "Loan"), None)
    numbers = iter(r.sample(range(1, 10_000), 5))

    def new_id(prefix: str) -> str:
        return f"{prefix}-{who.client_id}-{next(numbers):04d}"

    def started(most_days_ago: int, fewest_days_ago: int) -> datetime:
        return anchor - timedelta(
            days=r.randint(fewest_days_ago, most_days_ago),
            seconds=r.randrange(86_400),
            microseconds=r.randrange(1_000_000),
        )

    agreements = []
    loans = max(r.choice((0, 0, 1, 1, 2)), 1 if loan_account else 0)
    for number in range(loans):
        start = started(900, 60)
        end = None
        if number > 0 and r.random() < 0.25:  # a later loan is sometimes already repaid
            closed = start + timedelta(days=30 * r.randint(3, 12))
            end = closed if closed < anchor - timedelta(days=7) else None
        linked = loan_account if number == 0 and loan_account else checking
        agreements.append(
            Agreement(new_id("loan"), r.choice(products.loans), _amount(r, 100_000, 1_500_000), start, linked, end)
        )
    if r.random() < 0.5:
        agreements.append(
            Agreement(
                new_id("dep"),
                r.choice(products.deposits),
                _amount(r, 50_000, 2_000_000),
                started(700, 30),
                savings or checking,
            )
        )
    agreements.append(Agreement(new_id("card"), products.debit_card, Decimal(0), started(1500, 400), checking))
    if r.random() < 0.6:
        limit = Decimal(r.randint(5, 50) * 10_000)
        agreements.append(Agreement(new_id("card"), products.credit_card, limit, started(1000, 30), checking))
    return agreements


# ------------------------------------------------------------------------------------ history


def purchase(r: random.Random, card: Card, home_city: str, when: datetime) -> Draft:
    category = r.choices(CATEGORIES, weights=_CATEGORY_WEIGHTS)[0]
    name = r.choice(category.merchants)
    city = home_city if r.random() < 0.85 else r.choice(CITIES)
    merchant = Merchant(f"mrc-{zlib.crc32(f'{name}|{city}'.encode()):08x}", name, category.mcc, category.name, city)
    return Draft(when, "Debit", _amount(r, category.low, category.high), f"{name} - {city}", "01", merchant, card)


def income(r: random.Random, when: datetime, low: int, high: int) -> Draft:
    return Draft(when, "Credit", _amount(r, low, high), r.choice(INCOME_LABELS))


def transfer(r: random.Random, when: datetime) -> Draft:
    recipient = f"{r.choice(MALE_NAMES + FEMALE_NAMES)} {r.choice(SURNAMES)[0]}."
    return Draft(when, "Debit", _amount(r, 1_000, 40_000), f"Перевод клиенту {recipient}")


def extra_activity(r: random.Random, account: Account, home_city: str, when: datetime) -> Draft:
    """One more movement for an account, dated `when`: mostly purchases the balance covers, else income."""
    if account.card is not None and r.random() < 0.7:
        draft = purchase(r, account.card, home_city, when)
        if draft.amount <= account.balance:
            return draft
    return income(r, when, 10_000, 100_000)


def _months(start: datetime, end: datetime) -> Iterator[tuple[int, int]]:
    year, month = start.year, start.month
    while (year, month) <= (end.year, end.month):
        yield year, month
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)


def _moment(r: random.Random, year: int, month: int, day: int | None = None) -> datetime:
    day = day or r.randint(1, calendar.monthrange(year, month)[1])
    return datetime(
        year, month, day, r.randrange(7, 23), r.randrange(60), r.randrange(60), r.randrange(1_000_000), tzinfo=UTC
    )


def _everyday(r: random.Random, account: Account, city: str, year: int, month: int) -> list[Draft]:
    activity = ACTIVITY[account.subtype]
    drafts = [income(r, _moment(r, year, month), *activity.income_amount) for _ in range(r.randint(*activity.incomes))]
    if account.card is not None:
        drafts += [
            purchase(r, account.card, city, _moment(r, year, month)) for _ in range(r.randint(*activity.purchases))
        ]
    drafts += [transfer(r, _moment(r, year, month)) for _ in range(r.randint(*activity.transfers))]
    return drafts


def _scheduled(
    r: random.Random, account: Account, agreements: list[Agreement], payer: Account, anchor: datetime
) -> list[Draft]:
    """Monthly loan repayments (from the payer account) and deposit interest near month end."""
    drafts = []
    for agreement in agreements:
        kind = agreement.product.product_type
        if kind == "loan" and account is payer:
            amount = (agreement.amount * LOAN_REPAYMENT_SHARE).quantize(CENT)
            label = f"Платеж по кредиту №{agreement.agreement_id}"
            day = min(agreement.start.day, 28)
        elif kind == "deposit" and agreement.account is account:
            amount = (agreement.amount * agreement.product.interest_rate / 1200).quantize(CENT)
            label = f"Проценты по депозиту №{agreement.agreement_id}"
            day = None
        else:
            continue
        until = agreement.end or anchor
        for year, month in list(_months(agreement.start, until))[1:]:
            when = _moment(r, year, month, day or calendar.monthrange(year, month)[1] - r.randint(0, 2))
            if when < until:
                drafts.append(Draft(when, "Debit" if kind == "loan" else "Credit", amount, label))
    return drafts


def _replay(
    r: random.Random,
    account: Account,
    city: str,
    agreements: list[Agreement],
    payer: Account,
    window: tuple[datetime, datetime],
) -> None:
    """Book the account's history inside `window` onto it, from an opening balance."""
    start, anchor = window
    if account.subtype == "Loan":  # holds the disbursed principal of its loan
        loan = next(a for a in agreements if a.account is account)
        before = loan.start < start
        opening = loan.amount if before else Decimal(0)
        drafts = [] if before else [Draft(loan.start, "Credit", loan.amount, f"Выдача кредита №{loan.agreement_id}")]
        mandatory: list[Draft] = []
    else:
        opening = _amount(r, *ACTIVITY[account.subtype].opening)
        drafts = [d for year, month in _months(start, anchor) for d in _everyday(r, account, city, year, month)]
        mandatory = _scheduled(r, account, agreements, payer, anchor)
    account.balance = opening
    must = set(map(id, mandatory))
    for draft in sorted((d for d in drafts + mandatory if start <= d.booked < anchor), key=lambda d: d.booked):
        shortfall = draft.amount - account.balance if draft.indicator == "Debit" else Decimal(0)
        if shortfall > 0 and id(draft) not in must:
            continue  # the customer could not afford it
        if shortfall > 0:  # a repayment is never skipped: income arrives just before it
            previous = account.transactions[-1].draft.booked if account.transactions else start
            when = max(previous, draft.booked - timedelta(minutes=5))
            account.book(Draft(when, "Credit", shortfall + _amount(r, 1_000, 20_000), INCOME_LABELS[0]))
        account.book(draft)
