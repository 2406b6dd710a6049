"""dashboard_svc's Prometheus metrics: `finpulse_dashboard_cache_hits_total` {level: redis, table} and
`finpulse_dashboard_cache_misses_total` {reason: stale (no fresh entry), force_refresh}."""

from __future__ import annotations

from prometheus_client import Counter

DASHBOARD_CACHE_HITS = Counter(
    "finpulse_dashboard_cache_hits_total", "Dashboards served from the cache, by level (redis, table).", ["level"]
)
DASHBOARD_CACHE_MISSES = Counter(
    "finpulse_dashboard_cache_misses_total",
    "Dashboards computed, by reason (stale: no fresh cache entry; force_refresh).",
    ["reason"],
)
