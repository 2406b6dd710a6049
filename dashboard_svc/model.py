"""Domain values of the dashboard service (no gRPC, no SQL)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal

from finance.loans import Repayments


@dataclasses.dataclass(frozen=True)
class FinancialInputs:
    salary_amount: Decimal | None = None
    next_salary_date: dt.date | None = None
    credit_payment_amount: Decimal | None = None
    credit_payment_date: dt.date | None = None


# ---------------------------------------------------------------------------------------------- inputs
# What the calculation reads. The service gathers these from sync_svc (stored bank data and SQL
# aggregates), onboarding_svc (goals) and its own storage (financial inputs); the calculation itself
# (`dashboard_svc.domain`) is pure: no I/O, no gRPC, no SQL. A loan's repayments are the shared
# `finance.loans.Repayments`.


@dataclasses.dataclass(frozen=True)
class AccountView:
    bank_id: str
    bank_name: str
    account_id: str
    sub_type: str  # Checking, Savings, Loan, ... ("" when unknown)
    currency: str
    nickname: str
    account_number: str | None
    available: Decimal | None  # InterimAvailable (else InterimBooked) balance, signed; None when no balance stored
    booked: Decimal | None


@dataclasses.dataclass(frozen=True)
class CreditView:
    """A product agreement. `amount` is the principal (loan), the deposited sum (deposit) or the
    limit (card): a card limit is not debt."""

    bank_id: str
    agreement_id: str
    product_type: str  # loan | deposit | card
    product_name: str
    amount: Decimal
    interest_rate: Decimal | None  # percent per year, e.g. Decimal("12.9")
    status: str  # active | closed
    start_date: dt.date | None
    account_number: str | None
    account_balance: Decimal | None
    currency: str = "RUB"
    end_date: dt.date | None = None  # the agreement's end date, when the bank gives one
    product_id: str = ""  # the catalogue product (bank-scoped), "" when unknown


@dataclasses.dataclass(frozen=True)
class DayAmount:
    """A day's total of income credits (transfers between accounts and deposit interest excluded)."""

    day: dt.date
    currency: str
    total: Decimal
    count: int


@dataclasses.dataclass(frozen=True)
class MonthFlow:
    month: dt.date  # first day of the month
    currency: str
    income: Decimal
    spending: Decimal


@dataclasses.dataclass(frozen=True)
class CategoryTotal:
    category: str  # "" for debits without a merchant category
    currency: str
    total: Decimal
    count: int


@dataclasses.dataclass(frozen=True)
class TransactionView:
    bank_id: str
    account_id: str
    transaction_id: str
    booking_time: dt.datetime
    signed_amount: Decimal
    currency: str
    description: str
    category: str | None


@dataclasses.dataclass(frozen=True)
class BankFreshness:
    bank_id: str
    bank_name: str
    status: str  # ok | syncing | error | needs_reconsent | never_synced
    last_success_at: dt.datetime | None
    last_error: str | None


@dataclasses.dataclass(frozen=True)
class Goals:
    goal_type: str | None = None  # e.g. "savings", "loans", "savings_and_loans"
    target_amount: Decimal | None = None
    target_date: dt.date | None = None
    loans_speed: str | None = None  # conservative | optimal | fast (None: optimal)
    savings_speed: str | None = None  # conservative | optimal | fast (not used by the calculation yet)
    loan_strategy: str | None = None  # avalanche | snowball (None: avalanche)
    horizon_months: int | None = None  # the savings goal's horizon when it has no target date


@dataclasses.dataclass(frozen=True)
class ProductView:
    """A product of a bank's public catalogue (`GET /products`). `commission` is a one-off amount in the
    product's currency (the base currency), None when the bank names none; None limits: no limit."""

    bank_id: str
    product_id: str
    product_type: str  # loan | deposit | card
    product_name: str
    interest_rate: Decimal | None  # percent per year
    min_amount: Decimal | None
    max_amount: Decimal | None
    term_months: int | None
    commission: Decimal | None = None


@dataclasses.dataclass(frozen=True)
class DashboardConfig:
    base_currency: str = "RUB"
    safety_buffer: Decimal = Decimal("3000.00")
    default_savings_target: Decimal = Decimal("100000.00")
    default_savings_daily: Decimal = Decimal("500.00")
    horizon_days_without_income: int = 30


@dataclasses.dataclass(frozen=True)
class DashboardData:
    """Everything the calculation needs for one user, as of `now`."""

    user_id: str
    now: dt.datetime  # aware UTC; "today" is now's UTC date
    accounts: list[AccountView]
    credits: list[CreditView]
    repayments: list[Repayments]
    income_days: list[DayAmount]  # last 180 days
    cash_flow: list[MonthFlow]  # last 12 calendar months incl. the current one, oldest first
    spending_30d: list[CategoryTotal]
    spent_today: list[CategoryTotal]
    recent_transactions: list[TransactionView]  # newest first, at most 10
    banks: list[BankFreshness]
    inputs: FinancialInputs
    goals: Goals
    config: DashboardConfig
    products: list[ProductView] = dataclasses.field(default_factory=list)  # every configured bank's catalogue
    bank_names: dict[str, str] = dataclasses.field(default_factory=dict)  # bank id -> display name
