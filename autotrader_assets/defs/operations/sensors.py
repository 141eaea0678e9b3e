"""A run that failed to launch is requested again, with a critical event each time, never dropped.

Dagster marks a run FAILURE without ever starting it when its launch fails: the run launcher
raised (the queue daemon or ``submit_run``: a ``RUN_STARTING`` event, an engine event carrying the
launcher's error, then ``RUN_FAILURE``), or run monitoring gave up on a run stuck in STARTING (an
ECS task that never came up). Either way no ``RUN_START`` event was written, so the run record's
``start_time`` is None; a run that started and then failed has one. Only the first kind is a
launch failure: its steps never ran, so requesting the same job, config, tags and partition again
loses nothing and repeats nothing.

``run_launch_failure_sensor`` records a critical ``run_launch_failed`` event for every launch
failure and requests the run again (run key ``<first run id>-retry-<n>``, tags
``autotrader/launch_retry_of`` = the first run's id and ``autotrader/launch_attempt`` = n + 1) up
to :data:`MAX_RELAUNCHES` times; when the last one fails to launch too, its event says it gave up
and what the operator does. ``emergency_rollback`` is left to ``circuit_breaker_sensor``, which
already follows and retries the runs it requests (``defs/trading/rollback_decision.py``).
"""

from __future__ import annotations

from typing import Mapping

import dagster as dg
from dagster._core.storage.tags import (
    BACKFILL_ID_TAG,
    PARENT_RUN_ID_TAG,
    PARTITION_NAME_TAG,
    ROOT_RUN_ID_TAG,
    RUN_KEY_TAG,
    SCHEDULE_NAME_TAG,
    SENSOR_NAME_TAG,
    TICK_ID_TAG,
    WILL_RETRY_TAG,
)

from autotrader_assets.defs.deployment import deployment_jobs
from autotrader_assets.defs.market_data import market_data_jobs
from autotrader_assets.defs.monitoring import monitoring_jobs
from autotrader_assets.defs.operations.jobs import backup_job
from autotrader_assets.defs.trading import trading_jobs
from autotrader_assets.defs.trading.rollback_decision import ROLLBACK_JOB
from autotrader_assets.defs.training import training_jobs
from autotrader_assets.resources import RegistryResource
from deploy_ops import events
from deploy_ops.state import DeploymentStateStore

EVENT_KIND = "run_launch_failed"
#: Requests after the first launch failed: the first run and 3 more launches, then a person decides.
MAX_RELAUNCHES = 3
#: The id of the run whose launch failed first (every relaunch carries it).
RETRY_OF_TAG = "autotrader/launch_retry_of"
#: Which launch this run is: 2 for the first relaunch (the first run, untagged, is launch 1).
ATTEMPT_TAG = "autotrader/launch_attempt"
#: Tags the daemon writes for the request that made a run: the relaunch is this sensor's request,
#: not that schedule's, sensor's tick or backfill's (a backfill would count it as its own run).
_REQUEST_TAGS = frozenset(
    {
        RUN_KEY_TAG,
        SENSOR_NAME_TAG,
        SCHEDULE_NAME_TAG,
        TICK_ID_TAG,
        BACKFILL_ID_TAG,
        PARENT_RUN_ID_TAG,
        ROOT_RUN_ID_TAG,
        WILL_RETRY_TAG,
    }
)

#: Every job this sensor may request again: the code location's jobs but the emergency rollback.
RELAUNCHABLE_JOBS = [
    job
    for job in (*market_data_jobs, *training_jobs, *deployment_jobs, *trading_jobs, *monitoring_jobs, backup_job)
    if job.name != ROLLBACK_JOB
]


def launch_attempt(tags: Mapping[str, str]) -> int:
    """Which launch of its run a run is (1 for a run this sensor did not request)."""
    raw = tags.get(ATTEMPT_TAG, "1")
    return int(raw) if raw.isdigit() and int(raw) >= 1 else 1


def relaunch_tags(tags: Mapping[str, str], root_run_id: str, attempt: int) -> dict[str, str]:
    """The failed run's own tags (partition, priority, reasons) for its next launch ``attempt``."""
    kept = {k: v for k, v in tags.items() if k not in _REQUEST_TAGS}
    kept[RETRY_OF_TAG] = root_run_id
    kept[ATTEMPT_TAG] = str(attempt)
    return kept


def launch_error(instance: dg.DagsterInstance, run_id: str, fallback: str) -> str:
    """The launcher's error: the last engine event of the run that carries one."""
    message = None
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        data = record.dagster_event.engine_event_data if record.dagster_event else None
        if data is not None and data.error is not None:
            error = data.error
            while error.cause is not None:
                error = error.cause  # the launcher's own exception, not Dagster's wrapper
            message = error.message.strip() or record.dagster_event.message
    return message or fallback or "the run failed before it started"


@dg.run_failure_sensor(
    name="run_launch_failure_sensor",
    monitor_all_code_locations=False,
    request_jobs=RELAUNCHABLE_JOBS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=f"A failed run that never started (launch failure) -> critical event and the same run requested "
    f"again, up to {MAX_RELAUNCHES} times; emergency_rollback is circuit_breaker_sensor's.",
)
def run_launch_failure_sensor(context: dg.RunFailureSensorContext, registry: RegistryResource):
    run = context.dagster_run
    record = context.instance.get_run_record_by_id(run.run_id)
    if record is not None and record.start_time is not None:
        return dg.SkipReason(f"run {run.run_id} started before it failed: not a launch failure")
    if run.job_name == ROLLBACK_JOB:
        return dg.SkipReason(f"{ROLLBACK_JOB} run {run.run_id}: circuit_breaker_sensor retries it")
    if run.tags.get(WILL_RETRY_TAG) == "true":
        # Dagster's own run retries will launch it again; a second request would run it twice.
        return dg.SkipReason(f"run {run.run_id} is retried by Dagster's run retries")
    tags = dict(run.tags)
    root = tags.get(RETRY_OF_TAG, run.run_id)
    attempt = launch_attempt(tags)
    error = launch_error(context.instance, run.run_id, context.failure_event.message or "")
    details = {
        "run_id": run.run_id,
        "job": run.job_name,
        "first_run_id": root,
        "attempt": attempt,
        "partition": tags.get(PARTITION_NAME_TAG),
        "error": error[:2000],
    }
    state = DeploymentStateStore(registry.url)
    relaunchable = {job.name for job in RELAUNCHABLE_JOBS}
    if run.job_name not in relaunchable or attempt > MAX_RELAUNCHES:
        why = (
            f"after {attempt} launches"
            if run.job_name in relaunchable
            else f"{run.job_name} is not a job this sensor can request (an ad-hoc selection?)"
        )
        events.record(
            state,
            EVENT_KIND,
            "critical",
            f"run {run.run_id} of {run.job_name} failed to launch; gave up {why}: {error}. Fix the launch "
            f"(run launcher, image, task definition, code location) and launch {run.job_name} again by hand",
            {**details, "gave_up": True},
        )
        context.log.error(f"run {run.run_id} of {run.job_name} failed to launch; gave up {why}")
        return dg.SkipReason(f"gave up on run {root} of {run.job_name} {why}")
    retry = attempt  # the n-th relaunch is launch n + 1
    run_key = f"{root}-retry-{retry}"
    events.record(
        state,
        EVENT_KIND,
        "critical",
        f"run {run.run_id} of {run.job_name} failed to launch (launch {attempt} of "
        f"{MAX_RELAUNCHES + 1}): {error}; requested again as {run_key}",
        {**details, "gave_up": False, "next_run_key": run_key},
    )
    context.log.warning(f"run {run.run_id} of {run.job_name} failed to launch; requesting {run_key}")
    return dg.RunRequest(
        run_key=run_key,
        job_name=run.job_name,
        run_config=run.run_config,
        tags=relaunch_tags(tags, root, attempt + 1),
        partition_key=tags.get(PARTITION_NAME_TAG),
        # None is the whole job; a subset (empty check selection included) is what the run ran.
        asset_selection=list(run.asset_selection) if run.asset_selection is not None else None,
        asset_check_keys=list(run.asset_check_selection) if run.asset_check_selection is not None else None,
    )
