"""The layout rules the code keeps (read from the source, no process started).

- A service never imports another service's code: what two services need lives in a shared pure package
  (`finance/`), and a service reaches another one over gRPC only.
- `finance/` is pure: the standard library, itself, and (in its one proto converter) the generated
  protobuf messages; never grpc, a database, a cache, an HTTP client or svclib.
- In a service split into its parts (a `peers.py`), only `peers.py` calls other services
  (`clients.<service>`), and `servicer.py` is proto <-> domain only: no clients, no wiring.
"""
from __future__ import annotations

import ast
import pathlib
import re
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SERVICES = ("onboarding_svc", "consent_svc", "sync_svc", "dashboard_svc")


def _imports(path: pathlib.Path) -> set[str]:
    """The modules a file imports (absolute names; relative imports are not used in this code base)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def _sources(folder: str) -> list[pathlib.Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("service", SERVICES)
def test_no_service_imports_another_service(service):
    others = tuple(s for s in SERVICES if s != service)
    wrong = {f"{path.relative_to(ROOT)}: {name}" for path in _sources(service) for name in _imports(path)
             if name.split(".")[0] in others}
    assert not wrong, sorted(wrong)


def test_finance_is_pure():
    allowed = set(sys.stdlib_module_names) | {"finance"}
    for path in _sources("finance"):
        for name in _imports(path):
            top = name.split(".")[0]
            if path.name == "protoconv.py" and re.fullmatch(r"finpulse\.\w+\.v1(\.\w+_pb2)?", name):
                assert not name.endswith("_grpc"), name
                continue
            assert top in allowed, f"{path.relative_to(ROOT)} imports {name}"


@pytest.mark.parametrize("service", [s for s in SERVICES if (ROOT / s / "peers.py").exists()])
def test_only_peers_call_other_services_and_the_servicer_maps_protos(service):
    for path in _sources(service):
        if path.name != "peers.py":
            calls = re.findall(r"\bclients\.stub\(|\bclients\.(?:onboarding|consent|sync|dashboard)\b", path.read_text())
            assert not calls, f"{path.relative_to(ROOT)} calls {calls}: clients of other services live in peers.py"
    servicer = _imports(ROOT / service / "servicer.py")
    for module in ("svclib.clients", "svclib.runtime", "svclib.server", f"{service}.peers", f"{service}.wiring"):
        assert module not in servicer, f"{service}/servicer.py imports {module}: it maps protos only"
    assert (ROOT / service / "wiring.py").exists()
    main = (ROOT / service / "__main__.py").read_text()
    assert f"from {service}.wiring import setup" in main
