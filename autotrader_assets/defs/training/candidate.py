"""Train, evaluate and compare a candidate model: the plain-Python body of ``candidate_model``.

One call splits the dataset (purged walk-forward + untouched test period), trains over the
folds, evaluates the resulting bundle on the test rows, measures what the leakage guard needs
(training-rows AUC and a shuffled-label baseline's test AUC), evaluates the production model
on the very same test rows, and returns everything as a JSON-safe report that the promotion
gates read.

No Dagster imports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from autotrader_assets.defs.training.evaluate import BacktestConfig, Evaluation, evaluate_bundle, predict
from autotrader_assets.defs.training.splits import WalkForwardPlan, purged_walk_forward
from autotrader_assets.defs.training.train import (
    EpochCallback,
    FoldCallback,
    TrainConfig,
    TrainingResult,
    classification_metrics,
    feature_matrix,
    fit_shuffled_label_model,
    label_vector,
    train_walk_forward,
)
from deploy_ops.models.bundle import ModelBundle

PROBE_ROWS = 256


@dataclass(frozen=True)
class SplitConfig:
    n_folds: int = 4
    test_fraction: float = 0.2
    #: Gap between training and the next validation/test block, in bars; None = label horizon.
    embargo_bars: int | None = None
    bar_minutes: int = 1

    def embargo(self) -> pd.Timedelta | None:
        if self.embargo_bars is None:
            return None
        if self.embargo_bars < 0:
            raise ValueError(f"embargo_bars must be >= 0, got {self.embargo_bars}")
        return pd.Timedelta(minutes=self.embargo_bars * self.bar_minutes)


@dataclass
class ProductionComparison:
    """The production model evaluated on the candidate's test rows (or why it could not be)."""

    version: int
    evaluation: Evaluation | None
    unavailable_reason: str | None = None


@dataclass
class CandidateOutcome:
    training: TrainingResult
    plan: WalkForwardPlan
    test: Evaluation
    train_metrics: dict[str, float]
    shuffled_label_test_auc: float
    production: ProductionComparison | None
    probe: np.ndarray
    params: dict[str, Any]

    @property
    def bundle(self) -> ModelBundle:
        return self.training.bundle

    def report(self) -> dict[str, Any]:
        """JSON-safe summary: what the gates, the registry and the UI read."""
        production: dict[str, Any] | None = None
        if self.production is not None:
            production = {
                "version": self.production.version,
                "unavailable_reason": self.production.unavailable_reason,
                "test": None if self.production.evaluation is None else self.production.evaluation.metrics(),
            }
        return {
            "params": self.params,
            "feature_names": list(self.bundle.feature_names),
            "split": self.plan.describe(),
            "folds": self.training.fold_metrics(),
            "cv": self.training.cv_summary(),
            "test": self.test.metrics(),
            "train": dict(self.train_metrics),
            "shuffled_label_test_auc": float(self.shuffled_label_test_auc),
            "production": production,
            "probe": self.probe.tolist(),
        }


def feature_reference(frame: pd.DataFrame, feature_columns: Sequence[str], n_bins: int = 10) -> dict[str, Any]:
    """Quantile bin edges of each feature on the training rows and the rows' proportions in
    those bins, kept in the bundle so drift monitoring computes PSI against exactly the data the
    model learned from (the convention: ``defs/monitoring/psi.py``)."""
    if frame.empty:
        raise ValueError("no rows to describe")
    # Imported here: the monitoring package's sensors import the training job, which imports this module.
    from autotrader_assets.defs.monitoring.psi import fit_reference

    return fit_reference({col: frame[col].to_numpy(dtype=np.float64) for col in feature_columns}, n_bins)


def _evaluate_production(
    version: int, bundle: ModelBundle, test_frame: pd.DataFrame, backtest: BacktestConfig
) -> ProductionComparison:
    missing = [f for f in bundle.feature_names if f not in test_frame.columns]
    if missing:
        return ProductionComparison(
            version=version,
            evaluation=None,
            unavailable_reason=f"production v{version} needs features {missing} that the training dataset lacks",
        )
    return ProductionComparison(version=version, evaluation=evaluate_bundle(bundle, test_frame, backtest))


def train_candidate(
    frame: pd.DataFrame,
    feature_columns: Sequence[str],
    train_config: TrainConfig,
    backtest: BacktestConfig,
    split: SplitConfig = SplitConfig(),
    production: tuple[int, ModelBundle] | None = None,
    on_epoch: EpochCallback | None = None,
    on_fold: FoldCallback | None = None,
) -> CandidateOutcome:
    """Everything ``candidate_model`` computes, for a labelled frame (see ``dataset.py``)."""
    frame = frame.sort_values(["ts", "instrument"], kind="stable").reset_index(drop=True)
    plan = purged_walk_forward(
        frame["ts"],
        frame["label_end_ts"],
        n_folds=split.n_folds,
        test_fraction=split.test_fraction,
        embargo=split.embargo(),
    )
    training = train_walk_forward(frame, feature_columns, plan, train_config, on_epoch=on_epoch, on_fold=on_fold)
    bundle = training.bundle
    test_frame = frame.iloc[plan.test_idx].reset_index(drop=True)
    test = evaluate_bundle(bundle, test_frame, backtest)

    train_rows = frame.iloc[plan.final_fold.train_idx]
    train_metrics = classification_metrics(label_vector(train_rows), predict(bundle, train_rows))
    bundle.metadata["feature_reference"] = feature_reference(train_rows, feature_columns)
    shuffled = fit_shuffled_label_model(frame, feature_columns, plan.final_fold, train_config)
    shuffled_auc = classification_metrics(label_vector(test_frame), predict(shuffled, test_frame))["auc"]

    comparison = None
    if production is not None:
        comparison = _evaluate_production(production[0], production[1], test_frame, backtest)

    probe = feature_matrix(test_frame.iloc[:PROBE_ROWS], feature_columns)
    params = {
        **train_config.as_params(),
        **backtest.as_params(),
        "n_folds": split.n_folds,
        "test_fraction": split.test_fraction,
        "embargo": str(plan.embargo),
        "label_horizon": str(plan.horizon),
        "feature_columns": list(feature_columns),
    }
    return CandidateOutcome(
        training=training,
        plan=plan,
        test=test,
        train_metrics=train_metrics,
        shuffled_label_test_auc=shuffled_auc,
        production=comparison,
        probe=probe,
        params=params,
    )
