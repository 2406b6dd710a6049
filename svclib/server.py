"""The grpc.aio server every service runs: health, reflection, interceptors, graceful shutdown.

- `grpc.health.v1` through grpc's aio HealthServicer: NOT_SERVING until the service's database and
  Redis answer, SERVING after, NOT_SERVING again from the first moment of shutdown.
- Server reflection, so `grpcurl list/describe` work.
- One interceptor that verifies the caller's signed statement (svclib.internal_auth: UNAUTHENTICATED
  without a valid one, except for health and reflection), sets the request id (metadata
  `x-request-id`, or a new one), the statement's user and the language (`x-language`) into context
  variables, maps domain errors to status codes with a `google.rpc.Status` rich error (ErrorInfo with
  the error's reason and metadata, BadRequest for bad fields, RetryInfo: `svclib.rich_status`; an
  unexpected exception becomes INTERNAL with a generic message; the traceback goes to the log only), writes
  one JSON access-log line per call and counts it in the Prometheus metrics (`svclib.metrics`: per
  method and code, with its latency).
- SIGTERM/SIGINT → health NOT_SERVING, `server.stop(grace)`, then the caller's cleanup.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping

import asyncpg
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from svclib import i18n, limits, metrics, ports, rich_status
from svclib.errors import DomainError
from svclib.internal_auth import METADATA_KEY as AUTH_METADATA
from svclib.internal_auth import Caller, InvalidStatement, Verifier, is_open
from svclib.logging import new_request_id, request_id_var, user_id_var
from svclib.resilience import RETRY_AFTER_SECONDS, is_unavailable

log = logging.getLogger("svclib.server")

_UNSTORABLE_TEXT = (asyncpg.exceptions.CharacterNotInRepertoireError, asyncpg.exceptions.UntranslatableCharacterError)
access_log = logging.getLogger("svclib.access")


def _status_code(name: str) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, name, grpc.StatusCode.UNKNOWN)


# Codes of a failed downstream call that are passed on as they are (a timeout becomes UNAVAILABLE).
_DOWNSTREAM_CODES = {
    code: code
    for code in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.UNAUTHENTICATED,
    )
} | {grpc.StatusCode.DEADLINE_EXCEEDED: grpc.StatusCode.UNAVAILABLE}


async def abort(
    context: grpc.aio.ServicerContext,
    code: grpc.StatusCode,
    message: str,
    *,
    domain: str,
    reason: str | None,
    metadata: Mapping[str, object] | None = None,
    violations: Iterable[tuple[str, str]] = (),
    retry_after: float | None = None,
    details: Iterable = (),
    extra: Iterable[tuple[str, str]] = (),
) -> None:
    """End the call with `code` and a `google.rpc.Status` rich error (`svclib.rich_status`)."""
    message = bounded_message(message)
    status = rich_status.status(
        code,
        message,
        reason=reason,
        domain=domain,
        metadata=metadata,
        violations=violations,
        retry_after=retry_after,
        details=details,
    )
    await context.abort(code, message, trailing_metadata=rich_status.trailing_metadata(status, extra))


def _refuse(handler, message: str, domain: str):
    """A handler that answers UNAUTHENTICATED (same shape as `handler`)."""

    async def refuse(request, context):
        await abort(context, grpc.StatusCode.UNAUTHENTICATED, message, domain=domain, reason="CALLER_NOT_VERIFIED")

    async def refuse_stream(request, context):
        await abort(context, grpc.StatusCode.UNAUTHENTICATED, message, domain=domain, reason="CALLER_NOT_VERIFIED")
        yield  # pragma: no cover - a generator, never reached

    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            refuse_stream,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return grpc.unary_unary_rpc_method_handler(
        refuse, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
    )


#: Trailing metadata of an UNAVAILABLE answer: seconds to wait before retrying (the gateway's Retry-After).
RETRY_AFTER_METADATA = "retry-after"
#: Longest error message a service sends (status details travel in headers, which have a size limit; a
#: message echoing a huge input would turn into RESOURCE_EXHAUSTED on the way).
MAX_MESSAGE = 1000


def bounded_message(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 1] + "…"


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    """Caller verification, request id + user context, domain error mapping and access log for every RPC."""

    def __init__(self, verifier: Verifier, domain: str = "finpulse"):
        self.verifier = verifier
        self.domain = domain  # the ErrorInfo domain of this service's errors: finpulse.<service>

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
                access_log.warning("rpc refused", extra={"rpc": method, "code": "UNAUTHENTICATED", "reason": str(exc)})
                return _refuse(handler, str(exc), self.domain)
        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary_unary(request, context):
                with _CallScope(method, metadata, context, caller, self.domain) as scope:
                    await scope.check_limits(request)
                    await scope.check_user(request)
                    return await scope.guard(inner(request, context))

            return grpc.unary_unary_rpc_method_handler(
                unary_unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            inner_stream = handler.unary_stream

            async def unary_stream(request, context):
                with _CallScope(method, metadata, context, caller, self.domain) as scope:
                    await scope.check_limits(request)
                    await scope.check_user(request)
                    async for item in scope.guard_stream(inner_stream(request, context)):
                        yield item

            return grpc.unary_stream_rpc_method_handler(
                unary_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


class _CallScope:
    def __init__(
        self,
        method: str,
        metadata: dict,
        context: grpc.aio.ServicerContext,
        caller: Caller | None,
        domain: str = "finpulse",
    ):
        self.method = method
        self.domain = domain
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
        self.tokens = (
            request_id_var.set(self.request_id),
            user_id_var.set(self.user_id),
            i18n.language_var.set(self.language),
        )
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
            access_log.info(
                "rpc", extra={"rpc": self.method, "code": self.code.name, "latency_ms": round(elapsed * 1000, 2)}
            )
        request_id_var.reset(self.tokens[0])
        user_id_var.reset(self.tokens[1])
        i18n.language_var.reset(self.tokens[2])
        return False

    async def _abort(self, code: grpc.StatusCode, message: str, **rich) -> None:
        self.code = code
        await abort(self.context, code, message, domain=self.domain, **rich)

    async def check_limits(self, request) -> None:
        """The contract's size limits (svclib.limits), before any servicer sees the request."""
        found = limits.problems(request)
        if found:
            first = found[0]
            await self._abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "; ".join(reason for _, reason in found),
                reason="LIMIT_EXCEEDED",
                metadata={"field": first.field, "limit": first.limit},
                violations=found,
            )

    async def check_user(self, request) -> None:
        """A call made for a user (`x-user-id`) may only name that user in its `user_id` field."""
        named = getattr(request, "user_id", None)
        if self.user_id and named and named != self.user_id:
            await self._abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "user_id does not match the calling user",
                reason="USER_MISMATCH",
                metadata={"field": "user_id"},
            )

    async def _fail(self, exc: Exception):
        if is_unavailable(exc):
            # The database (or the network to it) is away for now: the caller should retry, not report a bug.
            log.warning("database unavailable", extra={"rpc": self.method, "error": repr(exc)})
            await self._abort(
                grpc.StatusCode.UNAVAILABLE,
                "the service's database is unavailable; retry in a moment",
                reason="DATABASE_UNAVAILABLE",
                retry_after=RETRY_AFTER_SECONDS,
                extra=((RETRY_AFTER_METADATA, str(RETRY_AFTER_SECONDS)),),
            )
        if isinstance(exc, _UNSTORABLE_TEXT):
            # Text Postgres refuses (NUL, or not encodable): the caller's input, not our failure.
            await self._abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "a text value contains a character that cannot be stored (such as NUL, U+0000)",
                reason="INVALID_CHARACTER",
            )
        if isinstance(exc, DomainError):
            extra = ()
            if exc.retry_after is not None:
                extra = ((RETRY_AFTER_METADATA, str(max(1, math.ceil(exc.retry_after)))),)
            await self._abort(
                _status_code(exc.code),
                exc.message,
                reason=exc.reason,
                metadata=exc.metadata,
                violations=exc.violations,
                retry_after=exc.retry_after,
                extra=extra,
            )
        if isinstance(exc, grpc.aio.AioRpcError):
            # A call to another service failed: pass its verdict (and its rich details) on, without its debug string.
            code = _DOWNSTREAM_CODES.get(exc.code(), grpc.StatusCode.INTERNAL)
            log.warning("downstream call failed", extra={"code": exc.code().name, "details": exc.details()})
            if code == grpc.StatusCode.UNAVAILABLE:
                await self._abort(code, "a backing service is unavailable", reason="BACKING_SERVICE_UNAVAILABLE")
            await self._abort(
                code,
                exc.details() or "downstream error",
                reason="INTERNAL" if code == grpc.StatusCode.INTERNAL else code.name,
                details=rich_status.details_of(exc) if code != grpc.StatusCode.INTERNAL else (),
            )
        log.exception("unhandled error in %s", self.method)
        await self._abort(
            grpc.StatusCode.INTERNAL, "internal error (see the service log for this request id)", reason="INTERNAL"
        )

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
        self.server = grpc.aio.server(
            interceptors=[ServiceInterceptor(verifier, f"finpulse.{name}")],
            options=[
                ("grpc.so_reuseport", reuse),
                ("grpc.max_connection_age_ms", 5 * 60 * 1000),
                ("grpc.max_connection_age_grace_ms", 30 * 1000),
            ],
        )
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
            (*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
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
