"""Domain values of the dashboard service (no gRPC, no SQL)."""
from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal


@dataclasses.dataclass(frozen=True)
class FinancialInputs:
    salary_amount: Decimal | None = None
    next_salary_date: dt.date | None = None
    credit_payment_amount: Decimal | None = None
    credit_payment_date: dt.date | None = None
