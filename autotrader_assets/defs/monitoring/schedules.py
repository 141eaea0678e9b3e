"""The health check every 15 minutes, on the latest complete date (created stopped, like every schedule)."""

import datetime as dt

import dagster as dg

from autotrader_assets.defs.monitoring.jobs import health_check_job


def latest_date(scheduled: dt.datetime) -> str:
    """The latest partition at ``scheduled``: yesterday (UTC); today's is not complete yet."""
    return (scheduled.astimezone(dt.timezone.utc).date() - dt.timedelta(days=1)).isoformat()


@dg.schedule(
    name="health_check_every_15_minutes",
    job=health_check_job,
    cron_schedule="*/15 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Drift and health findings of the latest complete date, every 15 minutes.",
)
def health_check_every_15_minutes(context: dg.ScheduleEvaluationContext):
    day = latest_date(context.scheduled_execution_time)
    # A run key per tick: the same date is checked again as the day's paper trading and slots change.
    return dg.RunRequest(
        run_key=f"health-{context.scheduled_execution_time.astimezone(dt.timezone.utc):%Y-%m-%dT%H:%M}",
        partition_key=day,
    )
