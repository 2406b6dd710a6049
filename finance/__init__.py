"""The finance domain two services share (pure: no gRPC, no SQL, no I/O).

A loan's repayments as the banks' transactions show them (`Repayments`), and the monthly obligation
derived from them (`Obligation`, `obligation_of`): dashboard_svc shows it (safe-to-spend, events, loan
summary), consent_svc pays it (a loan repayment's "next instalment"), so both read it from here and
it is one rule. `finance.protoconv` builds `Repayments` from sync_svc's message, the one converter
both services use.

    finance/money.py      money rounding (cents, ROUND_HALF_UP)
    finance/dates.py      "today" of a timestamp, month arithmetic
    finance/loans.py      Repayments, Obligation, next_due_date, repayments_by_key, obligation_of
    finance/dataversion.py  the Redis key where sync_svc publishes a user's data version (its readers' contract)
    finance/protoconv.py  sync_pb2.LoanRepayments -> Repayments (protobuf messages only, never grpc)
"""
