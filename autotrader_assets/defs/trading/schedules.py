"""Trading schedules: yesterday paper-traded after the nightly data run, the weekly report."""

import datetime as dt

import dagster as dg

from autotrader_assets.defs.trading.jobs import performance_report_job


@dg.schedule(job_name="paper_trading_job", cron_schedule="40 0 * * *", execution_timezone="UTC")
def daily_paper_trading(context: dg.ScheduleEvaluationContext):
    """Paper-trade yesterday once its bars and features have landed (the data run starts at 00:10)."""
    day = (context.scheduled_execution_time.astimezone(dt.timezone.utc).date() - dt.timedelta(days=1)).isoformat()
    return dg.RunRequest(
        run_key=f"paper-{day}",
        partition_key=day,
    )


weekly_performance_report = dg.ScheduleDefinition(
    name="weekly_performance_report",
    job=performance_report_job,
    cron_schedule="0 7 * * 1",
    execution_timezone="UTC",
    description="Refresh the paper account's metrics and charts every Monday morning.",
)
