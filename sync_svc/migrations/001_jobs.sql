-- Durable sync jobs: one row per (user, bank) run. At most one job in flight per (user, bank):
-- a second request joins the queued or running one (enforced by the partial unique index).
CREATE TABLE sync_jobs (
    job_id      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     text NOT NULL,
    bank_id     text NOT NULL,
    state       text NOT NULL DEFAULT 'queued'
                CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'needs_reconsent')),
    reason      text NOT NULL DEFAULT '',
    attempts    integer NOT NULL DEFAULT 0,
    run_after   timestamptz NOT NULL DEFAULT now(),
    lease_until timestamptz,
    worker_id   text,
    last_error  text,
    progress    jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    started_at  timestamptz,
    finished_at timestamptz
);

CREATE UNIQUE INDEX sync_jobs_one_in_flight ON sync_jobs (user_id, bank_id) WHERE state IN ('queued', 'running');
CREATE INDEX sync_jobs_claimable ON sync_jobs (run_after) WHERE state = 'queued';
CREATE INDEX sync_jobs_by_user ON sync_jobs (user_id, bank_id, created_at DESC);
