"""monitoring/prometheus: the config and rules pass promtool, every alert of the playbooks is there
with its threshold, duration, labels and runbook, and the promtool unit tests (fires when it should,
silent just below the threshold and just before `for` ends) pass, and fail when a threshold or a
duration is loosened."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from deploy_ops.metrics_push import CATALOGUE
from tests.support.docs import heading_anchors
from tests.support.prometheus import ROOT, tool

PROM = ROOT / "monitoring" / "prometheus"
RULE_FILES = sorted((PROM / "rules").glob("*.yml"))
TEST_FILES = sorted((PROM / "tests").glob("*_test.yml"))

#: The playbooks' alerts: name -> (severity, `for`, the threshold as written in the expression).
EXPECTED = {
    "ServingSlotDown": ("critical", "2m", "== 0"),
    "ServingErrorRateHigh": ("critical", "5m", "> 0.01"),
    "CircuitBreakerTripped": ("critical", None, "== 1"),
    "DataPipelineFailing": ("critical", None, ">= 3"),
    "DeploymentFailed": ("critical", None, ">= 1"),
    "FeatureDriftCritical": ("critical", None, "> 0.3"),
    "ServingLatencyHigh": ("warning", "10m", "> 0.2"),
    # The 4 hours are the window of the pushed win rate (autotrader_trading_rolling_win_rate_ratio).
    "WinRateLow": ("warning", None, "rolling_win_rate_ratio < 0.5"),
    "FeatureDriftWarning": ("warning", None, "> 0.2"),
    "MarketDataMissing": ("warning", None, "> 0.05"),
    "MarketDataOutliers": ("warning", None, "> 0"),
    "ModelConfidenceLow": ("warning", "2h", "< 0.6"),
}

#: The series the serving slots export themselves (deploy_ops/serving/app.py) plus Prometheus' `up`.
SCRAPED = {
    "up",
    "autotrader_serving_requests_total",
    "autotrader_serving_request_duration_seconds_bucket",
    "autotrader_serving_model_ready",
}


def rules() -> dict[str, dict]:
    out = {}
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                assert rule["alert"] not in out, f"{rule['alert']} defined twice"
                out[rule["alert"]] = rule
    return out


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([str(tool("promtool")), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_config_and_rules_pass_promtool_check():
    done = promtool("check", "rules", *map(str, RULE_FILES))
    assert done.returncode == 0, done.stdout + done.stderr
    done = promtool("check", "config", str(PROM / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_playbook_alert_with_its_threshold_duration_labels_and_runbook():
    found = rules()
    assert set(found) == set(EXPECTED)
    for name, (severity, duration, threshold) in EXPECTED.items():
        rule = found[name]
        # Critical rules also name their incident, as the events of the same name do (test_alert_incidents).
        assert {k: v for k, v in rule["labels"].items() if k not in ("incident", "service")} == {
            "severity": severity
        }, name
        assert ("incident" in rule["labels"]) == (severity == "critical"), name
        assert rule.get("for") == duration, name
        assert threshold in " ".join(rule["expr"].split()), f"{name}: {threshold!r} not in {rule['expr']}"
        assert set(rule["annotations"]) == {"summary", "description", "runbook_url"}, name
        file, anchor = rule["annotations"]["runbook_url"].split("#")
        assert anchor in heading_anchors(ROOT / file), f"{name}: {file} has no section #{anchor}"


def test_rules_use_only_catalogued_or_scraped_metrics():
    for name, rule in rules().items():
        used = set(re.findall(r"\b((?:autotrader_[a-z_]+)|up)\b(?=\s*[{\[)=<>!]|\s*$)", rule["expr"]))
        unknown = used - set(CATALOGUE) - SCRAPED
        assert not unknown, f"{name} uses {unknown}, which nothing exports"


def test_every_alert_has_unit_tests():
    tested = set()
    for path in TEST_FILES:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                tested.add(check["alertname"])
    assert tested == set(EXPECTED)


@pytest.mark.parametrize("test_file", TEST_FILES, ids=lambda p: p.name)
def test_promtool_unit_tests_pass(test_file):
    done = promtool("test", "rules", str(test_file))
    assert done.returncode == 0, done.stdout + done.stderr


#: A loosened threshold or a shortened `for` must make the unit tests fail: they pin both.
MUTATIONS = [
    ("serving.yml", "for: 2m", "for: 1m"),
    ("serving.yml", ") > 0.01", ") > 0.008"),
    ("serving.yml", "for: 5m", "for: 4m"),
    ("serving.yml", ") > 0.2", ") > 0.199"),
    ("serving.yml", "for: 10m", "for: 9m"),
    (
        "batch.yml",
        'autotrader_job_consecutive_failures{job="data_pipeline"} >= 3',
        'autotrader_job_consecutive_failures{job="data_pipeline"} >= 2',
    ),
    ("batch.yml", "autotrader_feature_psi > 0.3", "autotrader_feature_psi >= 0.3"),
    (
        "batch.yml",
        "autotrader_trading_rolling_win_rate_ratio < 0.5",
        "autotrader_trading_rolling_win_rate_ratio <= 0.5",
    ),
    # WinRateLow on the whole history again instead of the 4-hour window: the test feeds it 10%.
    (
        "batch.yml",
        "expr: autotrader_trading_rolling_win_rate_ratio < 0.5",
        "expr: autotrader_trading_win_rate_ratio < 0.5",
    ),
    ("batch.yml", "autotrader_model_confidence_ratio < 0.6", "autotrader_model_confidence_ratio <= 0.6"),
    ("batch.yml", "for: 2h", "for: 1h59m"),
    ("batch.yml", "autotrader_market_data_missing_ratio > 0.05", "autotrader_market_data_missing_ratio >= 0.05"),
]


@pytest.mark.parametrize("file,old,new", MUTATIONS, ids=[f"{f}:{n}" for f, _, n in MUTATIONS])
def test_unit_tests_catch_a_loosened_rule(tmp_path, file, old, new):
    shutil.copytree(PROM, tmp_path / "prometheus")
    path = tmp_path / "prometheus" / "rules" / file
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} not found once in {file}"
    path.write_text(text.replace(old, new))
    test_file = tmp_path / "prometheus" / "tests" / file.replace(".yml", "_test.yml")
    done = promtool("test", "rules", str(test_file))
    assert done.returncode != 0, f"the unit tests still pass with {new!r}"
