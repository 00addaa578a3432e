# `make run` and `make test` work on a fresh machine: each sets up .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

PROMTOOL := /usr/bin/promtool
REDIS    := /usr/bin/redis-server
CHROMIUM := /usr/bin/chromium
HAPROXY  := /usr/sbin/haproxy
SYSTEMD_ANALYZE := /usr/bin/systemd-analyze

.PHONY: run test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $@

run: $(STAMP)
	$(BIN)/guarded-ws serve $(ARGS)

# promtool checks the alert rules and dashboard queries (Debian's prometheus package).
$(PROMTOOL):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null

# The replay store's tests start their own redis-server on loopback (Debian's package).
$(REDIS):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null

# The browser-auth tests drive Debian's chromium through Playwright; nothing is downloaded.
$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null

# haproxy runs deploy/haproxy.cfg in front of guarded-ws (tests/attacks/test_haproxy.py).
$(HAPROXY):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null

# systemd-analyze verifies deploy/guarded-ws.service (tests/test_deploy.py).
$(SYSTEMD_ANALYZE):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null

test: $(STAMP) $(PROMTOOL) $(REDIS) $(CHROMIUM) $(HAPROXY) $(SYSTEMD_ANALYZE)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
