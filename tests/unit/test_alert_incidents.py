"""One page per condition, whichever source sees it, and one kind of runbook link.

A Prometheus rule and a platform event that report the same condition carry the same alertname and
``incident`` label (Alertmanager's critical route groups by both: one PagerDuty incident), and the
rules' runbook links are rendered with the events' ``AUTOTRADER_RUNBOOK_BASE_URL``
(``deploy_ops/alerting/rules.py``). The live Alertmanager half is in
``tests/integration/test_alertmanager.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from deploy_ops import events
from deploy_ops.alerting.amconfig import load
from deploy_ops.alerting.catalog import alert_for
from deploy_ops.alerting.rules import RulesError, alert_rules, load_rules, render_rules

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "monitoring" / "prometheus" / "rules"

#: One event of each kind whose alertname a critical rule also raises, and the labels Prometheus
#: would put on the rule's alert for the same condition (what ``$labels`` fills in).
SHARED = {
    "CircuitBreakerTripped": (("circuit_breaker_tripped", {"trip_id": 3}), {}),
    "DeploymentFailed": (("rollout_rolled_back", {"deployment_id": 12}), {}),
    "DataPipelineFailing": (("data_pipeline_failing", {"partitions": "2024-01-02|BTCUSDT"}), {}),
    "FeatureDriftCritical": (("feature_drift_critical", {"model_version": 4}), {"model_version": "4"}),
    "ServingSlotDown": (("slot_down", {"slot": "green"}), {"slot_name": "green"}),
    "ServingErrorRateHigh": (
        ("model_health_finding", {"check": "serving", "date": "2024-01-02", "slot": "blue"}),
        {"slot": "blue"},
    ),
}


def _rules() -> dict[str, dict]:
    return {rule["alert"]: rule for path in sorted(RULES.glob("*.yml")) for rule in alert_rules(load_rules(path))}


def _fill(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", lambda m: labels[m.group(1)], template)


def test_every_critical_rule_is_shared_with_an_event_and_carries_its_incident():
    rules = _rules()
    critical = {name for name, rule in rules.items() if rule["labels"]["severity"] == "critical"}
    assert critical == set(SHARED), "a new critical rule: add it to SHARED and give the event the same incident"
    for name, ((kind, details), series_labels) in SHARED.items():
        alert = alert_for(events.OpsEvent(kind, "critical", "x", details, "", 9, "2024-01-02T00:00:00+00:00"))
        assert alert is not None and alert.alertname == name, kind
        rule_labels = rules[name]["labels"]
        assert _fill(rule_labels["incident"], series_labels) == alert.labels["incident"], name
        assert rule_labels["service"] == alert.labels["service"]


def test_the_critical_route_groups_by_incident_so_a_shared_condition_pages_once():
    config = load(ROOT / "monitoring" / "alertmanager" / "alertmanager.yml")
    (critical,) = [r for r in config["route"]["routes"] if 'severity="critical"' in r["matchers"]]
    # dedup_key would split them: the rule's alert has none.
    assert critical["group_by"] == ["alertname", "incident"]


def test_rendered_rules_carry_the_events_runbook_base_and_the_overridden_waits(tmp_path):
    out = render_rules(
        RULES,
        tmp_path,
        runbook_base_url="https://git.example.com/autotrader/blob/main/",
        durations={"ServingErrorRateHigh": "5s", "WinRateLow": "0s"},
        evaluation_interval="1s",
    )
    assert sorted(p.name for p in out) == ["batch.yml", "serving.yml"]
    rendered = {rule["alert"]: rule for path in out for rule in alert_rules(load_rules(path))}
    event = alert_for(events.OpsEvent("circuit_breaker_tripped", "critical", "x", {"trip_id": 1}, "", 1, None))
    event_url = event.annotations("https://git.example.com/autotrader/blob/main/")["runbook_url"]
    assert rendered["CircuitBreakerTripped"]["annotations"]["runbook_url"] == event_url
    assert all(r["annotations"]["runbook_url"].startswith("https://git.example.com/") for r in rendered.values())
    assert rendered["ServingErrorRateHigh"]["for"] == "5s" and rendered["ServingSlotDown"]["for"] == "2m"
    assert {g["interval"] for p in out for g in yaml.safe_load(p.read_text())["groups"]} == {"1s"}
    # The shipped files are untouched and relative, like the events' links without a base URL.
    assert (
        _rules()["CircuitBreakerTripped"]["annotations"]["runbook_url"]
        == "docs/runbooks/alerts.md#circuitbreakertripped"
    )


def test_an_override_for_an_alert_that_does_not_exist_is_refused(tmp_path):
    with pytest.raises(RulesError, match="ServingErorRateHigh"):
        render_rules(RULES, tmp_path, durations={"ServingErorRateHigh": "5s"})


def test_make_monitor_renders_the_rules_with_the_runbook_base(tmp_path, monkeypatch):
    from autotrader_assets.monitor import render_prometheus_config, stack_for
    from autotrader_assets.settings import load_settings

    monkeypatch.setenv("AUTOTRADER_HOME", str(tmp_path))
    monkeypatch.setenv("AUTOTRADER_RUNBOOK_BASE_URL", "https://runbooks.example.com/")
    stack = stack_for(load_settings(), 19090, 19091, 19093)
    rendered = {
        rule["alert"]: rule for path in sorted(stack.rules_dir.glob("*.yml")) for rule in alert_rules(load_rules(path))
    }
    assert rendered["WinRateLow"]["annotations"]["runbook_url"] == (
        "https://runbooks.example.com/docs/runbooks/alerts.md#winratelow"
    )
    config = render_prometheus_config(
        targets_file=stack.targets_file,
        pushgateway="x:1",
        prometheus="x:2",
        alertmanager=None,
        rules_dir=stack.rules_dir,
    )
    assert config["rule_files"] == [str(stack.rules_dir.resolve() / "*.yml")]
