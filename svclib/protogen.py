"""Generate Python protobuf + gRPC code from protos/ (the one code-generation entry point).

Usage: python -m svclib.protogen --out gen protos/finpulse/.../*.proto
The google/api and google/rpc protos come from googleapis-common-protos, google/protobuf from grpcio-tools.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import google.api
import grpc_tools
from grpc_tools import protoc


def include_paths() -> list[str]:
    googleapis_root = pathlib.Path(google.api.__path__[0]).parent.parent
    grpc_tools_include = pathlib.Path(grpc_tools.__path__[0]) / "_proto"
    return ["protos", str(googleapis_root), str(grpc_tools_include)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("protos", nargs="+")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = [str(pathlib.Path(p).relative_to("protos")) if p.startswith("protos/") else p for p in args.protos]
    cmd = ["protoc", *(f"-I{p}" for p in include_paths()),
           f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", *files]
    rc = protoc.main(cmd)
    if rc != 0:
        print(f"protoc failed with exit code {rc}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
