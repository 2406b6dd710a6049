"""An OTLP/HTTP trace receiver that counts and drops what it gets: for measuring what tracing on costs.

    python -m bench._otlp_sink [--port 4318] &
    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 python -m bench.transcode

Every process of the benchmark's suite inherits the variable and so traces (svclib.tracing), exporting
its spans here; this process's CPU is not counted as the suite's. `POST /v1/traces` answers at once,
`GET /spans` says how many spans arrived; the count is printed on exit (SIGTERM or Ctrl-C) too.
"""

from __future__ import annotations

import argparse

from aiohttp import web
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

SPANS = web.AppKey("spans", list)


async def export(request: web.Request) -> web.Response:
    body = trace_service_pb2.ExportTraceServiceRequest.FromString(await request.read())
    request.app[SPANS][0] += sum(len(scope.spans) for spans in body.resource_spans for scope in spans.scope_spans)
    answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
    return web.Response(body=answer, content_type="application/x-protobuf")


async def spans(request: web.Request) -> web.Response:
    return web.Response(text=str(request.app[SPANS][0]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=4318)
    args = parser.parse_args(argv)
    app = web.Application(client_max_size=64 << 20)
    app[SPANS] = [0]
    app.router.add_post("/v1/traces", export)
    app.router.add_get("/spans", spans)
    try:
        web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)
    finally:
        print(f"otlp sink: {app[SPANS][0]} spans received", flush=True)


if __name__ == "__main__":
    main()
