-- Bank data pulled from the banks: accounts, balance snapshots, transactions, product agreements
-- ("credits"), the per-(user, bank) sync state, the user's data version, and a log of bank calls.
--
-- Every natural key starts with (user_id, bank_id): the same customer has the same accountId at
-- every bank. Typed columns hold what the suite computes on; `raw` keeps the bank's JSON object.
-- Written only by sync_svc/bank_storage.py (one transaction per sync: rows + watermark + version).

CREATE TABLE accounts (
    user_id          text NOT NULL,
    bank_id          text NOT NULL,
    account_id       text NOT NULL,
    status           text,
    currency         text,
    account_type     text,
    account_sub_type text,              -- Checking, Savings, Loan, ...
    nickname         text,
    opening_date     date,
    account_number   text,              -- 19-digit RU.CBR.PAN identification (payments use it)
    owner_name       text,
    raw              jsonb NOT NULL DEFAULT '{}'::jsonb,
    first_seen_at    timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, bank_id, account_id)
);

-- Balance history. The bank has none (its dateTime is always "now"), so we keep our own snapshots:
-- a new row is written only when (amount, currency, credit/debit indicator) differs from the latest
-- snapshot of the same (account, type); rows are never updated or deleted. `as_of` is the bank's
-- dateTime when that value was first seen; freshness of the data is sync_state.last_success_at.
CREATE TABLE balances (
    id                     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id                text NOT NULL,
    bank_id                text NOT NULL,
    account_id             text NOT NULL,
    balance_type           text NOT NULL,  -- InterimAvailable, InterimBooked, ... ('' when absent)
    amount                 numeric(18, 2) NOT NULL,
    currency               text,
    credit_debit_indicator text,
    signed_amount          numeric(18, 2) GENERATED ALWAYS AS
                           (CASE WHEN lower(credit_debit_indicator) = 'debit' THEN -amount ELSE amount END) STORED,
    as_of                  timestamptz NOT NULL,
    fetched_at             timestamptz NOT NULL DEFAULT now(),
    raw                    jsonb NOT NULL DEFAULT '{}'::jsonb
);
-- Latest snapshot per (account, type): DISTINCT ON ... ORDER BY id DESC.
CREATE INDEX balances_latest ON balances (user_id, bank_id, account_id, balance_type, id DESC);

CREATE TABLE transactions (
    user_id        text NOT NULL,
    bank_id        text NOT NULL,
    account_id     text NOT NULL,
    transaction_id text NOT NULL,
    amount         numeric(18, 2) NOT NULL,           -- as the bank gives it (positive)
    direction      text NOT NULL CHECK (direction IN ('credit', 'debit')),
    signed_amount  numeric(18, 2) GENERATED ALWAYS AS
                   (CASE WHEN direction = 'debit' THEN -abs(amount) ELSE amount END) STORED,
    currency       text,
    status         text,                              -- as given: completed, Booked, Pending, ...
    booking_time   timestamptz NOT NULL,
    value_time     timestamptz,
    description    text,                              -- transactionInformation
    bank_code      text,                              -- 01 card purchase, 02 transfer/income/interest/loan
    merchant       text,
    category       text,
    mcc            text,
    agreement_id   text,                              -- from "Платеж по кредиту №<id>" / "Проценты по депозиту №<id>"
    raw            jsonb NOT NULL DEFAULT '{}'::jsonb,
    first_seen_at  timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, bank_id, account_id, transaction_id)
);
-- The user's feed across banks, windows and aggregates (monthly cash flow, spending by category).
CREATE INDEX transactions_by_user_time ON transactions (user_id, booking_time DESC);
-- One account's feed and the incremental-sync stop check.
CREATE INDEX transactions_by_account_time ON transactions (user_id, bank_id, account_id, booking_time DESC);
-- Loan repayments per agreement (only rows naming an agreement).
CREATE INDEX transactions_by_agreement ON transactions (user_id, agreement_id, booking_time)
    WHERE agreement_id IS NOT NULL;
-- Pending rows only: the clean-up of pending rows replaced by their booked version (new id).
CREATE INDEX transactions_pending ON transactions (user_id, bank_id, account_id, booking_time)
    WHERE lower(status) = 'pending';

-- Product agreements: loans, deposits, cards.
CREATE TABLE credits (
    user_id         text NOT NULL,
    bank_id         text NOT NULL,
    agreement_id    text NOT NULL,
    product_id      text,
    product_type    text,                  -- loan | deposit | card
    product_name    text,
    amount          numeric(18, 2) NOT NULL, -- principal (loan), deposited sum (deposit), LIMIT (card): not debt
    interest_rate   numeric,               -- percent; only in the detail call
    status          text,                  -- active | closed
    start_date      timestamptz,
    end_date        timestamptz,
    account_number  text,                  -- the linked account
    account_balance numeric(18, 2),        -- the linked account's balance (detail call), not the debt
    raw             jsonb NOT NULL DEFAULT '{}'::jsonb,
    first_seen_at   timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, bank_id, agreement_id)
);

-- Per (user, bank): the newest booking time stored (incremental syncs page back to it minus an
-- overlap), the last success and error, and running row totals kept in the write transaction.
CREATE TABLE sync_state (
    user_id            text NOT NULL,
    bank_id            text NOT NULL,
    watermark          timestamptz,
    last_success_at    timestamptz,
    last_changed_at    timestamptz,        -- last sync that inserted, updated or deleted a row
    last_error         text,
    last_error_at      timestamptz,
    accounts_count     integer NOT NULL DEFAULT 0,
    balances_count     integer NOT NULL DEFAULT 0,
    transactions_count integer NOT NULL DEFAULT 0,
    credits_count      integer NOT NULL DEFAULT 0,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, bank_id)
);

-- Bumped in the transaction of every sync that changed a row: the dashboard's cache key.
CREATE TABLE user_data_version (
    user_id    text PRIMARY KEY,
    version    bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- One row per bank call (append-only).
CREATE TABLE bank_status_log (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at             timestamptz NOT NULL DEFAULT now(),
    user_id        text,                   -- NULL for calls on behalf of no user (token)
    bank_id        text NOT NULL,
    operation      text NOT NULL,          -- token, accounts, balances, transactions, product_agreements, ...
    outcome        text NOT NULL,          -- ok, error, retry, consent_required, ...
    http_status    integer,
    latency_ms     double precision,
    interaction_id text,                   -- X-Fapi-Interaction-Id sent
    message        text
);
CREATE INDEX bank_status_log_by_user ON bank_status_log (user_id, bank_id, at DESC);
CREATE INDEX bank_status_log_by_bank ON bank_status_log (bank_id, at DESC);
