"""One process of the suite and how to tell it is up. A `Child` is a command line, its environment
and its log file: started in a session of its own with FINPULSE_PARENT_PID set, so that it dies with
the process that started it (`svclib.process.die_with_parent`), then signalled and waited for. The
health checks say when a started child serves: `grpc_serving` asks a gRPC service's health service,
`port_open` whether the gateway or the bank emulator accepts connections. What the children are, and
restarting them, is `deploy.suite`'s.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import threading

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from svclib.process import PARENT_ENV

__all__ = ["Child", "grpc_serving", "port_open"]


@dataclasses.dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: str | None = None
    proc: subprocess.Popen | None = None
    wanted: bool = False  # the suite started it and has not stopped it: supervision restarts it
    spawner: int | None = None  # the thread that started the current process (it dies with that thread)

    def start(self) -> None:
        out = open(self.log_path, "ab") if self.log_path else None
        env = {**self.env, PARENT_ENV: str(os.getpid())}  # the child dies with us (svclib.process)
        self.proc = subprocess.Popen(
            self.argv,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.spawner = threading.get_ident()
        if out:
            out.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> bool:
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.3):
            return True
    except OSError:
        return False


async def grpc_serving(addr: str) -> bool:
    async with grpc.aio.insecure_channel(addr) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.aio.AioRpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING
