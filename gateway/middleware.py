"""The gateway's one aiohttp middleware, `gateway(origins)`: request context (with metrics), CORS, errors,
in that order from the outside in. One layer, not three: every aiohttp middleware wraps every request in
a call chain of its own, a cost the cached dashboard pays on each request (README, Benchmarks).

- request context: the request id (a sane incoming `X-Request-Id`, else a new one) lives in
  `svclib.logging.request_id_var` for the whole request, so log lines and outgoing gRPC metadata
  carry it; it is echoed in the response header; every request is counted in the Prometheus
  metrics (count and latency by route template, `gateway.metrics`) and gets one JSON access line on
  the `gateway.access` logger.
- CORS: for the configured origins only (credentials, every method, every header, as the seed
  allowed); preflights are answered here, before routing.
- errors: every failure becomes a JSON error body (see `gateway.errors`); an unexpected exception is
  logged with its traceback and answered 500 with a generic message.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable

import grpc
from aiohttp import web

from gateway import metrics as gateway_metrics
from gateway.errors import ApiError, bad_request, internal_error
from svclib.logging import new_request_id, request_id_var

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REQUEST_ID_HEADER = "X-Request-Id"
#: Key of the request dict where a handler records the route template for the access log.
ROUTE_TEMPLATE = web.RequestKey("route_template", str) if hasattr(web, "RequestKey") else "route_template"
#: The body size limit the app was created with (aiohttp's client_max_size).
MAX_BODY_BYTES = web.AppKey("max_body_bytes", int)
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
_CORS_METHODS = "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT"
_CORS_MAX_AGE = "600"

access_log = logging.getLogger("gateway.access")
log = logging.getLogger("gateway")


def _route_template(request: web.Request) -> str:
    if ROUTE_TEMPLATE in request:
        return request[ROUTE_TEMPLATE]
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "<unmatched>"


def _observe(request: web.Request, status: int, elapsed: float) -> None:
    """Count the answered request in the metrics and write its access line."""
    route = _route_template(request)
    gateway_metrics.observe_gateway(route, request.method, status, elapsed)
    if access_log.isEnabledFor(logging.INFO):
        access_log.info(
            "%s %s %s",
            request.method,
            route,
            status,
            extra={"method": request.method, "route": route, "status": status, "latency_ms": round(elapsed * 1000, 2)},
        )


def gateway(origins: Iterable[str]) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """The gateway's middleware (see the module's docstring): request id, metrics and access line around
    CORS around the errors' JSON answers; error answers are counted and logged with their real status."""
    allowed = frozenset(origins)

    @web.middleware
    async def gateway_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        request_id = incoming if _SANE_REQUEST_ID.fullmatch(incoming) else new_request_id()
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        try:
            origin = request.headers.get("Origin")
            if origin is None:
                response = await _answer(request, handler)
            else:
                response = await _cors_answer(request, handler, origin, allowed)
            status = response.status
            if not response.prepared:
                response.headers[REQUEST_ID_HEADER] = request_id
            return response
        except web.HTTPException as exc:  # a redirect or the like, raised past the error handling
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = 499  # the client went away
            raise
        finally:
            _observe(request, status, time.perf_counter() - started)
            request_id_var.reset(token)

    return gateway_middleware


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as a JSON error response (see `gateway.errors`); never a traceback."""
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # redirects and the like are responses, not errors
        response = _from_http_exception(exc, request).response()
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, _route_template(request))
        return internal_error().response()


async def _cors_answer(
    request: web.Request, handler: Handler, origin: str, allowed: frozenset[str]
) -> web.StreamResponse:
    """CORS for exactly the allowed origins around `_answer`: preflights answered here, before routing;
    requests from other origins get no CORS headers."""
    is_preflight = request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers
    if origin not in allowed:
        if is_preflight:
            return ApiError(
                grpc.StatusCode.PERMISSION_DENIED, f"origin {origin} is not allowed", reason="ORIGIN_NOT_ALLOWED"
            ).response()
        response = await _answer(request, handler)
    elif is_preflight:
        response = web.Response(status=204)
        response.headers["Access-Control-Allow-Methods"] = _CORS_METHODS
        requested = request.headers.get("Access-Control-Request-Headers")
        if requested:
            response.headers["Access-Control-Allow-Headers"] = requested
        response.headers["Access-Control-Max-Age"] = _CORS_MAX_AGE
    else:
        response = await _answer(request, handler)
        response.headers["Access-Control-Expose-Headers"] = REQUEST_ID_HEADER
    if origin in allowed:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Credentials"] = "true"
    response.headers.add("Vary", "Origin")
    return response


def too_large(limit: int | None) -> ApiError:
    """The 413 answer to a body over the configured limit."""
    return bad_request(
        "request body is too large" + (f" (limit {limit} bytes)" if limit else ""),
        http=413,
        reason="REQUEST_TOO_LARGE",
        metadata={"limit": limit},
    )


def _from_http_exception(exc: web.HTTPException, request: web.Request) -> ApiError:
    if exc.status == 404:
        return ApiError(
            grpc.StatusCode.NOT_FOUND, f"no endpoint {request.method} {request.path}", reason="ROUTE_NOT_FOUND"
        )
    if exc.status == 405:
        return ApiError(
            grpc.StatusCode.UNIMPLEMENTED,
            f"method {request.method} is not allowed on {request.path}",
            http=405,
            reason="METHOD_NOT_ALLOWED",
        )
    if exc.status == 413:
        return too_large(request.app.get(MAX_BODY_BYTES))
    if exc.status < 500:
        return bad_request(exc.reason, http=exc.status)
    return internal_error()
