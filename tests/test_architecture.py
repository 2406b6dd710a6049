"""The layout rules the code keeps (read from the source, no process started).

- A service never imports another service's code: what two services need lives in a shared pure package
  (`finance/`), and a service reaches another one over gRPC only.
- `finance/` is pure: the standard library, itself, and (in its one proto converter) the generated
  protobuf messages; never grpc, a database, a cache, an HTTP client or svclib.
- In a service split into its parts (a `peers.py`), only `peers.py` calls other services
  (`clients.stub(...)`), and `servicer.py` is proto <-> domain only: no clients, no wiring.
- `svclib` is plumbing: it imports no service, no gateway, no generated stubs of the suite's services
  (`finpulse.*`) and defines no service's metrics; `bankapi` is configured by its caller and imports
  no svclib (nor any service).
- The top-level packages import each other without a cycle (the gateway never imports deploy, which
  runs it).
- No source file (outside tests/ and the generated gen/) is over 500 lines.
- The acting user reaches a service's code one way: the interceptor's verified statement
  (`svclib.internal_auth.acting_user()` in a servicer); no service module reads the context
  variable the interceptor sets.
"""

from __future__ import annotations

import ast
import pathlib
import re
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SERVICES = ("onboarding_svc", "consent_svc", "sync_svc", "dashboard_svc")
#: The repository's own top-level packages (tests/ aside).
PACKAGES = tuple(sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").exists() and p.name != "tests"))
MAX_LINES = 500


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
    wrong = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in _sources(service)
        for name in _imports(path)
        if name.split(".")[0] in others
    }
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
            calls = re.findall(
                r"\bclients\.stub\(|\bclients\.(?:onboarding|consent|sync|dashboard)\b", path.read_text()
            )
            assert not calls, f"{path.relative_to(ROOT)} calls {calls}: clients of other services live in peers.py"
    servicer = _imports(ROOT / service / "servicer.py")
    for module in ("svclib.clients", "svclib.runtime", "svclib.server", f"{service}.peers", f"{service}.wiring"):
        assert module not in servicer, f"{service}/servicer.py imports {module}: it maps protos only"
    assert (ROOT / service / "wiring.py").exists()
    main = (ROOT / service / "__main__.py").read_text()
    assert f"from {service}.wiring import setup" in main


def _top(name: str) -> str:
    return name.split(".")[0]


def test_svclib_is_plumbing():
    for path in _sources("svclib"):
        for name in _imports(path):
            where = f"{path.relative_to(ROOT)} imports {name}"
            assert _top(name) not in (*SERVICES, "gateway", "deploy", "bank_sandbox"), where
            assert _top(name) != "finpulse", f"{where}: the stubs a caller needs are created in its own peers.py"
    metrics = (ROOT / "svclib" / "metrics.py").read_text()
    names = re.findall(r"\"(finpulse_\w+)\"", metrics)
    # What every service shares: its RPCs, its health status, its database pool (svclib.runtime).
    shared = ("finpulse_rpc_", "finpulse_service_serving", "finpulse_db_pool_")
    assert names and all(n.startswith(shared) for n in names), (
        f"svclib/metrics.py defines {names}: each service (and the gateway) owns its own metrics"
    )


def test_bankapi_is_configured_by_its_caller():
    for path in _sources("bankapi"):
        for name in _imports(path):
            assert _top(name) not in ("svclib", "finance", "finpulse", "gateway", "deploy", *SERVICES), (
                f"{path.relative_to(ROOT)} imports {name}"
            )


def _package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for package in PACKAGES:
        graph[package] = {
            _top(name)
            for path in _sources(package)
            for name in _imports(path)
            if _top(name) in PACKAGES and _top(name) != package
        }
    return graph


def test_no_import_cycle_among_top_level_packages():
    graph = _package_graph()
    assert "deploy" not in graph["gateway"], "gateway imports deploy, which runs the gateway"
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for package in PACKAGES:
        if package not in state:
            visit(package)


def test_no_source_file_is_over_the_limit():
    sources = [p for package in PACKAGES for p in _sources(package)]
    assert len(sources) > 50
    long = {str(p.relative_to(ROOT)): n for p in sources if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these along their seams (at most {MAX_LINES} lines): {long}"


@pytest.mark.parametrize("service", SERVICES)
def test_services_read_the_user_from_the_interceptor_only(service):
    wrong = [str(p.relative_to(ROOT)) for p in _sources(service) if re.search(r"\buser_id_var\b", p.read_text())]
    assert not wrong, f"{wrong}: the acting user is svclib.internal_auth.acting_user(), read in the servicer"
