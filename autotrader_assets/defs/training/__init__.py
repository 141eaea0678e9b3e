"""Training: dataset with forward-return labels, purged walk-forward CV, PyTorch candidate,
test-period evaluation and backtest, promotion gates as blocking checks, registration, and
the weekly retrain."""

from autotrader_assets.defs.training.assets import (
    candidate_model,
    registered_model,
    training_assets,
    training_dataset,
)
from autotrader_assets.defs.training.checks import training_checks
from autotrader_assets.defs.training.jobs import TRAINING_RECIPE, training_job
from autotrader_assets.defs.training.schedules import WEEKLY_TRAINING_CONFIG, weekly_training

training_jobs = [training_job]
training_schedules = [weekly_training]

__all__ = [
    "TRAINING_RECIPE",
    "WEEKLY_TRAINING_CONFIG",
    "candidate_model",
    "registered_model",
    "training_assets",
    "training_checks",
    "training_dataset",
    "training_job",
    "training_jobs",
    "training_schedules",
    "weekly_training",
]
