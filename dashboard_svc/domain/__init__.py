"""The dashboard calculation: one user's `DashboardData` -> the `GetDashboardResponse` dict, and the loans,
deposits and refinancing answers computed in the same pass.

Pure: no I/O, no gRPC, no SQL. `compute(data, lang)` returns a JSON-able dict in the proto's field names
that `json_format.ParseDict(result, dashboard_pb2.GetDashboardResponse())` accepts. `compute_all(data,
lang)` returns {"dashboard", "loans", "deposits", "refinance"}: the GetDashboardResponse,
GetLoansResponse, GetDepositsResponse and OptimizeLoansResponse dicts, all from ONE analysis pass (so
the loans route's totals are the dashboard's loan_summary figures and the deposits route's are its
savings_summary). The service adds `cache_info` and `data_freshness[].age_minutes` when it answers.
Both live in `assemble`; `dashboard_svc.calc` is their public entry.

Language: every text for people comes from `dashboard_svc.domain.texts` in `lang` ("ru", the default and
the app's language, or "en"); codes (OK/DANGER, income_source, statuses, kinds, trigger types) are
language-neutral. Loan arithmetic lives in `dashboard_svc.domain.loan_math`, the refinancing offers in
`refinance`, the financing triggers and urgency in `financing`, the OptimizeLoans answer in `optimize_loans`.

Conventions
- All arithmetic is in `Decimal`. Money shown is rounded ROUND_HALF_UP to cents; the per-day
  safe-to-spend is rounded ROUND_DOWN so it is never overstated. Exact amounts are decimal strings with
  two places; the seed's legacy `double` fields are floats made from those rounded Decimals, at the edge.
- "today" is the UTC date of `data.now`. Dates are "YYYY-MM-DD", datetimes ISO-8601 UTC with "Z".
- The base currency (`config.base_currency`) is the currency of safe-to-spend and of every legacy
  number. Nothing is ever converted: balances, loans and deposits in other currencies are shown in
  their own currency (`totals_by_currency`, `excluded_balances`, `loans[]`…) and left out of the
  base-currency figures.

Each rule lives in a small function whose docstring states it; `assemble.compute_all` only assembles them:

    common.py          money and date helpers, which accounts are spendable
    income.py          income detection (monthly, biweekly, irregular) and the user's salary inputs
    loans.py           loans: analysis (outstanding, obligations, credit inputs), facts (kind, schedule,
                       maturity, priority, missed months), figures and summary (MDP, ADP), rows and items
    sts.py             events of the next 30 days and safe-to-spend
    accounts.py        balances, savings, deposits, cards, transactions, banks' statuses and freshness
    health.py          the health score and its components
    loan_math.py       loan arithmetic: cents, a loan's kind, the remaining schedule, the annuity payment
    refinance.py       refinancing offers: matching, exact pricing and savings, materiality, ranking
    financing.py       the financing-need signal: triggers (missed payment, gap risk, DTI, refinancing), urgency
    optimize_loans.py  the OptimizeLoans answer: offers and triggers as the app shows them
    texts.py           texts for people, in Russian and English
    assemble.py        `compute_all` / `compute`: one pass over the data, the four answers (and the triggers)

The loan obligation and repayments shared with consent_svc (`Repayments`, `Obligation`, `obligation_of`,
`next_due_date`) and the money and date basics live in the shared `finance` package.

Refinements of the plain rules (each explained where it is applied):
- a monthly or biweekly income must carry ≥ 40 % of the income of its period (`detect_monthly`);
- several monthly streams (an advance and a salary) are kept apart; biweekly gaps are 13–15 days;
- a loan due today and not yet paid is still due; one already paid this month is not (`next_due_date`);
- user dates in the past are rolled forward by whole months; the user's credit payment also drives the
  events, the loan summary and the debt load (`apply_salary_inputs`, `apply_credit_inputs`);
- repayments of an agreement we do not know (no product consent) still count as payments
  (`orphan_obligations`);
- savings daily payment is 0 once the target is reached (`savings_summary`);
- on-time repayments count the calendar months that had a repayment (`months_paid`);
- a savings goal without a date but with a horizon of N months is due N × 30 days from today
  (`savings_summary`);
- `totals_by_currency` leaves out Loan accounts (disbursed loan money is not the user's), and
  `data_freshness` leaves out banks never synced (`bank_statuses` still lists them).
"""
