"""Ports from the OS that nobody can take before the server meant for them binds them.

A port found by binding to port 0 and closing the socket is free only at that instant: any process on
the machine may take it before the server that was told to use it binds it ("Address already in use").
Instead, whoever starts a server in another process (the launcher, a test) *reserves* its port:
`PortReservations.port()` binds a socket to port 0 with SO_REUSEPORT and keeps it open, never
listening, for as long as the server may run (restarts included). While that socket is open:

- the OS gives that port to nobody else (binding to port 0 never returns a port in use);
- a process that binds it without SO_REUSEPORT (or as another user) gets "Address already in use";
- the server it is meant for binds it too, because it binds with SO_REUSEPORT the ports named in
  `FINPULSE_RESERVED_PORTS` (`is_reserved`: the gRPC server, the gateway, the bank emulator and the
  metrics exporter ask it). Only those ports: a fixed port such as `make up`'s 50051 is bound
  exclusively, so a second suite on the same ports fails loudly instead of sharing them.
- a socket that does not listen takes no connection: every connection reaches the server.

A server in the test's own process needs none of this: it binds port 0 and reads the port back.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

RESERVED_ENV = "FINPULSE_RESERVED_PORTS"


def reserved_ports(environ: Mapping[str, str] | None = None) -> frozenset[int]:
    """The ports `FINPULSE_RESERVED_PORTS` names ("p1,p2,..."): held for this process by its parent."""
    raw = (os.environ if environ is None else environ).get(RESERVED_ENV, "")
    return frozenset(int(part) for part in raw.split(",") if part.strip().isdigit())


def is_reserved(port: int | str, environ: Mapping[str, str] | None = None) -> bool:
    """Bind `port` with SO_REUSEPORT: the parent holds it for this process (see the module docstring)."""
    try:
        return int(port) in reserved_ports(environ)
    except ValueError:
        return False


def port_of(addr: str) -> int:
    """The port of "host:port" (0 when it has none)."""
    port = addr.rpartition(":")[2]
    return int(port) if port.isdigit() else 0


class PortReservations:
    """Ports reserved on `host` until `close()` (or the end of a `with` block)."""

    def __init__(self, host: str = "127.0.0.1"):
        self.host = host
        self._sockets: list[socket.socket] = []

    def port(self, host: str | None = None) -> int:
        """A new port from the OS on `host` (default: this object's), held for a server another process
        starts."""
        host = host or self.host
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, 0))
        except BaseException:
            sock.close()
            raise
        self._sockets.append(sock)
        return sock.getsockname()[1]

    def addr(self) -> str:
        """ "host:port" on a new reserved port."""
        return f"{self.host}:{self.port()}"

    def url(self) -> str:
        """ "http://host:port" on a new reserved port."""
        return f"http://{self.host}:{self.port()}"

    @property
    def ports(self) -> list[int]:
        return [sock.getsockname()[1] for sock in self._sockets]

    def env(self, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        """`FINPULSE_RESERVED_PORTS` for a child process: these ports and those `environ` names already."""
        ports = sorted(reserved_ports(environ or {}) | set(self.ports))
        return {RESERVED_ENV: ",".join(map(str, ports))}

    def close(self) -> None:
        while self._sockets:
            self._sockets.pop().close()

    def __enter__(self) -> PortReservations:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
