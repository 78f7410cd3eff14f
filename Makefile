# The README's two commands are `make run` and `make test`; both run `make setup` first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: setup native run test unit lint kafka-jars prometheus-tools browser-tools bench clean dashboards

setup: $(STAMP) native kafka-jars ## virtualenv with the `metering` CLI, compiled rules engine, Kafka jars

# The rules engine compiled with mypyc (pipeline/infra/native.py); a no-op when the build matches the sources.
# Without a C compiler everything still works, interpreted and about half as fast.
native: $(STAMP)
	@$(BIN)/python -c 'from pipeline.infra.native import build; raise SystemExit(build())' > $(VENV)/native-build.log 2>&1 \
		&& tail -n 1 $(VENV)/native-build.log \
		|| { tail -n 20 $(VENV)/native-build.log; echo "warning: could not compile the rules engine (log: $(VENV)/native-build.log):" \
		"metering runs interpreted, about half as fast; install gcc and the Python headers (python3-dev), then make setup"; }

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11+ not found: install python3 (3.11 or newer)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

kafka-jars:
	@deploy/local/fetch.sh

# Not part of setup: only the tests use them (alert rules, the alerting integration test).
prometheus-tools: ## promtool and prometheus, from Debian's prometheus package if missing
	@deploy/prometheus/install-tools.sh

# Not part of setup: only the console's browser tests (tests/browser) use it.
browser-tools: ## Debian's chromium for the browser tests, if missing (never `playwright install`)
	@deploy/browser/install-chromium.sh

run: setup ## the whole pipeline on this machine with demo traffic
	$(BIN)/metering run --demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

unit: $(STAMP) native prometheus-tools
	$(BIN)/pytest -q tests/unit

test: setup lint prometheus-tools browser-tools ## everything: lint, types, alert rules, unit, integration
	$(BIN)/pytest -q

# deploy/grafana/dashboards from sql/queries (consumers/grafana); a test fails while they differ.
dashboards: $(STAMP) ## the Grafana dashboards, after a change to sql/queries or consumers/grafana
	$(BIN)/python -m consumers.grafana deploy/grafana/dashboards

bench: setup
	$(BIN)/python bench/compute_bench.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache pipeline/native-build.json
	find pipeline -name '*.so' -delete
