"""`make run`'s options: the day count comes from the settings (AUTOTRADER_RUN_DAYS), not from
the runner reading the environment itself."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from autotrader_assets.runner import parse_args
from autotrader_assets.settings import SettingsError, load_settings


def test_days_default_to_the_settings(monkeypatch):
    monkeypatch.setenv("AUTOTRADER_RUN_DAYS", "5")
    settings = load_settings()
    assert settings.run_days == 5
    assert parse_args([], settings).days == 5
    assert parse_args(["--days", "2"], settings).days == 2


def test_replay_source_runs_its_fixed_demo_window(monkeypatch):
    """Without AUTOTRADER_RUN_DAYS the embedded default always materializes the end-to-end test's
    window (the same run every day); a real source takes the days before yesterday."""
    import datetime as dt

    from autotrader_assets.runner import REPLAY_WINDOW_DAYS, REPLAY_WINDOW_END, default_dates

    monkeypatch.delenv("AUTOTRADER_RUN_DAYS", raising=False)
    settings = load_settings()
    assert settings.market_source == "replay" and settings.run_days is None
    args = parse_args([], settings)
    assert (args.days, args.end, args.paper_days) == (REPLAY_WINDOW_DAYS, REPLAY_WINDOW_END, 2)
    assert default_dates(args.days, end=args.end) == [f"2024-03-{d:02d}" for d in range(7, 15)]
    other = parse_args([], dataclasses.replace(settings, market_source="binance"))
    assert (other.days, other.end, other.paper_days) == (14, None, 3)
    assert default_dates(2, today=dt.date(2026, 12, 2)) == ["2026-11-30", "2026-12-01"]


def test_run_days_that_is_not_a_number_is_a_settings_error(monkeypatch):
    monkeypatch.setenv("AUTOTRADER_RUN_DAYS", "two weeks")
    with pytest.raises(SettingsError, match="AUTOTRADER_RUN_DAYS"):
        load_settings()


@pytest.mark.parametrize("argv", [["--days", "0"], ["--paper-days", "0"]])
def test_zero_days_is_a_usage_error(argv, capsys):
    settings = dataclasses.replace(load_settings(), run_days=14)
    with pytest.raises(SystemExit) as exc:
        parse_args(argv, settings)
    assert exc.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


def _result(evaluations, success=True):
    """What `_report` reads of a run result: its events."""
    from types import SimpleNamespace

    events = [SimpleNamespace(event_type_value="ASSET_CHECK_EVALUATION", event_specific_data=e) for e in evaluations]
    return SimpleNamespace(run_id="r1", success=success, all_events=events)


def test_a_partitioned_check_counts_once_and_names_its_failed_partitions():
    import dagster as dg

    from autotrader_assets.runner import _report

    def ev(check, part, passed, description=None):
        return dg.AssetCheckEvaluation(
            asset_key=dg.AssetKey("market_bars"),
            check_name=check,
            passed=passed,
            severity=dg.AssetCheckSeverity.WARN,
            partition=part,
            description=description,
        )

    parts = [f"2024-03-0{d}|BTCUSDT" for d in range(1, 8)]
    report = _report(
        "data_pipeline",
        _result(
            [ev("market_bars_outliers", p, True) for p in parts]
            + [ev("market_bars_completeness", p, p != parts[2], "5.35% missing") for p in parts]
        ),
        1.0,
    )
    assert report.checks_passed == 1
    assert report.checks_failed == [
        "market_bars:market_bars_completeness (WARN) on 1 of 7 partitions: 2024-03-03|BTCUSDT (5.35% missing)"
    ]
    assert report.failed_partitions == {"market_bars_completeness": [parts[2]]}


def test_replay_warnings_are_matched_with_what_the_source_planted():
    from autotrader_assets.defs.market_data.replay import ReplaySource
    from autotrader_assets.runner import replay_check_notes

    source = ReplaySource(seed=7)
    # make run on 2026-12-02 found this partition 5.35% incomplete: a planted 75-minute outage.
    start, minutes = source.planted_outage("ETHUSDT", "2026-12-01")
    assert (start.isoformat(), minutes) == ("2026-12-01T02:49:00+00:00", 75)
    bars = source.day_bars("ETHUSDT", "2026-12-01")
    assert not bars["ts"].between(start, start + pd.Timedelta(minutes=minutes - 1)).any()
    assert source.planted_outage("BTCUSDT", "2026-12-01") is None

    notes = replay_check_notes(
        {
            "market_bars_completeness": ["2026-12-01|ETHUSDT", "2026-12-01|BTCUSDT"],
            "market_bars_outliers": ["2026-12-01|BTCUSDT"],
        },
        seed=7,
    )
    assert notes[0].startswith("    expected: the replay source plants outages")
    assert notes[1] == "      2026-12-01|ETHUSDT: planted outage of 75 minutes from 02:49 UTC"
    assert notes[2].startswith("      2026-12-01|BTCUSDT: not a planted outage: look at it")
    assert notes[3].startswith("    not expected: the replay source plants no bad prints")
    assert replay_check_notes({}, seed=7) == []


def test_paper_returns_on_replay_data_say_they_are_synthetic():
    from autotrader_assets.runner import SYNTHETIC_NOTE, paper_lines

    day = "  2026-12-01  equity   100,000.00 ->   101,800.00  (+1.80%)  fills=40"
    assert paper_lines([day], "replay") == ["paper account:", SYNTHETIC_NOTE, day]
    assert "synthetic" in SYNTHETIC_NOTE and "say nothing about a real market" in SYNTHETIC_NOTE
    assert paper_lines([day], "binance") == ["paper account:", day]


def test_report_says_why_a_check_and_a_step_failed():
    """The summary of a failed stage names the reason: a failed (unpartitioned) check's reason
    metadata, and a step's dg.Failure description (a rolled-back rollout's gate and numbers).
    The assets are unannotated: this module's string annotations cannot name a local import."""
    import dagster as dg

    from autotrader_assets.runner import _report

    @dg.asset
    def candidate():
        return 1

    @dg.asset_check(asset=candidate, blocking=True)
    def gate():
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={"reason": "test-period total return -3.30% after costs is below 0"},
        )

    @dg.asset
    def deployment():
        raise dg.Failure(description="rollout of version 2 rolled_back: stage canary failed: sharpe: 62% below live")

    defs = dg.Definitions(assets=[candidate, deployment], asset_checks=[gate])
    trained = defs.resolve_implicit_global_asset_job_def().get_subset(
        asset_selection={candidate.key}, asset_check_selection={gate.check_key}
    )
    rep = _report("training", trained.execute_in_process(raise_on_error=False), 1.0)
    assert rep.checks_failed == ["candidate:gate (ERROR): test-period total return -3.30% after costs is below 0"]
    assert rep.step_failures == []  # the blocking check's own step failure adds nothing new

    deployed = defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection={deployment.key})
    rep = _report("deployment", deployed.execute_in_process(raise_on_error=False), 1.0)
    assert not rep.success and rep.checks_failed == []
    assert rep.step_failures == [
        "deployment: rollout of version 2 rolled_back: stage canary failed: sharpe: 62% below live"
    ]


def test_freshness_warning_of_a_historical_window_is_explained():
    from autotrader_assets.runner import freshness_note

    assert freshness_note(["market_bars:market_bars_completeness (WARN)"], "2024-03-14") == []
    (line,) = freshness_note(["market_bars:market_bars_freshness (WARN)"], "2024-03-14")
    assert "ends 2024-03-14" in line and "market_data_freshness_hourly" in line
