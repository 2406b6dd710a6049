-- The user's own inputs; they win over what is detected from bank history.
CREATE TABLE user_financial_inputs (
    user_id               text PRIMARY KEY,
    salary_amount         numeric(18, 2) CHECK (salary_amount > 0),
    next_salary_date      date,
    credit_payment_amount numeric(18, 2) CHECK (credit_payment_amount > 0),
    credit_payment_date   date,
    updated_at            timestamptz NOT NULL DEFAULT now()
);

-- Second cache level behind Redis: the seed's columns plus the data version it was computed from.
CREATE TABLE dashboard_cache (
    user_id        text PRIMARY KEY,
    dashboard_data jsonb NOT NULL,
    synced_at      timestamptz,
    calculated_at  timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL,
    version        integer NOT NULL DEFAULT 1,
    data_version   bigint NOT NULL DEFAULT 0
);
