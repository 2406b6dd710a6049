-- The request id of the request that queued the job: the worker's log lines and bank calls carry it.
ALTER TABLE sync_jobs ADD COLUMN request_id text;
