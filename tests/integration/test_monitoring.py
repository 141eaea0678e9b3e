"""feature_drift + feature_drift_psi, model_health, and the sensors that act on them, through Dagster."""

from __future__ import annotations

import datetime as dt
import json

import dagster as dg
import duckdb
import pandas as pd
import pytest

from autotrader_assets.defs.monitoring import feature_drift, feature_drift_sensor, model_health
from autotrader_assets.defs.monitoring.sensors import data_pipeline_failure_sensor
from autotrader_assets.defs.training.schedules import WEEKLY_TRAINING_CONFIG
from autotrader_assets.resources import RegistryResource, WarehouseResource
from autotrader_assets.settings import get_settings
from deploy_ops import events
from deploy_ops.events import RUNBOOKS
from deploy_ops.state import DeploymentStateStore
from tests.support.monitoring import DAY, FEATURES, make_world, write_day

CHECK = dg.AssetCheckKey(dg.AssetKey("feature_drift"), "feature_drift_psi")


def resources(world) -> dict:
    return {
        "warehouse": WarehouseResource(path=str(world.warehouse)),
        "registry": RegistryResource(url=world.url, artifacts_uri=world.artifacts),
        "settings": get_settings(),
    }


def materialize_drift(world, instance, day: str = DAY, raise_on_error: bool = True):
    return dg.materialize(
        [feature_drift], partition_key=day, instance=instance, resources=resources(world), raise_on_error=raise_on_error
    )


def evaluation(result) -> dg.AssetCheckEvaluation:
    (ev,) = result.get_asset_check_evaluations()
    return ev


def tick(world, instance, cursor=None):
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources(world))
    out = feature_drift_sensor(context)
    return out, context.cursor


def kinds(world, kind):
    return [events.shape(e) for e in DeploymentStateStore(world.url).events_since(0, kinds=[kind])]


@pytest.fixture
def world(tmp_path):
    return make_world(tmp_path)


def test_critical_drift_records_then_rolls_back_to_the_known_good_version(world):
    # The day looks like v1's training rows (N(0,1)), not like v2's (N(3,1)) that served it.
    write_day(world.warehouse, DAY, center=0.0)
    with dg.instance_for_test() as instance:
        result = materialize_drift(world, instance)
        ev = evaluation(result)
        assert not ev.passed and ev.severity == dg.AssetCheckSeverity.ERROR
        meta = {k: v.value for k, v in ev.metadata.items()}
        assert meta["date"] == DAY and meta["max_psi"] > 0.3
        assert set(meta["critical_versions"][str(world.v2.version)]) == set(FEATURES)
        assert meta["psi_per_feature"].startswith("![PSI per feature](data:image/png;base64,")
        assert meta["worst_feature_histogram"].startswith("![reference vs current](data:image/png;base64,")
        assert "| model_version | feature | psi |" in meta["features"]
        lineage = result.asset_materializations_for_node("feature_drift")[0].metadata["lineage"].value
        assert lineage[str(world.v2.version)]["partitions"] == [f"{DAY}|BTCUSDT", f"{DAY}|ETHUSDT"]
        with duckdb.connect(str(world.warehouse)) as con:
            assert con.execute("select count(*) from feature_drift where level = 'critical'").fetchone()[0] == 3

        requests, cursor = tick(world, instance)
        (request,) = requests
        assert request.job_name == "model_rollback" and request.run_key == f"feature-drift-{DAY}-v{world.v2.version}"
        assert request.run_config["ops"]["rollback_model"]["config"]["to_version"] == world.v1.version
        (critical,) = kinds(world, "feature_drift_critical")
        assert critical.severity == "critical" and critical.runbook == RUNBOOKS["feature_drift_critical"]
        (decision,) = kinds(world, "feature_drift_decision")
        assert decision.details["action"] == "rollback" and decision.details["known_good_max_psi"] < 0.2
        assert decision.details["served_max_psi"] > 0.3

        # No second fire: the same result again, and then a recomputation of the same date.
        again, cursor = tick(world, instance, cursor)
        assert isinstance(again, dg.SkipReason) and "no new critical" in again.skip_message
        materialize_drift(world, instance)
        third, _ = tick(world, instance, cursor)
        assert isinstance(third, dg.SkipReason) and "already acted on" in third.skip_message
        assert len(kinds(world, "feature_drift_critical")) == 1


def test_drift_the_known_good_version_also_sees_means_retraining(world):
    write_day(world.warehouse, DAY, center=7.0)
    with dg.instance_for_test() as instance:
        materialize_drift(world, instance)
        (request,), _ = tick(world, instance)
    assert request.job_name == "training_job" and request.run_config == WEEKLY_TRAINING_CONFIG
    (decision,) = kinds(world, "feature_drift_decision")
    assert decision.details["action"] == "retrain" and "also drifts" in decision.details["why_not_rollback"]
    assert decision.details["known_good_max_psi"] > 0.2


def test_warning_drift_records_a_warning_and_starts_nothing(world):
    # A shift of half a standard deviation from v2's N(3, 1): PSI about 0.25, between 0.2 and 0.3.
    write_day(world.warehouse, DAY, center=2.5)
    with dg.instance_for_test() as instance:
        ev = evaluation(materialize_drift(world, instance))
        assert not ev.passed and ev.severity == dg.AssetCheckSeverity.WARN
        assert 0.2 < ev.metadata["max_psi"].value <= 0.3
        out, cursor = tick(world, instance)
        assert isinstance(out, dg.SkipReason)
        materialize_drift(world, instance)
        tick(world, instance, cursor)
    (warning,) = kinds(world, "feature_drift_warning")
    assert warning.severity == "warning" and warning.details["date"] == DAY
    assert kinds(world, "feature_drift_critical") == []


def test_an_old_bundle_without_a_reference_is_a_warning_that_says_so(tmp_path):
    world = make_world(tmp_path, old_production_bundle=True)
    write_day(world.warehouse, DAY, center=0.0)
    with dg.instance_for_test() as instance:
        ev = evaluation(materialize_drift(world, instance))
    assert not ev.passed and ev.severity == dg.AssetCheckSeverity.WARN
    assert "trained before bundles stored a feature reference" in ev.description


def test_a_day_no_model_served_is_a_warning_and_nothing_is_written(world):
    write_day(world.warehouse, DAY, center=0.0, version=None)
    with dg.instance_for_test() as instance:
        result = materialize_drift(world, instance)
    ev = evaluation(result)
    assert not ev.passed and ev.severity == dg.AssetCheckSeverity.WARN
    assert "no model was in production on 2024-03-05" in ev.description
    with duckdb.connect(str(world.warehouse)) as con:
        tables = {r[0] for r in con.execute("select table_name from information_schema.tables").fetchall()}
    assert "feature_drift" not in tables


def test_a_day_without_features_fails_with_the_cause(world):
    write_day(world.warehouse, "2024-03-04", center=0.0)
    with duckdb.connect(str(world.warehouse)) as con:
        con.execute("insert into model_confidence values ('2024-03-05', 'BTCUSDT', 0.2, 1, '2', 'blue', now())")
    with dg.instance_for_test() as instance:
        result = materialize_drift(world, instance, raise_on_error=False)
    assert not result.success
    message = result.get_step_failure_events()[0].step_failure_data.user_failure_data.description
    assert "bar_features has no rows for 2024-03-05 and ['BTCUSDT']" in message


def test_a_feature_column_missing_from_the_warehouse_is_named(world):
    write_day(world.warehouse, DAY, center=0.0, features=["f0", "f1"])
    with dg.instance_for_test() as instance:
        result = materialize_drift(world, instance, raise_on_error=False)
    message = result.get_step_failure_events()[0].step_failure_data.user_failure_data.description
    assert "bar_features lacks column(s) ['f2'] that the model was trained on" in message


def paper_day(warehouse, day: str, proba: float, wins: int, losses: int) -> None:
    ts = pd.date_range(day, periods=300, freq="1min")
    positions = pd.DataFrame({"date": pd.Timestamp(day).date(), "instrument": "BTCUSDT", "ts": ts, "proba": proba})
    exits = pd.date_range(day, periods=wins + losses, freq="10min")
    trades = pd.DataFrame({"date": pd.Timestamp(day).date(), "exit_ts": exits, "pnl": [1.0] * wins + [-1.0] * losses})
    with duckdb.connect(str(warehouse)) as con:
        con.register("p", positions)
        con.register("t", trades)
        con.execute("create table paper_positions as select * from p")
        con.execute("create table paper_trades as select * from t")


def test_model_health_collects_findings_with_runbooks_and_raises_new_ones_once(world):
    write_day(world.warehouse, DAY, center=0.0)
    paper_day(world.warehouse, DAY, proba=0.53, wins=10, losses=30)
    with dg.instance_for_test() as instance:
        materialize_drift(world, instance)
        result = dg.materialize([model_health], partition_key=DAY, instance=instance, resources=resources(world))
        meta = result.asset_materializations_for_node("model_health")[0].metadata
        assert meta["worst_severity"].value == "critical"
        dg.materialize([model_health], partition_key=DAY, instance=instance, resources=resources(world))
    with duckdb.connect(str(world.warehouse)) as con:
        rows = con.execute('select "check", severity, summary, runbook from model_health').df()
    by_check = {c: g for c, g in rows.groupby("check")}
    assert by_check["drift"]["severity"].tolist() == ["critical"]
    assert "3 feature(s) with PSI above 0.3" in by_check["drift"]["summary"].iloc[0]
    assert by_check["confidence"]["severity"].tolist() == ["warning"]
    assert "lowest 2-hour mean of max(p, 1-p) 0.530" in by_check["confidence"]["summary"].iloc[0]
    assert by_check["win_rate"]["severity"].tolist() == ["warning"]
    assert all(r.startswith("docs/runbooks/") for r in rows["runbook"])
    # No market_bars were published for the day: every expected bar is missing.
    assert "2024-03-05|BTCUSDT 100.0%" in by_check["data_quality"]["summary"].iloc[0]
    # Two runs, one event per new finding (drift is the sensor's to raise).
    raised = kinds(world, "model_health_finding")
    assert sorted(e.details["check"] for e in raised) == ["confidence", "data_quality", "win_rate"]


def _failing_data_pipeline() -> dg.JobDefinition:
    @dg.op
    def fetch_bars():
        raise ValueError("exchange answered 503")

    @dg.job(name="data_pipeline")
    def data_pipeline():
        fetch_bars()

    return data_pipeline


def test_data_pipeline_failure_sensor_warns_on_every_failure_and_pages_after_three(tmp_path):
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    registry = RegistryResource(url=url, artifacts_uri=str(tmp_path / "artifacts"))
    job = _failing_data_pipeline()
    with dg.instance_for_test() as instance:
        for n in range(3):
            result = job.execute_in_process(
                instance=instance, raise_on_error=False, tags={"dagster/partition": "2024-03-05|BTCUSDT"}
            )
            context = dg.build_run_status_sensor_context(
                sensor_name="data_pipeline_failure_sensor",
                dagster_event=result.get_run_failure_event(),
                dagster_instance=instance,
                dagster_run=result.dagster_run,
                resources={"registry": registry},
            ).for_run_failure()
            data_pipeline_failure_sensor(context)
            state = DeploymentStateStore(url)
            critical = [events.shape(e) for e in state.events_since(0, kinds=["data_pipeline_failing"])]
            assert len(critical) == (1 if n == 2 else 0)
    warnings = [events.shape(e) for e in state.events_since(0, kinds=["run_failed"])]
    assert len(warnings) == 3
    assert warnings[0].details["step"] == "fetch_bars" and "exchange answered 503" in warnings[0].details["error"]
    assert warnings[0].runbook == RUNBOOKS["run_failed"]
    assert critical[0].severity == "critical" and critical[0].details["partitions"] == "2024-03-05|BTCUSDT"
    assert len(critical[0].details["run_ids"]) == 3


def test_the_health_check_schedule_requests_the_latest_date():
    from autotrader_assets.definitions import defs

    repo = defs.get_repository_def()
    schedule = repo.get_schedule_def("health_check_every_15_minutes")
    assert schedule.cron_schedule == "*/15 * * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    when = dt.datetime(2024, 5, 2, 0, 15, tzinfo=dt.timezone.utc)
    context = dg.build_schedule_context(
        scheduled_execution_time=when, repository_def=repo, resources=repo.get_top_level_resources()
    )
    (request,) = schedule.evaluate_tick(context).run_requests
    assert request.partition_key == "2024-05-01"
    assert json.dumps(request.run_key) == '"health-2024-05-02T00:15"'


def test_make_run_computes_health_for_the_paper_traded_days_and_prints_findings(world):
    from autotrader_assets.defs.monitoring import monitoring_jobs
    from autotrader_assets.runner import health_summary, run_health_check

    write_day(world.warehouse, DAY, center=0.0)
    defs = dg.Definitions(assets=[feature_drift, model_health], jobs=monitoring_jobs, resources=resources(world))
    with dg.instance_for_test() as instance:
        report = run_health_check(defs, instance, [DAY])
    assert report.success and report.materializations == 2
    # The check's reason follows the name (the make run summary says why, df93980).
    (failed,) = report.checks_failed
    assert failed.startswith(f"{DAY} feature_drift:feature_drift_psi (ERROR): critical drift: max PSI")
    lines = health_summary(str(world.warehouse), [DAY])
    assert lines[0].startswith(f"  {DAY}  critical drift") and "[docs/runbooks/feature-drift.md#" in lines[0]


def test_drift_back_under_the_threshold_clears_the_warning_once(world):
    from deploy_ops.alerting import Outbox

    write_day(world.warehouse, DAY, center=2.5)
    with dg.instance_for_test() as instance:
        materialize_drift(world, instance)
        _, cursor = tick(world, instance)
        Outbox(DeploymentStateStore(world.url)).flush(None)
        write_day(world.warehouse, DAY, center=3.0)  # v2's own distribution: no drift
        assert evaluation(materialize_drift(world, instance)).passed
        _, cursor = tick(world, instance, cursor)
        materialize_drift(world, instance)
        tick(world, instance, cursor)  # every health check recomputes the day: cleared once
    (cleared,) = kinds(world, "feature_drift_cleared")
    assert cleared.details["date"] == DAY
    result = Outbox(DeploymentStateStore(world.url)).flush(None)
    assert result.resolved == 1 and Outbox(DeploymentStateStore(world.url)).open_alerts() == []
