"""Schedules that tie the domains together (each domain's own schedules live beside it)."""
import copy
import datetime as dt

import dagster as dg

from autotrader_assets.defs.training import TRAINING_RECIPE

#: Weekly retrain on the last 28 days of features, Sunday 02:00 UTC, after the nightly data run.
WEEKLY_TRAINING_CONFIG = copy.deepcopy(TRAINING_RECIPE)
WEEKLY_TRAINING_CONFIG["ops"]["training_dataset"]["config"]["last_n_days"] = 28

weekly_training = dg.ScheduleDefinition(
    name="weekly_training",
    job_name="training_job",
    cron_schedule="0 2 * * 0",
    execution_timezone="UTC",
    run_config=WEEKLY_TRAINING_CONFIG,
    description="Retrain, gate and register a candidate every week; deployment is a separate, gated step.",
)


@dg.schedule(job_name="paper_trading_job", cron_schedule="40 0 * * *", execution_timezone="UTC")
def daily_paper_trading(context: dg.ScheduleEvaluationContext):
    """Paper-trade yesterday once its bars and features have landed (the data run starts at 00:10)."""
    day = (context.scheduled_execution_time.astimezone(dt.timezone.utc).date() - dt.timedelta(days=1)).isoformat()
    return dg.RunRequest(
        run_key=f"paper-{day}",
        partition_key=day,
    )


performance_report_job = dg.define_asset_job(
    name="performance_report",
    selection=dg.AssetSelection.keys("trading_performance"),
    description="Recompute the paper account's metrics and charts from the warehouse.",
)

weekly_performance_report = dg.ScheduleDefinition(
    name="weekly_performance_report",
    job=performance_report_job,
    cron_schedule="0 7 * * 1",
    execution_timezone="UTC",
    description="Refresh the paper account's metrics and charts every Monday morning.",
)

platform_schedules = [weekly_training, daily_paper_trading, weekly_performance_report]
