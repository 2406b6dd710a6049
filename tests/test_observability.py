"""Dashboards and alerts as code (deploy/observability/), checked with the real tools and the running suite.

- The alert rules pass `promtool check rules`, and `promtool test rules` runs a unit test per alert
  (deploy/observability/tests/alerts_test.yml: each alert fires where it should and stays quiet where it
  should not); the Kubernetes PrometheusRule holds exactly the same groups; every alert has its runbook
  line in the README.
- The Grafana dashboard is well-formed and each of its queries parses (promtool, as recording rules).
- Against the running suite after a little traffic (an onboarding with its sync, dashboards, an unknown
  route): every metric name that a dashboard query or an alert expression uses is exposed by the
  processes' exporters, and a real Prometheus scraping the suite returns data for every dashboard query.
- The metrics added for the dashboard and the alerts, on real tables: the sync backlog, payments by status
  and the open ones, the database pools, the serving status, bank call retries.

promtool and prometheus come from Debian's `prometheus` package, pinned in the Makefile: `make test` (or
`make prometheus`) unpacks them into tools/prometheus. They are required: a missing one fails the tests.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import re
import subprocess
import tempfile
import time

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e import Http, onboard

ROOT = pathlib.Path(__file__).resolve().parent.parent
OBSERVABILITY = ROOT / "deploy" / "observability"
ALERTS = OBSERVABILITY / "alerts.yml"
ALERT_TESTS = OBSERVABILITY / "tests" / "alerts_test.yml"
DASHBOARD = OBSERVABILITY / "dashboard.json"
PROMETHEUS_RULE = ROOT / "deploy" / "k8s" / "base" / "prometheus-rules.yaml"
TOOLS = ROOT / "tools" / "prometheus"
#: Series Prometheus makes itself for every target (not exported by the suite).
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
#: Metrics whose series appear only when their event happens (free-form labels, no series at 0 before):
#: the suite must declare them (HELP/TYPE), and need not have a sample yet.
EVENT_ONLY = {"finpulse_sync_bank_call_failures_total"}
#: The users of this module's traffic (emulator customers no other test takes), one per test.
USERS = ("team200-47", "team200-48")


def tool(name: str) -> str:
    path = TOOLS / name
    assert path.exists(), f"{path} is missing: `make prometheus` (make test does it) installs it"
    return str(path)


def promtool(*args: str, cwd: pathlib.Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([tool("promtool"), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expression) of every query of the dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        if panel["type"] != "row"
        for target in panel["targets"]
    ]


def as_query(expr: str, rate_interval: str = "5m") -> str:
    """A dashboard expression with Grafana's `$__rate_interval` replaced, as Grafana sends it."""
    return expr.replace("$__rate_interval", rate_interval)


# ----------------------------------------------------------------------------- PromQL metric names

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless"}
_KEYWORDS |= {"offset", "inf", "nan", "atan2"}
_HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers that are not functions or aggregations (followed
    by `(`), keywords, label names (inside `{...}`, or the lists of by/without/on/ignoring/group_*), string
    literals, durations (`[5m]`) or numbers."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries' durations
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def test_metric_names_are_read_from_promql_robustly():
    expr = (
        'histogram_quantile(0.99, sum by (route, le) (rate(a_seconds_bucket{route!="/x(y)", le=~"1|2"}[5m])))'
        " / ignoring(state) group_left(service) b_total offset 1h > bool 2.5e3"
        ' or on() vector(0) and c:recorded:rate5m unless max without (instance) (d{job="sum(e)"}[1h:30s])'
    )
    assert metric_names(expr) == {"a_seconds_bucket", "b_total", "c:recorded:rate5m", "d"}
    assert metric_names("sum(rate(x[$__rate_interval])) * 0 + scalar(y)") == {"x", "y"}
    assert metric_names("up == 0") == {"up"}


def used_metric_names() -> dict[str, set[str]]:
    """Metric name -> where it is used (alert names, dashboard panel titles)."""
    used: dict[str, set[str]] = {}
    for rule in alert_rules():
        for name in metric_names(rule["expr"]):
            used.setdefault(name, set()).add(f"alert {rule['alert']}")
    for title, expr in dashboard_queries():
        for name in metric_names(expr):
            used.setdefault(name, set()).add(f"panel {title!r}")
    return used


# -------------------------------------------------------------------------------------- promtool


def test_promtool_accepts_the_alert_rules():
    done = promtool("check", "rules", str(ALERTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in done.stdout
    # It does check: a broken expression is refused.
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as broken:
        rules = yaml.safe_load(ALERTS.read_text())
        rules["groups"][0]["rules"][0]["expr"] = "sum(rate(finpulse_gateway_requests_total[5m]) >"
        yaml.safe_dump(rules, broken)
        broken.flush()
        assert promtool("check", "rules", broken.name).returncode != 0


def test_every_alert_has_a_unit_test_that_fires_it_and_one_that_keeps_it_quiet():
    tests = yaml.safe_load(ALERT_TESTS.read_text())
    firing, quiet = set(), set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    alerts = {rule["alert"] for rule in alert_rules()}
    assert len(alerts) == len(alert_rules()), "alert names are unique"
    assert firing == alerts and quiet == alerts, (alerts - firing, alerts - quiet)
    done = promtool("test", "rules", ALERT_TESTS.name, cwd=ALERT_TESTS.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_the_prometheus_rule_for_kubernetes_holds_the_same_rules():
    doc = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert doc["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]
    kustomization = yaml.safe_load((PROMETHEUS_RULE.parent / "kustomization.yaml").read_text())
    assert PROMETHEUS_RULE.name in kustomization["resources"]


def test_every_alert_has_a_runbook_line_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    section = re.search(r"^### Alerts\n(.*?)(?=^##)", readme, re.M | re.S)
    assert section, "README.md has an Alerts section"
    for rule in alert_rules():
        entry = re.search(rf"^- `{rule['alert']}` \((page|warn)\): (.+?)(?=^- |\Z)", section.group(1), re.M | re.S)
        assert entry and len(entry.group(2)) > 100, f"{rule['alert']}: no runbook entry in README's Alerts section"
        assert entry.group(1) == rule["labels"]["severity"], rule["alert"]
        assert rule["annotations"]["runbook"] == "README.md#alerts"


def test_the_dashboard_is_well_formed_and_its_queries_parse():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    rows = [panel["title"] for panel in dashboard["panels"] if panel["type"] == "row"]
    for wanted in ("Gateway", "Services", "Sync pipeline per bank", "Caches", "Payments", "Database pools"):
        assert any(row.startswith(wanted) for row in rows), wanted
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert all(t["refId"] and t["expr"] for t in panel["targets"]), panel["title"]
    # promtool parses each query (as a recording rule): a typo in a query fails here, not on a screen.
    queries = dashboard_queries()
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"q{i}", "expr": as_query(e)} for i, (_, e) in enumerate(queries)],
            }
        ]
    }
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
        yaml.safe_dump(rules, f)
        f.flush()
        done = promtool("check", "rules", f.name)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_dashboard_shows_what_the_issue_asks_for():
    used = used_metric_names()
    for name in (
        "finpulse_gateway_requests_total",
        "finpulse_gateway_request_duration_seconds_bucket",
        "finpulse_rpc_requests_total",
        "finpulse_rpc_duration_seconds_bucket",
        "finpulse_sync_bank_calls_total",
        "finpulse_sync_bank_call_failures_total",
        "finpulse_sync_bank_rate_limited_total",
        "finpulse_sync_bank_call_retries_total",
        "finpulse_sync_jobs_active",
        "finpulse_sync_jobs_total",
        "finpulse_sync_oldest_queued_job_age_seconds",
        "finpulse_sync_rows_written_total",
        "finpulse_dashboard_cache_hits_total",
        "finpulse_consent_payments_total",
        "finpulse_db_pool_connections",
    ):
        assert any(w.startswith("panel") for w in used.get(name, ())), f"no panel shows {name}"


# ------------------------------------------------------------------------------ the running suite


def exporters(suite) -> dict[str, str]:
    """Process -> its metrics URL: the gateway's /metrics and each service's exporter."""
    urls = {"gateway": f"{suite.gateway_url}/metrics"}
    for name, addr in suite.settings.metrics_addrs.items():
        assert addr, f"{name} has no metrics exporter"
        urls[name] = f"http://{addr}/metrics"
    assert set(urls) == {"gateway", "onboarding", "consent", "sync", "dashboard"}
    return urls


async def make_traffic(suite, session: aiohttp.ClientSession, user: str) -> None:
    """An onboarding at two banks with its sync, three dashboards (a miss, a hit in the service's cache, a
    hit in the gateway's response cache) and an unknown route."""
    http = Http(session, suite.gateway_url, token=suite.token(user))
    await onboard(http, user, wait=True)
    for _ in range(3):
        status, body = await http.get("/api/dashboard", user_id=user)
        assert status == 200, body
    status, _ = await http.get("/api/no/such/route")
    assert status == 404


async def exposed(session: aiohttp.ClientSession, url: str) -> tuple[set[str], set[str]]:
    """(names declared, names with a sample) in one exporter's answer; a histogram's family declares its
    _bucket/_count/_sum series, a counter's its _total."""
    async with session.get(url) as resp:
        assert resp.status == 200, await resp.text()
        text = await resp.text()
    declared, sampled = set(), set()
    for family in text_string_to_metric_families(text):
        declared.add(family.name)
        if family.type == "counter":
            declared.add(f"{family.name}_total")
        if family.type == "histogram":
            declared |= {family.name + suffix for suffix in _HISTOGRAM_SUFFIXES}
        sampled |= {sample.name for sample in family.samples}
    return declared, sampled


async def test_every_metric_the_dashboard_and_the_alerts_use_is_exposed_by_the_suite(suite, session):
    await make_traffic(suite, session, USERS[0])
    declared, sampled = set(), set()
    for url in exporters(suite).values():
        d, s = await exposed(session, url)
        declared |= d
        sampled |= s
    used = used_metric_names()
    assert len(used) >= 20, sorted(used)
    missing = {name: sorted(where) for name, where in used.items() if name not in SYNTHETIC and name not in declared}
    assert not missing, f"used but not exported by any process: {missing}"
    unsampled = {
        name: sorted(where)
        for name, where in used.items()
        if name not in SYNTHETIC | EVENT_ONLY and name not in sampled
    }
    assert not unsampled, f"exported without a single series after the traffic: {unsampled}"
    assert used.keys() & SYNTHETIC == {"up"}


# ------------------------------------------------------------------- a real Prometheus on the suite


def _listening_port(pid: int) -> int | None:
    """The TCP port a process listens on (it bound port 0): its sockets' inodes against /proc/net/tcp."""
    inodes = set()
    for fd in pathlib.Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    for table in ("tcp", "tcp6"):
        for line in pathlib.Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                return int(fields[1].rsplit(":", 1)[1], 16)
    return None


@pytest.fixture
def prometheus(suite, tmp_path):
    """A real Prometheus scraping every process of the suite each second; yields its base URL."""
    jobs = []
    for name, url in exporters(suite).items():
        target = url.removeprefix("http://").removesuffix("/metrics")
        jobs.append({"job_name": f"finpulse-{name}", "static_configs": [{"targets": [target]}]})
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "scrape_configs": jobs}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = open(tmp_path / "prometheus.log", "w")
    proc = subprocess.Popen(
        [
            tool("prometheus"),
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            "--web.listen-address=127.0.0.1:0",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        port = None
        while port is None:
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "Prometheus did not listen within 30 s"
            time.sleep(0.2)
            port = _listening_port(proc.pid)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


async def query(session: aiohttp.ClientSession, base: str, expr: str) -> list[dict]:
    async with session.get(f"{base}/api/v1/query", params={"query": expr}) as resp:
        body = await resp.json()
    assert resp.status == 200 and body["status"] == "success", (expr, body)
    return body["data"]["result"]


async def test_a_real_prometheus_scraping_the_suite_has_data_for_every_dashboard_query(suite, session, prometheus):
    targets = len(exporters(suite))

    async def all_up() -> bool:
        result = await query(session, prometheus, 'up{job=~"finpulse-.*"} == 1')
        return len(result) == targets

    deadline = asyncio.get_running_loop().time() + 30
    while not await all_up():
        assert asyncio.get_running_loop().time() < deadline, await query(session, prometheus, "up")
        await asyncio.sleep(0.5)
    await make_traffic(suite, session, USERS[1])
    await asyncio.sleep(6)  # several scrapes after the traffic, and a backlog reading of sync_svc
    empty = []
    for title, expr in dashboard_queries():
        if not await query(session, prometheus, as_query(expr, "1m")):
            empty.append(f"{title}: {expr}")
    assert not empty, "no data:\n" + "\n".join(empty)
    # The alerts' expressions evaluate on the real series too.
    for rule in alert_rules():
        await query(session, prometheus, rule["expr"])


# ------------------------------------------------------------------- the metrics added for the dashboard


async def test_the_sync_backlog_is_read_from_the_job_table(schema_pool):
    """finpulse_sync_jobs_active and finpulse_sync_oldest_queued_job_age_seconds, from real jobs: queued
    ones count, a due one's wait is its age past run_after, one in its retry backoff is not late yet."""
    import uuid

    from prometheus_client import REGISTRY

    from sync_svc import metrics as sync_metrics
    from sync_svc.__main__ import SPEC
    from sync_svc.storage import JobStorage

    pool = await schema_pool(SPEC)
    jobs = JobStorage(pool)
    bank, idle_bank = f"obs-{uuid.uuid4().hex[:8]}", f"obs-{uuid.uuid4().hex[:8]}"  # no other test's jobs
    for user in ("u1", "u2", "u3", "u4"):
        await jobs.enqueue(user, bank, "test")
    await pool.execute("UPDATE sync_jobs SET run_after = now() - interval '90 seconds' WHERE bank_id = $1", bank)
    await pool.execute(  # u3 waits out its retry backoff; u4 is being worked on
        "UPDATE sync_jobs SET run_after = now() + interval '1 hour' WHERE bank_id = $1 AND user_id = 'u3'", bank
    )
    await pool.execute(
        "UPDATE sync_jobs SET state = 'running', lease_until = now() + interval '1 minute' "
        "WHERE bank_id = $1 AND user_id = 'u4'",
        bank,
    )
    rows = await jobs.backlog()
    ours = {(b, state): (n, waited) for b, state, n, waited in rows if b == bank}
    assert ours[(bank, "queued")][0] == 3 and ours[(bank, "running")][0] == 1
    assert 85 <= ours[(bank, "queued")][1] < 300
    sync_metrics.set_backlog([bank, idle_bank], rows)

    def value(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, labels)

    assert value("finpulse_sync_jobs_active", bank=bank, state="queued") == 3
    assert value("finpulse_sync_jobs_active", bank=bank, state="running") == 1
    assert value("finpulse_sync_jobs_active", bank=idle_bank, state="queued") == 0
    assert value("finpulse_sync_jobs_active", bank=idle_bank, state="running") == 0
    assert 85 <= value("finpulse_sync_oldest_queued_job_age_seconds", bank=bank) < 300
    assert value("finpulse_sync_oldest_queued_job_age_seconds", bank=idle_bank) == 0
    await pool.execute("DELETE FROM sync_jobs WHERE bank_id = $1", bank)


async def test_the_pool_gauges_and_the_serving_gauge(schema_pool):
    from prometheus_client import REGISTRY

    from svclib import metrics as svc_metrics
    from sync_svc.__main__ import SPEC

    pool = await schema_pool(SPEC)  # max_size 5
    svc_metrics.watch_pool("obs-test", pool)
    async with pool.acquire(), pool.acquire():
        in_use = REGISTRY.get_sample_value("finpulse_db_pool_connections", {"service": "obs-test", "state": "in_use"})
        assert in_use == 2
    assert REGISTRY.get_sample_value("finpulse_db_pool_max_connections", {"service": "obs-test"}) == 5
    assert REGISTRY.get_sample_value("finpulse_db_pool_connections", {"service": "obs-test", "state": "in_use"}) == 0
    svc_metrics.set_serving("obs-test", False)
    assert REGISTRY.get_sample_value("finpulse_service_serving", {"service": "obs-test"}) == 0
    svc_metrics.set_serving("obs-test", True)
    assert REGISTRY.get_sample_value("finpulse_service_serving", {"service": "obs-test"}) == 1
    svc_metrics._POOLS.pools.pop("obs-test")


async def test_payments_are_counted_by_status_and_the_open_ones_read_from_the_table(schema_pool):
    """finpulse_consent_payments_total counts each status a payment reaches once committed (not a step that
    keeps the status); the open payments and the oldest's age come from the payments table."""
    import uuid
    from decimal import Decimal

    from prometheus_client import REGISTRY

    from consent_svc import metrics as consent_metrics
    from consent_svc.__main__ import SPEC
    from consent_svc.payment_storage import PaymentIntent, PaymentStorage

    pool = await schema_pool(SPEC)
    storage = PaymentStorage(pool)
    bank = f"obs-{uuid.uuid4().hex[:8]}"  # no other test's payments

    def counted(status: str) -> float:
        return REGISTRY.get_sample_value("finpulse_consent_payments_total", {"bank": bank, "status": status}) or 0

    def intent(key: str) -> PaymentIntent:
        return PaymentIntent(
            "obs-user", key, "f" * 64, "transfer", bank, "acc-1", "40817810000000000001", "40817810000000000002",
            None, "Someone", Decimal("10.00"), "RUB", None,
        )  # fmt: skip

    first, created = await storage.insert(f"pay-{uuid.uuid4().hex}", intent(f"k-{uuid.uuid4().hex}"))
    assert created and counted("INITIATING") == 1
    _, created = await storage.insert(f"pay-{uuid.uuid4().hex}", intent(first.idempotency_key))
    assert not created and counted("INITIATING") == 1, "the same key again writes nothing, counts nothing"
    second, _ = await storage.insert(f"pay-{uuid.uuid4().hex}", intent(f"k-{uuid.uuid4().hex}"))
    first = await storage.update(first, source="bank_answer", status="PENDING")
    first = await storage.update(first, source="reconcile", bank_status="AcceptedSettlementInProcess")  # same status
    assert counted("PENDING") == 1
    await pool.execute("UPDATE payments SET created_at = now() - interval '20 minutes' WHERE id = $1", second.id)
    rows = [r for r in await storage.open_payments() if r[0] == bank]
    assert sorted((b, s, n) for b, s, n, _ in rows) == [(bank, "INITIATING", 1), (bank, "PENDING", 1)]
    consent_metrics.set_open_payments([bank], rows)

    def gauge(name: str, status: str) -> float | None:
        return REGISTRY.get_sample_value(name, {"bank": bank, "status": status})

    assert gauge("finpulse_consent_payments_open", "INITIATING") == 1
    assert gauge("finpulse_consent_payments_open", "AWAITING_AUTHORIZATION") == 0
    assert 1190 <= gauge("finpulse_consent_payments_oldest_open_age_seconds", "INITIATING") < 1300
    await storage.update(first, source="bank_answer", status="COMPLETED")
    assert counted("COMPLETED") == 1
    assert [r for r in await storage.open_payments() if r[0] == bank and r[1] == "PENDING"] == []


def test_bank_call_retries_are_counted_from_the_second_attempt():
    from prometheus_client import REGISTRY

    from sync_svc import metrics as sync_metrics

    def retries() -> float:
        return REGISTRY.get_sample_value("finpulse_sync_bank_call_retries_total", {"bank": "obs-retry"}) or 0

    sync_metrics.observe_bank_call("obs-retry", "get_accounts", 503, 0.01)
    assert retries() == 0
    sync_metrics.observe_bank_call("obs-retry", "get_accounts", 200, 0.01, attempt=2)
    sync_metrics.observe_bank_call("obs-retry", "get_accounts", None, 0.01, attempt=3)
    assert retries() == 2
