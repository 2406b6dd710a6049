-- Every consent the suite asked a bank for (the seed's columns plus permissions, the bank's raw
-- status, expiry and timestamps). A pending consent has a request id and no consent id yet.
CREATE TABLE consents (
    id           bigserial PRIMARY KEY,
    user_id      text NOT NULL,
    bank_id      text NOT NULL,
    consent_type text NOT NULL CHECK (consent_type IN ('accounts', 'products', 'payments')),
    consent_id   text,
    request_id   text,
    status       text NOT NULL
                 CHECK (status IN ('PENDING', 'AWAITING_USER', 'APPROVED', 'REJECTED', 'REVOKED', 'EXPIRED')),
    bank_status  text,
    approval_url text,
    permissions  text[] NOT NULL DEFAULT '{}',
    expires_at   timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    checked_at   timestamptz NOT NULL DEFAULT now(),
    CHECK (consent_id IS NOT NULL OR request_id IS NOT NULL)
);
CREATE UNIQUE INDEX consents_bank_consent_id ON consents (bank_id, consent_id) WHERE consent_id IS NOT NULL;
CREATE UNIQUE INDEX consents_bank_request_id ON consents (bank_id, request_id) WHERE request_id IS NOT NULL;
CREATE INDEX consents_by_user ON consents (user_id, bank_id, consent_type, created_at DESC);

-- Audit: one row for every status change of a consent, with what caused it.
CREATE TABLE consent_events (
    id          bigserial PRIMARY KEY,
    consent_row bigint NOT NULL REFERENCES consents (id),
    user_id     text NOT NULL,
    bank_id     text NOT NULL,
    old_status  text,
    new_status  text NOT NULL,
    bank_status text,
    source      text NOT NULL CHECK (source IN ('create', 'poll', 'callback', 'revoke', 'expiry')),
    message     text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX consent_events_by_consent ON consent_events (consent_row, created_at);
