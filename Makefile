# Mission Control — developer entry points.
#   make run    install what is missing, then start the control plane (embedded etcd)
#   make test   install what is missing, then run every check
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
BUF := .tools/node_modules/.bin/buf
PROTO_DIR := protos
PROTO_PKG := $(PROTO_DIR)/mission_control/resilience/v1
PROTOS := $(wildcard $(PROTO_PKG)/*.proto)
PYTEST_ARGS ?=
# make test spreads the test files over three processes (pytest-xdist, whole files per process):
# most tests wait on real processes and timers (a 2-core machine is a third busy), so on one
# 1,640 tests took 9:49 with three against 14:03 with two, every test passing both ways.
# PYTEST_WORKERS=0 runs them all in one process.
PYTEST_WORKERS ?= 3

.PHONY: install venv etcd buf test-tools proto proto-check lint test soak soak-repeat run bench dist clean

# Install Debian packages ($(1)) quietly; refresh the package lists once if the first try fails.
APT_INSTALL = { export DEBIAN_FRONTEND=noninteractive; \
  apt-get install -y -q $(1) >/dev/null 2>&1 || \
  { apt-get update -q >/dev/null && apt-get install -y -q $(1) >/dev/null; }; }

install: venv etcd buf test-tools

venv: $(VENV)/.installed

# A fresh Debian has python3 but not always its venv module (python3-venv).
$(VENV)/.installed: pyproject.toml
	@command -v python3 >/dev/null 2>&1 || { echo "installing python3 (Debian)"; $(call APT_INSTALL,python3 python3-venv); }
	@test -x $(PY) || python3 -c 'import ensurepip, venv' 2>/dev/null || \
	  { echo "installing python3-venv (Debian)"; $(call APT_INSTALL,python3-venv); }
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

# etcd from Debian's etcd-server package, unless an etcd binary is already on PATH.
etcd:
	@command -v etcd >/dev/null 2>&1 && command -v etcdctl >/dev/null 2>&1 || { \
	  echo "installing etcd-server (Debian)"; $(call APT_INSTALL,etcd-server etcd-client); }
	@command -v etcd >/dev/null && command -v etcdctl >/dev/null

# What only the checks need, from Debian: Prometheus and promtool (alert rules, a real scrape),
# Chromium (the dashboard in a real browser, driven by Playwright from the venv).
test-tools:
	@command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || { \
	  echo "installing prometheus (Debian)"; $(call APT_INSTALL,prometheus); }
	@command -v chromium >/dev/null 2>&1 || { echo "installing chromium (Debian)"; $(call APT_INSTALL,chromium); }

# buf from npm (@bufbuild/buf), kept in .tools; only checks need it, not `make run`.
buf: $(BUF)

$(BUF):
	@command -v npm >/dev/null 2>&1 || { echo "installing npm (Debian)"; $(call APT_INSTALL,npm); }
	@mkdir -p .tools
	cd .tools && npm install --silent --no-audit --no-fund @bufbuild/buf@1.75.0

proto: venv
	PATH=$(BIN):$$PATH $(PY) -m grpc_tools.protoc -I $(PROTO_DIR) \
	  --python_out=$(PROTO_DIR) --grpc_python_out=$(PROTO_DIR) \
	  --mypy_out=$(PROTO_DIR) --mypy_grpc_out=$(PROTO_DIR) $(PROTOS)
	PATH=$(BIN):$$PATH $(PY) -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. \
	  --mypy_out=. tests/support/echo.proto

# Regenerate and fail when the committed generated code differs.
proto-check: proto
	@git diff --exit-code --stat -- '$(PROTO_DIR)/*_pb2*.py*' 'tests/support/*_pb2*.py*' || \
	  { echo "generated code is out of date: run 'make proto' and commit"; exit 1; }
	@test -z "$$(git ls-files --others --exclude-standard -- '$(PROTO_DIR)/*_pb2*' 'tests/support/*_pb2*')" || \
	  { echo "untracked generated code: run 'make proto' and commit"; exit 1; }

lint: venv buf
	$(BIN)/ruff check client interceptors server tests bench
	$(BIN)/ruff format --check client interceptors server tests bench
	$(BUF) lint
	$(BUF) format --exit-code > /dev/null
	@if git rev-parse -q --verify HEAD~1 >/dev/null && git cat-file -e HEAD~1:buf.yaml 2>/dev/null; then \
	  echo "buf breaking against HEAD~1"; $(BUF) breaking --against '.git#ref=HEAD~1'; \
	else echo "buf breaking: no previous commit with protos, skipped"; fi
	$(BIN)/mypy client interceptors server

test: install proto-check lint
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The long versions: 10,000 fuzz examples per target, etcd down for 30 s under traffic,
# 5,000 seeded fault schedules per protocol (each variable below may be set on the command
# line); then every case marked `soak` (the larger cases beside the smaller ones make test runs);
# then the once-flaky tests, 50 runs in a row each (soak-repeat, below).
MC_SIM_SCHEDULES ?= 5000
MC_SIM_ACTIVE_SECS ?= 30
MC_FUZZ_EXAMPLES ?= 10000
MC_CHAOS_SECS ?= 30
soak: install
	MC_SOAK=1 MC_FUZZ_EXAMPLES=$(MC_FUZZ_EXAMPLES) MC_CHAOS_SECS=$(MC_CHAOS_SECS) \
	  MC_SIM_SCHEDULES=$(MC_SIM_SCHEDULES) MC_SIM_ACTIVE_SECS=$(MC_SIM_ACTIVE_SECS) \
	  $(BIN)/pytest -q -p no:cacheprovider -m 'not soak' $(PYTEST_ARGS) tests/test_fuzz.py tests/server/test_chaos.py \
	  tests/client/test_status_hostile.py tests/sim tests/sim_fleet
	MC_SOAK=1 $(BIN)/pytest -q -p no:cacheprovider -m soak $(PYTEST_ARGS)
	@$(MAKE) --no-print-directory soak-repeat

# Tests that failed now and then before a fix, each run SOAK_REPEAT times in a row, each run a
# pytest (and an etcd) of its own; the first failure stops it and shows that run's output.
# `make soak-repeat` runs only these. The fleet-limit fairness test failed about 1 run in 10
# until its fix (a light caller on the period grid was leased nothing); the probe recovery test
# about 1 run in 40 (the upstream recovered before the fleet breaker had opened); the test of agents
# joining, leaving and a control-plane outage 3 runs in 23 (agents spent the fleet's period before
# their first lease, and a new leader's periods started from 0).
SOAK_REPEAT ?= 50
SOAK_REPEAT_TESTS ?= tests/server/test_fleet_limits.py::test_twenty_agents_share_one_limit_fairly \
  tests/server/test_probe_recovery.py \
  tests/server/test_fleet_limits.py::test_agents_joining_leaving_and_a_control_plane_outage
soak-repeat: install
	@out=$$(mktemp); trap 'rm -f "$$out"' EXIT; \
	for test in $(SOAK_REPEAT_TESTS); do \
	  for run in $$(seq 1 $(SOAK_REPEAT)); do \
	    if $(BIN)/pytest -q -p no:cacheprovider $(PYTEST_ARGS) "$$test" >"$$out" 2>&1; then \
	      echo "$$test: run $$run of $(SOAK_REPEAT) passed"; \
	    else \
	      cat "$$out"; \
	      echo "$$test: run $$run of $(SOAK_REPEAT) FAILED, after $$((run - 1)) in a row passed"; \
	      exit 1; \
	    fi; \
	  done; \
	done

# The addresses `make run` serves on: `make run LISTEN=127.0.0.1:50061 HTTP=127.0.0.1:8081`.
LISTEN ?= 127.0.0.1:50051
HTTP ?= 127.0.0.1:8080

run: venv etcd
	$(BIN)/mission-control serve --listen $(LISTEN) --http $(HTTP)

bench: install
	$(PY) -m bench

# A wheel and an sdist in dist/ (what the container image installs).
dist: venv
	rm -rf dist build
	$(PY) -m build --outdir dist .

clean:
	rm -rf $(VENV) .tools .state .pytest_cache .mypy_cache .ruff_cache
