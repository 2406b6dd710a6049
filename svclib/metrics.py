"""The generic part of the suite's Prometheus metrics: RPC counts and latencies, and their exposition.

Each process of the suite is one Python process with prometheus_client's default registry (no
multiprocess mode is needed). What a process measures is defined by its owner: the gateway's requests
in `gateway/metrics.py`, sync's bank calls and jobs in `sync_svc/metrics.py`, the dashboard cache's
hits and misses in `dashboard_svc/metrics.py`. This module holds only what every gRPC server shares
(`svclib.server` counts every RPC here) and the exposition: the gateway serves its registry at
`GET /metrics` on its own port; each gRPC service serves it over HTTP on
`FINPULSE_<SVC>_METRICS_ADDR` (`start_exporter`, called by `svclib.runtime`).

- services: `finpulse_rpc_requests_total` {service, method, code} and `finpulse_rpc_duration_seconds`
  {service, method} of every RPC a service handled; `finpulse_service_serving` {service}: 1 while its
  gRPC health says SERVING (svclib.runtime's readiness watch), else 0.
- the database pool of every service (svclib.runtime opens it): `finpulse_db_pool_connections`
  {service, state: in_use, idle} and `finpulse_db_pool_max_connections` {service}, read at each scrape.
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
from collections.abc import Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, make_wsgi_app, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from svclib import ports

log = logging.getLogger("svclib.metrics")

#: Latency buckets (seconds) of requests, RPCs and bank calls: 1 ms to 30 s.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# ------------------------------------------------------------------------------------------- services

RPC_REQUESTS = Counter(
    "finpulse_rpc_requests_total",
    "RPCs a service handled, by service, method and gRPC status code.",
    ["service", "method", "code"],
)
RPC_LATENCY = Histogram(
    "finpulse_rpc_duration_seconds",
    "Latency of the RPCs a service handled, by service and method.",
    ["service", "method"],
    buckets=LATENCY_BUCKETS,
)
SERVICE_SERVING = Gauge(
    "finpulse_service_serving",
    "1 while the service's gRPC health status is SERVING (its database answers, its loops beat), else 0.",
    ["service"],
)


# ------------------------------------------------------------------------------------------- recording


@functools.cache
def _rpc_children(full_method: str, code: str) -> tuple:
    service, _, method = full_method.lstrip("/").rpartition("/")
    return RPC_REQUESTS.labels(service, method, code), RPC_LATENCY.labels(service, method)


def observe_rpc(full_method: str, code: str, seconds: float) -> None:
    """One handled RPC; `full_method` is gRPC's "/package.Service/Method"."""
    count, latency = _rpc_children(full_method, code)
    count.inc()
    latency.observe(seconds)


def set_serving(service: str, serving: bool) -> None:
    """The service's health status changed (svclib.runtime's readiness watch)."""
    SERVICE_SERVING.labels(service).set(1 if serving else 0)


class _PoolCollector(Collector):
    """The connections of each watched asyncpg pool, read when scraped (plain attribute reads: safe from
    the exporter's thread)."""

    def __init__(self) -> None:
        self.pools: dict[str, Any] = {}

    def collect(self) -> Iterable[GaugeMetricFamily]:
        connections = GaugeMetricFamily(
            "finpulse_db_pool_connections",
            "Connections of the service's database pool, by state (in_use, idle).",
            labels=["service", "state"],
        )
        limit = GaugeMetricFamily(
            "finpulse_db_pool_max_connections", "The most connections the service's pool opens.", labels=["service"]
        )
        for service, pool in list(self.pools.items()):
            size, idle = pool.get_size(), pool.get_idle_size()
            connections.add_metric([service, "in_use"], size - idle)
            connections.add_metric([service, "idle"], idle)
            limit.add_metric([service], pool.get_max_size())
        yield connections
        yield limit


_POOLS = _PoolCollector()
REGISTRY.register(_POOLS)


def watch_pool(service: str, pool: Any) -> None:
    """Export `pool`'s (an asyncpg.Pool) connections under `service` from now on."""
    _POOLS.pools[service] = pool


# ------------------------------------------------------------------------------------------- exposition


def render(accept: str | None = None) -> tuple[bytes, str]:
    """The default registry in the format the `Accept` header asks for: (body, content type)."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(REGISTRY), content_type


class Exporter:
    """The HTTP server (its own thread) that serves this process's metrics at any path, e.g. /metrics."""

    def __init__(self, addr: str):
        host, _, port = addr.rpartition(":")
        if ports.is_reserved(port):  # the parent holds the port for us (svclib.ports): share it
            self.server, self._thread = _serve_on_reserved_port(host.strip("[]") or "0.0.0.0", int(port))
        else:
            self.server, self._thread = start_http_server(int(port), host.strip("[]") or "0.0.0.0")
        self.port = self.server.server_port
        log.info("metrics exporter listening", extra={"address": f"{host}:{self.port}"})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def _serve_on_reserved_port(host: str, port: int) -> tuple[WSGIServer, threading.Thread]:
    """prometheus_client's `start_http_server`, bound with SO_REUSEPORT (which it cannot do)."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]

    class Server(ThreadingMixIn, WSGIServer):
        address_family = family
        allow_reuse_port = True
        daemon_threads = True

    server = make_server(host, port, make_wsgi_app(REGISTRY), Server, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="metrics-exporter", daemon=True)
    thread.start()
    return server, thread


def start_exporter(addr: str | None) -> Exporter | None:
    """Serve the metrics on `addr` ("host:port"); None (not configured): no exporter."""
    return Exporter(addr) if addr else None
