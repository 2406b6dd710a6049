"""sync_svc: bank data pulled into Postgres (schema `sync`), the bank list and sync jobs."""
