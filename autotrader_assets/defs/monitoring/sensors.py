"""Sensors that act on what monitoring finds: critical drift, and failed runs.

``feature_drift_sensor`` pages through the ``feature_drift_psi`` check results in the event log
(cursor = the last execution-record id handled). An ERROR result records a critical event, then
the decision (``decision.py``: rollback to the known-good version if its own reference sees no
drift on the same day, else retrain) with the numbers behind it, and requests that one job
(run key ``feature-drift-<date>-v<version>``: at most once per date and model version). A WARN
result records a warning event once per date, version and finding, and starts nothing.

``data_pipeline_failure_sensor`` sees every failed run of the code location: a warning event with
the run id, the failed step and its error; and a critical event when the ``data_pipeline`` job
failed for the same partition(s) in its last 3 runs.
"""

import datetime as dt
import json
from typing import Any

import dagster as dg
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    PARTITION_NAME_TAG,
    RUN_KEY_TAG,
)

from autotrader_assets.defs.deployment.jobs import model_rollback
from autotrader_assets.defs.monitoring import drift as dr
from autotrader_assets.defs.monitoring.checks import FEATURE_DRIFT_ASSET, FEATURE_DRIFT_PSI
from autotrader_assets.defs.monitoring.decision import DriftAlarm, decide
from autotrader_assets.defs.training.jobs import training_job
from autotrader_assets.defs.training.schedules import WEEKLY_TRAINING_CONFIG
from autotrader_assets.resources import RegistryResource, WarehouseResource
from autotrader_assets.settings import Settings
from deploy_ops import events
from deploy_ops.state import DeploymentStateStore

CHECK_KEY = dg.AssetCheckKey(FEATURE_DRIFT_ASSET, FEATURE_DRIFT_PSI)
#: Keys acted on (run keys, warnings) remembered in the cursor (enough for weeks of daily results).
_REMEMBERED = 500
CONSECUTIVE_FAILURES = 3
DATA_PIPELINE = "data_pipeline"


def _cursor(raw: str | None) -> dict[str, Any]:
    if not raw:
        return {"id": 0, "seen": []}
    data = json.loads(raw)
    return {"id": int(data.get("id", 0)), "seen": list(data.get("seen", []))}


def _value(meta: dict, key: str, default: Any = None) -> Any:
    entry = meta.get(key)
    return default if entry is None else getattr(entry, "value", entry)


def known_good_drift(
    alarm: DriftAlarm, instruments: list[str], registry: RegistryResource, warehouse: WarehouseResource
):
    """(known-good version, its drift on the alarm's rows or None, why it could not be judged)."""
    reg = registry.open()
    kg = reg.last_known_good()
    if kg is None or kg.version == alarm.version:
        return None, None, None
    bundle = reg.load_bundle(kg.version)
    reference = bundle.metadata.get("feature_reference")
    if not reference or not reference.get("quantile_edges"):
        return kg.version, None, "its bundle stores no feature reference"
    try:
        with warehouse.connect(read_only=True) as con:
            frame = dr.read_features(con, dt.date.fromisoformat(alarm.date), instruments, bundle.feature_names)
    except dr.DriftError as exc:
        return kg.version, None, str(exc)
    return kg.version, dr.drift_of_rows(frame, bundle.feature_names, reference, kg.version), None


@dg.sensor(
    name="feature_drift_sensor",
    jobs=[model_rollback, training_job],
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="ERROR results of feature_drift_psi -> critical event, then model_rollback to the known-good "
    "version (if it sees no drift on the same day) or training_job; WARN -> warning event.",
)
def feature_drift_sensor(
    context: dg.SensorEvaluationContext,
    registry: RegistryResource,
    warehouse: WarehouseResource,
    settings: dg.ResourceParam[Settings],
):
    cursor = _cursor(context.cursor)
    records = context.instance.event_log_storage.get_asset_check_execution_history(CHECK_KEY, limit=100)
    state = DeploymentStateStore(registry.url)
    warn = settings.thresholds.psi_warn
    requests, notes = [], []
    for record in sorted((r for r in records if r.id > cursor["id"]), key=lambda r: r.id):
        if record.status == AssetCheckExecutionRecordStatus.PLANNED:
            run = context.instance.get_run_by_id(record.run_id)
            if run is not None and not run.is_finished:
                break  # its result is still to come: look again next tick, from here
            cursor["id"] = record.id  # planned in a run that died: there will be no result
            continue
        cursor["id"] = record.id
        evaluation = record.event.dagster_event.event_specific_data if record.event else None
        if evaluation is None:
            continue
        if evaluation.passed:
            # Drift back under the thresholds: the event ends the open drift alerts of this date
            # and earlier ones (deploy_ops/alerting/catalog.py). Once per date: every health check
            # recomputes the date.
            date = str(record.partition or _value(dict(evaluation.metadata), "date"))
            if f"{date}|cleared" not in cursor["seen"]:
                cursor["seen"] = (cursor["seen"] + [f"{date}|cleared"])[-_REMEMBERED:]
                events.record(
                    state,
                    "feature_drift_cleared",
                    "info",
                    f"feature drift under {warn:g} on {date}",
                    {"date": date, "check_run_id": record.run_id},
                )
            continue
        meta = dict(evaluation.metadata)
        date = str(record.partition or _value(meta, "date"))
        if evaluation.severity == dg.AssetCheckSeverity.ERROR:
            versions = _value(meta, "model_versions", {}) or {}
            for version, over in sorted((_value(meta, "critical_versions", {}) or {}).items()):
                alarm = DriftAlarm(date, int(version), max(over.values()), over, record.run_id)
                # Every health check recomputes the date: act once per date and version.
                if alarm.run_key in cursor["seen"] or context.instance.get_runs(
                    filters=dg.RunsFilter(tags={RUN_KEY_TAG: alarm.run_key}), limit=1
                ):
                    notes.append(f"{alarm.run_key}: already acted on")
                    continue
                cursor["seen"] = (cursor["seen"] + [alarm.run_key])[-_REMEMBERED:]
                events.record(
                    state,
                    "feature_drift_critical",
                    "critical",
                    f"critical feature drift on {date}: model v{version} max PSI {alarm.max_psi:.3f} "
                    f"({', '.join(f'{k} {v:.3f}' for k, v in sorted(over.items(), key=lambda kv: -kv[1])[:5])})",
                    {"date": date, "model_version": int(version), "features_over": over, "check_run_id": record.run_id},
                )
                kg, kg_drift, kg_problem = known_good_drift(alarm, list(versions.get(version, [])), registry, warehouse)
                decision = decide(alarm, kg, kg_drift, kg_problem, warn, WEEKLY_TRAINING_CONFIG)
                events.record(
                    state,
                    "feature_drift_decision",
                    "info",
                    f"drift on {date}, v{version}: {decision.action} ({decision.job_name}). {decision.reason}",
                    {
                        "action": decision.action,
                        "job": decision.job_name,
                        "run_key": decision.run_key,
                        **decision.numbers,
                    },
                )
                context.log.warning(decision.reason)
                requests.append(
                    dg.RunRequest(
                        run_key=decision.run_key,
                        job_name=decision.job_name,
                        run_config=decision.run_config,
                        tags=decision.tags(),
                    )
                )
        else:
            level = str(_value(meta, "level", "warning"))
            key = f"{date}|{json.dumps(_value(meta, 'model_versions', {}), sort_keys=True)}|{level}"
            if key in cursor["seen"]:
                continue
            cursor["seen"] = (cursor["seen"] + [key])[-_REMEMBERED:]
            events.record(
                state,
                "feature_drift_warning",
                "warning",
                f"feature drift warning on {date}: {evaluation.description or level}",
                {"date": date, "level": level, "max_psi": _value(meta, "max_psi"), "check_run_id": record.run_id},
            )
    context.update_cursor(json.dumps(cursor))
    if not requests:
        return dg.SkipReason("; ".join(notes) if notes else "no new critical feature_drift_psi results")
    return requests


def partition_tags(tags: dict[str, str]) -> dict[str, str]:
    """The tags that name a run's partition(s): one key, or a range's two ends."""
    if PARTITION_NAME_TAG in tags:
        return {PARTITION_NAME_TAG: tags[PARTITION_NAME_TAG]}
    if ASSET_PARTITION_RANGE_START_TAG in tags:
        return {k: tags[k] for k in (ASSET_PARTITION_RANGE_START_TAG, ASSET_PARTITION_RANGE_END_TAG) if k in tags}
    return {}


def describe_partitions(tags: dict[str, str]) -> str:
    if PARTITION_NAME_TAG in tags:
        return tags[PARTITION_NAME_TAG]
    return "...".join(tags.get(k, "?") for k in (ASSET_PARTITION_RANGE_START_TAG, ASSET_PARTITION_RANGE_END_TAG))


@dg.run_failure_sensor(
    name="data_pipeline_failure_sensor",
    monitor_all_code_locations=False,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Any failed run -> warning event (run, failed step, error); data_pipeline failing for the same "
    "partition(s) 3 runs in a row -> critical event.",
)
def data_pipeline_failure_sensor(context: dg.RunFailureSensorContext, registry: RegistryResource) -> None:
    run = context.dagster_run
    state = DeploymentStateStore(registry.url)
    steps = context.get_step_failure_events()
    step = steps[0].step_key if steps else None
    error = None
    if steps and steps[0].event_specific_data is not None and steps[0].event_specific_data.error is not None:
        # Dagster wraps the op's exception ("Error occurred while executing op ..."); the cause says what broke.
        info = steps[0].event_specific_data.error
        while info.cause is not None:
            info = info.cause
        error = info.message.strip()
    error = error or context.failure_event.message or "run failed"
    events.record(
        state,
        "run_failed",
        "warning",
        f"run {run.run_id} of {run.job_name} failed" + (f" at step {step}" if step else "") + f": {error}",
        {"run_id": run.run_id, "job": run.job_name, "step": step, "error": error[:2000]},
    )
    if run.job_name != DATA_PIPELINE:
        return
    tags = partition_tags(dict(run.tags))
    if not tags:
        return
    recent = context.instance.get_runs(
        filters=dg.RunsFilter(job_name=DATA_PIPELINE, tags=tags), limit=CONSECUTIVE_FAILURES
    )
    if len(recent) == CONSECUTIVE_FAILURES and all(r.status == dg.DagsterRunStatus.FAILURE for r in recent):
        where = describe_partitions(tags)
        events.record(
            state,
            "data_pipeline_failing",
            "critical",
            f"data_pipeline failed for {where} in {CONSECUTIVE_FAILURES} consecutive runs; last: {error}",
            {"partitions": where, "run_ids": [r.run_id for r in recent], "step": step, "error": error[:2000]},
        )
        context.log.error(f"data_pipeline failed {CONSECUTIVE_FAILURES} times in a row for {where}")
