"""dashboard_svc.calc: scenario tests with hand-computed numbers (pure, no database).

Every scenario runs at the same moment, NOW = 2025-11-20 09:00 UTC (today = Thursday 2025-11-20), with the
default configuration: base currency RUB, safety buffer 3,000.00, horizon without a known income date
30 days, default savings target 100,000.00 and daily savings 500.00. The arithmetic behind every
expected number is written next to its assert. Every test names the language of its texts ("ru", the
app's, or "en"). Every result is also parsed into the protos (`GetDashboardResponse`, and the loans,
deposits and refinancing answers of `compute_all`), which are the contract.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal as D

import pytest
from finpulse.dashboard.v1 import dashboard_pb2
from google.protobuf import json_format

from dashboard_svc.calc import compute, compute_all
from dashboard_svc.domain.loans import outstanding_estimate
from dashboard_svc.model import (
    AccountView,
    BankFreshness,
    CategoryTotal,
    CreditView,
    DashboardConfig,
    DashboardData,
    DayAmount,
    FinancialInputs,
    Goals,
    MonthFlow,
    TransactionView,
)
from finance.loans import Repayments

UTC = dt.UTC
NOW = dt.datetime(2025, 11, 20, 9, 0, tzinfo=UTC)


# ------------------------------------------------------------------------------------------- builders


def account(
    account_id: str, sub_type: str, available: str | None, currency: str = "RUB", bank_id: str = "vbank"
) -> AccountView:
    return AccountView(
        bank_id=bank_id,
        bank_name=bank_id.capitalize(),
        account_id=account_id,
        sub_type=sub_type,
        currency=currency,
        nickname=f"{sub_type} счет",
        account_number=None,
        available=None if available is None else D(available),
        booked=None if available is None else D(available),
    )


def credit(
    agreement_id: str,
    product_type: str,
    amount: str,
    *,
    rate: str | None = None,
    status: str = "active",
    start: dt.date | None = None,
    name: str = "",
    bank_id: str = "vbank",
    balance: str | None = None,
) -> CreditView:
    return CreditView(
        bank_id=bank_id,
        agreement_id=agreement_id,
        product_type=product_type,
        product_name=name or product_type,
        amount=D(amount),
        interest_rate=None if rate is None else D(rate),
        status=status,
        start_date=start,
        account_number=None,
        account_balance=None if balance is None else D(balance),
    )


def repayments(
    agreement_id: str, count: int, average: str, typical_day: int, last_paid: dt.date, bank_id: str = "vbank"
) -> Repayments:
    return Repayments(
        bank_id=bank_id,
        agreement_id=agreement_id,
        count=count,
        total=D(average) * count,
        average=D(average),
        currency="RUB",
        last_paid_at=dt.datetime.combine(last_paid, dt.time(10, 0), tzinfo=UTC),
        typical_day=typical_day,
    )


def incomes(*items: tuple[str, str], currency: str = "RUB") -> list[DayAmount]:
    return [DayAmount(dt.date.fromisoformat(day), currency, D(total), 1) for day, total in items]


def flow(month: str, income: str, spending: str) -> MonthFlow:
    return MonthFlow(dt.date.fromisoformat(month + "-01"), "RUB", D(income), D(spending))


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


PARTS = {
    "dashboard": dashboard_pb2.GetDashboardResponse,
    "loans": dashboard_pb2.GetLoansResponse,
    "deposits": dashboard_pb2.GetDepositsResponse,
    "refinance": dashboard_pb2.OptimizeLoansResponse,
}


def run(data: DashboardData, lang: str) -> dict:
    """compute(data, lang), then check the contract: JSON-able and accepted by the proto as it is; the same
    for every part of compute_all, whose dashboard is compute's."""
    result = compute(data, lang)
    everything = compute_all(data, lang)
    assert everything["dashboard"] == result
    for name, message in PARTS.items():
        json.dumps(everything[name], ensure_ascii=False)
        json_format.ParseDict(everything[name], message())
    return result


# A salary of 120,000.00 on the 4th of every month (Jul-Nov 2025, all inside the last 180 days).
MONTHLY_SALARY = incomes(
    ("2025-07-04", "120000.00"),
    ("2025-08-04", "120000.00"),
    ("2025-09-04", "120000.00"),
    ("2025-10-04", "120000.00"),
    ("2025-11-04", "120000.00"),
)
# A loan of 500,000.00 at 12 % a year, started 2025-05-01, repaid 6 times (Jun-Nov) 25,000.00 on the 1st.
LOAN = credit("loan-1", "loan", "500000.00", rate="12.0", start=dt.date(2025, 5, 1), name="Потребительский кредит")
LOAN_REPAYMENTS = repayments("loan-1", 6, "25000.00", 1, dt.date(2025, 11, 1))
ACCOUNTS = [
    account("acc-1", "Checking", "140000.00"),
    account("acc-2", "Savings", "10000.00"),
    account("acc-3", "Loan", "500000.00"),
]  # the Loan account holds disbursed money: not spendable
CASH_FLOW = [
    flow("2025-08", "120000.00", "96000.00"),
    flow("2025-09", "120000.00", "90000.00"),
    flow("2025-10", "120000.00", "84000.00"),
    flow("2025-11", "120000.00", "30000.00"),
]


def regular_salary_with_loan(**overrides) -> DashboardData:
    fields = dict(
        accounts=ACCOUNTS, credits=[LOAN], repayments=[LOAN_REPAYMENTS], income_days=MONTHLY_SALARY, cash_flow=CASH_FLOW
    )
    fields.update(overrides)
    return make(**fields)


# ------------------------------------------------------------------------------------------- scenarios


def test_regular_monthly_salary_and_a_loan_due_before_it():
    result = run(regular_salary_with_loan(), "ru")
    sts = result["sts_today"]
    detail = sts["detail"]
    # Salary on the 4th in each of the 4 month-long windows ending today -> monthly, next 2025-12-04.
    assert detail["income_source"] == "monthly"
    assert detail["next_income_date"] == "2025-12-04"
    assert detail["expected_income"] == "120000.00"
    # Days from 2025-11-20 (exclusive) to 2025-12-04 (inclusive): 10 (rest of Nov) + 4 = 14.
    assert detail["days_left"] == 14
    # Spendable: Checking 140,000.00 + Savings 10,000.00 = 150,000.00 (Loan account's 500,000.00 left out).
    assert detail["spendable_balance"] == "150000.00"
    # The loan is due on the 1st; Nov 1 is paid, so next 2025-12-01 <= 2025-12-04: 25,000.00 counted.
    assert detail["mandatory_payments"] == "25000.00"
    assert [(i["date"], i["amount_exact"], i["agreement_id"]) for i in detail["mandatory_items"]] == [
        ("2025-12-01", "25000.00", "loan-1")
    ]
    assert detail["safety_buffer"] == "3000.00"
    # (150,000.00 - 25,000.00 - 3,000.00) / 14 = 122,000.00 / 14 = 8,714.2857... -> 8,714.28 (rounded down).
    assert detail["amount_per_day"] == "8714.28"
    assert sts["amount"] == 8714.28
    assert detail["status"] == "OK"
    # The working, in Russian (amounts grouped with a space, a decimal comma, the rouble sign; dd.mm.yyyy).
    assert detail["reason"] == (
        "доступно 150 000,00 ₽ − обязательные платежи 25 000,00 ₽ − резерв 3 000,00 ₽ = "
        "122 000,00 ₽ на 14 дней до дохода 04.12.2025 → 8 714,28 ₽ в день; "
        "ежемесячный доход: 120 000,00 ₽ около 4-го числа"
    )
    # No income tomorrow: tomorrow is the same figure.
    assert sts["tomorrow"] == {"amount": 8714.28, "impact": "Стабильный прогноз"}
    # Events of [2025-11-20, 2025-12-20]: the loan on Dec 1, the salary on Dec 4.
    assert [(e["date"], e["type"], e["amount"], e["description"]) for e in result["events_next_30d"]] == [
        ("2025-12-01", "loan_payment", 25000.0, "Платеж по кредиту"),
        ("2025-12-04", "salary", 120000.0, "Получение зарплаты"),
    ]
    # Loan: annuity estimate (see test_loan_outstanding_by_amortisation): 376,959.70.
    # MDP = 25,000.00 / 30 = 833.333 -> 833.33; ADP (default speed optimal, +20 %) = 833.33 * 0.20 = 166.666
    # -> 166.67 (below safe-to-spend 8,714.28, so not capped); total = 833.33 * 30 = 24,999.90.
    summary = result["loan_summary"]
    assert {k: v for k, v in summary.items() if k != "detail"} == {
        "total_outstanding": 376959.70,
        "mandatory_daily_payment": 833.33,
        "additional_daily_payment": 166.67,
        "total_monthly_payment": 24999.90,
    }
    assert summary["detail"] == {
        "total_outstanding": "376959.70",
        "monthly_payments": "25000.00",
        "mandatory_daily_payment": "833.33",
        "additional_daily_payment": "166.67",
        "speed": "optimal",
        "additional_share": "0.20",
        "strategy": "avalanche",
        "explanation": "Скорость погашения «оптимальная»: +20 % к обязательному платежу, 833,33 ₽ × 0,20 = "
        "166,67 ₽ в день; по стратегии «лавина» дополнительные платежи идут сначала на кредит с "
        "самой высокой ставкой.",
        "currency": "RUB",
    }
    # Remaining term at 12 % (i = 0.01) and 25,000.00 a month: (1.01)^-n = 1 - 376,959.70 * 0.01 / 25,000
    # = 0.8492161 -> n = -ln(0.8492161) / ln(1.01) = 0.163441 / 0.0099503 = 16.43 -> 17 payments (the 17th
    # partial). Maturity estimated: next due 2025-12-01 + 16 months on the 1st = 2027-04-01.
    assert result["loans"] == [
        {
            "bank_id": "vbank",
            "agreement_id": "loan-1",
            "name": "Потребительский кредит",
            "principal": "500000.00",
            "interest_rate": "12.0",
            "outstanding_estimate": "376959.70",
            "monthly_payment": "25000.00",
            "next_due_date": "2025-12-01",
            "payments_seen": 6,
            "currency": "RUB",
            "bank_name": "Vbank",
            "kind": "consumer",
            "type": "Потребительский кредит",
            "maturity_date": "2027-04-01",
            "maturity_source": "estimated",
            "priority": 1,
            "is_refi_candidate": False,
            "remaining_months": 17,
            "status": "active",
        }
    ]
    assert result["user_mode"] == "loans"
    # Debit cards balance: Checking accounts only = 140,000.00.
    assert result["total_debit_cards_balance"] == 140000.0
    # Savings: no deposit, Savings account 10,000.00; target default 100,000.00; progress 10 %; daily default 500.
    assert result["savings_summary"] == {
        "total_saved": 10000.0,
        "daily_payment": 500.0,
        "target": 100000.0,
        "progress_percent": 10.0,
    }


def test_health_score_sub_scores_by_hand():
    health = run(regular_salary_with_loan(), "en")["health_score"]
    parts = {c["name"]: c for c in health["components"]}
    # Complete months Aug-Oct: income 120,000.00 each; spending (96,000 + 90,000 + 84,000) / 3 = 90,000.00.
    # spend_vs_income: 90,000 / 120,000 = 0.75 -> 100 * (1.2 - 0.75) / 0.5 = 90.0.
    assert parts["spend_vs_income"]["score"] == 90.0
    assert parts["spend_vs_income"]["inputs"] == {
        "months": "3",
        "income_monthly_avg": "120000.00",
        "spending_monthly_avg": "90000.00",
        "spending_to_income": "0.7500",
    }
    # liquid_savings: (spendable 150,000 + deposits 0) / 90,000 = 1.6667 months;
    # between 1 -> 40 and 3 -> 75: 40 + 35 * (0.6667 / 2) = 51.67 -> 51.7.
    assert parts["liquid_savings"]["score"] == 51.7
    assert parts["liquid_savings"]["inputs"]["months_of_spending"] == "1.6667"
    # debt_load: 25,000 / 120,000 = 0.2083 -> 100 * (0.5 - 0.2083) / 0.4 = 72.92 -> 72.9.
    assert parts["debt_load"]["score"] == 72.9
    assert parts["debt_load"]["inputs"]["debt_to_income"] == "0.2083"
    # on_time_repayments: started in May -> 5 complete months since (Jun-Oct), min(6, 5) = 5; 6 repayments
    # ending in Nov cover Jun-Nov, so all 5 have one: 5 / 5 -> 100.
    assert parts["on_time_repayments"]["score"] == 100.0
    assert parts["on_time_repayments"]["inputs"] == {"loan-1": "5/5", "months_expected": "5", "months_paid": "5"}
    # value: (90.0 + 51.7 + 72.9 + 100.0) / 4 = 314.6 / 4 = 78.65 -> 78.7: good (60 <= 78.7 < 80).
    assert health["value"] == 78.7
    assert health["status"] == "good"
    assert health["missing_inputs"] == []
    # One reason per sub-score below 60: only liquid_savings (in English here).
    assert health["reasons"] == [
        "Liquid savings 51.7/100: little liquid money compared with monthly spending: "
        "liquid money covers 1.7 months of spending (6 months → 100)"
    ]
    assert parts["spend_vs_income"]["explanation"] == "spending is 75% of income (100 at ≤ 70%, 0 at ≥ 120%)"


def test_health_reasons_in_russian():
    health = run(regular_salary_with_loan(), "ru")["health_score"]
    # The same numbers as test_health_score_sub_scores_by_hand, said in Russian.
    assert health["reasons"] == [
        "Финансовая подушка: 51,7 из 100 — мало свободных денег по сравнению с "
        "ежемесячными расходами: свободных денег хватит на 1,7 мес. расходов "
        "(6 месяцев → 100 баллов)"
    ]
    parts = {c["name"]: c for c in health["components"]}
    assert parts["debt_load"]["explanation"] == (
        "платежи по кредитам забирают 20,8 % дохода (100 баллов при ≤ 10 %, 0 при ≥ 50 %)"
    )
    assert parts["on_time_repayments"]["explanation"] == "платежи были в 5 из 5 месяцев, когда их нужно было вносить"
    # With no data at all, the reason names what is missing.
    empty = run(make(), "ru")["health_score"]
    assert empty["reasons"] == [
        "Недостаточно данных для оценки финансового здоровья. Не хватает: доходы за месяц, "
        "расходы за месяц, остатки на счетах, данные банков"
    ]


def test_biweekly_income():
    # 50,000.00 every other Friday; the latest on 2025-11-14.
    days = incomes(*[((dt.date(2025, 11, 14) - dt.timedelta(days=14 * k)).isoformat(), "50000.00") for k in range(9)])
    result = run(make(accounts=[account("acc-1", "Checking", "60000.00")], income_days=days), "ru")
    detail = result["sts_today"]["detail"]
    assert detail["income_source"] == "biweekly"
    # Next: 2025-11-14 + 14 = 2025-11-28; days left: 28 - 20 = 8.
    assert detail["next_income_date"] == "2025-11-28"
    assert detail["days_left"] == 8
    # (60,000.00 - 0 - 3,000.00) / 8 = 7,125.00.
    assert detail["amount_per_day"] == "7125.00"
    assert detail["status"] == "OK"
    # Salary events in [Nov 20, Dec 20]: Nov 28 and Dec 12.
    assert [(e["date"], e["type"], e["amount_exact"]) for e in result["events_next_30d"]] == [
        ("2025-11-28", "salary", "50000.00"),
        ("2025-12-12", "salary", "50000.00"),
    ]


def test_irregular_income():
    # Credits on irregular days with irregular amounts: no monthly or biweekly pattern.
    days = incomes(
        ("2025-06-03", "40000.00"),
        ("2025-06-21", "15000.00"),
        ("2025-07-09", "52000.00"),
        ("2025-08-14", "23000.00"),
        ("2025-08-29", "61000.00"),
        ("2025-09-18", "18000.00"),
        ("2025-10-07", "44000.00"),
        ("2025-10-26", "30000.00"),
        ("2025-11-12", "57000.00"),
    )
    result = run(make(accounts=[account("acc-1", "Checking", "80000.00")], income_days=days), "en")
    detail = result["sts_today"]["detail"]
    assert detail["income_source"] == "irregular"
    assert "next_income_date" not in detail
    # Total 40+15+52+23+61+18+44+30+57 = 340,000.00 since 2025-06-03: 171 days -> ceil(171 / 30) = 6 periods;
    # 340,000.00 / 6 = 56,666.666... -> 56,666.67 a month, expected over the 30-day horizon.
    assert detail["expected_income"] == "56666.67"
    # Unknown date: the configured 30-day horizon. (80,000.00 - 3,000.00) / 30 = 2,566.666... -> 2,566.66.
    assert detail["days_left"] == 30
    assert detail["amount_per_day"] == "2566.66"
    assert detail["status"] == "OK"
    # No reliable date: no salary event.
    assert result["events_next_30d"] == []
    assert detail["reason"].endswith("income: irregular income, 56,666.67 RUB a month on average, no reliable date")


def test_no_income_at_all_is_danger():
    result = run(make(accounts=[account("acc-1", "Checking", "50000.00")]), "en")
    sts = result["sts_today"]
    detail = sts["detail"]
    assert detail["income_source"] == "none"
    assert detail["expected_income"] == "0.00"
    # (50,000.00 - 3,000.00) / 30 = 1,566.666... -> 1,566.66, but DANGER: nothing is coming in.
    assert detail["days_left"] == 30
    assert detail["amount_per_day"] == "1566.66"
    assert detail["status"] == "DANGER"
    assert detail["reason"].startswith("no income expected in the next 30 days")
    ru = run(make(accounts=[account("acc-1", "Checking", "50000.00")]), "ru")["sts_today"]["detail"]
    assert ru["reason"].startswith(
        "в ближайшие 30 дней доход не ожидается: в истории операций его нет, и зарплата в ваших данных не указана; "
    )


def test_user_inputs_override_detection():
    inputs = FinancialInputs(
        salary_amount=D("150000.00"),
        next_salary_date=dt.date(2025, 11, 28),
        credit_payment_amount=D("30000.00"),
        credit_payment_date=dt.date(2025, 11, 25),
    )
    result = run(regular_salary_with_loan(inputs=inputs), "en")
    detail = result["sts_today"]["detail"]
    # The user's salary wins over the detected one (the 4th, 120,000.00): 150,000.00 on 2025-11-28, 8 days away.
    assert detail["income_source"] == "user_input"
    assert detail["next_income_date"] == "2025-11-28"
    assert detail["expected_income"] == "150000.00"
    assert detail["days_left"] == 8
    # The user's credit payment (30,000.00 on Nov 25, within the horizon) replaces the detected 25,000.00.
    assert [(i["date"], i["amount_exact"]) for i in detail["mandatory_items"]] == [("2025-11-25", "30000.00")]
    assert "replaces detected loan repayments" in detail["reason"]
    # (150,000.00 - 30,000.00 - 3,000.00) / 8 = 117,000.00 / 8 = 14,625.00.
    assert detail["amount_per_day"] == "14625.00"
    # Events follow the inputs too: payment Nov 25, salary Nov 28 (Dec 25 / Dec 28 are past Dec 20).
    assert [(e["date"], e["type"], e["amount_exact"]) for e in result["events_next_30d"]] == [
        ("2025-11-25", "loan_payment", "30000.00"),
        ("2025-11-28", "salary", "150000.00"),
    ]
    assert "income: salary 150,000.00 RUB on 2025-11-28 from your inputs" in detail["reason"]
    # MDP from the user's payment: 30,000.00 / 30 = 1,000.00; ADP +20 % = 200.00; total 30,000.00.
    summary = result["loan_summary"]
    assert (
        summary["mandatory_daily_payment"],
        summary["additional_daily_payment"],
        summary["total_monthly_payment"],
    ) == (1000.0, 200.0, 30000.0)


def test_user_credit_payment_outside_the_horizon_still_replaces_detection():
    # Salary on Nov 28 (a past date rolled forward by whole months: 2025-10-28 -> 2025-11-28);
    # the user's credit payment is on Dec 10, after the salary: nothing mandatory before the horizon,
    # and the detected loan (Dec 1, also after Nov 28) is replaced anyway.
    inputs = FinancialInputs(
        salary_amount=D("150000.00"),
        next_salary_date=dt.date(2025, 10, 28),
        credit_payment_amount=D("30000.00"),
        credit_payment_date=dt.date(2025, 12, 10),
    )
    detail = run(regular_salary_with_loan(inputs=inputs), "ru")["sts_today"]["detail"]
    assert detail["next_income_date"] == "2025-11-28"
    assert detail["mandatory_payments"] == "0.00"
    # (150,000.00 - 0 - 3,000.00) / 8 = 18,375.00.
    assert detail["amount_per_day"] == "18375.00"


def test_multiple_currencies_are_never_mixed():
    accounts = [
        account("acc-1", "Checking", "100000.00"),
        account("acc-2", "Checking", "2000.00", currency="USD"),
        account("acc-3", "Savings", "500.00", currency="EUR", bank_id="abank"),
        account("acc-4", "Checking", "1500.00", currency="USD", bank_id="abank"),
    ]
    result = run(make(accounts=accounts, income_days=MONTHLY_SALARY), "ru")
    detail = result["sts_today"]["detail"]
    # Only RUB is spendable: 100,000.00. (100,000.00 - 3,000.00) / 14 = 6,928.571... -> 6,928.57.
    assert detail["spendable_balance"] == "100000.00"
    assert detail["amount_per_day"] == "6928.57"
    # Other currencies shown apart, per currency: EUR 500.00; USD 2,000.00 + 1,500.00 = 3,500.00.
    assert detail["excluded_balances"] == [
        {"amount": "500.00", "currency": "EUR"},
        {"amount": "3500.00", "currency": "USD"},
    ]
    assert result["totals_by_currency"] == [
        {"amount": "100000.00", "currency": "RUB"},
        {"amount": "500.00", "currency": "EUR"},
        {"amount": "3500.00", "currency": "USD"},
    ]
    # The legacy debit cards balance is RUB only.
    assert result["total_debit_cards_balance"] == 100000.0
    assert [(b["account_id"], b["bank_id"], b["spendable"]) for b in result["balances"]] == [
        ("acc-1", "vbank", True),
        ("acc-2", "vbank", False),
        ("acc-3", "abank", False),
        ("acc-4", "abank", False),
    ]


def test_a_credit_card_limit_is_not_debt():
    credits = [
        credit("card-1", "card", "500000.00", name="Кредитная карта", balance="40000.00"),
        credit("card-2", "card", "0", name="Дебетовая карта"),
        credit("dep-1", "deposit", "200000.00", rate="16.5", name="Вклад Надёжный"),
    ]
    result = run(
        make(accounts=[account("acc-1", "Checking", "40000.00")], credits=credits, income_days=MONTHLY_SALARY), "en"
    )
    # A 500,000.00 limit is not debt: nothing outstanding, no loan payments, "deposits" mode.
    summary = result["loan_summary"]
    assert {k: v for k, v in summary.items() if k != "detail"} == {
        "total_outstanding": 0.0,
        "mandatory_daily_payment": 0.0,
        "additional_daily_payment": 0.0,
        "total_monthly_payment": 0.0,
    }
    assert summary["detail"]["explanation"] == (
        "There are no mandatory loan payments, so no additional payment is suggested."
    )
    assert result["user_mode"] == "deposits"
    assert result["loans"] == []
    assert result["cards"] == [
        {
            "bank_id": "vbank",
            "agreement_id": "card-1",
            "name": "Кредитная карта",
            "limit": "500000.00",
            "linked_balance": "40000.00",
            "currency": "RUB",
        },
        {"bank_id": "vbank", "agreement_id": "card-2", "name": "Дебетовая карта", "limit": "0.00", "currency": "RUB"},
    ]
    # The card limit is not spendable either: (40,000.00 - 3,000.00) / 14 = 2,642.857... -> 2,642.85.
    assert result["sts_today"]["detail"]["amount_per_day"] == "2642.85"
    # The deposit counts as savings: 200,000.00 of 100,000.00 -> progress capped at 100, nothing more to save.
    assert result["savings_summary"] == {
        "total_saved": 200000.0,
        "daily_payment": 0.0,
        "target": 100000.0,
        "progress_percent": 100.0,
    }
    # No catalogue product and no dates: term and maturity unknown (left out).
    assert result["deposits"] == [
        {
            "bank_id": "vbank",
            "agreement_id": "dep-1",
            "name": "Вклад Надёжный",
            "amount": "200000.00",
            "interest_rate": "16.5",
            "currency": "RUB",
            "bank_name": "Vbank",
            "status": "active",
        }
    ]
    # No loans: debt load 100.
    debt = next(c for c in result["health_score"]["components"] if c["name"] == "debt_load")
    assert debt["score"] == 100.0


def test_a_user_with_no_data_gets_a_clear_empty_dashboard():
    result = run(make(), "en")
    sts = result["sts_today"]
    assert sts["amount"] == 0.0 and sts["spent"] == 0.0
    assert sts["tomorrow"] == {"amount": 0.0, "impact": "Stable forecast"}
    detail = sts["detail"]
    assert detail["status"] == "DANGER"
    assert detail["reason"] == "no bank data yet: connect a bank"
    assert run(make(), "ru")["sts_today"]["detail"]["reason"] == "нет данных из банков: подключите банк"
    assert (detail["spendable_balance"], detail["mandatory_payments"], detail["income_source"]) == (
        "0.00",
        "0.00",
        "none",
    )
    assert {k: v for k, v in result["loan_summary"].items() if k != "detail"} == {
        "total_outstanding": 0.0,
        "mandatory_daily_payment": 0.0,
        "additional_daily_payment": 0.0,
        "total_monthly_payment": 0.0,
    }
    assert result["savings_summary"] == {
        "total_saved": 0.0,
        "daily_payment": 500.0,
        "target": 100000.0,
        "progress_percent": 0.0,
    }
    health = result["health_score"]
    assert (health["value"], health["status"]) == (0.0, "poor")
    assert health["missing_inputs"] == ["monthly_income", "monthly_spending", "balances", "bank_data"]
    assert all("score" not in c for c in health["components"])
    assert result["user_mode"] == "deposits"
    assert result["total_debit_cards_balance"] == 0.0
    for key in (
        "events_next_30d",
        "bank_statuses",
        "data_freshness",
        "totals_by_currency",
        "balances",
        "loans",
        "deposits",
        "cards",
        "last_transactions",
        "spending_by_category_30d",
    ):
        assert result[key] == [], key
    assert result["calculated_at"] == "2025-11-20T09:00:00Z"
    assert "cache_info" not in result


def test_loan_outstanding_by_amortisation():
    # P = 1,000,000.00 at 12 % a year -> i = 12 / 12 / 100 = 0.01; n = 6 payments of M = 50,000.00.
    # (1.01)^6 = 1.061520150601
    # P (1+i)^n = 1,061,520.150601
    # M ((1+i)^n - 1) / i = 50,000 * 6.15201506010 = 307,600.753005
    # B = 1,061,520.150601 - 307,600.753005 = 753,919.397596 -> 753,919.40
    assert outstanding_estimate(D("1000000.00"), D("12"), D("50000.00"), 6, D("300000.00")) == D("753919.40")
    # Without a rate: P - total repaid = 1,000,000.00 - 300,000.00 = 700,000.00.
    assert outstanding_estimate(D("1000000.00"), None, D("50000.00"), 6, D("300000.00")) == D("700000.00")
    # At 0 %: P - M n = 1,000,000.00 - 6 * 50,000.00 = 700,000.00; never below 0.
    assert outstanding_estimate(D("1000000.00"), D("0"), D("50000.00"), 6, D("300000.00")) == D("700000.00")
    assert outstanding_estimate(D("100000.00"), D("10"), D("50000.00"), 6, D("300000.00")) == D("0.00")
    # In the dashboard: the same loan, listed with its estimate.
    loan = credit("loan-9", "loan", "1000000.00", rate="12", start=dt.date(2025, 4, 15))
    result = run(
        make(
            accounts=[account("acc-1", "Checking", "1000.00")],
            credits=[loan],
            repayments=[repayments("loan-9", 6, "50000.00", 15, dt.date(2025, 11, 15))],
        ),
        "ru",
    )
    assert result["loans"][0]["outstanding_estimate"] == "753919.40"
    assert result["loan_summary"]["total_outstanding"] == 753919.40


def test_closed_loans_are_listed_not_counted():
    closed = credit("loan-2", "loan", "300000.00", rate="15", status="closed", start=dt.date(2024, 1, 10))
    result = run(
        regular_salary_with_loan(
            credits=[LOAN, closed],
            repayments=[LOAN_REPAYMENTS, repayments("loan-2", 10, "15000.00", 10, dt.date(2024, 11, 10))],
        ),
        "ru",
    )
    assert [
        (loan["agreement_id"], loan["outstanding_estimate"], "next_due_date" in loan) for loan in result["loans"]
    ] == [("loan-1", "376959.70", True), ("loan-2", "0.00", False)]
    # A closed loan has priority 0, no remaining term, no maturity without an end date.
    closed_row = result["loans"][1]
    assert (closed_row["priority"], closed_row["status"], closed_row["maturity_source"]) == (0, "closed", "")
    assert "remaining_months" not in closed_row and "maturity_date" not in closed_row
    # Only the active loan's 25,000.00 is mandatory: still 8,714.28 a day.
    assert result["sts_today"]["detail"]["mandatory_payments"] == "25000.00"
    assert result["sts_today"]["detail"]["amount_per_day"] == "8714.28"


def test_shortfall_is_danger_with_its_reason():
    accounts = [account("acc-1", "Checking", "20000.00")]
    result = run(regular_salary_with_loan(accounts=accounts), "en")
    detail = result["sts_today"]["detail"]
    # 20,000.00 - 25,000.00 (loan on Dec 1) - 3,000.00 = -8,000.00: nothing to spend, 8,000.00 short.
    assert detail["amount_per_day"] == "0.00"
    assert result["sts_today"]["amount"] == 0.0
    assert detail["status"] == "DANGER"
    assert detail["reason"].startswith(
        "shortfall of 8,000.00 RUB: spendable 20,000.00 RUB is less than mandatory "
        "payments 25,000.00 RUB + safety buffer 3,000.00 RUB; "
    )
    ru = run(regular_salary_with_loan(accounts=accounts), "ru")["sts_today"]["detail"]
    assert ru["reason"].startswith(
        "не хватает 8 000,00 ₽: на счетах 20 000,00 ₽, а обязательные платежи "
        "25 000,00 ₽ и резерв 3 000,00 ₽ больше этой суммы; "
    )


def test_income_tomorrow_changes_tomorrows_figure():
    # Salary 100,000.00 on the 21st (Jul-Oct); today is Nov 20, so it is due tomorrow.
    days = incomes(
        ("2025-07-21", "100000.00"),
        ("2025-08-21", "100000.00"),
        ("2025-09-21", "100000.00"),
        ("2025-10-21", "100000.00"),
    )
    result = run(regular_salary_with_loan(accounts=[account("acc-1", "Checking", "30000.00")], income_days=days), "ru")
    sts = result["sts_today"]
    assert sts["detail"]["next_income_date"] == "2025-11-21"
    assert sts["detail"]["days_left"] == 1
    # Today: the loan (Dec 1) is after the salary: (30,000.00 - 0 - 3,000.00) / 1 = 27,000.00.
    assert sts["detail"]["amount_per_day"] == "27000.00"
    # Tomorrow: + 100,000.00 income; next cycle Nov 21 -> Dec 21 (30 days) holds the loan on Dec 1:
    # (30,000.00 - 0 + 100,000.00 - 25,000.00 - 3,000.00) / 30 = 102,000.00 / 30 = 3,400.00.
    assert sts["tomorrow"] == {"amount": 3400.0, "impact": "После завтрашнего дохода"}
    english = run(regular_salary_with_loan(accounts=[account("acc-1", "Checking", "30000.00")], income_days=days), "en")
    assert english["sts_today"]["tomorrow"] == {"amount": 3400.0, "impact": "After tomorrow's income"}


def test_spent_today_transactions_categories_and_banks():
    seen = dt.datetime(2025, 11, 20, 8, 30, tzinfo=UTC)
    data = regular_salary_with_loan(
        spent_today=[
            CategoryTotal("grocery", "RUB", D("1234.50"), 2),
            CategoryTotal("", "RUB", D("500.00"), 1),
            CategoryTotal("grocery", "USD", D("10.00"), 1),
        ],
        spending_30d=[
            CategoryTotal("grocery", "RUB", D("20000.00"), 12),
            CategoryTotal("clothing", "RUB", D("45000.00"), 1),
            CategoryTotal("", "RUB", D("25000.00"), 1),
        ],
        recent_transactions=[
            TransactionView(
                "vbank",
                "acc-1",
                f"tx-{k}",
                seen - dt.timedelta(hours=k),
                D("-100.00"),
                "RUB",
                "Дикси - Москва",
                "grocery" if k % 2 else None,
            )
            for k in range(12)
        ],
        banks=[
            BankFreshness("vbank", "VBank", "ok", seen, None),
            BankFreshness("sbank", "SBank", "never_synced", None, None),
            BankFreshness("abank", "ABank", "error", seen - dt.timedelta(days=1), "HTTP 503"),
        ],
    )
    result = run(data, "ru")
    # Spent today in RUB: 1,234.50 + 500.00 = 1,734.50 (the USD 10.00 is not mixed in).
    assert result["sts_today"]["spent"] == 1734.5
    assert result["sts_today"]["detail"]["spent_today"] == "1734.50"
    assert len(result["last_transactions"]) == 10
    assert result["last_transactions"][0] == {
        "bank_id": "vbank",
        "account_id": "acc-1",
        "transaction_id": "tx-0",
        "booking_time": "2025-11-20T08:30:00Z",
        "amount": "-100.00",
        "currency": "RUB",
        "description": "Дикси - Москва",
    }
    assert [(c["category"], c["total"]) for c in result["spending_by_category_30d"]] == [
        ("clothing", "45000.00"),
        ("", "25000.00"),
        ("grocery", "20000.00"),
    ]
    assert result["bank_statuses"] == [
        {"bank_id": "vbank", "bank_name": "VBank", "status": "ok", "fetched_at": "2025-11-20T08:30:00Z"},
        {"bank_id": "sbank", "bank_name": "SBank", "status": "never_synced"},
        {
            "bank_id": "abank",
            "bank_name": "ABank",
            "status": "error",
            "fetched_at": "2025-11-19T08:30:00Z",
            "error": "HTTP 503",
        },
    ]
    # Freshness only for banks with a last successful sync: the never-synced sbank is left out (its status
    # above says why), so the service always has an age to add.
    assert result["data_freshness"] == [
        {"bank_id": "vbank", "fetched_at": "2025-11-20T08:30:00Z"},
        {"bank_id": "abank", "fetched_at": "2025-11-19T08:30:00Z"},
    ]


def test_savings_goal_gives_the_daily_payment():
    goals = Goals(goal_type="savings", target_amount=D("300000.00"), target_date=dt.date(2026, 2, 28))
    result = run(regular_salary_with_loan(goals=goals), "ru")
    # Saved: Savings account 10,000.00. Days to 2026-02-28: 10 + 31 + 31 + 28 = 100.
    # (300,000.00 - 10,000.00) / 100 = 2,900.00 a day; progress 10,000 / 300,000 = 3.33 % -> 3.3.
    assert result["savings_summary"] == {
        "total_saved": 10000.0,
        "daily_payment": 2900.0,
        "target": 300000.0,
        "progress_percent": 3.3,
    }


def test_advance_and_salary_are_two_monthly_streams():
    # An advance of 40,000.00 on the 10th and a salary of 60,000.00 on the 25th, Jul-Nov.
    days = incomes(
        *[(f"2025-{m:02d}-10", "40000.00") for m in range(7, 12)],
        *[(f"2025-{m:02d}-25", "60000.00") for m in range(7, 11)],
    )
    result = run(make(accounts=[account("acc-1", "Checking", "50000.00")], income_days=days), "ru")
    detail = result["sts_today"]["detail"]
    # The next income is the salary on Nov 25 (5 days); the advance of Dec 10 follows.
    assert (detail["income_source"], detail["next_income_date"], detail["expected_income"]) == (
        "monthly",
        "2025-11-25",
        "60000.00",
    )
    # (50,000.00 - 3,000.00) / 5 = 9,400.00.
    assert detail["amount_per_day"] == "9400.00"
    assert [(e["date"], e["amount_exact"]) for e in result["events_next_30d"]] == [
        ("2025-11-25", "60000.00"),
        ("2025-12-10", "40000.00"),
    ]


def test_sandbox_style_income_is_not_mistaken_for_a_salary():
    """The banks' data has several credits a month on random days and amounts (bank_sandbox generates it
    so): none of that may pass for a monthly or biweekly salary."""
    sandbox = pytest.importorskip("bank_sandbox.data")
    anchor = dt.datetime(2025, 11, 20, 12, tzinfo=UTC)
    for index in range(1, 11):
        who = sandbox.profile(1, "team200", index)
        customer = sandbox.build_customer(1, "vbank", who, sandbox.catalogue(1, "vbank"), anchor, 365)
        totals: dict[dt.date, D] = {}
        for acc in customer.accounts:
            for tx in acc.transactions:
                draft = tx.draft
                if acc.subtype != "Loan" and draft.indicator == "Credit" and draft.information.startswith("Доход"):
                    totals[draft.booked.date()] = totals.get(draft.booked.date(), D(0)) + draft.amount
        data = make(
            now=anchor,
            accounts=[account("acc-1", "Checking", "100000.00")],
            income_days=[DayAmount(day, "RUB", total, 1) for day, total in totals.items()],
        )
        assert run(data, "ru")["sts_today"]["detail"]["income_source"] == "irregular", who.client_id


def test_on_time_repayments_see_months_missed_in_the_middle():
    """Today 2026-11-27; the window is the last 6 complete months, 2026-05 … 2026-10. Repayments were
    booked every month from January to July, then in October (8 payments, the last on 10-15): August
    and September were missed. Exact months: May, Jun, Jul, Oct paid → 4 of 6. Knowing only the count
    and the last payment, 8 consecutive months ending in October (Mar … Oct) would be assumed → 6 of 6."""
    import dataclasses

    from dashboard_svc.domain.common import month_index
    from dashboard_svc.domain.loans import months_paid

    months = tuple(dt.date(2026, m, 1) for m in (1, 2, 3, 4, 5, 6, 7, 10))
    repayments = Repayments(
        "vbank", "loan-1", 8, D("40000.00"), D("5000.00"), "RUB", dt.datetime(2026, 10, 15, tzinfo=dt.UTC), 15, months
    )
    current = month_index(dt.date(2026, 11, 27))
    window = range(current - 6, current)
    assert months_paid(repayments, window) == 4
    assert months_paid(dataclasses.replace(repayments, months=()), window) == 6


def test_text_catalogue_has_both_languages_with_the_same_parameters():
    """Every text for people exists in Russian and English with the same format parameters; language codes
    are normalised ("en-US" -> en, anything else -> ru, the app's language)."""
    import string

    from dashboard_svc.domain import texts

    def fields(template: str) -> set[str]:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name}

    for key, versions in texts.TEXTS.items():
        assert set(versions) == {"ru", "en"}, key
        assert fields(versions["ru"]) == fields(versions["en"]), key
    assert [texts.language(x) for x in ("en", "EN-us", "ru", "ru-RU", "", None, "de")] == [
        "en",
        "en",
        "ru",
        "ru",
        "ru",
        "ru",
        "ru",
    ]
    # Formats: grouped amounts, rouble sign in Russian, Russian plurals.
    assert texts.fmt_money(D("1234567.5"), "RUB", "ru") == "1 234 567,50 ₽"
    assert texts.fmt_money(D("1234567.5"), "RUB", "en") == "1,234,567.50 RUB"
    assert texts.fmt_money(D("10"), "USD", "ru") == "10,00 USD"
    assert [texts.fmt_days(n, "ru") for n in (1, 2, 5, 11, 21, 22, 14)] == [
        "1 день",
        "2 дня",
        "5 дней",
        "11 дней",
        "21 день",
        "22 дня",
        "14 дней",
    ]
    assert [texts.fmt_months(n, "en") for n in (1, 36)] == ["1 month", "36 months"]
    assert (texts.fmt_percent(D("19.90"), "ru"), texts.fmt_percent(D("8"), "en")) == ("19,9 %", "8%")


def test_a_failing_bank_is_named_with_why_instead_of_a_silent_zero():
    seen = dt.datetime(2025, 11, 20, 8, 30, tzinfo=UTC)
    failing = "abank failing since 2025-11-21T09:00:00Z, next try at 2025-11-21T09:02:00Z"
    data = regular_salary_with_loan(
        banks=[
            BankFreshness("vbank", "VBank", "ok", seen, None),
            BankFreshness("abank", "ABank", "error", seen - dt.timedelta(days=1), failing),
            BankFreshness("sbank", "SBank", "needs_reconsent", None, "the bank refused the consent"),
        ]
    )
    ru, en = run(data, "ru"), run(data, "en")
    assert ru["health_score"]["reasons"][:2] == [
        f"данные ABank не обновляются: банк не отвечает ({failing}); последние данные от 19.11.2025 08:30 UTC",
        "данные SBank не обновляются: согласие нужно выдать заново (the bank refused the consent); "
        "данных из этого банка ещё нет",
    ]
    assert en["health_score"]["reasons"][0] == (
        f"ABank data is not up to date: the bank is failing ({failing}); last data from 2025-11-19 08:30 UTC"
    )
    assert ru["sts_today"]["detail"]["reason"].startswith("данные ABank не обновляются")
    assert run(regular_salary_with_loan(banks=[BankFreshness("vbank", "VBank", "ok", seen, None)]), "ru")["sts_today"][
        "detail"
    ]["reason"].startswith("доступно"), "no note when every bank is fine"
