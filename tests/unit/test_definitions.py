"""The code location loads, and holds exactly the assets, checks, jobs, sensors and schedules we ship."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import dagster as dg
import pytest

from autotrader_assets.definitions import build_definitions, defs
from autotrader_assets.settings import SettingsError, Thresholds, load_settings

ASSETS = {
    "market_bars",
    "stg_market_bars",
    "bar_features",
    "training_dataset",
    "candidate_model",
    "registered_model",
    "production_deployment",
    "paper_trading",
    "trading_performance",
    "feature_drift",
    "model_health",
}
CHECKS = {
    ("market_bars", "market_bars_schema"),
    ("market_bars", "market_bars_completeness"),
    ("market_bars", "market_bars_outliers"),
    ("market_bars", "market_bars_freshness"),
    ("stg_market_bars", "not_null_stg_market_bars_close"),
    ("stg_market_bars", "not_null_stg_market_bars_ts"),
    ("stg_market_bars", "not_null_stg_market_bars_instrument"),
    ("stg_market_bars", "accepted_range_stg_market_bars_close__False__0"),
    ("bar_features", "unique_combination_bar_features_instrument__ts"),
    ("bar_features", "not_null_bar_features_instrument"),
    ("bar_features", "not_null_bar_features_ts"),
    ("bar_features", "not_null_bar_features_date"),
    ("bar_features", "not_null_bar_features_close"),
    ("bar_features", "accepted_range_bar_features_rsi_14__100__0"),
    ("bar_features", "accepted_range_bar_features_range_hl__0"),
    ("bar_features", "accepted_range_bar_features_rv_60__0"),
    ("bar_features", "accepted_range_bar_features_ret_1__1___1"),
    ("candidate_model", "auc_floor"),
    ("candidate_model", "sharpe_vs_production"),
    ("candidate_model", "max_drawdown"),
    ("candidate_model", "weights_finite"),
    ("candidate_model", "output_shape_range"),
    ("candidate_model", "leakage"),
    ("paper_trading", "circuit_breaker"),
    ("feature_drift", "feature_drift_psi"),
}
JOBS = {
    "data_pipeline",
    "data_rollback",
    "market_data_freshness",
    "training_job",
    "deployment_pipeline",
    "model_rollback",
    "emergency_rollback",
    "paper_trading_job",
    "performance_report",
    "health_check",
    "backup_job",
}
SENSORS = {
    "deployment_failure_sensor",
    "interrupted_deployment_sensor",
    "circuit_breaker_sensor",
    "data_rollback_reprocess_sensor",
    "feature_drift_sensor",
    "data_pipeline_failure_sensor",
    "alert_delivery_sensor",
    "job_notice_sensor",
    "job_success_metrics_sensor",
    "job_failure_metrics_sensor",
    "run_launch_failure_sensor",
}
SCHEDULES = {
    "daily_data_pipeline",
    "market_data_freshness_hourly",
    "weekly_training",
    "daily_paper_trading",
    "weekly_performance_report",
    "health_check_every_15_minutes",
    "hourly_backup",
}


@pytest.fixture(scope="module")
def repo():
    return defs.get_repository_def()


def test_assets(repo):
    assert {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()} == ASSETS


def test_checks(repo):
    assert {(k.asset_key.to_user_string(), k.name) for k in repo.asset_graph.asset_check_keys} == CHECKS


def test_blocking_checks_guard_the_flow(repo):
    blocking = {
        (spec.asset_key.to_user_string(), spec.name)
        for ad in repo.asset_graph.assets_defs
        for spec in ad.check_specs
        if spec.blocking
    }
    blocking |= {
        (spec.asset_key.to_user_string(), spec.name)
        for cd in defs.asset_checks or []
        for spec in cd.check_specs
        if spec.blocking
    }
    for gate in [
        "auc_floor",
        "sharpe_vs_production",
        "max_drawdown",
        "weights_finite",
        "output_shape_range",
        "leakage",
    ]:
        assert ("candidate_model", gate) in blocking
    assert ("market_bars", "market_bars_schema") in blocking


def test_jobs_sensors_schedules(repo):
    assert {j.name for j in repo.get_all_jobs() if not j.name.startswith("__")} == JOBS
    assert {s.name for s in repo.sensor_defs} == SENSORS
    assert {s.name for s in repo.schedule_defs} == SCHEDULES


def test_every_asset_has_a_description(repo):
    for key in repo.asset_graph.get_all_asset_keys():
        node = repo.asset_graph.get(key)
        assert node.description, f"{key.to_user_string()} has no business docstring"


def test_partitions_are_compatible(repo):
    bars = repo.asset_graph.get(dg.AssetKey("market_bars")).partitions_def
    feats = repo.asset_graph.get(dg.AssetKey("bar_features")).partitions_def
    assert bars == feats and isinstance(bars, dg.MultiPartitionsDefinition)
    assert {d.name for d in bars.partitions_defs} == {"date", "instrument"}


def test_daily_schedules_request_yesterday():
    repo = defs.get_repository_def()
    sched = {s.name: s for s in repo.schedule_defs}
    when = dt.datetime(2024, 5, 2, 0, 10, tzinfo=dt.timezone.utc)
    # The daemon evaluates schedules with the code location's resources (the settings among them).
    resources = repo.get_top_level_resources()
    ctx = dg.build_schedule_context(scheduled_execution_time=when, repository_def=repo, resources=resources)
    reqs = list(sched["daily_data_pipeline"].evaluate_tick(ctx).run_requests)
    assert len(reqs) == 8 and {r.partition_key.keys_by_dimension["date"] for r in reqs} == {"2024-05-01"}
    ctx = dg.build_schedule_context(
        scheduled_execution_time=when.replace(minute=40), repository_def=repo, resources=resources
    )
    (paper,) = sched["daily_paper_trading"].evaluate_tick(ctx).run_requests
    assert paper.partition_key == "2024-05-01"


def test_training_recipe_is_valid_config_for_the_training_job():
    from autotrader_assets.defs.training.schedules import WEEKLY_TRAINING_CONFIG

    job = defs.resolve_job_def("training_job")
    dg.validate_run_config(job, WEEKLY_TRAINING_CONFIG)
    assert WEEKLY_TRAINING_CONFIG["ops"]["training_dataset"]["config"]["last_n_days"] == 28


def _settings_in(tmp_path, **changes):
    """The environment's settings with every store under ``tmp_path``, plus ``changes``."""
    base = load_settings()
    return dataclasses.replace(
        base,
        home=tmp_path,
        dagster_home=tmp_path / "dagster_home",
        warehouse_path=tmp_path / "warehouse.duckdb",
        archive_uri=str(tmp_path / "archive"),
        artifacts_uri=str(tmp_path / "artifacts"),
        registry_url=f"sqlite:///{tmp_path / 'registry.db'}",
        **changes,
    )


def test_build_definitions_hands_its_settings_to_the_bodies(tmp_path):
    # Non-default breaker limits, not in the environment: only the settings resource carries them.
    thresholds = dataclasses.replace(Thresholds(), breaker_drawdown=0.07, breaker_daily_loss=0.03)
    location = build_definitions(_settings_in(tmp_path, thresholds=thresholds))
    assert location.resources["settings"].thresholds.breaker_drawdown == 0.07

    job = location.resolve_implicit_global_asset_job_def()
    only_breaker = job.get_subset(
        asset_selection=set(), asset_check_selection={dg.AssetCheckKey(dg.AssetKey("paper_trading"), "circuit_breaker")}
    )
    with dg.instance_for_test() as instance:
        result = only_breaker.execute_in_process(instance=instance)
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.passed
    assert evaluation.metadata["drawdown_limit"].value == 0.07
    assert evaluation.metadata["daily_loss_limit"].value == 0.03


def test_build_definitions_refuses_settings_the_partitions_do_not_have(tmp_path):
    # Partitions are fixed at import; other instruments would make the schedule request
    # partitions that do not exist, so the mismatch is an error, not a silent mix.
    with pytest.raises(SettingsError, match="AUTOTRADER_INSTRUMENTS"):
        build_definitions(_settings_in(tmp_path, instruments=("BTCUSDT", "ETHUSDT")))
    with pytest.raises(SettingsError, match="AUTOTRADER_START_DATE"):
        build_definitions(_settings_in(tmp_path, start_date="2021-06-01"))


def test_no_definition_body_calls_get_settings():
    # Asset, check, sensor and schedule bodies (and the helpers they call) read the settings
    # resource, so build_definitions(settings) means what it says. Two uses stay, by design:
    # partitions.py builds the partitions at import from the process settings (see
    # definitions.check_partitions_match), and a factory may default an omitted
    # ``settings`` argument with ``settings or get_settings()``.
    import ast

    root = Path(__file__).resolve().parents[2] / "autotrader_assets" / "defs"
    offenders = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "partitions.py":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        defaults = {
            id(op.values[-1]) for op in ast.walk(tree) if isinstance(op, ast.BoolOp) and isinstance(op.op, ast.Or)
        }
        offenders += [
            f"{path.relative_to(root)}:{node.lineno}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Call)
            and getattr(node.func, "id", getattr(node.func, "attr", None)) == "get_settings"
            and id(node) not in defaults
        ]
    assert offenders == [], f"get_settings() called in {offenders}: take dg.ResourceParam[Settings] instead"
