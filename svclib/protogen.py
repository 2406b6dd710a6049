"""Generate Python protobuf + gRPC code from protos/ (the one code-generation entry point).

Usage: python -m svclib.protogen --out gen protos/finpulse/.../*.proto
The google/api and google/rpc protos come from googleapis-common-protos, google/protobuf from grpcio-tools.

Besides the Python modules, it writes `<out>/finpulse_descriptor_set.binpb`: a `FileDescriptorSet` of the given
protos with their source info (the comments), which the generated modules do not keep; the gateway's
OpenAPI document (`gateway/openapi/`) takes its descriptions from it.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import google.api

# grpc_tools (grpcio-tools, the code generator) is imported where code is generated, not here: the
# gateway reads DESCRIPTOR_SET at run time, in an image that ships no code generator.

#: File name (under the output folder) of the descriptor set with source info.
DESCRIPTOR_SET = "finpulse_descriptor_set.binpb"


def include_paths() -> list[str]:
    googleapis_root = pathlib.Path(google.api.__path__[0]).parent.parent
    import grpc_tools

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
    cmd = [
        "protoc",
        *(f"-I{p}" for p in include_paths()),
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        f"--descriptor_set_out={out / DESCRIPTOR_SET}",
        "--include_source_info",
        *files,
    ]
    from grpc_tools import protoc

    rc = protoc.main(cmd)
    if rc != 0:
        print(f"protoc failed with exit code {rc}", file=sys.stderr)
    return rc


PROTOS_ROOT = pathlib.Path(__file__).resolve().parent.parent / "protos"


def compile_descriptor_set(path: str | pathlib.Path) -> int:
    """Compile every proto under protos/ into a descriptor set with source info at `path`, without
    generating code: what the protos say now, to compare with what the generated code serves."""
    files = sorted(str(p.relative_to(PROTOS_ROOT)) for p in PROTOS_ROOT.rglob("*.proto"))
    includes = [str(PROTOS_ROOT), *include_paths()[1:]]
    from grpc_tools import protoc

    return protoc.main(
        ["protoc", *(f"-I{p}" for p in includes), f"--descriptor_set_out={path}", "--include_source_info", *files]
    )


if __name__ == "__main__":
    sys.exit(main())
