"""The aiohttp application of the gateway: one generic handler per annotated RPC, plus probes.

`create_app(settings, clients)` registers every unary route of `gateway.routes.build_routes()` with
the same handler shape: authenticate and rate-limit the caller (`gateway.auth.Gatekeeper`), build the
request message (`gateway.transcode`) with the caller's user bound to it (`gateway.auth.bind_user`),
call the backend stub with the configured deadline, render the reply as JSON or the gRPC status as a
JSON error. The request id and the user reach the backends as `x-request-id` / `x-user-id` metadata
through `ServiceClients`' interceptor. GET replies a service marks reusable are kept per user and
served without the backend call until the service's time or a change announcement
(`gateway.respcache`).

`GET /metrics`: the gateway's Prometheus metrics (`gateway.metrics`), unless they are served on their
own address (`FINPULSE_GATEWAY_METRICS_ADDR`, so the public port does not show them).
`GET /openapi.json` and `GET /docs`: the OpenAPI document of these routes and Swagger UI (`gateway.openapi`).

Probes: `GET /healthz` answers while the process is alive; `GET /readyz` asks every backend's
`grpc.health.v1.Health/Check` (overall status, empty service name) and answers 200 only when all
of them are SERVING, else 503 naming the ones that are not.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import hashlib
import json

import grpc
import redis.asyncio as aioredis
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway import metrics as gateway_metrics
from gateway import openapi, transcode
from gateway.auth import Gatekeeper, Principal, bind_user
from gateway.envelope import MAX_BODY_BYTES, AnswerNow, Envelope, Handler, too_large
from gateway.errors import from_rpc_error
from gateway.login import LOGIN_METHOD, LoginPolicy
from gateway.respcache import ResponseCache
from gateway.routes import Route, build_routes
from gateway.settings import GatewaySettings
from svclib import i18n
from svclib import metrics as svc_metrics
from svclib.cache import CACHE_UNTIL_METADATA, ChangeFeed
from svclib.clients import ServiceClients
from svclib.logging import user_id_var

#: Largest accepted request body; larger ones are answered 413.
DEFAULT_MAX_BODY_BYTES = 1 << 20
#: Longest request line (and header line) the HTTP parser reads, 64 KiB instead of aiohttp's 8 KiB: a query
#: with over-long values must reach the gateway, whose field limits answer it with a JSON 400 naming the
#: field (LIMIT_EXCEEDED), not be cut by the parser with a plain-text 400 (a 4-byte character is 12 bytes
#: percent-encoded, so 8 KiB is ~680 characters). Only lines longer than this get the parser's plain 400.
MAX_REQUEST_LINE_BYTES = 64 * 1024
#: Deadline of one readiness health check (capped by GatewaySettings.rpc_timeout).
READY_CHECK_TIMEOUT = 2.0
#: Deadline of a streamed (Server-Sent Events) call; the services end their streams well before.
STREAM_TIMEOUT = 15 * 60.0


class RenderedCache:
    """JSON bodies of recent replies, keyed by the reply's deterministic bytes.

    Rendering a large message to JSON (`json_format` walks it in Python) costs far more than
    serializing it (upb, in C); a service answering the same content again (a cached dashboard,
    a bank list) gets its JSON from here. Bounded LRU, per process: nothing to invalidate, since the
    key is the content itself.
    """

    def __init__(self, size: int = 512):
        self.size = size
        self._bodies: collections.OrderedDict[bytes, bytes] = collections.OrderedDict()

    def body(self, route: Route, reply) -> bytes:
        key = hashlib.blake2b(
            reply.SerializeToString(deterministic=True), digest_size=16, person=route.grpc_path.encode()[-16:]
        ).digest()
        body = self._bodies.get(key)
        if body is not None:
            self._bodies.move_to_end(key)
            return body
        body = _dumps(transcode.render(reply, route)).encode()
        self._bodies[key] = body
        if len(self._bodies) > self.size:
            self._bodies.popitem(last=False)
        return body


SETTINGS = web.AppKey("settings", GatewaySettings)
RENDERED = web.AppKey("rendered", RenderedCache)
CLIENTS = web.AppKey("clients", ServiceClients)
ROUTES = web.AppKey("routes", list)
GATEKEEPER = web.AppKey("gatekeeper", Gatekeeper)
RESPONSES = web.AppKey("responses", ResponseCache)
LOGIN = web.AppKey("login", LoginPolicy)

_dumps = functools.partial(json.dumps, ensure_ascii=False)


def create_app(
    settings: GatewaySettings,
    clients: ServiceClients | None = None,
    *,
    routes: list[Route] | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> web.Application:
    """The gateway app. Clients created here are closed on cleanup; passed-in ones are the caller's."""
    app = web.Application(client_max_size=max_body_bytes)
    envelope = Envelope(settings.cors_origins)  # what every request goes through (gateway.envelope)
    app[SETTINGS] = settings
    app[RENDERED] = RenderedCache()
    app[MAX_BODY_BYTES] = max_body_bytes
    if clients is None:
        clients = ServiceClients(settings, "gateway")
        app.on_cleanup.append(lambda _app: clients.close())
    app[CLIENTS] = clients
    redis = None
    if settings.redis_url:
        redis = aioredis.from_url(settings.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
        app.on_cleanup.append(lambda _app: redis.aclose())
    app[GATEKEEPER] = Gatekeeper(settings, redis)
    app[LOGIN] = LoginPolicy(settings)
    app[RESPONSES] = ResponseCache()
    if settings.redis_url:
        app.cleanup_ctx.append(_change_feed(settings))
    app[ROUTES] = build_routes() if routes is None else routes
    for route in app[ROUTES]:
        handler, now = (_sse_handler(route), None) if route.is_server_streaming else _handler(route, app)
        envelope.add(app, route.http_method, route.aiohttp_path, handler, route.path_template, now=now)
    envelope.add(app, "GET", "/healthz", healthz, allow_head=True)
    envelope.add(app, "GET", "/readyz", readyz, allow_head=True)
    openapi.setup(app, app[ROUTES], envelope)  # GET /openapi.json (built here, once) and GET /docs
    if settings.gateway_metrics_addr is None:  # else served on their own address (gateway.__main__)
        envelope.add(app, "GET", "/metrics", metrics_endpoint, allow_head=True)
    envelope.finish(app)  # last: what no route serves (404, 405, preflights)
    return app


def _change_feed(settings: GatewaySettings):
    """Keeps the response cache in step with the suite's change announcements (see respcache)."""

    async def context(app: web.Application):
        responses = app[RESPONSES]
        feed = ChangeFeed(settings.redis_url, settings.redis_prefix, responses.changed, responses.feed_state)
        task = asyncio.create_task(feed.run(), name="change-feed")
        yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await feed.close()

    return context


def _bound_request(route: Route, request: web.Request, principal: Principal, body: bytes):
    """The request message with the caller's user bound to it (`gateway.auth.bind_user`), then its
    required fields checked (`user_id` is REQUIRED and comes from the token); (message, the user the
    call acts for)."""
    transcode.check_content_type(route, body, request.headers)
    message = transcode.parse_request(route, body, request.query, request.match_info, headers=request.headers)
    user = bind_user(message, principal)
    transcode.check_required(message)
    return message, user


#: Codes after which a request's outcome is unknown to the client.
_OUTCOME_UNKNOWN = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)


#: What the cache-first half of a GET handler learned before it missed: (principal, language).
_ADMITTED = web.RequestKey("admitted", tuple)


def _handler(route: Route, app: web.Application) -> tuple[Handler, AnswerNow | None]:
    """The generic handler of one unary route of `app`, and for a GET its cache-first half.

    The cache-first half (`answer_now`, a plain function: `gateway.envelope`) admits the caller and
    answers from the response cache when it can, with no coroutine and no wait: the authentication
    and the rate limit decide at once (`Gatekeeper.admit_now`) unless the limit must ask Redis, and
    the language of the answer is a lookup of the request's Accept-Language. On a miss the handler
    goes on with what it learned (a caller is admitted once).
    """
    cacheable = route.http_method == "GET"
    stub_class = route.stub_class()
    is_login = route.grpc_path == LOGIN_METHOD
    keyed = "idempotency_key" in route.input_descriptor.fields_by_name
    grpc_path, template = route.grpc_path, route.path_template
    settings, gatekeeper, responses, rendered = app[SETTINGS], app[GATEKEEPER], app[RESPONSES], app[RENDERED]
    login = app[LOGIN] if is_login else None
    default_language = settings.default_language
    cache_hit = gateway_metrics.REQUESTS.cache_hit

    def answer_now(request: web.Request) -> web.Response | None:
        principal = gatekeeper.admit_now(request)
        if principal is None:  # the rate limit asks Redis: the handler waits for it
            return None
        accept_language = request.headers.get("Accept-Language")
        language = default_language if accept_language is None else i18n.negotiate(accept_language, default_language)
        body = responses.get((grpc_path, principal.user_id, request.query_string, language))
        if body is None:
            request[_ADMITTED] = (principal, language)
            return None
        cache_hit(template)
        return web.Response(body=body, content_type="application/json")

    async def handle(request: web.Request) -> web.Response:
        admitted = request.get(_ADMITTED)
        if admitted is not None:
            principal, language = admitted
        else:
            # The login route lets a token-less request through to its own policy, which says where
            # tokens come from in this mode (gateway/login.py).
            principal = await gatekeeper.admit(request, anonymous=is_login)
            language = i18n.negotiate(request.headers.get("Accept-Language"), default_language)
        if login is not None:
            login.check(principal)
        key = (grpc_path, principal.user_id, request.query_string, language) if cacheable else None
        if key is not None:
            body = responses.get(key) if admitted is None else None  # else answer_now just missed it
            if body is not None:
                cache_hit(template)
                return web.Response(body=body, content_type="application/json")
            stamp = responses.stamp()
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise too_large(request.app[MAX_BODY_BYTES]) from None
        message, user = _bound_request(route, request, principal, body)
        user_token, language_token = user_id_var.set(user), i18n.language_var.set(language)
        try:
            call = getattr(
                request.app[CLIENTS].stub(route.service_key, stub_class, route.proto_file), route.method_name
            )(message, timeout=settings.rpc_timeout)
            reply = await call
            until = _cache_until(await call.trailing_metadata()) if key is not None and user else None
        except grpc.aio.AioRpcError as exc:
            error = from_rpc_error(exc, route.service_key)
            if keyed and error.code in _OUTCOME_UNKNOWN and "Idempotency-Key" not in error.message:
                # The service may have stopped mid-request (a restart): the request may or may not have
                # been done, and repeating it with its key is always safe.
                error.message += "; repeat the request with the same Idempotency-Key: it is never done twice"
            raise error from None
        finally:
            user_id_var.reset(user_token)
            i18n.language_var.reset(language_token)
        if login is not None:
            login.complete(reply, principal, user)
            return web.json_response(transcode.render(reply, route), dumps=_dumps)
        body = rendered.body(route, reply)
        if until is not None:
            responses.put(key, user, body, until, stamp)
        return web.Response(body=body, content_type="application/json")

    handle.__name__ = handle.__qualname__ = f"handle_{route.method_name}"
    handle.__doc__ = f"{route.http_method} {route.path_template} -> {route.grpc_path}"
    return handle, (answer_now if cacheable and not is_login else None)


def _sse_handler(route: Route):
    """A server-streaming RPC as Server-Sent Events: one `data:` line of JSON per message.

    The first message is awaited before the response starts, so a bad request or a failing backend
    still gets its HTTP status and JSON error; a failure later in the stream becomes an `error` event.
    """

    stub_class = route.stub_class()

    async def handle(request: web.Request) -> web.StreamResponse:
        principal = await request.app[GATEKEEPER].admit(request)
        message, user = _bound_request(route, request, principal, await request.read())
        user_token, language_token = (
            user_id_var.set(user),
            i18n.language_var.set(
                i18n.negotiate(request.headers.get("Accept-Language"), request.app[SETTINGS].default_language)
            ),
        )
        try:
            call = getattr(
                request.app[CLIENTS].stub(route.service_key, stub_class, route.proto_file), route.method_name
            )(message, timeout=STREAM_TIMEOUT)
        finally:
            user_id_var.reset(user_token)
            i18n.language_var.reset(language_token)
        try:
            first = await call.read()
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, route.service_key) from None
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        await response.prepare(request)
        item = first
        try:
            while item is not grpc.aio.EOF:
                await response.write(f"data: {_dumps(transcode.render(item, route))}\n\n".encode())
                item = await call.read()
            await response.write(b"event: end\ndata: {}\n\n")
        except grpc.aio.AioRpcError as exc:
            error = from_rpc_error(exc, route.service_key)
            await response.write(f"event: error\ndata: {_dumps(error.body())}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            call.cancel()
            raise
        await response.write_eof()
        return response

    handle.__name__ = handle.__qualname__ = f"stream_{route.method_name}"
    handle.__doc__ = f"{route.http_method} {route.path_template} -> {route.grpc_path} (text/event-stream)"
    return handle


async def metrics_endpoint(request: web.Request) -> web.Response:
    """Prometheus metrics of the gateway process (`gateway.metrics`), in the format `Accept` asks for."""
    body, content_type = svc_metrics.render(request.headers.get("Accept"))
    return web.Response(body=body, headers={"Content-Type": content_type})


def _cache_until(metadata) -> float | None:
    """The reusable-until time a service put in the trailing metadata (Unix seconds), if any."""
    for key, value in metadata or ():
        if key == CACHE_UNTIL_METADATA:
            try:
                return int(value) / 1000.0
            except ValueError:
                return None
    return None


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process serves HTTP."""
    return web.json_response({"status": "ok"})


async def _backend_status(clients: ServiceClients, name: str, proto_file, timeout: float) -> str:
    stub = health_pb2_grpc.HealthStub(clients.channel(name, proto_file))
    try:
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        return exc.code().name  # UNAVAILABLE (down), UNIMPLEMENTED (no health service), ...
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


async def readyz(request: web.Request) -> web.Response:
    """Readiness: every backend reports SERVING on its gRPC health service."""
    settings, clients = request.app[SETTINGS], request.app[CLIENTS]
    names = list(settings.service_addrs)
    timeout = min(settings.rpc_timeout, READY_CHECK_TIMEOUT)
    proto_files = {route.service_key: route.proto_file for route in request.app[ROUTES]}
    statuses = await asyncio.gather(*(_backend_status(clients, name, proto_files.get(name), timeout) for name in names))
    services = dict(zip(names, statuses, strict=True))
    not_ready = [name for name, status in services.items() if status != "SERVING"]
    body = {"status": "not_ready" if not_ready else "ready", "services": services, "not_ready": not_ready}
    return web.json_response(body, status=503 if not_ready else 200)
