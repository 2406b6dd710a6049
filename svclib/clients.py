"""gRPC client plumbing: one channel per target, request id, language, identity and deadline on every call.

`ServiceClients(settings, caller)` opens `grpc.aio` channels to the suite's services by name
(`Settings.service_addrs`) on first use and wraps the generated stubs it is handed. It imports no
service's stubs: whoever calls a peer names the generated stub class and the proto file it comes from
(`clients.stub("sync", sync_pb2_grpc.SyncServiceStub, sync_pb2.DESCRIPTOR)`), in the caller's
`peers.py` (the gateway: from its routes). Every outgoing call carries the current request id as
`x-request-id` metadata, the caller's signed statement for the current user and a deadline
(`Settings.rpc_timeout`) unless the caller sets one.

A target may name several replicas: `dns:///sync:50053` (every address the name resolves to, e.g. a
Kubernetes headless Service) or `ipv4:127.0.0.1:50053,127.0.0.1:50063`; calls are spread over them
round robin, and a replica that goes away is skipped.
"""

from __future__ import annotations

import json
from typing import Any

import grpc

from svclib import i18n
from svclib.config import Settings
from svclib.internal_auth import METADATA_KEY as AUTH_METADATA
from svclib.internal_auth import Signer
from svclib.logging import request_id_var, user_id_var

_RETRY_POLICY = {
    "maxAttempts": 3,
    "initialBackoff": "0.1s",
    "maxBackoff": "1s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}


def retry_service_config(services) -> str:
    """The channels' service config: gRPC itself retries an UNAVAILABLE call (3 attempts, backoff) only
    for methods the contract declares safe to repeat (`option idempotency_level = NO_SIDE_EFFECTS` or
    `IDEMPOTENT` in the protos). Every other method (a payment, a consent's creation at a bank) is
    sent once; its caller decides, with its idempotency key."""
    from google.protobuf import descriptor_pb2

    unknown = descriptor_pb2.MethodOptions.IDEMPOTENCY_UNKNOWN
    names = [
        {"service": service.full_name, "method": method.name}
        for service in services
        for method in service.methods
        if method.GetOptions().idempotency_level != unknown
    ]
    return json.dumps({"methodConfig": [{"name": names, "retryPolicy": _RETRY_POLICY}] if names else []})


def context_metadata(metadata=None, signer: Signer | None = None) -> tuple[tuple[str, str], ...]:
    """`metadata` plus the current request id (`x-request-id`), language (`x-language`, svclib.i18n)
    and, with a signer, the signed statement of this process acting for the current user
    (`authorization`, svclib.internal_auth) unless set."""
    items = tuple(metadata or ())
    keys = {key for key, _ in items}
    request_id = request_id_var.get()
    if request_id and "x-request-id" not in keys:
        items += (("x-request-id", request_id),)
    if signer is not None and AUTH_METADATA not in keys:
        items += (signer.metadata(user_id_var.get()),)
    language = i18n.language_var.get()
    if language and i18n.METADATA_KEY not in keys:
        items += ((i18n.METADATA_KEY, language),)
    return items


class _ContextStub:
    """A generated stub whose calls carry `context_metadata()` and a default deadline.

    A wrapper rather than a grpc.aio client interceptor: an intercepted call runs in an extra task
    with its own call objects, which costs every call a noticeable share of its CPU.
    """

    def __init__(self, stub: Any, default_timeout: float, signer: Signer):
        self._stub = stub
        self._default_timeout = default_timeout
        self._signer = signer

    def __getattr__(self, name: str):
        method = getattr(self._stub, name)
        default_timeout = self._default_timeout
        signer = self._signer

        def call(request, *, timeout: float | None = None, metadata=None, **kwargs):
            return method(
                request,
                timeout=default_timeout if timeout is None else timeout,
                metadata=context_metadata(metadata, signer),
                **kwargs,
            )

        call.__name__ = name
        self.__dict__[name] = call  # found directly from now on
        return call


def make_channel(target: str, service_config: str | None = None) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(
        target,
        options=[
            ("grpc.service_config", service_config or retry_service_config(())),
            ("grpc.enable_retries", 1),
            ("grpc.lb_policy_name", "round_robin"),
        ],
    )


class ServiceClients:
    """Channels to the suite's services by name, opened on first use, and the stubs handed to it over them."""

    def __init__(self, settings: Settings, caller: str):
        """`caller`: who this process is in the statements it signs (`gateway`, `sync`, ...)."""
        self._addrs = dict(settings.service_addrs)
        self._timeout = settings.rpc_timeout
        self.signer = Signer(settings.resolved_internal_secret(), caller)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[tuple[str, type], Any] = {}

    def channel(self, service: str, proto_file: Any = None) -> grpc.aio.Channel:
        """The channel to `service`; `proto_file` (the generated module's `DESCRIPTOR`) gives the retry
        policy of its methods (`retry_service_config`) when this call opens it."""
        if service not in self._channels:
            services = proto_file.services_by_name.values() if proto_file is not None else ()
            self._channels[service] = make_channel(self._addrs[service], retry_service_config(services))
        return self._channels[service]

    def stub(self, service: str, stub_class: type, proto_file: Any) -> Any:
        """`stub_class` (generated, e.g. `SyncServiceStub`) over the channel to `service`, its calls
        carrying `context_metadata()` and the default deadline."""
        key = (service, stub_class)
        if key not in self._stubs:
            self._stubs[key] = _ContextStub(stub_class(self.channel(service, proto_file)), self._timeout, self.signer)
        return self._stubs[key]

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        self._stubs.clear()
