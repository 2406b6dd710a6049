-- Refinancing applications the user made for one of their offers (POST /api/refinance/apply). The
-- offer is kept as it was shown (its figures change with every sync); one application per
-- (user, offer): applying again answers the recorded one.
CREATE TABLE refinance_applications (
    application_id text PRIMARY KEY,
    user_id        text NOT NULL,
    offer_id       text NOT NULL,
    status         text NOT NULL CHECK (status IN ('recorded', 'submitted', 'approved', 'declined', 'withdrawn')),
    offer          jsonb NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, offer_id)
);
CREATE INDEX refinance_applications_by_user ON refinance_applications (user_id, created_at DESC);
