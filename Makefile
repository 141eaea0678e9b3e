# autotrader: the README's commands. Everything installs into .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export AUTOTRADER_HOME ?= $(CURDIR)/.autotrader
export DAGSTER_HOME ?= $(AUTOTRADER_HOME)/dagster_home
export PATH := $(CURDIR)/$(BIN):$(PATH)
# Offline by design: no usage telemetry from dbt or Dagster.
export DBT_SEND_ANONYMOUS_USAGE_STATS := false
export DAGSTER_DISABLE_TELEMETRY := 1
STAMP := $(VENV)/.installed

.PHONY: install run test test-fast ui bench lint clean dbt-parse

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP) dbt-parse

dbt_project/target/manifest.json: $(STAMP) $(shell find dbt_project/models dbt_project/macros dbt_project/tests -type f 2>/dev/null) dbt_project/dbt_project.yml
	cd dbt_project && $(CURDIR)/$(BIN)/dbt parse --quiet --profiles-dir . --target-path target
	touch $@

dbt-parse: dbt_project/target/manifest.json

run: install
	mkdir -p $(DAGSTER_HOME)
	$(BIN)/python -m autotrader_assets.runner

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

ui: install
	mkdir -p $(DAGSTER_HOME)
	$(BIN)/dagster dev -w workspace.yaml

bench: install
	$(BIN)/python benchmarks/data_pipeline.py
	$(BIN)/python benchmarks/training.py
	$(BIN)/pip install --quiet -e ".[bench]"
	$(BIN)/python benchmarks/backtest.py
	$(BIN)/python benchmarks/serving.py
	$(BIN)/python benchmarks/paper_trading.py
	$(BIN)/python benchmarks/drift.py

lint: install
	$(BIN)/python -m compileall -q autotrader_assets deploy_ops

clean:
	rm -rf $(AUTOTRADER_HOME) dbt_project/target dbt_project/logs
