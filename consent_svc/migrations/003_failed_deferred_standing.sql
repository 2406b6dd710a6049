-- Consents that could not be created are kept (FAILED, with the error) instead of vanishing, and a
-- payment consent asked for while the account consent at its bank waits for the customer is kept
-- (DEFERRED) until that approval: neither has a consent id or a request id. Asking again for a
-- FAILED (or, once the account consent is approved, a DEFERRED) consent replaces the row in place,
-- so failures do not pile up; consent_events keeps the history.
ALTER TABLE consents
    -- Language-neutral reason of a FAILED consent (BANK_UNAVAILABLE, BANK_REFUSED, ...) and the
    -- technical text (the bank's answer); the text for people is made per request, in its language.
    ADD COLUMN error_code      text,
    ADD COLUMN error_message   text,
    -- Payment consents: single_use, multi_use or vrp, and the account number it pays from.
    ADD COLUMN payment_type    text CHECK (payment_type IN ('single_use', 'multi_use', 'vrp')),
    ADD COLUMN debtor_account  text;
ALTER TABLE consents DROP CONSTRAINT consents_status_check;
ALTER TABLE consents ADD CONSTRAINT consents_status_check
    CHECK (status IN ('PENDING', 'AWAITING_USER', 'APPROVED', 'REJECTED', 'REVOKED', 'EXPIRED', 'FAILED', 'DEFERRED'));
ALTER TABLE consents DROP CONSTRAINT consents_check;
ALTER TABLE consents ADD CONSTRAINT consents_ids_check
    CHECK (CASE WHEN status IN ('FAILED', 'DEFERRED') THEN consent_id IS NULL AND request_id IS NULL
                ELSE consent_id IS NOT NULL OR request_id IS NOT NULL END);
ALTER TABLE consents ADD CONSTRAINT consents_deferred_payments_check
    CHECK (status <> 'DEFERRED' OR consent_type = 'payments');
ALTER TABLE consents ADD CONSTRAINT consents_error_check
    CHECK ((status = 'FAILED') = (error_code IS NOT NULL));
-- Every payment consent asked for until now was the onboarding's standing one.
UPDATE consents SET payment_type = 'vrp' WHERE consent_type = 'payments';

ALTER TABLE consent_events DROP CONSTRAINT consent_events_source_check;
ALTER TABLE consent_events ADD CONSTRAINT consent_events_source_check
    CHECK (source IN ('create', 'poll', 'callback', 'revoke', 'expiry', 'retry', 'deferred'));

-- A loan repayment may use the user's standing (vrp or multi_use) payment consent at the debtor's
-- bank instead of a single-use one: several payments then share one consent id. What the bank
-- reported about that consent's uses (count, payment ids) just before the payment call is kept with
-- `in_doubt`, so a retry after an unknown outcome can tell whether a new use is this payment.
ALTER TABLE payments
    ADD COLUMN consent_kind        text CHECK (consent_kind IN ('single_use', 'multi_use', 'vrp')),
    ADD COLUMN consent_used_count  integer,
    ADD COLUMN consent_payment_ids text[];
UPDATE payments SET consent_kind = 'single_use' WHERE consent_id IS NOT NULL OR consent_request_id IS NOT NULL;
DROP INDEX payments_bank_consent;
CREATE UNIQUE INDEX payments_bank_consent ON payments (bank_id, consent_id)
    WHERE consent_id IS NOT NULL AND consent_kind = 'single_use';
CREATE INDEX payments_in_doubt_by_consent ON payments (bank_id, consent_id) WHERE in_doubt;
CREATE INDEX payments_by_bank_payment ON payments (bank_id, bank_payment_id) WHERE bank_payment_id IS NOT NULL;
