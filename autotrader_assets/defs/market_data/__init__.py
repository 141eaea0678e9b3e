"""Market data: sources (embedded replay, brokers, files), ``market_bars``, checks and jobs."""

from autotrader_assets.defs.market_data.assets import market_bars
from autotrader_assets.defs.market_data.checks import market_data_checks
from autotrader_assets.defs.market_data.jobs import data_pipeline_job, data_rollback_job, freshness_job
from autotrader_assets.defs.market_data.schedules import daily_data_pipeline, freshness_schedule

market_data_assets = [market_bars]
market_data_jobs = [data_pipeline_job, data_rollback_job, freshness_job]
market_data_schedules = [daily_data_pipeline, freshness_schedule]

__all__ = [
    "market_bars",
    "market_data_assets",
    "market_data_checks",
    "market_data_jobs",
    "market_data_schedules",
]
