"""dashboard_svc: the dashboard and the financial inputs it is computed from (schema `dashboard`)."""
