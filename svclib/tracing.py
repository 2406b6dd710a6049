"""Distributed tracing with OpenTelemetry: one `setup_tracing(name)` per process, at its start.

Off unless asked for, as the standard variables ask: `OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` set, or `OTEL_TRACES_EXPORTER=otlp` (`console` prints spans to
stdout instead); `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turn it off whatever else is
set. Off, nothing is installed: no SDK provider, no instrumentation, no log hook; the OpenTelemetry API
the code calls (bankapi's spans) is its no-op.

On, the process gets an SDK tracer provider (resource `service.name` = `OTEL_SERVICE_NAME`, else the
name given: `gateway`, `sync_svc`, ...; `OTEL_RESOURCE_ATTRIBUTES` too) exporting in batches over
OTLP/HTTP (`OTEL_EXPORTER_OTLP_*`, `OTEL_BSP_*`), W3C trace context propagation (`OTEL_PROPAGATORS`,
tracecontext and baggage by default), and the maintained instrumentations of what the suite uses:
aiohttp server (the gateway's routes; spans named by route template, the URL scrubbed to it: no ids
or query values), grpc.aio server and client (every hop between the processes; health checks and
reflection are left out), asyncpg (statements without parameters) and redis (commands without
arguments). Bank calls get spans of their own (bankapi.tracing); a sync job is the root of its own
trace, linked to the request that queued it (`job_span`, `current_traceparent`). Log lines carry
`trace_id` and `span_id` (svclib.logging).

Sampling: a trace starts only at an entry point (a SERVER span: an HTTP request or an RPC, or a
CONSUMER span: a sync job) and follows its parent's decision from there; the work of background
loops (job claims, readiness pings, heartbeats) starts no trace of its own. `OTEL_TRACES_SAMPLER`
replaces this.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from svclib import logging as svc_logging

log = logging.getLogger("svclib.tracing")

_enabled = False
_tracer: Any = None

#: Gateway paths that are not worth a trace (probes and scrapes), unless OTEL_PYTHON_AIOHTTP_SERVER_EXCLUDED_URLS says.
_EXCLUDED_URLS = "^/healthz$,^/readyz$,^/metrics$"
#: Attributes of an HTTP server span that hold the concrete URL (ids in the path, query values): replaced
#: by the route template.
_URL_ATTRIBUTES = ("http.target", "http.url", "url.full", "url.path", "url.query")


def wanted(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the standard OTEL_* variables ask for traces to be exported (see the module docstring)."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = [name.strip().lower() for name in env.get("OTEL_TRACES_EXPORTER", "").split(",") if name.strip()]
    if exporters:
        return any(name in ("otlp", "console") for name in exporters)
    return bool(env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def setup_tracing(service_name: str) -> bool:
    """Install tracing for this process when the environment asks for it (see the module docstring);
    call once, before any server, channel, pool or aiohttp application is made. True when on."""
    global _enabled, _tracer
    if _enabled or not wanted():
        return _enabled
    from opentelemetry import trace
    from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient, GrpcAioInstrumentorServer, filters
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
    from opentelemetry.sdk.trace.sampling import ParentBased

    entry_points, url_scrubber = _sdk_parts()
    resource = Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME") or service_name})
    sampler = None if os.environ.get("OTEL_TRACES_SAMPLER") else ParentBased(entry_points)
    provider = TracerProvider(resource=resource, sampler=sampler)
    provider.add_span_processor(url_scrubber)
    names = [n.strip().lower() for n in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if n.strip()]
    exporters: list[SpanExporter] = []
    if "otlp" in names:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporters.append(OTLPSpanExporter())
    if "console" in names:
        exporters.append(ConsoleSpanExporter())
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # shut down (the last spans flushed) at exit

    quiet = filters.negate(
        filters.any_of(filters.service_prefix("grpc.health"), filters.service_prefix("grpc.reflection"))
    )
    GrpcAioInstrumentorServer(filter_=quiet).instrument()
    GrpcAioInstrumentorClient(filter_=quiet).instrument()
    os.environ.setdefault("OTEL_PYTHON_AIOHTTP_SERVER_EXCLUDED_URLS", _EXCLUDED_URLS)
    AioHttpServerInstrumentor().instrument()
    AsyncPGInstrumentor().instrument()
    RedisInstrumentor().instrument()

    _tracer = trace.get_tracer("finpulse")
    svc_logging.trace_ids = _current_ids
    _enabled = True
    log.info("tracing on", extra={"exporters": names, "service_name": resource.attributes.get(SERVICE_NAME)})
    return True


def _current_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current span in hex, None when there is none (svclib.logging)."""
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return trace.format_trace_id(context.trace_id), trace.format_span_id(context.span_id)


def current_traceparent() -> str | None:
    """The W3C `traceparent` of the current span (to keep with work done later), None when tracing is off
    or no span is current."""
    if not _enabled:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent")


@contextlib.contextmanager
def job_span(name: str, traceparent: str | None, attributes: Mapping[str, Any]) -> Iterator[None]:
    """A new trace for a piece of queued work (a CONSUMER span, the root of its trace), with a link to
    the span of the request that queued it (`traceparent`, from `current_traceparent()` then); what runs
    inside is its child. Nothing when tracing is off."""
    if not _enabled:
        yield
        return
    from opentelemetry import trace
    from opentelemetry.context import Context
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    links = []
    if traceparent:
        queued_by = trace.get_current_span(TraceContextTextMapPropagator().extract({"traceparent": traceparent}))
        if queued_by.get_span_context().is_valid:
            links.append(trace.Link(queued_by.get_span_context(), {"finpulse.link": "queued_by"}))
    with _tracer.start_as_current_span(
        name, context=Context(), kind=trace.SpanKind.CONSUMER, links=links, attributes=dict(attributes)
    ):
        yield


def note(attributes: Mapping[str, str | int | float | bool]) -> None:
    """Set attributes on the current span (a job's outcome, ...); nothing when tracing is off."""
    if not _enabled:
        return
    from opentelemetry import trace

    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes(dict(attributes))


def _sdk_parts() -> tuple[Any, Any]:
    """The root sampler and the URL scrubber (SDK classes, imported only when tracing is on)."""
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
    from opentelemetry.trace import SpanKind

    class EntryPoints(Sampler):
        """A trace starts at a SERVER or CONSUMER span; any other span without a parent (a background
        loop's SQL, a readiness ping) is not recorded."""

        def should_sample(
            self,
            parent_context: Any,
            trace_id: int,
            name: str,
            kind: Any = None,
            attributes: Any = None,
            links: Sequence[Any] | None = None,
            trace_state: Any = None,
        ) -> SamplingResult:
            if kind in (SpanKind.SERVER, SpanKind.CONSUMER):
                return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)
            return SamplingResult(Decision.DROP)

        def get_description(self) -> str:
            return "FinPulseEntryPoints"

    class UrlScrubber(SpanProcessor):
        """An HTTP server span's URL attributes become its route template (`/api/users/{user_id}/profile`):
        no user id, consent id or query value reaches the traces."""

        def on_start(self, span: Any, parent_context: Any = None) -> None:
            attributes = span.attributes or {}
            if not any(key in attributes for key in _URL_ATTRIBUTES):
                return
            route = attributes.get("http.route") or ""
            for key in _URL_ATTRIBUTES:
                if key in attributes:
                    span.set_attribute(key, "" if key == "url.query" else route)

    return EntryPoints(), UrlScrubber()
