"""The weekly retrain."""

import copy

import dagster as dg

from autotrader_assets.defs.training.jobs import TRAINING_RECIPE

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
