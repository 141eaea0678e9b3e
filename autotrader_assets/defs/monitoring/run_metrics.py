"""Run outcomes as Prometheus metrics: two run-status sensors push, for every job of the code
location, the time of its last successful run and how many of its runs failed in a row.

Pushed to the Pushgateway group ``job=<Dagster job>, source=run_status`` with POST (only the
pushed names are replaced), so a failure keeps the job's last success time. Nothing is pushed when
``AUTOTRADER_PUSHGATEWAY_URL`` is unset, and a Pushgateway that is down costs a log warning, never
a failed tick. The alerts built on them: ``DataPipelineFailing`` (``data_pipeline`` failed 3 times
in a row) and ``DeploymentFailed`` (``deployment_pipeline`` failed).
"""

from __future__ import annotations

import time

import dagster as dg

from autotrader_assets.defs.monitoring.sensors import partition_tags
from autotrader_assets.settings import Settings
from deploy_ops import metrics_push

#: Runs looked at when counting failures in a row; more than any alert threshold needs.
STREAK_LOOKBACK = 20
GROUPING = {"source": "run_status"}


def failures_in_a_row(instance: dg.DagsterInstance, run: dg.DagsterRun) -> int:
    """Failed runs of ``run``'s job in a row, newest first, among runs of the same partition(s)
    (all of the job's runs when it is not partitioned), the failed ``run`` included."""
    tags = partition_tags(dict(run.tags))
    recent = instance.get_runs(filters=dg.RunsFilter(job_name=run.job_name, tags=tags), limit=STREAK_LOOKBACK)
    streak = 0
    for r in recent:  # newest first
        if r.status == dg.DagsterRunStatus.FAILURE:
            streak += 1
        elif r.is_finished:
            break
    return max(streak, 1)


def _push(context, settings: Settings, job: str, samples: list[metrics_push.Sample]) -> None:
    outcome = metrics_push.push(settings.pushgateway_url, job, samples, GROUPING, replace=False)
    if outcome.warning:
        context.log.warning(outcome.warning)


@dg.run_status_sensor(
    name="job_success_metrics_sensor",
    run_status=dg.DagsterRunStatus.SUCCESS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Any successful run -> the Pushgateway: the job's last success time, failures in a row 0 "
    "(when AUTOTRADER_PUSHGATEWAY_URL is set).",
)
def job_success_metrics_sensor(context: dg.RunStatusSensorContext, settings: dg.ResourceParam[Settings]):
    if not settings.pushgateway_url:
        return dg.SkipReason("AUTOTRADER_PUSHGATEWAY_URL is not set: nothing to push")
    run = context.dagster_run
    stats = context.instance.get_run_stats(run.run_id)
    finished = stats.end_time or time.time()
    _push(context, settings, run.job_name, metrics_push.job_success_samples(finished))
    return None


@dg.run_failure_sensor(
    name="job_failure_metrics_sensor",
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Any failed run -> the Pushgateway: the job's failures in a row (same partitions) "
    "(when AUTOTRADER_PUSHGATEWAY_URL is set).",
)
def job_failure_metrics_sensor(context: dg.RunFailureSensorContext, settings: dg.ResourceParam[Settings]):
    if not settings.pushgateway_url:
        return dg.SkipReason("AUTOTRADER_PUSHGATEWAY_URL is not set: nothing to push")
    run = context.dagster_run
    _push(context, settings, run.job_name, metrics_push.job_failure_samples(failures_in_a_row(context.instance, run)))
    return None
