"""Operators debug the services with grpcurl: reflection, health and a read RPC on every port."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import pytest

GRPCURL = shutil.which("grpcurl", path=str(pathlib.Path(sys.executable).parent)) or shutil.which("grpcurl")

pytestmark = pytest.mark.skipif(GRPCURL is None, reason="grpcurl is installed by `make test` on linux x86_64 only")

SERVICES = {
    "onboarding": "finpulse.onboarding.v1.OnboardingService",
    "consent": "finpulse.consent.v1.ConsentService",
    "sync": "finpulse.sync.v1.SyncService",
    "dashboard": "finpulse.dashboard.v1.DashboardService",
}

# A read RPC per service, with its request and what the answer must contain.
READS = {
    "onboarding": ("GetOnboardingStatus", {"onboarding_id": "no-such-session"}, "NotFound"),
    "consent": ("ListUserConsents", {"user_id": "team200-10"}, "{"),
    "sync": ("ListBanks", {}, '"id": "vbank"'),
    "dashboard": ("GetFinancialInputs", {"user_id": "team200-10"}, '"user_id": "team200-10"'),
}


def grpcurl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([GRPCURL, "-plaintext", *args], capture_output=True, text=True, timeout=30)


def operator_token(suite, user: str | None = None) -> str:
    """What `make grpc-token` prints for this suite (its data dir holds the suite's internal secret)."""
    env = {**suite.env, "FINPULSE_DATA_DIR": suite.settings.data_dir}
    out = subprocess.run(
        [sys.executable, "-m", "svclib.internal_auth", *(["--user", user] if user else [])],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.parametrize("name", list(SERVICES))
def test_list_describe_health_and_a_read(suite, name):
    addr = suite.settings.service_addrs[name]
    listed = grpcurl(addr, "list")
    assert listed.returncode == 0, listed.stderr
    names = set(listed.stdout.split())
    assert {SERVICES[name], "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names

    described = grpcurl(addr, "describe", SERVICES[name])
    assert described.returncode == 0 and "rpc " in described.stdout

    health = grpcurl(addr, "grpc.health.v1.Health/Check")
    assert health.returncode == 0 and json.loads(health.stdout) == {"status": "SERVING"}

    method, request, expected = READS[name]
    refused = grpcurl("-d", json.dumps(request), addr, f"{SERVICES[name]}/{method}")
    assert refused.returncode != 0 and "Unauthenticated" in refused.stderr, "no statement, no answer"
    answer = grpcurl(
        "-H",
        f"authorization: Bearer {operator_token(suite)}",
        "-d",
        json.dumps(request),
        addr,
        f"{SERVICES[name]}/{method}",
    )
    assert expected in answer.stdout + answer.stderr


def test_a_forged_user_header_changes_nothing(suite):
    """The acting user is the signed statement's: x-user-id naming another user is ignored, and a
    statement for one user cannot read another's data."""
    addr = suite.settings.service_addrs["dashboard"]
    token = operator_token(suite, "team200-10")
    own = grpcurl(
        "-H",
        f"authorization: Bearer {token}",
        "-H",
        "x-user-id: team200-9",
        "-d",
        json.dumps({"user_id": "team200-10"}),
        addr,
        f"{SERVICES['dashboard']}/GetFinancialInputs",
    )
    assert own.returncode == 0, own.stderr
    other = grpcurl(
        "-H",
        f"authorization: Bearer {token}",
        "-H",
        "x-user-id: team200-9",
        "-d",
        json.dumps({"user_id": "team200-9"}),
        addr,
        f"{SERVICES['dashboard']}/GetFinancialInputs",
    )
    assert other.returncode != 0 and "PermissionDenied" in other.stderr, other.stdout
