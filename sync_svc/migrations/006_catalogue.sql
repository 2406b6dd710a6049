-- The banks' public product catalogues (GET /products, bank token only): what refinancing offers and
-- deposit terms are computed from. One row per (bank, product) as last read; a refresh replaces a
-- bank's rows in one transaction, and a bank that cannot be reached keeps its stored copy.
CREATE TABLE bank_products (
    bank_id       text NOT NULL,
    product_id    text NOT NULL,
    product_type  text NOT NULL,
    product_name  text NOT NULL DEFAULT '',
    interest_rate numeric(9, 4),
    min_amount    numeric(18, 2),
    max_amount    numeric(18, 2),
    term_months   integer,
    commission    numeric(18, 2),
    raw           jsonb NOT NULL,
    fetched_at    timestamptz NOT NULL,
    PRIMARY KEY (bank_id, product_id)
);

-- When each bank's catalogue was last read, and why the last refresh failed (if it did).
CREATE TABLE catalogue_state (
    bank_id       text PRIMARY KEY,
    fetched_at    timestamptz,
    last_error    text,
    last_error_at timestamptz
);
