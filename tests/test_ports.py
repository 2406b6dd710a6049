"""Reserved ports (svclib/ports.py): the OS gives them to nobody else, and only the server they are held
for binds them; fixed ports stay exclusive."""

from __future__ import annotations

import errno
import socket
import urllib.request

import pytest

from svclib.ports import RESERVED_ENV, PortReservations, is_reserved, reserved_ports


def _plain_bind(port: int) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))


def test_a_reserved_port_is_nobody_elses_and_refuses_connections(ports):
    port = ports.port()
    with pytest.raises(OSError) as info:
        _plain_bind(port)
    assert info.value.errno == errno.EADDRINUSE
    given = []
    try:
        for _ in range(200):  # the OS never hands it out again while it is held
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            given.append(sock)
        assert port not in {sock.getsockname()[1] for sock in given}
    finally:
        for sock in given:
            sock.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    ports.close()
    _plain_bind(port)  # released: anyone may bind it again


def test_the_environment_names_the_held_ports():
    with PortReservations() as held:
        a, b = held.port(), held.port()
        env = held.env({RESERVED_ENV: "7,8"})
        assert reserved_ports(env) == {7, 8, a, b}
        assert is_reserved(a, env) and is_reserved(str(b), env) and not is_reserved(9, env)
        assert not is_reserved("x", env) and reserved_ports({}) == frozenset()
        assert held.addr() == f"127.0.0.1:{held.ports[-1]}" and held.url().startswith("http://127.0.0.1:")


async def test_each_server_kind_binds_a_port_held_for_it(ports, monkeypatch):
    from bank_sandbox import SandboxConfig, start_banks
    from svclib import metrics
    from svclib.internal_auth import Verifier
    from svclib.server import GrpcServer

    grpc_port, bank_port, metrics_port = ports.port(), ports.port(), ports.port()
    monkeypatch.setenv(RESERVED_ENV, ports.env()[RESERVED_ENV])
    server = GrpcServer("test", "127.0.0.1", grpc_port, 0.1, Verifier("s" * 40))
    assert await server.start() == grpc_port
    await server.stop()
    banks = await start_banks(SandboxConfig(), {"vbank": bank_port})
    try:
        assert banks.urls["vbank"] == f"http://127.0.0.1:{bank_port}"
    finally:
        await banks.stop()
    exporter = metrics.start_exporter(f"127.0.0.1:{metrics_port}")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:  # noqa: ASYNC210 - the exporter serves on its own thread
            assert resp.status == 200
    finally:
        exporter.close()


async def test_a_port_not_named_reserved_is_bound_exclusively(ports, monkeypatch):
    """`make up`'s fixed ports: a second server on a port someone holds fails instead of sharing it."""
    from svclib.internal_auth import Verifier
    from svclib.server import GrpcServer

    port = ports.port()
    monkeypatch.delenv(RESERVED_ENV, raising=False)
    with pytest.raises(RuntimeError, match="bind"):
        await GrpcServer("test", "127.0.0.1", port, 0.1, Verifier("s" * 40)).start()
