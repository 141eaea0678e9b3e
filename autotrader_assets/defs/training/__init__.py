"""Training: dataset with forward-return labels, purged walk-forward CV, PyTorch candidate,
test-period evaluation and backtest, promotion gates as blocking checks, registration."""
from autotrader_assets.defs.training.assets import (
    candidate_model,
    registered_model,
    training_assets,
    training_checks,
    training_dataset,
    training_job,
)

#: The training recipe `make run` and the weekly schedule use: a 15-minute label horizon, 30% of
#: the window held out (several daily returns for the test Sharpe), and 0.6/0.4 signal thresholds,
#: which paper trading later reads back from the registry params.
TRAINING_RECIPE = {
    "ops": {
        "training_dataset": {"config": {"horizon": 15}},
        "candidate_model": {"config": {"test_fraction": 0.3, "long_threshold": 0.6, "short_threshold": 0.4}},
    }
}

__all__ = [
    "TRAINING_RECIPE",
    "candidate_model",
    "registered_model",
    "training_assets",
    "training_checks",
    "training_dataset",
    "training_job",
]
