"""monitoring/grafana: the dashboards as code. The committed JSON is what dashboards.py builds (a
stale file fails here), the panels are the ones the playbooks name with their thresholds, and the
infrastructure panels say which exporter they need."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest

from deploy_ops.metrics_push import CATALOGUE
from tests.support.prometheus import ROOT

GRAFANA = ROOT / "monitoring" / "grafana"


def generator():
    spec = importlib.util.spec_from_file_location("autotrader_dashboards", GRAFANA / "dashboards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def board(name: str) -> dict:
    return json.loads((GRAFANA / "dashboards" / f"{name}.json").read_text())


def thresholds(panel: dict) -> list:
    return [s["value"] for s in panel["fieldConfig"]["defaults"].get("thresholds", {}).get("steps", [])]


def test_the_committed_json_is_what_the_code_builds():
    built = generator().build()
    for name, text in built.items():
        assert (GRAFANA / "dashboards" / name).read_text() == text, (
            f"monitoring/grafana/dashboards/{name} is stale: run .venv/bin/python monitoring/grafana/dashboards.py"
        )


def test_check_mode_reports_a_stale_file(tmp_path, monkeypatch, capsys):
    module = generator()
    monkeypatch.setattr(module, "OUT", tmp_path)
    assert module.main([]) == 0
    (tmp_path / "trading.json").write_text("{}\n")
    assert module.main(["--check"]) == 1
    assert "stale: trading.json" in capsys.readouterr().err


def test_system_dashboard_panels():
    panels = {p["title"]: p for p in board("system")["panels"]}
    assert list(panels) == [
        "CPU",
        "Memory",
        "Request rate",
        "Error rate",
        "Latency p50 / p95 / p99",
        "Database connections",
        "Disk",
        "Network",
    ]
    assert thresholds(panels["Error rate"]) == [None, 0.005, 0.01]
    assert thresholds(panels["Latency p50 / p95 / p99"]) == [None, 0.1, 0.2]

    assert [
        re.match(r"histogram_quantile\(([0-9.]+)", t["expr"]).group(1)
        for t in panels["Latency p50 / p95 / p99"]["targets"]
    ] == ["0.5", "0.95", "0.99"]
    for title in ("CPU", "Memory", "Disk", "Network"):
        assert "node exporter" in panels[title]["description"], title
    assert "CloudWatch" in panels["Database connections"]["description"]
    assert panels["Database connections"]["targets"][0]["datasource"]["type"] == "cloudwatch"


def test_trading_dashboard_panels():
    panels = {p["title"]: p for p in board("trading")["panels"]}
    assert list(panels) == [
        "Current PnL",
        "Daily PnL",
        "Sharpe ratio",
        "Win rate",
        "Circuit breaker",
        "Profit factor",
        "PnL over time by instrument",
        "Trades per minute",
        "Position sizes",
        "Max drawdown",
        "Active positions",
    ]
    assert thresholds(panels["Sharpe ratio"]) == [None, 1.5, 2.0] and panels["Sharpe ratio"]["type"] == "gauge"
    assert thresholds(panels["Win rate"]) == [None, 0.5, 0.55]
    assert thresholds(panels["Max drawdown"]) == [None, 0.10, 0.15]
    assert panels["Active positions"]["type"] == "table"
    assert panels["PnL over time by instrument"]["targets"][0]["legendFormat"] == "{{instrument}}"


def prometheus_queries():
    for name in ("system", "trading"):
        for panel in board(name)["panels"]:
            for target in panel["targets"]:
                if target["datasource"]["type"] == "prometheus":
                    yield name, panel["title"], target["expr"]


@pytest.mark.parametrize("dashboard,title,expr", list(prometheus_queries()))
def test_queries_read_only_series_something_exports(dashboard, title, expr):
    names = set(re.findall(r"\b([a-z_]+)\{", expr)) | set(re.findall(r"^([a-z_]+)$", expr))
    names |= set(re.findall(r"\b((?:autotrader|node|process)_[a-z_]+)\b", expr))
    for name in names:
        assert name in CATALOGUE or name.startswith(("autotrader_serving_", "process_", "node_")), (
            f"{dashboard}/{title}: {name} is exported by nothing here"
        )
