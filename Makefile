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

.PHONY: install run test test-fast ui bench lint format clean dbt-parse monitoring-tools monitor checkov-tool checkov

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# Real Prometheus, Pushgateway and Alertmanager (with promtool and amtool) from Debian's packages,
# unpacked into an ignored folder: no system install. A fresh machine may have empty package
# lists, so `apt-get update` runs once when `apt-get download` cannot find a package.
TOOLS := .tools/monitoring
MONITORING_DEBS := prometheus prometheus-alertmanager prometheus-pushgateway
$(TOOLS)/.unpacked:
	mkdir -p $(TOOLS)/debs
	cd $(TOOLS)/debs && (apt-get download $(MONITORING_DEBS) || (apt-get update -q && apt-get download $(MONITORING_DEBS)))
	for deb in $(TOOLS)/debs/*.deb; do dpkg -x $$deb $(TOOLS); done
	$(TOOLS)/usr/bin/prometheus --version >/dev/null
	$(TOOLS)/usr/bin/prometheus-alertmanager --version >/dev/null
	$(TOOLS)/usr/bin/prometheus-pushgateway --version >/dev/null
	touch $@

monitoring-tools: $(TOOLS)/.unpacked

# checkov (the Terraform and Dockerfile scanner of infra/), pinned, in a virtualenv of its own under
# the ignored .tools/: its dependencies (boto3, networkx, bc-python-hcl2...) would pin the project's.
CHECKOV_VERSION := 3.3.30
CHECKOV_VENV := .tools/checkov
$(CHECKOV_VENV)/.installed-$(CHECKOV_VERSION):
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet 'checkov==$(CHECKOV_VERSION)'
	$(CHECKOV_VENV)/bin/checkov --version
	touch $@

checkov-tool: $(CHECKOV_VENV)/.installed-$(CHECKOV_VERSION)

# Zero failed checks over infra/; every skip is justified inline next to its resource.
checkov: checkov-tool
	$(CHECKOV_VENV)/bin/checkov --directory infra --compact --quiet --skip-download

install: $(STAMP) dbt-parse

dbt_project/target/manifest.json: $(STAMP) $(shell find dbt_project/models dbt_project/macros dbt_project/tests -type f 2>/dev/null) dbt_project/dbt_project.yml
	cd dbt_project && $(CURDIR)/$(BIN)/dbt parse --quiet --profiles-dir . --target-path target
	touch $@

dbt-parse: dbt_project/target/manifest.json

run: install
	mkdir -p $(DAGSTER_HOME)
	$(BIN)/python -m autotrader_assets.runner

test: install monitoring-tools checkov-tool lint
	$(BIN)/python -m pytest -q

test-fast: install monitoring-tools checkov-tool
	$(BIN)/python -m pytest -q -m "not slow"

# Prometheus (repo rules, the slots' file_sd targets), Pushgateway and Alertmanager on 127.0.0.1
# (9090, 9091, 9093) for the local profile; prints their URLs. Ctrl-C stops them.
monitor: install monitoring-tools
	$(BIN)/python -m autotrader_assets.monitor

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
	$(BIN)/ruff check autotrader_assets deploy_ops tests benchmarks monitoring
	$(BIN)/ruff format --check autotrader_assets deploy_ops tests benchmarks monitoring

format: install
	$(BIN)/ruff check --fix autotrader_assets deploy_ops tests benchmarks monitoring
	$(BIN)/ruff format autotrader_assets deploy_ops tests benchmarks monitoring

clean:
	rm -rf $(AUTOTRADER_HOME) dbt_project/target dbt_project/logs
