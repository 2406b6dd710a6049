"""Dashboard domain logic (no gRPC)."""
from __future__ import annotations

import datetime as dt
import logging

from svclib.cache import Cache
from svclib.errors import InvalidArgument, require
from svclib.validation import parse_amount, parse_date

from dashboard_svc.model import FinancialInputs
from dashboard_svc.storage import DashboardStorage

log = logging.getLogger("dashboard_svc")


def parse_inputs(salary_amount: str | None, next_salary_date: str | None,
                 credit_payment_amount: str | None, credit_payment_date: str | None) -> FinancialInputs:
    """Validate raw inputs; a date without its amount (or the reverse) is allowed, blanks are unset."""

    def blank(value: str | None) -> bool:
        return value is None or value.strip() == ""

    return FinancialInputs(
        salary_amount=None if blank(salary_amount) else parse_amount(salary_amount, "inputs.salary_amount"),
        next_salary_date=None if blank(next_salary_date) else parse_date(next_salary_date, "inputs.next_salary_date"),
        credit_payment_amount=None if blank(credit_payment_amount)
        else parse_amount(credit_payment_amount, "inputs.credit_payment_amount"),
        credit_payment_date=None if blank(credit_payment_date)
        else parse_date(credit_payment_date, "inputs.credit_payment_date"),
    )


class DashboardService:
    def __init__(self, storage: DashboardStorage, cache: Cache):
        self.storage = storage
        self.cache = cache

    async def get_inputs(self, user_id: str) -> tuple[FinancialInputs, dt.datetime | None]:
        return await self.storage.get_inputs(require(user_id, "user_id"))

    async def put_inputs(self, user_id: str, inputs: FinancialInputs | None) -> tuple[FinancialInputs, dt.datetime]:
        user_id = require(user_id, "user_id")
        if inputs is None:
            raise InvalidArgument("inputs is required", "inputs")
        stored, updated_at = await self.storage.put_inputs(user_id, inputs)
        # Changed inputs change the dashboard at once: drop both cache levels.
        await self.cache.delete(self.cache.key("dashboard", user_id))
        await self.storage.drop_cached_dashboard(user_id)
        return stored, updated_at
