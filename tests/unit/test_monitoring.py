"""Events in one shape, the drift decision and the health findings, without Dagster runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from autotrader_assets.defs.monitoring import health as hl
from autotrader_assets.defs.monitoring.decision import DriftAlarm, decide
from autotrader_assets.defs.monitoring.psi import drift_against, fit_reference
from deploy_ops import events
from deploy_ops.state import DeploymentStateStore, StateError
from tests.support.docs import heading_anchors

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("runbook", sorted(set(events.RUNBOOKS.values()) | set(hl.RUNBOOK.values())))
def test_every_runbook_reference_names_an_existing_section(runbook):
    file, anchor = runbook.split("#")
    assert (ROOT / file).exists(), f"{file} does not exist"
    assert anchor in heading_anchors(ROOT / file), (
        f"{file} has no section #{anchor}: {sorted(heading_anchors(ROOT / file))}"
    )


@pytest.fixture
def state(tmp_path):
    return DeploymentStateStore(f"sqlite:///{tmp_path / 'state.db'}")


def test_record_and_shape_round_trip(state):
    recorded = events.record(state, "run_failed", "warning", "run r1 failed", {"run_id": "r1"})
    (stored,) = state.events_since(0)
    assert stored.message == "run r1 failed" and stored.details["runbook"] == events.RUNBOOKS["run_failed"]
    shaped = events.shape(stored)
    assert shaped == recorded
    assert shaped.to_dict()["summary"] == "run r1 failed" and shaped.details == {"run_id": "r1"}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"severity": "page"}, "unknown severity"),
        ({"runbook": "https://wiki/x"}, "runbook must look like"),
        ({"details": {"runbook": "x"}}, "reserved key"),
        ({"kind": "no_runbook_known"}, "runbook must look like"),
    ],
)
def test_bad_events_are_refused_and_nothing_is_written(state, kwargs, message):
    args = {"kind": "run_failed", "severity": "warning", "summary": "s", "details": {}} | kwargs
    with pytest.raises(StateError, match=message):
        events.record(state, **args)
    assert state.events_since(0) == []


def test_the_breaker_sensor_records_its_alert_in_the_common_shape(tmp_path):
    from autotrader_assets.defs.trading.rollback_decision import (
        ALERT_EVENT,
        pending_rollbacks,
    )
    from deploy_ops.trading.breaker import BreakerStore

    store = BreakerStore(f"sqlite:///{tmp_path / 'state.db'}")
    store.trip("daily loss 6% > 5%", {"equity": 94.0}, at=pd.Timestamp("2024-03-02T10:15", tz="UTC").to_pydatetime())
    requests, _, _ = pending_rollbacks(store, 0)
    (alert,) = [events.shape(e) for e in store.events.events_since(0, kinds=[ALERT_EVENT])]
    assert alert.severity == "critical" and alert.runbook == events.RUNBOOKS[ALERT_EVENT]
    assert alert.details["run_key"] == requests[0].run_key


def _alarm():
    return DriftAlarm("2024-03-05", 2, 0.9, {"f0": 0.9}, "run-1")


def test_decision_rolls_back_when_the_known_good_reference_sees_no_drift():
    rng = np.random.default_rng(0)
    ref = fit_reference({"f0": rng.normal(size=3000)})
    kg = drift_against(ref, {"f0": rng.normal(size=3000)}, ["f0"], version="1")
    d = decide(_alarm(), 1, kg, None, 0.2, {"ops": {}})
    assert d.action == "rollback" and d.job_name == "model_rollback"
    assert d.run_config["ops"]["rollback_model"]["config"]["to_version"] == 1
    assert d.run_key == "feature-drift-2024-03-05-v2" and d.numbers["known_good_max_psi"] < 0.2


@pytest.mark.parametrize(
    "known_good, problem, why",
    [(None, None, "no known-good version"), (1, "its bundle stores no feature reference", "cannot be judged")],
)
def test_decision_retrains_without_a_usable_known_good_version(known_good, problem, why):
    config = {"ops": {"training_dataset": {"config": {"last_n_days": 28}}}}
    d = decide(_alarm(), known_good, None, problem, 0.2, config)
    assert d.action == "retrain" and d.job_name == "training_job" and d.run_config == config
    assert why in d.numbers["why_not_rollback"]


def test_rolling_confidence_uses_full_two_hour_windows_only():
    ts = pd.date_range("2024-03-05", periods=180, freq="1min")
    # max(p, 1-p): 0.9 for the first hour, 0.55 after: the first full window (ending 01:59) averages
    # 0.725; the last (01:00-02:59) is all 0.55.
    proba = np.r_[np.full(60, 0.1), np.full(120, 0.55)]
    means = hl.rolling_confidence(pd.DataFrame({"instrument": "X", "ts": ts, "proba": proba}))
    assert means.index[0] == pd.Timestamp("2024-03-05 01:59") and len(means) == 61
    assert means.iloc[0] == pytest.approx(0.725) and means.iloc[-1] == pytest.approx(0.55)
    (finding,) = hl.confidence_findings(pd.DataFrame({"instrument": "X", "ts": ts, "proba": proba}), 0.6)
    assert finding.severity == "warning" and finding.details["lowest"] == pytest.approx(0.55)


def test_win_rate_needs_a_full_window_with_enough_trades():
    exits = pd.date_range("2024-03-05", periods=30, freq="15min")
    trades = pd.DataFrame({"exit_ts": exits, "pnl": [1.0, -1.0, -1.0] * 10})
    windows = hl.rolling_win_rate(trades)
    assert windows.index[0] == pd.Timestamp("2024-03-05 04:00") and (windows["trades"] >= 10).all()
    (finding,) = hl.win_rate_findings(trades, 0.5)
    assert finding.severity == "warning" and finding.details["lowest"] < 0.5
    few = hl.win_rate_findings(trades.head(5), 0.5)
    assert few[0].severity == "info" and "not judged" in few[0].summary


def test_serving_findings_from_slot_counters():
    scrapes = [
        {
            "slot": "blue",
            "version": "2",
            "url": "u",
            "requests": 1000,
            "errors_5xx": 20,
            "error_rate": 0.02,
            "p99_ms": 250.0,
        },
        {"slot": "green", "version": "3", "url": "v", "error": "connection refused"},
    ]
    found = hl.serving_findings(scrapes, 0.01, 200.0)
    assert [(f.severity, f.details.get("slot")) for f in found] == [
        ("critical", "blue"),
        ("warning", "blue"),
        ("critical", "green"),
    ]
    assert "2.00% of 1000 /predict requests failed" in found[0].summary


def test_drift_findings_split_warning_and_critical():
    frame = pd.DataFrame({"model_version": ["2", "2", "2"], "feature": ["a", "b", "c"], "psi": [0.5, 0.25, 0.01]})
    found = hl.drift_findings(frame, 0.2, 0.3)
    assert [(f.severity, list(f.details["features"])) for f in found] == [("critical", ["a"]), ("warning", ["b"])]
    assert hl.drift_findings(frame.iloc[0:0], 0.2, 0.3)[0].summary.startswith("feature drift was not computed")
    assert hl.worst_severity(found) == "critical"


def test_win_rate_finding_with_trades_closing_on_the_same_bar():
    """Paper trading closes several instruments' trades on one bar: repeated exit times must not
    break the finding (make run's health check failed on them)."""
    from autotrader_assets.defs.monitoring.health import win_rate_findings

    exits = pd.date_range("2024-03-13 00:00", periods=60, freq="10min", tz="UTC").repeat(2)
    pnl = [-1.0 if i % 4 else 1.0 for i in range(len(exits))]  # 25% winners
    findings = win_rate_findings(pd.DataFrame({"exit_ts": exits, "pnl": pnl}), 0.5)
    assert [f.severity for f in findings] == ["warning"]
    assert findings[0].details["lowest"] < 0.5
