# Mamori — every target sets up what it needs on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORE := $(VENV)/.installed-core
STAMP := $(VENV)/.installed-dev
# pip's output goes here; it is shown only when a step fails.
PIPLOG := $(VENV)/pip.log
PIP := $(BIN)/python -m pip install -q --disable-pip-version-check
QUIET = >$(PIPLOG) 2>&1 || { cat $(PIPLOG); echo "make: that step failed (pip's output above)"; exit 1; }

# The core: what `agentctl run` needs, and no more (`make run`).
$(CORE): pyproject.toml
	@test -x $(BIN)/python || { echo "make: creating $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@echo "make: installing mamori (core, no extra; make test adds the rest)"
	@$(PIP) -e . $(QUIET)
	@touch $(CORE)

# Everything else the tests, the linters and the image tests need (`make test`).
$(STAMP): $(CORE)
	@echo "make: upgrading pip"
	@$(PIP) --upgrade pip $(QUIET)
	@echo "make: installing the dev tools and the oci and otel extras"
	@$(PIP) -e '.[dev,oci,otel]' $(QUIET)
	@# Wheels of every dependency and the build backend, so tests that build the image's venv
	@# (tests/deploy) run offline.
	@echo "make: building the wheelhouse for the image tests"
	@$(BIN)/python -m pip wheel -qq --disable-pip-version-check -w $(VENV)/wheelhouse '.[oci,otel]' 'setuptools>=77' $(QUIET)
	@touch $(STAMP)

## run: the agent on the embedded default config (http://127.0.0.1:9630/metrics), or on
## CONFIG=FILE; installs the core, and an extra only when that config's exporters need one
run: $(CORE)
ifneq ($(strip $(CONFIG)),)
	@extras="$$($(BIN)/python -m agent.extras $(CONFIG))"; \
	if [ -n "$$extras" ]; then \
		echo "make: installing the extras $(CONFIG) needs: $$extras"; \
		$(PIP) -e ".[$$extras]" $(QUIET); \
	fi
	$(BIN)/agentctl run -c $(CONFIG)
else
	$(BIN)/agentctl run
endif

## demo: the lab (Postgres pair, HAProxy + apps, Mosquitto, Prometheus, Alertmanager) and an agent
## watching it, from this checkout (the lab is not shipped); `.venv/bin/python -m lab.demo fault NAME`
## from another terminal; Ctrl-C stops everything
demo: $(STAMP)
	@bash .ci/ensure-debs $(TEST_DEBS) mosquitto-clients
	$(BIN)/python -m lab.demo

## test: lint, type check, then the whole test suite (every lane)
test: $(STAMP) debs lint typecheck suite

# Debian packages the test suite runs for real (installed only when missing).
TEST_DEBS := haproxy postgresql-15 prometheus prometheus-alertmanager mosquitto docker-compose python3.11-venv \
	docker.io busybox-static debootstrap chromium

debs:
	@bash .ci/ensure-debs $(TEST_DEBS)

## lint: ruff, and the layering contracts of pyproject.toml ([tool.importlinter])
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check agent checks exporters alerts lab
	$(BIN)/lint-imports --no-cache

typecheck: $(STAMP)
	$(BIN)/mypy

# pytest exits 5 when it collected no test: a lane (or PYTEST_ARGS) that selects nothing fails.
PYTEST := $(BIN)/pytest -q -p no:cacheprovider

## suite: every test, all lanes, in two processes side by side (.ci/suite); PYTEST_ARGS=... to
## narrow it (then in one process)
suite: $(STAMP)
ifeq ($(strip $(PYTEST_ARGS)),)
	@bash .ci/suite $(PYTEST)
else
	$(PYTEST) $(PYTEST_ARGS)
endif

## unit: the fast lane for the edit-test loop, under a minute, no service started
unit: $(STAMP)
	$(PYTEST) -m unit $(PYTEST_ARGS)

## lane-service, e2e, lane-deploy: the other lanes (tests/lanes.py says which test is where)
lane-service: $(STAMP) debs
	$(PYTEST) -m service $(PYTEST_ARGS)

e2e: $(STAMP) debs
	$(PYTEST) -m e2e $(PYTEST_ARGS)

lane-deploy: $(STAMP) debs
	$(PYTEST) -m deploy $(PYTEST_ARGS)

## bench: benchmarks against their anchors; figures go to bench/results/
bench: $(STAMP)
	@bash .ci/ensure-debs $(TEST_DEBS) nginx-light prometheus-blackbox-exporter prometheus-postgres-exporter
	$(BIN)/python -m bench.run_all

## docs: regenerate docs/metrics.md from agent/catalog.py
docs: $(STAMP)
	$(BIN)/python -m agent.catalog > docs/metrics.md

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
