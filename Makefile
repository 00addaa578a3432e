# `make run` and `make test` work on a fresh machine: each sets up .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Programs the tests start or call, from Debian's packages, installed in one apt step:
# promtool (prometheus) checks alert rules and dashboard queries, redis-server backs the
# replay store's tests, chromium is what Playwright drives for the browser-auth tests,
# haproxy runs deploy/haproxy.cfg in front of guarded-ws, and systemd-analyze verifies
# deploy/guarded-ws.service.
TOOLS    := /usr/bin/promtool /usr/bin/redis-server /usr/bin/chromium /usr/sbin/haproxy /usr/bin/systemd-analyze
PACKAGES := prometheus redis-server chromium haproxy systemd

# The long fuzzing run, not part of `make test` (THREATS.md, "Long runs"). atheris is no
# dependency of the project: it is installed here when missing.
FUZZ_RUNS ?= 1000000
FUZZ_DIR  ?= fuzz-work

.PHONY: run test fuzz clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $@

run: $(STAMP)
	$(BIN)/guarded-ws serve $(ARGS)

$(TOOLS) &:
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(PACKAGES) >/dev/null

test: $(STAMP) $(TOOLS)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

fuzz: $(STAMP)
	$(BIN)/python -c 'import atheris' 2>/dev/null || $(BIN)/python -m pip install --quiet atheris
	GWS_FUZZ_DIR=$(FUZZ_DIR) $(BIN)/python tests/fuzz_harness.py --atheris -runs=$(FUZZ_RUNS) -print_final_stats=1

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
