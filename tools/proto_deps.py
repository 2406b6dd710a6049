"""Copy the google/* .proto files that `make gen` compiles against (the googleapis-common-protos package of the
virtualenv, as svclib.protogen finds it) into a folder buf reads as a module (buf.yaml: build/proto-deps).

    python tools/proto_deps.py build/proto-deps

buf has no network to fetch them from a registry, and this way buf checks the protos against the very files
the code is generated from. The folder is rebuilt from scratch each time.
"""

from __future__ import annotations

import pathlib
import shutil
import sys

import google.api


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = pathlib.Path(argv[1])
    root = pathlib.Path(google.api.__path__[0]).parent.parent  # the folder holding google/
    shutil.rmtree(out, ignore_errors=True)
    copied = 0
    for proto in sorted((root / "google").rglob("*.proto")):
        if proto.relative_to(root).parts[1] == "protobuf":
            continue  # the well-known types: buf has its own
        target = out / proto.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(proto, target)
        copied += 1
    if not copied:
        print(f"no .proto files under {root / 'google'}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
