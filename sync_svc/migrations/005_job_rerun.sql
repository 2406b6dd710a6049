-- Set on a running job when data at the bank changed after it may have read it (a payment): finishing
-- it queues another run of the same bank.
ALTER TABLE sync_jobs ADD COLUMN rerun boolean NOT NULL DEFAULT false;
