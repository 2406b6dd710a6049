-- Rollups of the transactions: what GetAggregates answers, kept up to date in the transaction that
-- writes the transactions (sync_svc/rollups.py), so a dashboard reads a few hundred rows instead of
-- the user's whole history. Sums are exact (NUMERIC) and every row carries its transaction count:
-- a row whose count drops to 0 is deleted. Every key holds the bank: a row is only ever written under
-- the (user, bank) advisory lock of the sync write, so writers never share a row (no lost update, no
-- deadlock); reads add the banks up. Days and months are UTC calendar days and months of booking_time.
-- Currency and category may be NULL (as in `transactions`): the keys treat NULL as one value.

-- Monthly cash flow: credits (income) and debits (spending, positive) per month and currency.
CREATE TABLE rollup_month_flow (
    user_id  text NOT NULL,
    month    date NOT NULL,               -- first day of the month
    bank_id  text NOT NULL,
    currency text,
    income   numeric NOT NULL DEFAULT 0,  -- sum(signed_amount) of the credits
    spending numeric NOT NULL DEFAULT 0,  -- -sum(signed_amount) of the debits
    credits  integer NOT NULL DEFAULT 0,  -- counts
    debits   integer NOT NULL DEFAULT 0,
    CONSTRAINT rollup_month_flow_key UNIQUE NULLS NOT DISTINCT (user_id, month, bank_id, currency)
);

-- Debits per day, merchant category and currency (spending by category over any window, spent today).
CREATE TABLE rollup_day_spending (
    user_id  text NOT NULL,
    day      date NOT NULL,
    bank_id  text NOT NULL,
    category text,
    currency text,
    total    numeric NOT NULL DEFAULT 0,  -- -sum(signed_amount)
    n        integer NOT NULL DEFAULT 0,
    CONSTRAINT rollup_day_spending_key UNIQUE NULLS NOT DISTINCT (user_id, day, bank_id, category, currency)
);

-- Income per day and currency: credits naming no agreement and not a transfer ("Перевод…").
CREATE TABLE rollup_day_income (
    user_id  text NOT NULL,
    day      date NOT NULL,
    bank_id  text NOT NULL,
    currency text,
    total    numeric NOT NULL DEFAULT 0,  -- sum(amount)
    n        integer NOT NULL DEFAULT 0,
    CONSTRAINT rollup_day_income_key UNIQUE NULLS NOT DISTINCT (user_id, day, bank_id, currency)
);

-- Loan repayments: debits naming an agreement, per agreement, currency and day (the day of month of
-- the payments and the months paid come from the days; the last payment's time from the raw rows of
-- the last day).
CREATE TABLE rollup_day_loans (
    user_id      text NOT NULL,
    bank_id      text NOT NULL,
    agreement_id text NOT NULL,
    currency     text,
    day          date NOT NULL,
    total        numeric NOT NULL DEFAULT 0,  -- -sum(signed_amount)
    n            integer NOT NULL DEFAULT 0,
    CONSTRAINT rollup_day_loans_key UNIQUE NULLS NOT DISTINCT (user_id, bank_id, agreement_id, currency, day)
);

-- Backfill from the rows stored so far. Writers wait until this migration commits (the share lock),
-- so no row is written between the backfill's snapshot and the commit. A sync worker of the previous
-- version still running after it does not maintain the rollups: run `python -m sync_svc.rollups
-- rebuild` once every sync_svc runs this version (README, "Rollups").
LOCK TABLE transactions IN SHARE MODE;

INSERT INTO rollup_month_flow (user_id, month, bank_id, currency, income, spending, credits, debits)
SELECT user_id, date_trunc('month', booking_time AT TIME ZONE 'UTC')::date, bank_id, currency,
       COALESCE(sum(signed_amount) FILTER (WHERE direction = 'credit'), 0),
       COALESCE(-sum(signed_amount) FILTER (WHERE direction = 'debit'), 0),
       count(*) FILTER (WHERE direction = 'credit'),
       count(*) FILTER (WHERE direction = 'debit')
FROM transactions GROUP BY 1, 2, 3, 4;

INSERT INTO rollup_day_spending (user_id, day, bank_id, category, currency, total, n)
SELECT user_id, (booking_time AT TIME ZONE 'UTC')::date, bank_id, category, currency, -sum(signed_amount), count(*)
FROM transactions WHERE direction = 'debit' GROUP BY 1, 2, 3, 4, 5;

INSERT INTO rollup_day_income (user_id, day, bank_id, currency, total, n)
SELECT user_id, (booking_time AT TIME ZONE 'UTC')::date, bank_id, currency, sum(amount), count(*)
FROM transactions
WHERE direction = 'credit' AND agreement_id IS NULL AND coalesce(description, '') NOT ILIKE 'Перевод%'
GROUP BY 1, 2, 3, 4;

INSERT INTO rollup_day_loans (user_id, bank_id, agreement_id, currency, day, total, n)
SELECT user_id, bank_id, agreement_id, currency, (booking_time AT TIME ZONE 'UTC')::date, -sum(signed_amount), count(*)
FROM transactions WHERE direction = 'debit' AND agreement_id IS NOT NULL GROUP BY 1, 2, 3, 4, 5;
