-- The W3C traceparent of the request that queued the job (NULL when tracing is off): the job's own
-- trace links to it (svclib.tracing.job_span).
ALTER TABLE sync_jobs ADD COLUMN traceparent text;
