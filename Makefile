# FinPulse: `make up` runs the suite, `make test` runs the tests. Both set everything up first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
INSTALLED := $(VENV)/.installed
GEN_STAMP := gen/.stamp
PROTOS := $(shell find protos -name '*.proto' | sort)
# Dependencies: exact versions and hashes from the lock (`make lock` writes it from pyproject.toml).
LOCK := requirements.lock
# The npm tools of the gate (buf), pinned by tools/package-lock.json, in tools/node_modules (git-ignored).
NPM ?= npm
BUF := $(CURDIR)/tools/node_modules/.bin/buf
TOOLS_STAMP := tools/node_modules/.installed
PROTO_DEPS := build/proto-deps
# Prometheus and promtool for the tests of deploy/observability/ (alert rules, the dashboard's queries against a
# running suite): Debian's package, pinned, unpacked into tools/prometheus (git-ignored) by tools/prometheus.sh.
PROMETHEUS_DEB ?= 2.42.0+ds-5+deb12u1
PROMTOOL := tools/prometheus/promtool
# wrk, the HTTP load tool of bench/ (`make bench-tools`; the benchmarks find it there or on PATH): Debian's
# packages, pinned, unpacked into tools/wrk (git-ignored) by tools/wrk.sh, with no root and no install.
WRK_DEB ?= 4.1.0-3+b2
LUAJIT_DEB ?= 2.1.0~beta3+git20220320+dfsg-4.1+deb12u1
WRK := tools/wrk/wrk
# The ref `buf breaking` compares the protos with (default: the merge-base with origin/main, else HEAD~1).
BUF_AGAINST ?=

.PHONY: up test test-fast gen venv clean check-gen lint lock lint-python lint-protos bench bench-tools token grpc-token prometheus

venv: $(INSTALLED)

$(INSTALLED): $(LOCK) pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r $(LOCK)
	$(PY) -m pip install -q --no-deps -e .
	@# The repo root and the generated code are importable from the venv without PYTHONPATH.
	$(PY) -c "import sysconfig, pathlib; pathlib.Path(sysconfig.get_paths()['purelib'], 'finpulse_paths.pth').write_text('$(CURDIR)\n$(CURDIR)/gen\n')"
	@touch $@

# Generated protobuf/gRPC code lives in gen/ (git-ignored, never edited by hand).
gen: $(GEN_STAMP)

$(GEN_STAMP): $(PROTOS) $(INSTALLED)
	rm -rf gen && mkdir -p gen
	$(PY) -m svclib.protogen --out gen $(PROTOS)
	@touch $@

up: $(GEN_STAMP)
	$(PY) -m deploy.launcher

test: $(GEN_STAMP) $(PROMTOOL)
	$(PY) -m pytest $(PYTEST_ARGS)

# The tests without the slow ones (the fault suite's minutes under load); `make test` runs them all.
test-fast: $(GEN_STAMP) $(PROMTOOL)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# Rewrite requirements.lock and deploy/requirements.lock from pyproject.toml (UPGRADE=1: everything newest).
lock: $(INSTALLED)
	tools/lock.sh $(BIN)/uv $(PY)

# The quality gate (.ci/run runs it before the tests): ruff (lint and format), mypy on the typed core, the locks
# against pyproject.toml, buf lint and buf breaking on the protos. Configuration: pyproject.toml, buf.yaml.
lint: lint-python lint-protos

lint-python: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	tools/lock.sh $(BIN)/uv $(PY) --check

lint-protos: $(TOOLS_STAMP) $(PROTO_DEPS)/.stamp
	$(BUF) lint protos
	tools/buf_breaking.sh $(BUF) $(BUF_AGAINST)

$(TOOLS_STAMP): tools/package.json tools/package-lock.json
	cd tools && $(NPM) ci --no-audit --no-fund --loglevel=error
	@touch $@

# Prometheus and promtool (see PROMETHEUS_DEB above).
prometheus: $(PROMTOOL)

$(PROMTOOL): tools/prometheus.sh Makefile
	tools/prometheus.sh $(PROMETHEUS_DEB) tools/prometheus
	@touch $@

# The google/* protos the protos import, where buf.yaml reads them (from the venv, as make gen uses them).
$(PROTO_DEPS)/.stamp: $(INSTALLED)
	$(PY) tools/proto_deps.py $(PROTO_DEPS)
	@touch $@

# A bearer token for the local suite: make token USER_ID=team200-1
token: $(GEN_STAMP)
	@test -n "$(USER_ID)" || { echo "usage: make token USER_ID=<user id>" >&2; exit 2; }
	@$(PY) -m gateway.token "$(USER_ID)"

# A signed statement for grpcurl against a local suite's services (1 hour): make grpc-token [USER_ID=team200-1]
grpc-token: $(GEN_STAMP)
	@$(PY) -m svclib.internal_auth $(if $(USER_ID),--user "$(USER_ID)")

bench: $(GEN_STAMP) $(WRK)
	$(PY) -m bench

# wrk (see WRK_DEB above).
bench-tools: $(WRK)

$(WRK): tools/wrk.sh Makefile
	tools/wrk.sh $(WRK_DEB) $(LUAJIT_DEB) tools/wrk
	@touch $@

clean:
	rm -rf gen build $(VENV) tools/node_modules tools/prometheus tools/wrk
