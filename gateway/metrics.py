"""The gateway's Prometheus metrics (served at `GET /metrics`, or on FINPULSE_GATEWAY_METRICS_ADDR).

- `finpulse_gateway_requests_total` {route, method, status} and
  `finpulse_gateway_request_duration_seconds` {route, method}; route is the route template
  (`<unmatched>` when no route matched); a Server-Sent Events stream lasts until it ends.
- `finpulse_gateway_response_cache_hits_total` {route}: GETs answered from the response cache.
"""

from __future__ import annotations

import functools

from prometheus_client import Counter, Histogram

from svclib.metrics import LATENCY_BUCKETS

GATEWAY_REQUESTS = Counter(
    "finpulse_gateway_requests_total",
    "HTTP requests the gateway answered, by route template, method and status.",
    ["route", "method", "status"],
)
GATEWAY_LATENCY = Histogram(
    "finpulse_gateway_request_duration_seconds",
    "Latency of the gateway's HTTP requests, by route template and method.",
    ["route", "method"],
    buckets=LATENCY_BUCKETS,
)

GATEWAY_RESPONSE_CACHE_HITS = Counter(
    "finpulse_gateway_response_cache_hits_total",
    "GET requests the gateway answered from its response cache "
    "(replies a service marked reusable, e.g. the cached dashboard), by route template.",
    ["route"],
)

# The labelled children of a request's count and latency, looked up once per label set (routes, RPC
# methods, statuses and codes are bounded sets), not per request: this runs on every request.


@functools.cache
def _gateway_children(route: str, method: str, status: int) -> tuple:
    return GATEWAY_REQUESTS.labels(route, method, str(status)), GATEWAY_LATENCY.labels(route, method)


def observe_gateway(route: str, method: str, status: int, seconds: float) -> None:
    """One answered HTTP request of the gateway (`route` is its template)."""
    count, latency = _gateway_children(route, method, status)
    count.inc()
    latency.observe(seconds)
