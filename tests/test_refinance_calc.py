"""Loans, deposits and refinancing in dashboard_svc.calc / dashboard_svc.domain.loan_math and .refinance (pure).

Every scenario runs at NOW = 2025-11-20 09:00 UTC (today = Thursday 2025-11-20) with the default
configuration (RUB, safety buffer 3,000.00). Expected numbers are worked out by hand in the comments;
where a month-by-month loop is needed the test computes it itself, independently of the implementation
(`simulate` below: integer kopecks and exact fractions). Every test names its language, and every
`compute_all` part is parsed into its proto message.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
from decimal import Decimal as D
from fractions import Fraction

from finpulse.dashboard.v1 import dashboard_pb2
from google.protobuf import json_format

from dashboard_svc.calc import compute, compute_all
from dashboard_svc.domain import loan_math, refinance
from dashboard_svc.domain.accounts import bank_name_of
from dashboard_svc.model import (
    AccountView,
    BankFreshness,
    CreditView,
    DashboardConfig,
    DashboardData,
    DayAmount,
    FinancialInputs,
    Goals,
    MonthFlow,
    ProductView,
)
from finance.loans import Repayments

UTC = dt.UTC
NOW = dt.datetime(2025, 11, 20, 9, 0, tzinfo=UTC)
PARTS = {
    "dashboard": dashboard_pb2.GetDashboardResponse,
    "loans": dashboard_pb2.GetLoansResponse,
    "deposits": dashboard_pb2.GetDepositsResponse,
    "refinance": dashboard_pb2.OptimizeLoansResponse,
}


# ------------------------------------------------------------------------------------ independent arithmetic


def kopecks(amount: str) -> int:
    return int(D(amount) * 100)


def rub(k: int) -> D:
    return D(k) / 100


def half_up(x: Fraction) -> int:
    """Round a non-negative number of kopecks half up: floor(x + 1/2)."""
    return math.floor(x + Fraction(1, 2))


def simulate(balance: str, rate: str, payment: str | int, settle_at: int | None = None) -> tuple[int, D]:
    """Months and total interest of repaying `balance` at `rate` % a year with `payment` a month: each month
    interest = half_up(balance × rate / 1200) in kopecks; the last month (balance + interest ≤ payment,
    or month `settle_at`) pays what is left."""
    b = kopecks(balance)
    m = payment if isinstance(payment, int) else kopecks(payment)
    i = Fraction(rate) / 1200
    months = total = 0
    while True:
        months += 1
        interest = half_up(b * i)
        total += interest
        if b + interest <= m or months == settle_at:
            return months, rub(total)
        b = b + interest - m


def annuity(balance: str, rate: str, months: int) -> D:
    """A·i / (1 − (1 + i)^−n), exact, rounded half up to kopecks."""
    i = Fraction(rate) / 1200
    return rub(half_up(kopecks(balance) * i / (1 - (1 + i) ** -months)))


def offer_id(bank_id: str, product_id: str, *loan_ids: str) -> str:
    return "ofr-" + hashlib.sha256(f"{bank_id}|{product_id}|{','.join(sorted(loan_ids))}".encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------- builders


def account(account_id: str, sub_type: str, available: str, bank_id: str = "vbank") -> AccountView:
    return AccountView(
        bank_id=bank_id,
        bank_name=bank_id.capitalize(),
        account_id=account_id,
        sub_type=sub_type,
        currency="RUB",
        nickname=sub_type,
        account_number=None,
        available=D(available),
        booked=D(available),
    )


def loan(
    agreement_id: str,
    bank_id: str,
    name: str,
    principal: str,
    rate: str | None,
    start: dt.date,
    *,
    end: dt.date | None = None,
    status: str = "active",
    product_id: str = "",
) -> CreditView:
    return CreditView(
        bank_id=bank_id,
        agreement_id=agreement_id,
        product_type="loan",
        product_name=name,
        amount=D(principal),
        interest_rate=None if rate is None else D(rate),
        status=status,
        start_date=start,
        account_number=None,
        account_balance=None,
        end_date=end,
        product_id=product_id,
    )


def deposit(
    agreement_id: str,
    bank_id: str,
    name: str,
    amount: str,
    rate: str | None,
    *,
    start: dt.date | None = None,
    end: dt.date | None = None,
    product_id: str = "",
    status: str = "active",
) -> CreditView:
    return CreditView(
        bank_id=bank_id,
        agreement_id=agreement_id,
        product_type="deposit",
        product_name=name,
        amount=D(amount),
        interest_rate=None if rate is None else D(rate),
        status=status,
        start_date=start,
        account_number=None,
        account_balance=None,
        end_date=end,
        product_id=product_id,
    )


def paid(agreement_id: str, bank_id: str, average: str, day: int, *months: int, count: int | None = None) -> Repayments:
    """Repayments of `average` on `day` in the given months of 2025 (the last one is the last payment)."""
    dates = tuple(dt.date(2025, m, 1) for m in months)
    n = len(dates) if count is None else count
    return Repayments(
        bank_id=bank_id,
        agreement_id=agreement_id,
        count=n,
        total=D(average) * n,
        average=D(average),
        currency="RUB",
        last_paid_at=dt.datetime(2025, months[-1], day, 10, tzinfo=UTC),
        typical_day=day,
        months=dates,
    )


def product(
    bank_id: str,
    product_id: str,
    name: str,
    rate: str | None,
    low: str | None,
    high: str | None,
    term: int | None,
    commission: str | None = None,
    product_type: str = "loan",
) -> ProductView:
    return ProductView(
        bank_id,
        product_id,
        product_type,
        name,
        None if rate is None else D(rate),
        None if low is None else D(low),
        None if high is None else D(high),
        term,
        None if commission is None else D(commission),
    )


def salary(amount: str) -> list[DayAmount]:
    return [DayAmount(dt.date(2025, m, 4), "RUB", D(amount), 1) for m in range(7, 12)]


def flows(income: str, spending: str) -> list[MonthFlow]:
    return [MonthFlow(dt.date(2025, m, 1), "RUB", D(income), D(spending)) for m in (8, 9, 10)]


def make(**fields) -> DashboardData:
    values = dict(
        user_id="team200-1",
        now=NOW,
        accounts=[],
        credits=[],
        repayments=[],
        income_days=[],
        cash_flow=[],
        spending_30d=[],
        spent_today=[],
        recent_transactions=[],
        banks=[],
        inputs=FinancialInputs(),
        goals=Goals(),
        config=DashboardConfig(),
    )
    values.update(fields)
    return DashboardData(**values)


def run(data: DashboardData, lang: str) -> dict:
    """compute_all, every part JSON-able and accepted by its proto; the dashboard is compute's."""
    result = compute_all(data, lang)
    for name, message in PARTS.items():
        json.dumps(result[name], ensure_ascii=False)
        json_format.ParseDict(result[name], message())
    assert result["dashboard"] == compute(data, lang)
    return result


# ----------------------------------------------------------------------------------- the main customer
#
# Three loans at three banks, all opened in October 2025 and repaid once (November), so the outstanding
# estimate is one month of annuity amortisation: B = P (1 + i) − M, i = rate / 1200.
# - loan-a, vbank, "Кредит наличными" 300,000.00 at 19.9 %, 11,125.00 on the 5th:
#     P i = 300,000 × 19.9 / 1200 = 4,975.00 -> B = 300,000.00 + 4,975.00 − 11,125.00 = 293,850.00
# - loan-b, abank, "Ипотека" 3,000,000.00 at 8.0 %, 30,000.00 on the 10th, ends 2039-10-10 by agreement:
#     P i = 3,000,000 × 8 / 1200 = 20,000.00 -> B = 3,000,000.00 + 20,000.00 − 30,000.00 = 2,990,000.00
# - loan-c, sbank, "Потребительский кредит" 50,000.00 at 15 %, 11,000.00 on the 15th:
#     P i = 50,000 × 15 / 1200 = 625.00 -> B = 50,000.00 + 625.00 − 11,000.00 = 39,625.00
# The catalogue (products of every bank):
# - abank "Потребительский кредит 14.9%": 14.9 %, 50,000 … 3,000,000, 60 months, commission 3,000.00
# - vbank "Кредит наличными 17.9%": 17.9 %, 100,000 … 1,000,000, 48 months, no commission
# - vbank "Ипотека 9.3%" (dearer than loan-b), abank "Ипотека 8.0%" (not strictly cheaper)
# - sbank "Автокредит 9.9%" (no car loan here), sbank "Кредит без ставки" (no rate: not in the catalogue),
#   abank "Вклад Надёжный" (a deposit product: not a loan)
# Money: vbank Checking 1,200,000.00 + abank Savings 509,000.00 = 1,709,000.00 spendable; abank's Loan
# account holds 1,170,000.00 of disbursed loan money.

LOAN_A = loan("loan-a", "vbank", "Кредит наличными", "300000.00", "19.9", dt.date(2025, 10, 5))
LOAN_B = loan("loan-b", "abank", "Ипотека", "3000000.00", "8.0", dt.date(2025, 10, 10), end=dt.date(2039, 10, 10))
LOAN_C = loan("loan-c", "sbank", "Потребительский кредит", "50000.00", "15", dt.date(2025, 10, 15))
PAID_A = paid("loan-a", "vbank", "11125.00", 5, 11)
PAID_B = paid("loan-b", "abank", "30000.00", 10, 11)
PAID_C = paid("loan-c", "sbank", "11000.00", 15, 11)
CATALOGUE = [
    product("abank", "prod-abank-loan-001", "Потребительский кредит 14.9%", "14.9", "50000", "3000000", 60, "3000"),
    product("vbank", "prod-vbank-loan-002", "Кредит наличными 17.9%", "17.9", "100000", "1000000", 48),
    product("vbank", "prod-vbank-loan-003", "Ипотека 9.3%", "9.3", "500000", None, 240),
    product("abank", "prod-abank-loan-004", "Ипотека 8.0%", "8.0", "500000", None, 300),
    product("sbank", "prod-sbank-loan-005", "Автокредит 9.9%", "9.9", "200000", "5000000", 60),
    product("sbank", "prod-sbank-loan-006", "Кредит без ставки", None, None, None, 12),
    product("abank", "prod-abank-deposit-001", "Вклад Надёжный", "16.0", "10000", None, 12, product_type="deposit"),
]
BANKS = [
    BankFreshness("vbank", "VBank", "ok", NOW - dt.timedelta(minutes=10), None),
    BankFreshness("abank", "ABank", "error", NOW - dt.timedelta(days=1), "HTTP 503"),
    BankFreshness("sbank", "SBank", "never_synced", None, None),
]


def customer(**overrides) -> DashboardData:
    fields = dict(
        accounts=[
            account("acc-1", "Checking", "1200000.00"),
            account("acc-2", "Savings", "509000.00", "abank"),
            account("acc-3", "Loan", "1170000.00", "abank"),
        ],
        credits=[LOAN_A, LOAN_B, LOAN_C],
        repayments=[PAID_A, PAID_B, PAID_C],
        income_days=salary("120000.00"),
        cash_flow=flows("120000.00", "60000.00"),
        banks=BANKS,
        products=CATALOGUE,
        bank_names={"abank": "А-Банк"},
    )
    fields.update(overrides)
    return make(**fields)


# Remaining terms at today's payments (the test's own loop):
N_A, INTEREST_A = simulate("293850.00", "19.9", "11125.00")
N_B, INTEREST_B = simulate("2990000.00", "8.0", "30000.00")


def test_remaining_terms_by_hand():
    # loan-a: 36 payments (the last one small), 95,960.53 of interest.
    assert (N_A, INTEREST_A) == (36, D("95960.53"))
    # loan-c by hand, i = 15 / 1200 = 0.0125:
    #   1: 39,625.00 × 0.0125 = 495.3125 -> 495.31; 39,625.00 + 495.31 − 11,000.00 = 29,120.31
    #   2: 29,120.31 × 0.0125 = 364.0039 -> 364.00; -> 18,484.31
    #   3: 18,484.31 × 0.0125 = 231.0539 -> 231.05; -> 7,715.36
    #   4: 7,715.36 × 0.0125 = 96.442 -> 96.44; 7,715.36 + 96.44 = 7,811.80 ≤ 11,000.00: the last payment.
    # 4 months, 495.31 + 364.00 + 231.05 + 96.44 = 1,186.80.
    schedule = loan_math.remaining_schedule(D("39625.00"), D("15"), D("11000.00"))
    assert (schedule.months, schedule.interest, schedule.rate_known) == (4, D("1186.80"), True)
    assert simulate("39625.00", "15", "11000.00") == (4, D("1186.80"))
    schedule = loan_math.remaining_schedule(D("293850.00"), D("19.9"), D("11125.00"))
    assert (schedule.months, schedule.interest) == (N_A, INTEREST_A)


def test_remaining_schedule_edge_rules():
    # No payment seen: unknown.
    assert loan_math.remaining_schedule(D("1000.00"), D("10"), None).months is None
    # The payment does not cover the interest: 100,000.00 × 0.01 = 1,000.00 ≥ 1,000.00: never amortises.
    never = loan_math.remaining_schedule(D("100000.00"), D("12"), D("1000.00"))
    assert (never.months, never.interest, never.note) == (None, None, "not_amortising")
    # 1,000,000.00 at 12 % with 10,001.00: 1.00 of principal the first month; (1.01)^n = 10,001 -> n = 926 > 600.
    capped = loan_math.remaining_schedule(D("1000000.00"), D("12"), D("10001.00"))
    assert (capped.months, capped.note) == (None, "over_cap")
    # No rate: counted at 0 %, ceil(160,000.00 / 10,000.00) = 16 months, no interest, rate unknown.
    unknown = loan_math.remaining_schedule(D("160000.00"), None, D("10000.00"))
    assert (unknown.months, unknown.interest, unknown.rate_known) == (16, D("0.00"), False)
    # ceil(100.00 / 30.00) = 4.
    assert loan_math.remaining_schedule(D("100.00"), None, D("30.00")).months == 4


def test_annuity_payment():
    # 293,850.00 at 14.9 % over 36 months: i = 14.9 / 1200 = 0.0124167, (1 + i)^-36 = 0.641139…,
    # 293,850.00 × 0.0124167 / (1 − 0.641139) = 3,648.6375 / 0.358861 = 10,172.02.
    assert loan_math.annuity_payment(D("293850.00"), D("14.9"), 36) == D("10172.02")
    assert annuity("293850.00", "14.9", 36) == D("10172.02")
    # At 0 %: 100,000.00 / 3 = 33,333.333… rounded UP to 33,333.34 (three payments repay it all).
    assert loan_math.annuity_payment(D("100000.00"), D("0"), 3) == D("33333.34")


def test_loan_kind_from_the_name():
    cases = {
        "Ипотека 9.3%": "mortgage",
        "Mortgage refinance": "mortgage",
        "Автокредит 12.3%": "auto",
        "AUTO loan": "auto",
        "Car loan": "auto",
        "Потребительский кредит 15.9%": "consumer",
        "Кредит наличными": "consumer",
        "Consumer loan": "consumer",
        "Cash loan": "consumer",
        "Кредитная линия": "other",
        "Carpet fund": "other",
    }
    assert {name: loan_math.loan_kind(name) for name in cases} == cases
    assert [loan_math.loan_type_label(k, "ru") for k in ("mortgage", "auto", "consumer", "other")] == [
        "Ипотека",
        "Автокредит",
        "Потребительский кредит",
        "Кредит",
    ]
    assert [loan_math.loan_type_label(k, "en") for k in ("mortgage", "auto", "consumer", "other")] == [
        "Mortgage",
        "Car loan",
        "Consumer loan",
        "Loan",
    ]


def test_customer_with_loans_across_banks_ru():
    result = run(customer(), "ru")
    offers = result["refinance"]["offers"]

    # loan-a (consumer, 19.9 %, B = 293,850.00, n = 36, remaining interest 95,960.53):
    # 1) abank 14.9 %: n' = min(36, 60) = 36; M' = 10,172.02 (test_annuity_payment);
    #    new interest: the loop below at 10,172.02, the 36th month settling exactly, + commission 3,000.00;
    #    monthly saving 11,125.00 − 10,172.02 = 952.98; breakeven ceil(3,000.00 / 952.98) = ceil(3.148) = 4.
    months, interest = simulate("293850.00", "14.9", "10172.02", settle_at=36)
    assert (months, interest) == (36, D("72342.82"))
    new_cost = interest + D("3000.00")  # 75,342.82
    savings = INTEREST_A - new_cost  # 95,960.53 − 75,342.82 = 20,617.71
    assert savings == D("20617.71") and savings >= D("2938.50")  # material: ≥ 1 % of 293,850.00
    # 2) vbank 17.9 % (limits 100,000 … 1,000,000 hold 293,850): n' = min(36, 48) = 36, no commission.
    payment_v = annuity("293850.00", "17.9", 36)
    _, interest_v = simulate("293850.00", "17.9", payment_v, settle_at=36)
    savings_v = INTEREST_A - interest_v
    assert (payment_v, savings_v) == (D("10608.65"), D("7899.36"))
    # loan-b (mortgage 8.0 %): the only mortgages cost 9.3 % and 8.0 % (not strictly below): no offer.
    # loan-c (consumer 15 %, B = 39,625.00): abank's 14.9 % is cheaper but its minimum is 50,000 and vbank's
    # 100,000: outside the limits, no offer.
    # Consolidation: Σ B = 293,850 + 2,990,000 + 39,625 = 3,323,475.00 > every consumer maximum: none.
    assert [(o["bank_id"], o["product_id"], o["loan_ids"]) for o in offers] == [
        ("abank", "prod-abank-loan-001", ["loan-a"]),
        ("vbank", "prod-vbank-loan-002", ["loan-a"]),
    ]
    best = offers[0]
    assert best == {
        "id": offer_id("abank", "prod-abank-loan-001", "loan-a"),
        "bank": "А-Банк",
        "strategy": "refinance_one",
        "rate": 14.9,
        "monthly_payment": 10172.02,
        "savings": 20617.71,
        "loan_amount": 293850.0,
        "commission": 3000.0,
        "term_months": 36,
        "breakeven_months": 4,
        "bank_id": "abank",
        "product_id": "prod-abank-loan-001",
        "product_name": "Потребительский кредит 14.9%",
        "loan_ids": ["loan-a"],
        "monthly_saving": 952.98,
        "detail": {
            "rate": "14.9",
            "monthly_payment": "10172.02",
            "savings": "20617.71",
            "monthly_saving": "952.98",
            "loan_amount": "293850.00",
            "commission": "3000.00",
            "current_interest": "95960.53",
            "new_interest": "75342.82",
            "current_monthly_payment": "11125.00",
            "currency": "RUB",
        },
        "explanation": "Перекредитовать «Кредит наличными» в А-Банк под 14,9 % на 36 месяцев: платеж 10 172,02 ₽ "
        "вместо 11 125,00 ₽, переплата 75 342,82 ₽ (включая комиссию 3 000,00 ₽) вместо "
        "95 960,53 ₽ — экономия 20 617,71 ₽.",
    }
    second = offers[1]
    assert (
        second["bank"],
        second["monthly_payment"],
        second["savings"],
        second["commission"],
        second["breakeven_months"],
        second["monthly_saving"],
    ) == ("VBank", 10608.65, 7899.36, 0.0, 0, 516.35)

    # The signal: no missed month (every loan started in October: September… not judged; October is its
    # first month), no shortfall, DTI = (11,125 + 30,000 + 11,000) / 120,000 = 52,125 / 120,000 = 0.434 ≤ 0.5;
    # loan-a is a candidate: one refi_opportunity with its best offer's saving -> WATCH.
    refi = result["refinance"]
    assert (refi["status"], refi["urgency"], refi["financing_needed"], refi["strategy"]) == (
        "ok",
        "WATCH",
        True,
        "avalanche",
    )
    assert refi["trigger_details"] == [
        {
            "type": "refi_opportunity",
            "urgency": "watch",
            "title": "Можно переплатить меньше",
            "description": "«Кредит наличными» (VBank, 19,9 %): А-Банк предлагает 14,9 % на 36 месяцев, "
            "экономия 20 617,71 ₽.",
            "savings": 20617.71,
            "action_label": "Сравнить предложения",
            "loan_ids": ["loan-a"],
        }
    ]
    assert refi["triggers"] == [refi["trigger_details"][0]["description"]]

    # The dashboard's loans: avalanche priority by rate (19.9 > 15 > 8.0), refinancing flag, maturity.
    rows = {row["agreement_id"]: row for row in result["dashboard"]["loans"]}
    shown = {k: (r["priority"], r["is_refi_candidate"], r["kind"], r["type"], r["bank_name"]) for k, r in rows.items()}
    assert shown == {
        "loan-a": (1, True, "consumer", "Потребительский кредит", "VBank"),
        "loan-b": (3, False, "mortgage", "Ипотека", "А-Банк"),
        "loan-c": (2, False, "consumer", "Потребительский кредит", "SBank"),
    }
    # loan-a: next due 2025-12-05, 36 payments -> the last one 35 months later: 2028-11-05 (estimated).
    # loan-b: the agreement's end date. loan-c: 2025-12-15 + 3 months = 2026-03-15 (estimated).
    assert {k: (r["maturity_date"], r["maturity_source"], r["remaining_months"]) for k, r in rows.items()} == {
        "loan-a": ("2028-11-05", "estimated", 36),
        "loan-b": ("2039-10-10", "agreement", N_B),
        "loan-c": ("2026-03-15", "estimated", 4),
    }
    assert N_B == 165  # 2,990,000.00 at 8 % with 30,000.00 a month (the test's own loop)

    # The loans route: active loans in priority order, its totals the dashboard's.
    loans = result["loans"]
    summary = result["dashboard"]["loan_summary"]
    # Σ B = 3,323,475.00; MDP = 52,125.00 / 30 = 1,737.50; ADP = 1,737.50 × 0.20 = 347.50.
    assert (loans["total_outstanding"], loans["mdp"], loans["adp"]) == (3323475.0, 1737.5, 347.5)
    assert (loans["total_outstanding"], loans["mdp"], loans["adp"]) == (
        summary["total_outstanding"],
        summary["mandatory_daily_payment"],
        summary["additional_daily_payment"],
    )
    assert loans["detail"] == summary["detail"]
    assert (loans["status"], loans["strategy"]) == ("ok", "avalanche")
    assert [loan["id"] for loan in loans["loans"]] == ["loan-a", "loan-c", "loan-b"]
    assert loans["loans"][0] == {
        "id": "loan-a",
        "bank": "VBank",
        "type": "Потребительский кредит",
        "balance": 293850.0,
        "rate": 19.9,
        "monthly_payment": 11125.0,
        "priority": 1,
        "is_refi_candidate": True,
        "maturity_date": "2028-11-05",
        "bank_id": "vbank",
        "currency": "RUB",
        "balance_exact": "293850.00",
        "rate_exact": "19.9",
        "monthly_payment_exact": "11125.00",
        "next_due_date": "2025-12-05",
        "kind": "consumer",
        "maturity_source": "estimated",
        "remaining_months": 36,
    }

    # totals_by_currency leaves the Loan account out: 1,200,000.00 + 509,000.00 = 1,709,000.00 (adding
    # the Loan account's 1,170,000.00 gave 2,879,000.00).
    assert result["dashboard"]["totals_by_currency"] == [{"amount": "1709000.00", "currency": "RUB"}]
    # data_freshness: only banks with a last successful sync (sbank never synced; bank_statuses keeps it).
    assert [f["bank_id"] for f in result["dashboard"]["data_freshness"]] == ["vbank", "abank"]
    assert [s["bank_id"] for s in result["dashboard"]["bank_statuses"]] == ["vbank", "abank", "sbank"]


def test_customer_in_english():
    result = run(customer(), "en")
    best = result["refinance"]["offers"][0]
    assert best["explanation"] == (
        'Refinance "Кредит наличными" at А-Банк at 14.9% over 36 months: payment '
        "10,172.02 RUB instead of 11,125.00 RUB, interest 75,342.82 RUB (including a "
        "commission of 3,000.00 RUB) instead of 95,960.53 RUB: you save 20,617.71 RUB."
    )
    trigger = result["refinance"]["trigger_details"][0]
    assert (trigger["title"], trigger["action_label"], trigger["description"]) == (
        "A cheaper loan is available",
        "Compare offers",
        '"Кредит наличными" (VBank, 19.9%): А-Банк offers 14.9% over 36 months, saving 20,617.71 RUB.',
    )
    assert [loan["type"] for loan in result["loans"]["loans"]] == ["Consumer loan", "Consumer loan", "Mortgage"]
    assert result["loans"]["detail"]["explanation"] == (
        'Repayment speed "optimal": +20% on top of the mandatory payment, 1,737.50 RUB × 0.20 = 347.50 RUB a '
        "day; with the avalanche strategy extra payments go first to the loan with the highest rate."
    )
    # Codes do not change with the language.
    ru = run(customer(), "ru")
    assert ru["refinance"]["urgency"] == result["refinance"]["urgency"] == "WATCH"
    assert [o["id"] for o in ru["refinance"]["offers"]] == [o["id"] for o in result["refinance"]["offers"]]


def test_snowball_orders_by_balance():
    # Snowball: outstanding ascending: loan-c 39,625.00, loan-a 293,850.00, loan-b 2,990,000.00.
    result = run(customer(goals=Goals(loan_strategy="snowball")), "ru")
    assert [(loan["id"], loan["priority"]) for loan in result["loans"]["loans"]] == [
        ("loan-c", 1),
        ("loan-a", 2),
        ("loan-b", 3),
    ]
    assert result["loans"]["strategy"] == result["refinance"]["strategy"] == "snowball"
    assert result["loans"]["detail"]["explanation"].endswith(
        "по стратегии «снежный ком» дополнительные платежи идут сначала на самый маленький долг."
    )


def test_priority_ties_and_unknown_rates():
    # No repayments: outstanding = principal. Rates: 12, 12, 12 and unknown.
    credits = [
        loan("loan-2", "vbank", "Кредит", "100000.00", "12", dt.date(2025, 1, 10)),
        loan("loan-1", "vbank", "Кредит", "50000.00", "12", dt.date(2025, 1, 10)),
        loan("loan-3", "abank", "Кредит", "50000.00", "12", dt.date(2025, 1, 10)),
        loan("loan-0", "abank", "Кредит", "10000.00", None, dt.date(2025, 1, 10)),
        loan("loan-9", "abank", "Кредит", "90000.00", "30", dt.date(2024, 1, 10), status="closed"),
    ]
    data = make(accounts=[account("acc-1", "Checking", "100000.00")], credits=credits)
    # Avalanche: rate descending, unknown last; equal rates: smaller outstanding first; equal outstanding:
    # bank id (abank < vbank). The closed loan has priority 0 and is not in the loans route.
    avalanche = run(data, "ru")
    assert [(loan["id"], loan["priority"]) for loan in avalanche["loans"]["loans"]] == [
        ("loan-3", 1),
        ("loan-1", 2),
        ("loan-2", 3),
        ("loan-0", 4),
    ]
    assert {r["agreement_id"]: r["priority"] for r in avalanche["dashboard"]["loans"]}["loan-9"] == 0
    # Snowball: outstanding ascending (10,000 first); equal outstanding: higher rate, then bank id.
    snowball = run(dataclasses.replace(data, goals=Goals(loan_strategy="SNOWBALL")), "ru")
    assert [(loan["id"], loan["priority"]) for loan in snowball["loans"]["loans"]] == [
        ("loan-0", 1),
        ("loan-3", 2),
        ("loan-1", 3),
        ("loan-2", 4),
    ]
    # No payment seen: no remaining term, no maturity, payment 0; unknown rate shown as 0.
    unknown = avalanche["loans"]["loans"][3]
    assert (unknown["rate"], unknown["monthly_payment"], unknown["maturity_source"]) == (0.0, 0.0, "")
    assert "maturity_date" not in unknown and "remaining_months" not in unknown and "rate_exact" not in unknown


def test_additional_payment_per_speed_and_capped_by_safe_to_spend():
    # MDP = (11,125 + 30,000 + 11,000) / 30 = 1,737.50. Safe-to-spend: nothing due before the salary on
    # Dec 4 (the loans are due on Dec 5, 10, 15): (1,709,000.00 − 3,000.00) / 14 = 121,857.14 a day.
    expected = {
        "conservative": (86.88, "0.05"),  # 1,737.50 × 0.05 = 86.875 -> 86.88
        "optimal": (347.5, "0.20"),  # 1,737.50 × 0.20 = 347.50
        "fast": (695.0, "0.40"),  # 1,737.50 × 0.40 = 695.00
        None: (347.5, "0.20"),
        "turbo": (347.5, "0.20"),
    }  # missing or unknown: optimal
    for speed, (adp, share) in expected.items():
        result = run(customer(goals=Goals(loans_speed=speed)), "ru")
        summary = result["dashboard"]["loan_summary"]
        assert (summary["additional_daily_payment"], summary["detail"]["additional_share"]) == (adp, share), speed
        assert result["loans"]["adp"] == adp
    # Only 4,400.00 spendable: (4,400.00 − 3,000.00) / 14 = 100.00 a day. Fast wants 695.00: capped at 100.00.
    poor = customer(accounts=[account("acc-1", "Checking", "4400.00")], goals=Goals(loans_speed="fast"))
    result = run(poor, "ru")
    detail = result["dashboard"]["loan_summary"]["detail"]
    assert result["dashboard"]["sts_today"]["detail"]["amount_per_day"] == "100.00"
    assert (detail["additional_daily_payment"], detail["mandatory_daily_payment"], detail["speed"]) == (
        "100.00",
        "1737.50",
        "fast",
    )
    assert detail["explanation"] == (
        "Скорость погашения «быстрая»: +40 % к обязательному платежу, 1 737,50 ₽ × 0,40 = 695,00 ₽ в день, но "
        "сегодня без риска можно потратить только 100,00 ₽ в день, поэтому предлагается 100,00 ₽; по стратегии "
        "«лавина» дополнительные платежи идут сначала на кредит с самой высокой ставкой."
    )
    assert result["loans"]["adp"] == result["dashboard"]["loan_summary"]["additional_daily_payment"] == 100.0
    english = run(poor, "en")["loans"]["detail"]["explanation"]
    assert "but today's safe-to-spend is only 100.00 RUB a day, so 100.00 RUB is suggested" in english


def test_consolidation_of_two_consumer_loans():
    # loan-a as above, and loan-d, abank "Кредит наличными" 120,000.00 at 21.9 % repaid once with 4,590.00:
    #   P i = 120,000 × 21.9 / 1200 = 2,190.00 -> B = 120,000.00 + 2,190.00 − 4,590.00 = 117,600.00.
    loan_d = loan("loan-d", "abank", "Кредит наличными", "120000.00", "21.9", dt.date(2025, 10, 20))
    data = make(
        accounts=[account("acc-1", "Checking", "500000.00")],
        credits=[LOAN_A, loan_d],
        repayments=[PAID_A, paid("loan-d", "abank", "4590.00", 20, 11)],
        income_days=salary("120000.00"),
        products=CATALOGUE[:2],
        bank_names={"abank": "ABank", "vbank": "VBank"},
    )
    result = run(data, "ru")
    n_d, interest_d = simulate("117600.00", "21.9", "4590.00")
    assert (n_d, interest_d) == (35, D("42378.67"))
    # Σ B = 293,850.00 + 117,600.00 = 411,450.00; weighted rate = (293,850 × 19.9 + 117,600 × 21.9) / 411,450
    # = 8,423,055 / 411,450 = 20.47 %: both consumer products are cheaper and their limits hold 411,450.
    # Term n' = min(max(36, 35), product term) = 36 for both (60 and 48).
    # Current: interest 95,960.53 + 42,378.67 = 138,339.20; payments 11,125.00 + 4,590.00 = 15,715.00.
    current = INTEREST_A + interest_d
    assert current == D("138339.20")
    pay_abank = annuity("411450.00", "14.9", 36)
    _, interest_abank = simulate("411450.00", "14.9", pay_abank, settle_at=36)
    pay_vbank = annuity("411450.00", "17.9", 36)
    _, interest_vbank = simulate("411450.00", "17.9", pay_vbank, settle_at=36)
    savings_abank = current - interest_abank - D("3000.00")
    savings_vbank = current - interest_vbank
    assert (pay_abank, savings_abank) == (D("14242.91"), D("34044.52"))
    assert (pay_vbank, savings_vbank) == (D("14854.27"), D("15035.42"))
    # Single-loan offers: loan-a 20,617.71 (abank) and 7,899.36 (vbank); loan-d (n = 35):
    pay_d_a = annuity("117600.00", "14.9", 35)
    _, interest_d_a = simulate("117600.00", "14.9", pay_d_a, settle_at=35)
    pay_d_v = annuity("117600.00", "17.9", 35)
    _, interest_d_v = simulate("117600.00", "17.9", pay_d_v, settle_at=35)
    assert interest_d - interest_d_a - D("3000.00") == D("11262.82")
    assert interest_d - interest_d_v == D("8165.56")
    # Ranked by total saving, at most 5: the sixth (loan-a at vbank, 7,899.36) is left out.
    offers = result["refinance"]["offers"]
    assert [(o["strategy"], o["bank_id"], o["loan_ids"], o["savings"]) for o in offers] == [
        ("consolidation", "abank", ["loan-d", "loan-a"], 34044.52),
        ("refinance_one", "abank", ["loan-a"], 20617.71),
        ("consolidation", "vbank", ["loan-d", "loan-a"], 15035.42),
        ("refinance_one", "abank", ["loan-d"], 11262.82),
        ("refinance_one", "vbank", ["loan-d"], 8165.56),
    ]
    top = offers[0]
    # Monthly saving 15,715.00 − 14,242.91 = 1,472.09; breakeven ceil(3,000.00 / 1,472.09) = ceil(2.04) = 3.
    assert (
        top["id"],
        top["loan_amount"],
        top["monthly_payment"],
        top["monthly_saving"],
        top["breakeven_months"],
        top["term_months"],
        top["bank"],
    ) == (offer_id("abank", "prod-abank-loan-001", "loan-a", "loan-d"), 411450.0, 14242.91, 1472.09, 3, 36, "ABank")
    assert top["detail"]["current_interest"] == "138339.20"
    assert top["detail"]["new_interest"] == f"{interest_abank + D('3000.00'):.2f}"
    assert top["explanation"].startswith(
        "Объединить 2 кредита («Кредит наличными», «Кредит наличными») в один "
        "кредит в ABank под 14,9 % на 36 месяцев: платеж 14 242,91 ₽ вместо "
        "15 715,00 ₽"
    )
    # Both loans are candidates: one refi_opportunity each (best single offer), in priority order
    # (avalanche: loan-d 21.9 % first).
    details = result["refinance"]["trigger_details"]
    assert [(t["type"], t["loan_ids"], t["savings"]) for t in details] == [
        ("refi_opportunity", ["loan-d"], 11262.82),
        ("refi_opportunity", ["loan-a"], 20617.71),
    ]


def test_an_offer_must_save_one_percent():
    # 100,000.00 at 15 % with 5,000.00 a month: the test's loop gives 24 months and 15,794.66 of interest.
    n, current = simulate("100000.00", "15", "5000.00")
    assert (n, current) == (24, D("15794.66"))
    terms = refinance.LoanTerms(
        "vbank",
        "loan-x",
        "Кредит наличными",
        "consumer",
        "RUB",
        D("100000.00"),
        D("15"),
        D("5000.00"),
        loan_math.remaining_schedule(D("100000.00"), D("15"), D("5000.00")),
    )
    # At 14.0 % over 24 months: saving 563.75 < 1 % of 100,000.00 = 1,000.00: not an offer.
    _, at_14 = simulate("100000.00", "14.0", annuity("100000.00", "14.0", 24), settle_at=24)
    assert current - at_14 == D("563.75")
    # At 13.5 %: saving 1,129.82 ≥ 1,000.00: an offer (no term: n' = n = 24).
    _, at_13_5 = simulate("100000.00", "13.5", annuity("100000.00", "13.5", 24), settle_at=24)
    assert current - at_13_5 == D("1129.82")
    products = [
        product("abank", "p-14", "Кредит наличными 14%", "14.0", None, None, None),
        product("abank", "p-13", "Кредит наличными 13.5%", "13.5", None, None, None),
    ]
    offers = refinance.refinance_one_offers([terms], products, "RUB")
    assert [(o.product_id, o.term_months, o.savings) for o in offers] == [("p-13", 24, D("1129.82"))]
    # A lower rate over the same term can cost MORE: at 14.5 % the even annuity carries 15,798.63 of
    # interest against today's 15,794.66 (whose last payment is small): saving −3.97, no offer.
    _, at_14_5 = simulate("100000.00", "14.5", annuity("100000.00", "14.5", 24), settle_at=24)
    assert current - at_14_5 == D("-3.97")
    assert (
        refinance.refinance_one_offers(
            [terms], [product("abank", "p-145", "Кредит наличными", "14.5", None, None, None)], "RUB"
        )
        == []
    )


def test_offer_ids_are_stable():
    expected = offer_id("abank", "prod-1", "loan-a", "loan-b")
    assert refinance.offer_id("abank", "prod-1", ["loan-b", "loan-a"]) == expected
    assert refinance.offer_id("abank", "prod-1", ["loan-a", "loan-b"]) == refinance.offer_id(
        "abank", "prod-1", ["loan-b", "loan-a"]
    )
    first = run(customer(), "ru")["refinance"]["offers"]
    again = run(customer(), "en")["refinance"]["offers"]
    assert [o["id"] for o in first] == [o["id"] for o in again]
    assert first[0]["id"] == "ofr-" + hashlib.sha256(b"abank|prod-abank-loan-001|loan-a").hexdigest()[:16]


def trouble() -> DashboardData:
    """loan-e, vbank, "Потребительский кредит" 200,000.00 without a rate, started 2025-06-10, repaid
    10,000.00 on the 1st in July, August, September and November: October was missed. With no rate the
    outstanding is P − repaid = 200,000.00 − 40,000.00 = 160,000.00. Plus loan-a (started in October: not
    judged). 5,000.00 on the current account; salary 40,000.00 on the 4th; complete months' income
    40,000.00."""
    loan_e = loan("loan-e", "vbank", "Потребительский кредит", "200000.00", None, dt.date(2025, 6, 10))
    return make(
        accounts=[account("acc-1", "Checking", "5000.00")],
        credits=[LOAN_A, loan_e],
        repayments=[PAID_A, paid("loan-e", "vbank", "10000.00", 1, 7, 8, 9, 11)],
        income_days=salary("40000.00"),
        cash_flow=flows("40000.00", "35000.00"),
        products=CATALOGUE[:2],
        bank_names={"vbank": "VBank", "abank": "ABank"},
    )


def test_triggers_missed_payment_gap_risk_and_high_dti_ru():
    result = run(trouble(), "ru")
    refi = result["refinance"]
    # Gap: before the salary on Dec 4, loan-e is due Dec 1 (10,000.00; loan-a on Dec 5 is after):
    # 5,000.00 − 10,000.00 − 3,000.00 = −8,000.00: short by 8,000.00.
    # DTI: (10,000.00 + 11,125.00) / 40,000.00 = 21,125 / 40,000 = 0.528125 > 0.5 -> 52.8 %.
    # loan-a is still a candidate (its offers are listed), but with a missed payment no refi trigger.
    assert [(t["type"], t["urgency"], t["loan_ids"]) for t in refi["trigger_details"]] == [
        ("missed_payment", "high", ["loan-e"]),
        ("gap_risk", "high", ["loan-e"]),
        ("high_dti", "medium", ["loan-a", "loan-e"]),
    ]
    assert refi["triggers"] == [
        "По кредиту «Потребительский кредит» (VBank) не найдено платежа за октябрь 2025; остаток долга около "
        "160 000,00 ₽. Обычный платеж — 10 000,00 ₽.",
        "До 04.12.2025 не хватает 8 000,00 ₽: на счетах 5 000,00 ₽, а обязательные платежи 10 000,00 ₽ плюс резерв "
        "3 000,00 ₽.",
        "Платежи по кредитам — 21 125,00 ₽ в месяц, это 52,8 % среднего дохода 40 000,00 ₽ (больше 50 %).",
    ]
    assert [(t["title"], t["action_label"]) for t in refi["trigger_details"]] == [
        ("Пропущен платеж по кредиту", "Внести платеж"),
        ("Не хватает денег на обязательные платежи", "Пополнить счет"),
        ("Высокая долговая нагрузка", "Снизить платежи"),
    ]
    assert all("savings" not in t for t in refi["trigger_details"])
    assert (refi["urgency"], refi["financing_needed"]) == ("HIGH", True)
    assert [o["loan_ids"] for o in refi["offers"]] == [["loan-a"], ["loan-a"]]
    # Avalanche: loan-a (19.9 %) before loan-e (no rate: last). loan-e: 160,000.00 / 10,000.00 = 16 payments
    # counted at 0 %, the last 15 months after 2025-12-01: 2027-03-01 (estimated).
    loans = result["loans"]["loans"]
    assert [
        (loan["id"], loan["priority"], loan["rate"], loan.get("remaining_months"), loan.get("maturity_date"))
        for loan in loans
    ] == [("loan-a", 1, 19.9, 36, "2028-11-05"), ("loan-e", 2, 0.0, 16, "2027-03-01")]
    # ADP: MDP = 21,125.00 / 30 = 704.1666 -> 704.17; × 0.20 = 140.83, but safe-to-spend is 0.00: ADP 0.00.
    detail = result["dashboard"]["loan_summary"]["detail"]
    assert (detail["mandatory_daily_payment"], detail["additional_daily_payment"]) == ("704.17", "0.00")
    assert "можно потратить только 0,00 ₽ в день, поэтому предлагается 0,00 ₽" in detail["explanation"]


def test_triggers_in_english():
    refi = run(trouble(), "en")["refinance"]
    assert refi["triggers"] == [
        'No repayment of "Потребительский кредит" (VBank) was found for October 2025; about 160,000.00 RUB is '
        "still owed. The usual payment is 10,000.00 RUB.",
        "8,000.00 RUB short before 2025-12-04: spendable 5,000.00 RUB, but mandatory payments are 10,000.00 RUB "
        "plus a safety buffer of 3,000.00 RUB.",
        "Loan payments of 21,125.00 RUB a month take 52.8% of the average income of 40,000.00 RUB (over 50%).",
    ]
    assert [t["action_label"] for t in refi["trigger_details"]] == [
        "Make a payment",
        "Top up an account",
        "Lower the payments",
    ]


def test_only_high_dti_is_medium():
    # The trouble customer with the October payment made and enough money: only the high DTI is left.
    data = dataclasses.replace(
        trouble(),
        accounts=[account("acc-1", "Checking", "100000.00")],
        repayments=[PAID_A, paid("loan-e", "vbank", "10000.00", 1, 7, 8, 9, 10, 11)],
        products=[],
    )
    refi = run(data, "ru")["refinance"]
    assert [t["type"] for t in refi["trigger_details"]] == ["high_dti"]
    assert (refi["urgency"], refi["financing_needed"], refi["offers"]) == ("MEDIUM", True, [])
    # Without income history, no DTI and no trigger at all.
    quiet = run(dataclasses.replace(data, cash_flow=[]), "ru")["refinance"]
    assert (quiet["urgency"], quiet["financing_needed"], quiet["triggers"], quiet["trigger_details"]) == (
        "NONE",
        False,
        [],
        [],
    )


def test_no_loans_no_offers_no_triggers():
    for data in (make(), make(accounts=[account("acc-1", "Checking", "1000.00")], products=CATALOGUE)):
        result = run(data, "ru")
        assert result["refinance"] == {
            "status": "ok",
            "offers": [],
            "financing_needed": False,
            "urgency": "NONE",
            "triggers": [],
            "trigger_details": [],
            "strategy": "avalanche",
        }
        loans = result["loans"]
        assert (loans["status"], loans["loans"], loans["total_outstanding"], loans["mdp"], loans["adp"]) == (
            "ok",
            [],
            0.0,
            0.0,
            0.0,
        )
        assert result["deposits"]["deposits"] == []


def test_deposits_term_and_maturity_from_the_catalogue():
    credits = [
        # Catalogue term 12 months, no end date: 2025-03-15 + 12 months = 2026-03-15.
        deposit(
            "dep-1",
            "vbank",
            "Вклад Надёжный 16.5%",
            "200000.00",
            "16.5",
            start=dt.date(2025, 3, 15),
            product_id="prod-vbank-deposit-001",
        ),
        # The agreement's end date wins; the term (6) still comes from the catalogue.
        deposit(
            "dep-2",
            "abank",
            "Вклад Максимальный",
            "150000.00",
            "17.25",
            start=dt.date(2025, 9, 1),
            end=dt.date(2026, 2, 28),
            product_id="prod-abank-deposit-002",
        ),
        # The product id exists only at another bank: term and maturity unknown; no rate: 0.
        deposit(
            "dep-3",
            "sbank",
            "Вклад Накопительный",
            "50000.00",
            None,
            start=dt.date(2025, 5, 1),
            product_id="prod-vbank-deposit-001",
        ),
        # Closed: listed on the dashboard, not in the deposits route, not saved.
        deposit("dep-4", "vbank", "Вклад Старый", "70000.00", "12", status="closed"),
    ]
    products = [
        product(
            "vbank", "prod-vbank-deposit-001", "Вклад Надёжный 16.5%", "16.5", "10000", None, 12, product_type="deposit"
        ),
        product(
            "abank",
            "prod-abank-deposit-002",
            "Вклад Максимальный 17.25%",
            "17.25",
            "100000",
            None,
            6,
            product_type="deposit",
        ),
    ]
    goals = Goals(goal_type="savings_and_loans", target_amount=D("500000.00"), horizon_months=12)
    data = make(
        accounts=[account("acc-1", "Checking", "20000.00"), account("acc-2", "Savings", "10000.00")],
        credits=credits,
        products=products,
        goals=goals,
        bank_names={"vbank": "VBank", "abank": "ABank"},
        banks=[BankFreshness("sbank", "SBank", "never_synced", None, None)],
    )
    result = run(data, "ru")
    rows = {r["agreement_id"]: r for r in result["dashboard"]["deposits"]}
    shown = {k: (r.get("term_months"), r.get("maturity_date"), r["status"], r["bank_name"]) for k, r in rows.items()}
    assert shown == {
        "dep-1": (12, "2026-03-15", "active", "VBank"),
        "dep-2": (6, "2026-02-28", "active", "ABank"),
        "dep-3": (None, None, "active", "SBank"),
        "dep-4": (None, None, "closed", "VBank"),
    }
    route = result["deposits"]
    assert route["deposits"] == [
        {
            "id": "dep-1",
            "bank": "VBank",
            "type": "Вклад Надёжный 16.5%",
            "balance": 200000.0,
            "rate": 16.5,
            "term_months": 12,
            "maturity_date": "2026-03-15",
            "bank_id": "vbank",
            "currency": "RUB",
            "balance_exact": "200000.00",
        },
        {
            "id": "dep-2",
            "bank": "ABank",
            "type": "Вклад Максимальный",
            "balance": 150000.0,
            "rate": 17.25,
            "term_months": 6,
            "maturity_date": "2026-02-28",
            "bank_id": "abank",
            "currency": "RUB",
            "balance_exact": "150000.00",
        },
        {
            "id": "dep-3",
            "bank": "SBank",
            "type": "Вклад Накопительный",
            "balance": 50000.0,
            "rate": 0.0,
            "term_months": 0,
            "bank_id": "sbank",
            "currency": "RUB",
            "balance_exact": "50000.00",
        },
    ]
    # Saved: deposits 200,000 + 150,000 + 50,000 + Savings account 10,000 = 410,000.00. The goal has no date
    # but a 12-month horizon: 12 × 30 = 360 days; (500,000.00 − 410,000.00) / 360 = 250.00 a day;
    # progress 410,000 / 500,000 = 82.0 %.
    savings = result["dashboard"]["savings_summary"]
    assert savings == {"total_saved": 410000.0, "daily_payment": 250.0, "target": 500000.0, "progress_percent": 82.0}
    assert (route["status"], route["total_saved"], route["sdp"], route["target"], route["progress_percent"]) == (
        "ok",
        410000.0,
        250.0,
        500000.0,
        82.0,
    )


def test_bank_names_fall_back_in_order():
    data = make(
        accounts=[account("acc-1", "Checking", "1.00", "sbank"), account("acc-2", "Checking", "1.00", "vbank")],
        banks=[BankFreshness("vbank", "VBank", "ok", NOW, None), BankFreshness("abank", "", "ok", NOW, None)],
        bank_names={"abank": "А-Банк", "vbank": ""},
    )
    name = bank_name_of(data)
    # bank_names first (a blank one does not count), then data.banks, then the accounts, then the id.
    assert [name(b) for b in ("abank", "vbank", "sbank", "xbank")] == ["А-Банк", "VBank", "Sbank", "xbank"]
