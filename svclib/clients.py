"""gRPC clients of the suite's services: one channel per target, request id and deadline on every call.

`ServiceClients(settings)` gives typed stubs (`clients.consent`, `clients.sync`, ...) over lazily
created `grpc.aio` channels. Every outgoing call carries the current request id as `x-request-id`
metadata and a deadline (`Settings.rpc_timeout`) unless the caller sets one.

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
from svclib.logging import request_id_var, user_id_var

# Transient failures of idempotent reads are retried by gRPC itself (channel service config).
_SERVICE_CONFIG = json.dumps({
    "methodConfig": [{
        "name": [{}],
        "retryPolicy": {
            "maxAttempts": 3,
            "initialBackoff": "0.1s",
            "maxBackoff": "1s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }]
})


def context_metadata(metadata=None) -> tuple[tuple[str, str], ...]:
    """`metadata` plus the current request id (`x-request-id`), user (`x-user-id`) and language
    (`x-language`, svclib.i18n) unless set."""
    items = tuple(metadata or ())
    keys = {key for key, _ in items}
    request_id = request_id_var.get()
    if request_id and "x-request-id" not in keys:
        items += (("x-request-id", request_id),)
    user_id = user_id_var.get()
    if user_id and "x-user-id" not in keys:
        items += (("x-user-id", user_id),)
    language = i18n.language_var.get()
    if language and i18n.METADATA_KEY not in keys:
        items += ((i18n.METADATA_KEY, language),)
    return items


class _ContextStub:
    """A generated stub whose calls carry `context_metadata()` and a default deadline.

    A wrapper rather than a grpc.aio client interceptor: an intercepted call runs in an extra task
    with its own call objects, which costs every call a noticeable share of its CPU.
    """

    def __init__(self, stub: Any, default_timeout: float):
        self._stub = stub
        self._default_timeout = default_timeout

    def __getattr__(self, name: str):
        method = getattr(self._stub, name)
        default_timeout = self._default_timeout

        def call(request, *, timeout: float | None = None, metadata=None, **kwargs):
            return method(request, timeout=default_timeout if timeout is None else timeout,
                          metadata=context_metadata(metadata), **kwargs)

        call.__name__ = name
        self.__dict__[name] = call  # found directly from now on
        return call


def make_channel(target: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(
        target,
        options=[("grpc.service_config", _SERVICE_CONFIG), ("grpc.enable_retries", 1),
                 ("grpc.lb_policy_name", "round_robin")],
    )


def _stub_classes() -> dict[str, Any]:
    from finpulse.consent.v1 import consent_pb2_grpc
    from finpulse.dashboard.v1 import dashboard_pb2_grpc
    from finpulse.onboarding.v1 import onboarding_pb2_grpc
    from finpulse.sync.v1 import sync_pb2_grpc
    return {
        "onboarding": onboarding_pb2_grpc.OnboardingServiceStub,
        "consent": consent_pb2_grpc.ConsentServiceStub,
        "sync": sync_pb2_grpc.SyncServiceStub,
        "dashboard": dashboard_pb2_grpc.DashboardServiceStub,
    }


class ServiceClients:
    """Stubs of the suite's services by name, over channels opened on first use."""

    def __init__(self, settings: Settings):
        self._addrs = dict(settings.service_addrs)
        self._timeout = settings.rpc_timeout
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, Any] = {}
        self._classes = _stub_classes()

    def channel(self, service: str) -> grpc.aio.Channel:
        if service not in self._channels:
            self._channels[service] = make_channel(self._addrs[service])
        return self._channels[service]

    def stub(self, service: str) -> Any:
        if service not in self._stubs:
            self._stubs[service] = _ContextStub(self._classes[service](self.channel(service)), self._timeout)
        return self._stubs[service]

    @property
    def onboarding(self):
        return self.stub("onboarding")

    @property
    def consent(self):
        return self.stub("consent")

    @property
    def sync(self):
        return self.stub("sync")

    @property
    def dashboard(self):
        return self.stub("dashboard")

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        self._stubs.clear()
