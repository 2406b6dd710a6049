"""A container health probe: exit 0 when the target is healthy, 1 when it is not.

    python -m svclib.healthcheck 127.0.0.1:50053            # gRPC health (grpc.health.v1): SERVING?
    python -m svclib.healthcheck --http http://127.0.0.1:8000/readyz   # an HTTP answer below 400?
    python -m svclib.healthcheck --tcp 127.0.0.1:9101        # a port that accepts connections?

For docker-compose health checks (Kubernetes probes gRPC natively). It imports nothing of the suite
but the generated health stubs that grpcio-health-checking ships, so it starts fast and works in
every process's image. One line on stderr says why a check failed.
"""

from __future__ import annotations

import argparse
import socket
import sys
import urllib.error
import urllib.request


def check_grpc(addr: str, service: str, timeout: float) -> str | None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(addr) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as exc:
            return f"{addr}: {exc.code().name}"
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        return f"{addr}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
    return None


def check_http(url: str, timeout: float) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # a probe of our own URL
            status = resp.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError) as exc:
        return f"{url}: {exc}"
    return None if status < 400 else f"{url}: HTTP {status}"


def check_tcp(addr: str, timeout: float) -> str | None:
    host, _, port = addr.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return None
    except (OSError, ValueError) as exc:
        return f"{addr}: {exc}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m svclib.healthcheck", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("addr", nargs="?", help="host:port of a gRPC server with the health service")
    target.add_argument("--http", metavar="URL", help="an HTTP URL that must answer below 400")
    target.add_argument("--tcp", metavar="HOST:PORT", help="a TCP port that must accept connections")
    parser.add_argument("--service", default="", help="gRPC: the service name to ask about ('' = the server)")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    if args.http:
        problem = check_http(args.http, args.timeout)
    elif args.tcp:
        problem = check_tcp(args.tcp, args.timeout)
    else:
        problem = check_grpc(args.addr, args.service, args.timeout)
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
