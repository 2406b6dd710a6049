"""The gateway's Prometheus metrics (served at `GET /metrics`, or on FINPULSE_GATEWAY_METRICS_ADDR).

- `finpulse_gateway_requests_total` {route, method, status} and
  `finpulse_gateway_request_duration_seconds` {route, method}; route is the route template
  (`<unmatched>` when no route matched); a Server-Sent Events stream lasts until it ends.
- `finpulse_gateway_response_cache_hits_total` {route}: GETs answered from the response cache.

They are counted on every request, so they are kept in plain Python numbers by one
collector (`RequestMetrics`) rather than in prometheus_client's Counter and Histogram, whose locked
values cost a cached dashboard request ~7 µs of its ~80 (README, Benchmarks); the exposition is the
same (names, labels, buckets, `_created` of the counters). The gateway counts from its event loop's thread only.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from svclib.metrics import LATENCY_BUCKETS

_BOUNDS = tuple(float(b) for b in LATENCY_BUCKETS)


class _Route:
    """Counts and latencies of one (route, method)."""

    __slots__ = ("buckets", "created", "statuses", "sum")

    def __init__(self) -> None:
        self.statuses: dict[int, list[float]] = {}  # status -> [count, created]
        self.buckets = [0] * (len(_BOUNDS) + 1)  # per bucket (not cumulative); the last is +Inf
        self.sum = 0.0
        self.created = time.time()


class RequestMetrics:
    """`finpulse_gateway_requests_total`, `finpulse_gateway_request_duration_seconds` and
    `finpulse_gateway_response_cache_hits_total`."""

    def __init__(self) -> None:
        self._routes: dict[tuple[str, str], _Route] = {}
        self._cache_hits: dict[str, list[float]] = {}  # route -> [count, created]

    def cache_hit(self, route: str) -> None:
        count = self._cache_hits.get(route)
        if count is None:
            self._cache_hits[route] = [1, time.time()]
        else:
            count[0] += 1

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        stats = self._routes.get((route, method))
        if stats is None:
            stats = self._routes[(route, method)] = _Route()
        count = stats.statuses.get(status)
        if count is None:
            stats.statuses[status] = [1, time.time()]
        else:
            count[0] += 1
        stats.buckets[bisect.bisect_left(_BOUNDS, seconds)] += 1
        stats.sum += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "finpulse_gateway_requests",
            "HTTP requests the gateway answered, by route template, method and status.",
            labels=["route", "method", "status"],
        )
        latency = HistogramMetricFamily(
            "finpulse_gateway_request_duration_seconds",
            "Latency of the gateway's HTTP requests, by route template and method.",
            labels=["route", "method"],
        )
        for (route, method), stats in list(self._routes.items()):
            for status, (count, created) in list(stats.statuses.items()):
                requests.add_metric([route, method, str(status)], count, created=created)
            cumulative, buckets = 0, []
            for bound, n in zip((*_BOUNDS, float("inf")), list(stats.buckets), strict=True):
                cumulative += n
                buckets.append((_bucket_label(bound), cumulative))
            latency.add_metric([route, method], buckets, stats.sum)
        hits = CounterMetricFamily(
            "finpulse_gateway_response_cache_hits",
            "GET requests the gateway answered from its response cache "
            "(replies a service marked reusable, e.g. the cached dashboard), by route template.",
            labels=["route"],
        )
        for route, (count, created) in list(self._cache_hits.items()):
            hits.add_metric([route], count, created=created)
        yield requests
        yield latency
        yield hits


def _bucket_label(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


REQUESTS = RequestMetrics()
REGISTRY.register(REQUESTS)


def cache_hit(route: str) -> None:
    """A GET answered from the response cache (`route` is its template)."""
    REQUESTS.cache_hit(route)


def observe_gateway(route: str, method: str, status: int, seconds: float) -> None:
    """One answered HTTP request of the gateway (`route` is its template)."""
    REQUESTS.observe(route, method, status, seconds)
