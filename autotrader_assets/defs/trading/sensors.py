"""Trading sensors: the circuit breaker's answer to a trip, and paper trading recomputed after a
data rollback.

A data rollback rewrites bars and features for some dates; paper-trading results of those
dates (and, through the carried account state, of every later date) were computed from the
old data. Re-running ``paper_trading`` for the earliest affected date recomputes it and every
later computed date in one step.
"""

import json
import time
from typing import Any, Callable

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_START_TAG, PARTITION_NAME_TAG

from autotrader_assets.defs.market_data.jobs import data_rollback_job
from autotrader_assets.defs.trading.jobs import paper_trading_job
from autotrader_assets.defs.trading.rollback_decision import (
    ATTEMPT_TAG,
    ROLLBACK_JOB,
    TRIP_TAG,
    AttemptRun,
    RetryPolicy,
    RunLookup,
    follow_up,
    pending_rollbacks,
)
from autotrader_assets.resources import RegistryResource, WarehouseResource
from deploy_ops.trading.breaker import BreakerStore

#: How often circuit_breaker_sensor looks for trips (the first part of trip-to-known-good time).
BREAKER_SENSOR_SECONDS = 5


def build_circuit_breaker_sensor(
    job_name: str = ROLLBACK_JOB, retry: RetryPolicy = RetryPolicy(), clock: Callable[[], float] = time.time
) -> dg.SensorDefinition:
    """The sensor that answers a breaker trip with an alert event and the emergency rollback job,
    and follows that run until it succeeds, retrying within ``retry`` (``rollback_decision``).

    The job is referenced by name only; the Definitions it is loaded into must contain it. The
    cursor is JSON: the last trip event seen and the trips whose rollback is still followed."""

    @dg.sensor(
        name="circuit_breaker_sensor",
        job_name=job_name,
        # Every 5 s: the tick is one indexed query, and the trip-to-known-good time starts here.
        minimum_interval_seconds=BREAKER_SENSOR_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Circuit-breaker trips in the deployment event log -> alert event + emergency rollback run, "
        f"retried up to {retry.max_attempts} times with a critical event per failure.",
    )
    def circuit_breaker_sensor(context: dg.SensorEvaluationContext, registry: RegistryResource):
        event_cursor, tracked = parse_cursor(context.cursor)
        store = BreakerStore(registry.url)
        now = clock()
        retries, notes, tracked = follow_up(store, tracked, _lookup(context.instance, job_name), now, retry, job_name)
        requests, skipped, event_cursor = pending_rollbacks(store, event_cursor, job_name)
        for req in requests:
            tracked[str(req.trip_id)] = {"attempt": 1, "requested_at": now, "reported": False, "retry_at": None}
        notes.extend(skipped)
        for note in notes:
            context.log.info(note)
        context.update_cursor(json.dumps({"event": event_cursor, "trips": tracked}, sort_keys=True))
        wanted = requests + retries
        if not wanted:
            return dg.SkipReason(
                "; ".join(notes)
                or (
                    f"following the rollback of trip(s) {', '.join(sorted(tracked))}"
                    if tracked
                    else "no new circuit-breaker trips"
                )
            )
        return [dg.RunRequest(run_key=req.run_key, job_name=job_name, tags=req.tags) for req in wanted]

    return circuit_breaker_sensor


def parse_cursor(cursor: str | None) -> tuple[int, dict[str, dict[str, Any]]]:
    """(last trip event id, followed trips); a bare integer is the cursor of older versions."""
    if not cursor:
        return 0, {}
    text = cursor.strip()
    if text.isdigit():
        return int(text), {}
    data = json.loads(text)
    return int(data.get("event", 0)), {str(k): dict(v) for k, v in (data.get("trips") or {}).items()}


_FAILED = {dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


def _lookup(instance: dg.DagsterInstance, job_name: str) -> RunLookup:
    def lookup(trip_id: int, attempt: int) -> AttemptRun:
        tags = {TRIP_TAG: str(trip_id)}
        runs = instance.get_runs(filters=dg.RunsFilter(job_name=job_name, tags=tags), limit=20)
        # Runs of the first version of this sensor carry no attempt tag: they are attempt 1.
        mine = [r for r in runs if int(r.tags.get(ATTEMPT_TAG, "1")) == attempt]
        if not mine:
            return AttemptRun("missing")
        run = mine[0]
        if run.status == dg.DagsterRunStatus.SUCCESS:
            return AttemptRun("succeeded", run.run_id)
        if run.status in _FAILED:
            return AttemptRun("failed", run.run_id, _failure_message(instance, run))
        return AttemptRun("running", run.run_id)

    return lookup


def _failure_message(instance: dg.DagsterInstance, run: dg.DagsterRun) -> str:
    """The first step failure's error (the root cause), else the run failure's message."""
    try:
        for record in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
            error = record.dagster_event.step_failure_data.error
            while error is not None and error.cause is not None:
                error = error.cause  # Dagster wraps the op's exception: report the op's own
            if error is not None:
                return f"run {run.run_id} {run.status.value}: {error.message.strip()}"
        for record in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE):
            return f"run {run.run_id} {run.status.value}: {record.dagster_event.message or ''}".strip()
    except Exception as exc:  # the event says the run failed even when its logs cannot be read
        return f"run {run.run_id} {run.status.value} (its logs could not be read: {type(exc).__name__})"
    return f"run {run.run_id} {run.status.value}"


circuit_breaker_sensor = build_circuit_breaker_sensor()


def first_restored_date(tags: dict[str, str]) -> str | None:
    """The earliest date a data-rollback run restored, from its partition tags."""
    key = tags.get(ASSET_PARTITION_RANGE_START_TAG) or tags.get(PARTITION_NAME_TAG)
    if not key:
        return None
    return key.split("|", 1)[0]


def earliest_paper_date_from(warehouse: WarehouseResource, date: str) -> str | None:
    """The first already paper-traded date on or after ``date`` (None if nothing to redo)."""
    if not warehouse.table_exists("paper_account_state"):
        return None
    with warehouse.connect(read_only=True) as con:
        row = con.execute(
            "select cast(min(date) as varchar) from paper_account_state where date >= cast(? as date)", [date]
        ).fetchall()
    return row[0][0] if row and row[0][0] else None


@dg.run_status_sensor(
    name="data_rollback_reprocess_sensor",
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[data_rollback_job],
    request_job=paper_trading_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="A successful data rollback -> paper trading recomputed from the first restored date.",
)
def data_rollback_reprocess_sensor(context: dg.RunStatusSensorContext, warehouse: WarehouseResource):
    run = context.dagster_run
    restored = first_restored_date(run.tags)
    if restored is None:
        return dg.SkipReason(f"data rollback run {run.run_id} carries no partition tags")
    start = earliest_paper_date_from(warehouse, restored)
    if start is None:
        return dg.SkipReason(f"no paper-trading dates on or after {restored}: nothing to recompute")
    context.log.info(f"data rollback {run.run_id} restored from {restored}: paper trading recomputes from {start}")
    return dg.RunRequest(
        run_key=f"reprocess-after-{run.run_id}",
        partition_key=start,
        tags={"autotrader/reason": f"data rollback {run.run_id}"},
    )
