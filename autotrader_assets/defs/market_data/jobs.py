"""Jobs and schedules of the data pipeline."""
from __future__ import annotations

import datetime as dt

import dagster as dg

from autotrader_assets.defs.market_data.assets import RESTORE_TAG, market_bars, market_bars_freshness
from autotrader_assets.defs.market_data.partitions import market_partitions, partition_key
from autotrader_assets.settings import get_settings

data_pipeline_job = dg.define_asset_job(
    name="data_pipeline",
    selection=dg.AssetSelection.assets(market_bars).downstream(depth=None)
    - dg.AssetSelection.groups("training", "deployment", "trading", "monitoring"),
    partitions_def=market_partitions(),
    description="market_bars -> dbt staging and feature models, for the selected date x instrument partitions.",
)

data_rollback_job = dg.define_asset_job(
    name="data_rollback",
    selection=dg.AssetSelection.assets(market_bars).downstream(depth=None)
    - dg.AssetSelection.groups("training", "deployment", "trading", "monitoring"),
    partitions_def=market_partitions(),
    # A job tag, not run config: single-run backfill jobs cannot carry a PartitionedConfig.
    tags={RESTORE_TAG: "true"},
    description="Restore the selected date x instrument partitions from the archive over the warehouse, "
    "then rebuild the feature models downstream of them. Refuses (writing nothing) if any archive is missing.",
)

freshness_job = dg.define_asset_job(
    name="market_data_freshness",
    selection=dg.AssetSelection.checks(market_bars_freshness),
    description="Evaluate the market-data freshness check.",
)


@dg.schedule(job=data_pipeline_job, cron_schedule="10 0 * * *", execution_timezone="UTC")
def daily_data_pipeline(context: dg.ScheduleEvaluationContext):
    """Yesterday's bars for every instrument, one run per instrument, shortly after midnight UTC."""
    day = (context.scheduled_execution_time.astimezone(dt.timezone.utc).date() - dt.timedelta(days=1)).isoformat()
    for instrument in get_settings().instruments:
        yield dg.RunRequest(run_key=f"{day}|{instrument}", partition_key=partition_key(day, instrument))


freshness_schedule = dg.ScheduleDefinition(
    name="market_data_freshness_hourly",
    job=freshness_job,
    cron_schedule="5 * * * *",
    execution_timezone="UTC",
)
