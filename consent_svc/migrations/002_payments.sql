-- Payments the suite initiates, one row per (user, idempotency key). The row is written and committed
-- (status INITIATING) before any bank call, so a retry, a restart or another replica can always tell
-- what was intended and reconcile it with the bank. `fingerprint` is the SHA-256 of the canonical
-- request: the same key with another request is refused.
CREATE TABLE payments (
    id                 bigserial PRIMARY KEY,
    payment_id         text NOT NULL UNIQUE,
    user_id            text NOT NULL,
    idempotency_key    text NOT NULL,
    fingerprint        text NOT NULL,
    kind               text NOT NULL CHECK (kind IN ('transfer', 'loan_repayment')),
    status             text NOT NULL
                       CHECK (status IN ('INITIATING', 'AWAITING_AUTHORIZATION', 'PENDING', 'COMPLETED', 'FAILED')),
    bank_id            text NOT NULL,
    account_id         text NOT NULL,
    debtor_account     text NOT NULL,
    creditor_account   text NOT NULL,
    creditor_bank_id   text,
    creditor_name      text,
    amount             numeric(18, 2) NOT NULL CHECK (amount > 0),
    currency           text NOT NULL,
    comment            text,
    agreement_id       text,
    amount_source      text NOT NULL DEFAULT 'requested' CHECK (amount_source IN ('requested', 'detected')),
    amount_note        text,
    -- The single-use payment consent made for this payment (never shared with another payment).
    consent_request_id text,
    consent_id         text,
    consent_status     text,
    approval_url       text,
    -- A payment call was sent and its outcome is not known yet (no answer, or the process died):
    -- the next attempt asks the bank about the consent before anything else.
    in_doubt           boolean NOT NULL DEFAULT false,
    bank_attempts      integer NOT NULL DEFAULT 0,
    interaction_id     text,
    bank_payment_id    text,
    bank_status        text,
    error_code         text,
    error_message      text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    completed_at       timestamptz,
    UNIQUE (user_id, idempotency_key)
);
CREATE INDEX payments_by_user ON payments (user_id, created_at DESC, id DESC);
CREATE UNIQUE INDEX payments_bank_consent ON payments (bank_id, consent_id) WHERE consent_id IS NOT NULL;

-- Every status change of a payment, and each exchange with the bank, with what caused it.
CREATE TABLE payment_events (
    id          bigserial PRIMARY KEY,
    payment_row bigint NOT NULL REFERENCES payments (id),
    old_status  text,
    new_status  text NOT NULL,
    source      text NOT NULL
                CHECK (source IN ('create', 'consent', 'bank_call', 'bank_answer', 'reconcile', 'refresh')),
    message     text,
    bank_status text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payment_events_by_payment ON payment_events (payment_row, id);
