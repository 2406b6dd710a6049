"""Every Prometheus metric of the suite, in one place, and their exposition.

Each process of the suite is one Python process with prometheus_client's default registry (no
multiprocess mode is needed); it registers every metric below and fills the ones its code touches.
The gateway serves them at `GET /metrics` on its own port; each gRPC service serves them over HTTP
on `FINPULSE_<SVC>_METRICS_ADDR` (`start_exporter`, called by `svclib.runtime`).

- gateway: `finpulse_gateway_requests_total` {route, method, status} and
  `finpulse_gateway_request_duration_seconds` {route, method}; route is the route template
  (`<unmatched>` when no route matched); a Server-Sent Events stream lasts until it ends.
- services: `finpulse_rpc_requests_total` {service, method, code} and `finpulse_rpc_duration_seconds`
  {service, method} of every RPC a service handled.
- sync, per bank: `finpulse_sync_bank_calls_total` {bank, operation} (every HTTP exchange, retries
  included), `finpulse_sync_bank_call_failures_total` {bank, operation, reason} (no 2xx answer; reason
  is the HTTP status or `transport`), `finpulse_sync_bank_rate_limited_total` {bank} (429s, failures
  too), `finpulse_sync_bank_call_duration_seconds` {bank}, `finpulse_sync_rows_written_total`
  {bank, table, change} (rows a committed sync inserted, updated or deleted) and
  `finpulse_sync_jobs_total` {bank, outcome} (succeeded, retry, failed, needs_reconsent).
- dashboard: `finpulse_dashboard_cache_hits_total` {level: redis, table} and
  `finpulse_dashboard_cache_misses_total` {reason: stale (no fresh entry), force_refresh}.
"""
from __future__ import annotations

import functools
import logging
import socket
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, Counter, Histogram, make_wsgi_app, start_http_server
from prometheus_client.exposition import choose_encoder

from svclib import ports

log = logging.getLogger("svclib.metrics")

#: Latency buckets (seconds) of requests, RPCs and bank calls: 1 ms to 30 s.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# ------------------------------------------------------------------------------------------- gateway

GATEWAY_REQUESTS = Counter(
    "finpulse_gateway_requests_total", "HTTP requests the gateway answered, by route template, method and status.",
    ["route", "method", "status"])
GATEWAY_LATENCY = Histogram(
    "finpulse_gateway_request_duration_seconds", "Latency of the gateway's HTTP requests, by route template "
    "and method.", ["route", "method"], buckets=LATENCY_BUCKETS)

GATEWAY_RESPONSE_CACHE_HITS = Counter(
    "finpulse_gateway_response_cache_hits_total", "GET requests the gateway answered from its response cache "
    "(replies a service marked reusable, e.g. the cached dashboard), by route template.", ["route"])

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


# ------------------------------------------------------------------------------------------- services

RPC_REQUESTS = Counter(
    "finpulse_rpc_requests_total", "RPCs a service handled, by service, method and gRPC status code.",
    ["service", "method", "code"])
RPC_LATENCY = Histogram(
    "finpulse_rpc_duration_seconds", "Latency of the RPCs a service handled, by service and method.",
    ["service", "method"], buckets=LATENCY_BUCKETS)

# ------------------------------------------------------------------------------------------- sync

BANK_CALLS = Counter(
    "finpulse_sync_bank_calls_total", "HTTP exchanges of sync_svc with a bank (each retry counts), by bank and "
    "client operation.", ["bank", "operation"])
BANK_CALL_FAILURES = Counter(
    "finpulse_sync_bank_call_failures_total", "Bank exchanges of sync_svc without a 2xx answer; reason is the HTTP "
    "status or 'transport' (connection error, timeout).", ["bank", "operation", "reason"])
BANK_RATE_LIMITED = Counter(
    "finpulse_sync_bank_rate_limited_total", "Bank exchanges of sync_svc answered 429 Too Many Requests.", ["bank"])
BANK_CALL_LATENCY = Histogram(
    "finpulse_sync_bank_call_duration_seconds", "Latency of sync_svc's bank exchanges, by bank.", ["bank"],
    buckets=LATENCY_BUCKETS)
SYNC_ROWS_WRITTEN = Counter(
    "finpulse_sync_rows_written_total", "Rows a committed sync changed, by bank, table and change "
    "(inserted, updated, deleted).", ["bank", "table", "change"])
SYNC_JOBS = Counter(
    "finpulse_sync_jobs_total", "Sync job runs by bank and outcome (succeeded, retry, failed, needs_reconsent).",
    ["bank", "outcome"])

# ------------------------------------------------------------------------------------------- dashboard

DASHBOARD_CACHE_HITS = Counter(
    "finpulse_dashboard_cache_hits_total", "Dashboards served from the cache, by level (redis, table).", ["level"])
DASHBOARD_CACHE_MISSES = Counter(
    "finpulse_dashboard_cache_misses_total", "Dashboards computed, by reason (stale: no fresh cache entry; "
    "force_refresh).", ["reason"])


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


def observe_bank_call(bank: str, operation: str, http_status: int | None, seconds: float) -> None:
    """One HTTP exchange of sync_svc with a bank; `http_status` None: no answer (transport error)."""
    BANK_CALLS.labels(bank, operation).inc()
    BANK_CALL_LATENCY.labels(bank).observe(seconds)
    if http_status is None or http_status >= 300:
        BANK_CALL_FAILURES.labels(bank, operation, "transport" if http_status is None else str(http_status)).inc()
    if http_status == 429:
        BANK_RATE_LIMITED.labels(bank).inc()


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
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the stdlib's name)
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
