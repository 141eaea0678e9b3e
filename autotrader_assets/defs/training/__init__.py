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

__all__ = [
    "candidate_model",
    "registered_model",
    "training_assets",
    "training_checks",
    "training_dataset",
    "training_job",
]
