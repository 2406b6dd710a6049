# FinPulse: `make up` runs the suite, `make test` runs the tests. Both set everything up first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
INSTALLED := $(VENV)/.installed
GEN_STAMP := gen/.stamp
PROTOS := $(shell find protos -name '*.proto' | sort)

.PHONY: up test gen venv clean check-gen lint bench token grpc-token

venv: $(INSTALLED)

$(INSTALLED): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
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

test: $(GEN_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# A bearer token for the local suite: make token USER_ID=team200-1
token: $(GEN_STAMP)
	@test -n "$(USER_ID)" || { echo "usage: make token USER_ID=<user id>" >&2; exit 2; }
	@$(PY) -m gateway.token "$(USER_ID)"

# A signed statement for grpcurl against a local suite's services (1 hour): make grpc-token [USER_ID=team200-1]
grpc-token: $(GEN_STAMP)
	@$(PY) -m svclib.internal_auth $(if $(USER_ID),--user "$(USER_ID)")

bench: $(GEN_STAMP)
	$(PY) -m bench

clean:
	rm -rf gen $(VENV)
