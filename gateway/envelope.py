"""What every gateway request goes through, around its handler: request context (with metrics), CORS,
errors, in that order from the outside in.

It is not an aiohttp middleware but a wrapper put around each route's handler when the route is added
(`Envelope.add`): a middleware costs every request two more coroutines and aiohttp's per-request
middleware chain (≈ 6 µs of a cached dashboard's ≈ 80, README "The gateway's hop"), a wrapper nothing
beyond its own work. Requests no route serves reach one catch-all route (`Envelope.finish`, added
last), whose handler answers 404 or 405 (with `Allow`) as a JSON error, and CORS preflights for any
path are answered before the handler is called.

- request context: the request id (a sane incoming `X-Request-Id`, else a new one) lives in
  `svclib.logging.request_id_var` for the whole request, so log lines and outgoing gRPC metadata
  carry it; it is echoed in the response header; every request is counted in the Prometheus
  metrics (count and latency by route template, `gateway.metrics`) and gets one JSON access line on
  the `gateway.access` logger.
- CORS: for the configured origins only (credentials, every method, every header, as the seed
  allowed); preflights are answered here, before the handler.
- errors: every failure becomes a JSON error body (see `gateway.errors`); an unexpected exception is
  logged with its traceback and answered 500 with a generic message.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from time import perf_counter

import grpc
from aiohttp import web

from gateway import metrics as gateway_metrics
from gateway.errors import ApiError, bad_request, internal_error
from svclib.logging import new_request_id, request_id_var

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: A handler's answer when it has one without waiting on anything, else None (`Envelope.wrap`). It runs
#: before the request id is put in the logging context, so it must log nothing and call no service.
AnswerNow = Callable[[web.Request], web.StreamResponse | None]

REQUEST_ID_HEADER = "X-Request-Id"
#: The route template of requests no route serves, in the metrics and the access log.
UNMATCHED = "<unmatched>"
#: The body size limit the app was created with (aiohttp's client_max_size).
MAX_BODY_BYTES = web.AppKey("max_body_bytes", int)
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}").fullmatch
_CORS_METHODS = "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT"
_CORS_MAX_AGE = "600"
_CATCH_ALL = "/{_unmatched_path:.*}"

access_log = logging.getLogger("gateway.access")
log = logging.getLogger("gateway")
_observe_request = gateway_metrics.REQUESTS.observe


class Envelope:
    """Adds routes to an app with their handlers wrapped (see the module's docstring)."""

    def __init__(self, origins: Iterable[str]):
        self.allowed = frozenset(origins)

    def add(
        self,
        app: web.Application,
        method: str,
        path: str,
        handler: Handler,
        template: str | None = None,
        *,
        allow_head: bool = False,
        now: AnswerNow | None = None,
    ) -> None:
        """Route `method path` to `handler` wrapped (and HEAD too with `allow_head`, as aiohttp's
        `add_get`); `template` names the route in metrics and logs (default: `path`); `now`, when given,
        is asked first and may answer without the handler (see `wrap`)."""
        wrapped = self.wrap(handler, template or path, now)
        if allow_head:
            app.router.add_route("HEAD", path, wrapped)
        app.router.add_route(method, path, wrapped)

    def finish(self, app: web.Application) -> None:
        """Add the catch-all route (after every other route): 404, 405 and preflights as above."""
        catch_all = app.router.add_route("*", _CATCH_ALL, self.wrap(_unrouted, UNMATCHED))
        app[_CATCH_ALL_RESOURCE] = catch_all.resource

    def wrap(self, handler: Handler, template: str, now: AnswerNow | None = None) -> Handler:
        """`handler` in the envelope: request id, metrics and access line around CORS around the errors'
        JSON answers; error answers are counted and logged with their real status.

        `now(request)`, a plain function, is the handler's answer when it has one at once (a response
        from the gateway's cache), else None; only then is the handler's coroutine created and awaited.
        Whatever `now` raises is answered as the handler's errors are."""
        allowed = self.allowed
        answer = handler if now is None else _first_now(now, handler)

        async def enveloped(request: web.Request) -> web.StreamResponse:
            headers = request.headers
            incoming = headers.get(REQUEST_ID_HEADER)
            request_id = incoming if incoming is not None and _SANE_REQUEST_ID(incoming) else new_request_id()
            started = perf_counter()
            status = 500
            token = None  # set: the request id is in request_id_var (wherever anything may log or call out)
            try:
                response = None
                origin = headers.get("Origin")
                if now is not None and origin is None:
                    try:
                        response = now(request)  # logs nothing, calls nobody (AnswerNow)
                    except Exception as exc:  # noqa: BLE001 (every failure is answered; see _failure)
                        token = request_id_var.set(request_id)
                        response = _failure(request, exc, template)
                if response is None:
                    token = request_id_var.set(request_id)
                    if origin is not None:
                        response = await _cors_answer(request, answer, origin, allowed, template)
                    else:
                        try:
                            response = await handler(request)
                        except Exception as exc:  # noqa: BLE001 (every failure is answered; see _failure)
                            response = _failure(request, exc, template)
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
                elapsed = perf_counter() - started
                _observe_request(template, request.method, status, elapsed)
                if access_log.isEnabledFor(logging.INFO):
                    if token is None:
                        token = request_id_var.set(request_id)
                    _access_line(request, template, status, elapsed)
                if token is not None:
                    request_id_var.reset(token)

        enveloped.__name__ = enveloped.__qualname__ = getattr(handler, "__name__", "handler")
        enveloped.__doc__ = handler.__doc__
        return enveloped


_CATCH_ALL_RESOURCE = web.AppKey("catch_all_resource", web.AbstractResource)


def _first_now(now: AnswerNow, handler: Handler) -> Handler:
    """One handler of `now` and `handler`, for the paths that are not worth the split (CORS)."""

    async def answer(request: web.Request) -> web.StreamResponse:
        response = now(request)
        return response if response is not None else await handler(request)

    return answer


async def _unrouted(request: web.Request) -> web.StreamResponse:
    """No route serves this method and path: 405 naming the methods the path has, else 404."""
    catch_all = request.app[_CATCH_ALL_RESOURCE]
    methods: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not catch_all:
            _, allowed = await resource.resolve(request)
            methods |= allowed
    if methods:
        raise web.HTTPMethodNotAllowed(request.method, methods)
    raise web.HTTPNotFound()


def _access_line(request: web.Request, route: str, status: int, elapsed: float) -> None:
    access_log.info(
        "%s %s %s",
        request.method,
        route,
        status,
        extra={"method": request.method, "route": route, "status": status, "latency_ms": round(elapsed * 1000, 2)},
    )


def _failure(request: web.Request, exc: Exception, template: str) -> web.StreamResponse:
    """The JSON error answer of a failed handler (see `gateway.errors`); never a traceback."""
    if isinstance(exc, ApiError):
        return exc.response()
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc  # redirects and the like are responses, not errors
        response = _from_http_exception(exc, request).response()
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    log.exception("unhandled error in %s %s", request.method, template, exc_info=exc)
    return internal_error().response()


async def _answer(request: web.Request, handler: Handler, template: str) -> web.StreamResponse:
    try:
        return await handler(request)
    except Exception as exc:  # noqa: BLE001 (every failure is answered; see _failure)
        return _failure(request, exc, template)


async def _cors_answer(
    request: web.Request, handler: Handler, origin: str, allowed: frozenset[str], template: str
) -> web.StreamResponse:
    """CORS for exactly the allowed origins around the handler: preflights answered here, before the
    handler; requests from other origins get no CORS headers."""
    is_preflight = request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers
    if origin not in allowed:
        if is_preflight:
            return ApiError(
                grpc.StatusCode.PERMISSION_DENIED, f"origin {origin} is not allowed", reason="ORIGIN_NOT_ALLOWED"
            ).response()
        response = await _answer(request, handler, template)
    elif is_preflight:
        response = web.Response(status=204)
        response.headers["Access-Control-Allow-Methods"] = _CORS_METHODS
        requested = request.headers.get("Access-Control-Request-Headers")
        if requested:
            response.headers["Access-Control-Allow-Headers"] = requested
        response.headers["Access-Control-Max-Age"] = _CORS_MAX_AGE
    else:
        response = await _answer(request, handler, template)
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
