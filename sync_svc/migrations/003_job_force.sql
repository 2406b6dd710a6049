-- A forced job fetches the whole history again instead of stopping at the watermark.
ALTER TABLE sync_jobs ADD COLUMN force boolean NOT NULL DEFAULT false;
