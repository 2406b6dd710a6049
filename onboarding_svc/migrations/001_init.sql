-- One row per onboarding session: the onboarding_id -> user mapping the seed never stored.
CREATE TABLE onboarding_sessions (
    onboarding_id   text PRIMARY KEY,
    user_id         text NOT NULL,
    user_name       text,
    status          text NOT NULL DEFAULT 'started' CHECK (status IN ('started', 'completed')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz,
    -- The answer finalize gave, returned again by a repeated finalize.
    finalize_result jsonb
);
CREATE INDEX onboarding_sessions_by_user ON onboarding_sessions (user_id, created_at DESC);

-- Goals of the user (set through the profile endpoints).
CREATE TABLE user_profiles (
    user_id      text PRIMARY KEY,
    goal_type    text,
    goal_details jsonb,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
