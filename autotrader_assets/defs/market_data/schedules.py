"""Schedules of the data pipeline: yesterday's bars nightly, the freshness check hourly."""

from __future__ import annotations

import datetime as dt

import dagster as dg

from autotrader_assets.defs.market_data.jobs import data_pipeline_job, freshness_job
from autotrader_assets.defs.market_data.partitions import partition_key
from autotrader_assets.settings import Settings


@dg.schedule(job=data_pipeline_job, cron_schedule="10 0 * * *", execution_timezone="UTC")
def daily_data_pipeline(context: dg.ScheduleEvaluationContext, settings: dg.ResourceParam[Settings]):
    """Yesterday's bars for every instrument, one run per instrument, shortly after midnight UTC."""
    day = (context.scheduled_execution_time.astimezone(dt.timezone.utc).date() - dt.timedelta(days=1)).isoformat()
    for instrument in settings.instruments:
        yield dg.RunRequest(run_key=f"{day}|{instrument}", partition_key=partition_key(day, instrument))


freshness_schedule = dg.ScheduleDefinition(
    name="market_data_freshness_hourly",
    job=freshness_job,
    cron_schedule="5 * * * *",
    execution_timezone="UTC",
)
