"""The training job, and the recipe `make run` and the weekly schedule run it with."""

import dagster as dg

from autotrader_assets.concurrency import WAREHOUSE_WRITE_TAGS
from autotrader_assets.defs.training.assets import training_assets

#: The training recipe `make run` and the weekly schedule use: a 15-minute label horizon, 30% of
#: the window held out (several daily returns for the test Sharpe), and 0.6/0.4 signal thresholds,
#: which paper trading later reads back from the registry params.
TRAINING_RECIPE = {
    "ops": {
        "training_dataset": {"config": {"horizon": 15}},
        "candidate_model": {"config": {"test_fraction": 0.3, "long_threshold": 0.6, "short_threshold": 0.4}},
    }
}

training_job = dg.define_asset_job(
    "training_job",
    selection=dg.AssetSelection.assets(*training_assets),
    # training_dataset writes the warehouse: one writer at a time in production (concurrency.py).
    tags=WAREHOUSE_WRITE_TAGS,
    description="Build the training dataset, train and gate a candidate, register it as staging.",
)
