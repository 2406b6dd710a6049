"""The grpc.aio server every service runs: health, reflection, interceptors, graceful shutdown.

- `grpc.health.v1` through grpc's aio HealthServicer: NOT_SERVING until the service's database and
  Redis answer, SERVING after, NOT_SERVING again from the first moment of shutdown.
- Server reflection, so `grpcurl list/describe` work.
- One interceptor that verifies the caller's signed statement (svclib.internal_auth: UNAUTHENTICATED
  without a valid one, except for health and reflection), sets the request id (metadata
  `x-request-id`, or a new one), the statement's user and the language (`x-language`) into context
  variables, maps domain errors to status codes (an unexpected
  exception becomes INTERNAL with a generic message; the traceback goes to the log only), writes
  one JSON access-log line per call and counts it in the Prometheus metrics (`svclib.metrics`: per
  method and code, with its latency).
- SIGTERM/SIGINT → health NOT_SERVING, `server.stop(grace)`, then the caller's cleanup.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Awaitable, Callable, Iterable

import asyncpg
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from svclib import i18n, limits, metrics, ports
from svclib.errors import DomainError
from svclib.internal_auth import METADATA_KEY as AUTH_METADATA, Caller, InvalidStatement, Verifier, is_open
from svclib.resilience import RETRY_AFTER_SECONDS, is_unavailable
from svclib.logging import new_request_id, request_id_var, user_id_var

log = logging.getLogger("svclib.server")

_UNSTORABLE_TEXT = (asyncpg.exceptions.CharacterNotInRepertoireError,
                    asyncpg.exceptions.UntranslatableCharacterError)
access_log = logging.getLogger("svclib.access")


def _status_code(name: str) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, name, grpc.StatusCode.UNKNOWN)


# Codes of a failed downstream call that are passed on as they are (a timeout becomes UNAVAILABLE).
_DOWNSTREAM_CODES = {
    code: code for code in (
        grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED)
} | {grpc.StatusCode.DEADLINE_EXCEEDED: grpc.StatusCode.UNAVAILABLE}


def _refuse(handler, message: str):
    """A handler that answers UNAUTHENTICATED (same shape as `handler`)."""
    async def refuse(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def refuse_stream(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - a generator, never reached

    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(refuse_stream, request_deserializer=handler.request_deserializer,
                                                    response_serializer=handler.response_serializer)
    return grpc.unary_unary_rpc_method_handler(refuse, request_deserializer=handler.request_deserializer,
                                               response_serializer=handler.response_serializer)


#: Trailing metadata of an UNAVAILABLE answer: seconds to wait before retrying (the gateway's Retry-After).
RETRY_AFTER_METADATA = "retry-after"
#: Longest error message a service sends (status details travel in headers, which have a size limit; a
#: message echoing a huge input would turn into RESOURCE_EXHAUSTED on the way).
MAX_MESSAGE = 1000


def bounded_message(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE - 1] + "…"


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    """Caller verification, request id + user context, domain error mapping and access log for every RPC."""

    def __init__(self, verifier: Verifier):
        self.verifier = verifier

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        metadata = dict(handler_call_details.invocation_metadata or ())
        method = handler_call_details.method
        caller = None
        if not is_open(method):
            try:
                caller = self.verifier.verify(metadata.get(AUTH_METADATA))
            except InvalidStatement as exc:
                metrics.observe_rpc(method, grpc.StatusCode.UNAUTHENTICATED.name, 0.0)
                access_log.warning("rpc refused", extra={"rpc": method, "code": "UNAUTHENTICATED",
                                                         "reason": str(exc)})
                return _refuse(handler, str(exc))
        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary_unary(request, context):
                with _CallScope(method, metadata, context, caller) as scope:
                    await scope.check_limits(request)
                    await scope.check_user(request)
                    return await scope.guard(inner(request, context))

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        if handler.unary_stream:
            inner_stream = handler.unary_stream

            async def unary_stream(request, context):
                with _CallScope(method, metadata, context, caller) as scope:
                    await scope.check_limits(request)
                    await scope.check_user(request)
                    async for item in scope.guard_stream(inner_stream(request, context)):
                        yield item

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        return handler


class _CallScope:
    def __init__(self, method: str, metadata: dict, context: grpc.aio.ServicerContext, caller: Caller | None):
        self.method = method
        self.context = context
        request_id = metadata.get("x-request-id") or ""
        self.request_id = request_id if 0 < len(request_id) <= 128 else new_request_id()
        # The acting user comes from the verified statement only (an x-user-id header proves nothing).
        self.user_id = caller.user if caller is not None else None
        language = metadata.get(i18n.METADATA_KEY)
        self.language = language if language and i18n.supported(language) else None
        self.code = grpc.StatusCode.OK

    def __enter__(self):
        self.started = time.perf_counter()
        self.tokens = (request_id_var.set(self.request_id), user_id_var.set(self.user_id),
                       i18n.language_var.set(self.language))
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is not None and self.code == grpc.StatusCode.OK:
            self.code = self.context.code() or grpc.StatusCode.UNKNOWN
            if isinstance(exc, asyncio.CancelledError):
                self.code = grpc.StatusCode.CANCELLED
        elif self.code == grpc.StatusCode.OK:
            self.code = self.context.code() or grpc.StatusCode.OK  # a servicer's own set_code()
        elapsed = time.perf_counter() - self.started
        metrics.observe_rpc(self.method, self.code.name, elapsed)
        if self.method.startswith("/grpc.health.v1.Health/") and self.code == grpc.StatusCode.OK:
            pass  # probes every few seconds: not worth a log line each
        else:
            access_log.info("rpc", extra={
                "rpc": self.method, "code": self.code.name, "latency_ms": round(elapsed * 1000, 2)})
        request_id_var.reset(self.tokens[0])
        user_id_var.reset(self.tokens[1])
        i18n.language_var.reset(self.tokens[2])
        return False

    async def check_limits(self, request) -> None:
        """The contract's size limits (svclib.limits), before any servicer sees the request."""
        found = limits.problems(request)
        if found:
            self.code = grpc.StatusCode.INVALID_ARGUMENT
            await self.context.abort(self.code, bounded_message("; ".join(reason for _, reason in found)))

    async def check_user(self, request) -> None:
        """A call made for a user (`x-user-id`) may only name that user in its `user_id` field."""
        named = getattr(request, "user_id", None)
        if self.user_id and named and named != self.user_id:
            self.code = grpc.StatusCode.PERMISSION_DENIED
            await self.context.abort(self.code, "user_id does not match the calling user")

    async def _fail(self, exc: Exception):
        if is_unavailable(exc):
            # The database (or the network to it) is away for now: the caller should retry, not report a bug.
            self.code = grpc.StatusCode.UNAVAILABLE
            log.warning("database unavailable", extra={"rpc": self.method, "error": repr(exc)})
            await self.context.abort(self.code, "the service's database is unavailable; retry in a moment",
                                     trailing_metadata=((RETRY_AFTER_METADATA, str(RETRY_AFTER_SECONDS)),))
        if isinstance(exc, _UNSTORABLE_TEXT):
            # Text Postgres refuses (NUL, or not encodable): the caller's input, not our failure.
            self.code = grpc.StatusCode.INVALID_ARGUMENT
            await self.context.abort(self.code, "a text value contains a character that cannot be stored "
                                                "(such as NUL, U+0000)")
        if isinstance(exc, DomainError):
            self.code = _status_code(exc.code)
            await self.context.abort(self.code, bounded_message(exc.message))
        if isinstance(exc, grpc.aio.AioRpcError):
            # A call to another service failed: pass its verdict on, without its debug string.
            self.code = _DOWNSTREAM_CODES.get(exc.code(), grpc.StatusCode.INTERNAL)
            log.warning("downstream call failed", extra={"code": exc.code().name, "details": exc.details()})
            message = exc.details() if self.code != grpc.StatusCode.UNAVAILABLE else "a backing service is unavailable"
            await self.context.abort(self.code, message or "downstream error")
        log.exception("unhandled error in %s", self.method)
        self.code = grpc.StatusCode.INTERNAL
        await self.context.abort(self.code, "internal error (see the service log for this request id)")

    async def guard(self, awaitable: Awaitable):
        try:
            return await awaitable
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 - the boundary: nothing unexpected leaks to the client
            await self._fail(exc)

    async def guard_stream(self, stream):
        try:
            async for item in stream:
                yield item
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001
            await self._fail(exc)


class GrpcServer:
    """A grpc.aio server with health and reflection; register servicers, then `run()`."""

    def __init__(self, name: str, host: str, port: int, grace: float, verifier: Verifier):
        self.name = name
        self.address = f"{host}:{port}"
        self.grace = grace
        # Connections are recycled every few minutes (clients reconnect at once, in-flight calls get a
        # grace), so clients re-resolve their target and new replicas behind a headless Service get
        # their share of the calls.
        # SO_REUSEPORT only on a port the parent holds for this process (svclib.ports): elsewhere a
        # second server on the same port must fail, not share it.
        reuse = 1 if ports.is_reserved(port) else 0
        self.server = grpc.aio.server(interceptors=[ServiceInterceptor(verifier)],
                                      options=[("grpc.so_reuseport", reuse),
                                               ("grpc.max_connection_age_ms", 5 * 60 * 1000),
                                               ("grpc.max_connection_age_grace_ms", 30 * 1000)])
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.service_names: list[str] = []

    def add(self, add_fn: Callable, servicer: object, full_name: str) -> None:
        add_fn(servicer, self.server)
        self.service_names.append(full_name)

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *self.service_names):
            await self.health.set(name, status)

    async def start(self) -> int:
        reflection.enable_server_reflection(
            (*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        await self.set_serving(False)
        port = self.server.add_insecure_port(self.address)
        if port == 0:
            raise RuntimeError(f"cannot listen on {self.address}")
        await self.server.start()
        log.info("grpc server listening", extra={"address": self.address, "services": self.service_names})
        return port

    async def stop(self) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.grace)


def install_signal_handlers(stop: asyncio.Event, signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)) -> None:
    loop = asyncio.get_running_loop()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
