"""sync_svc's `LoanRepayments` message -> `finance.loans.Repayments`: the one converter, used by
consent_svc (a loan repayment's instalment) and dashboard_svc (the dashboard's loans).

Imports the generated protobuf messages only, never grpc. Unset fields: an empty amount is 0, an
empty currency the base "RUB", an unset `last_paid_at` None (unknown, never the epoch).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from finpulse.sync.v1 import sync_pb2

from finance.loans import Repayments


def _amount(text: str) -> Decimal:
    return Decimal(text) if text else Decimal(0)


def repayments_from_pb(msg: sync_pb2.LoanRepayments) -> Repayments:
    return Repayments(
        bank_id=msg.bank_id,
        agreement_id=msg.agreement_id,
        count=msg.count,
        total=_amount(msg.total),
        average=_amount(msg.average),
        currency=msg.currency or "RUB",
        last_paid_at=msg.last_paid_at.ToDatetime(dt.UTC) if msg.HasField("last_paid_at") else None,
        typical_day=msg.typical_day,
        months=tuple(dt.date.fromisoformat(m) for m in msg.months_paid),
    )
