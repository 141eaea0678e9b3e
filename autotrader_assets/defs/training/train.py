"""Seeded, reproducible CPU training of a candidate model over purged walk-forward folds.

Every fold fits a fresh model on its training rows (scaler fitted on those rows only), with
Adam on ``BCEWithLogitsLoss`` in shuffled mini-batches, and stops early when the validation
loss has not improved for ``patience`` epochs, restoring the best epoch's weights. The fold
metrics estimate how the recipe generalises; the model that becomes the candidate bundle is
the last fold's, because it was fitted on the largest (most recent) expanding window and was
early-stopped on data it never trained on.

No Dagster imports.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import log_loss, roc_auc_score
from torch import nn

from autotrader_assets.defs.training.splits import Fold, WalkForwardPlan
from deploy_ops.models.bundle import MODEL_CLASSES, ModelBundle, StandardScaler, build_model

#: ``on_epoch(fold_label, epoch, train_loss, val_loss)``; lets the asset log progress.
EpochCallback = Callable[[str, int, float, float], None]


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run; stored as the registry ``params``."""

    model_class: str = "mlp"
    hidden: tuple[int, ...] = (32, 16)
    dropout: float = 0.1
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 512
    max_epochs: int = 30
    patience: int = 3
    seed: int = 7

    def __post_init__(self) -> None:
        if self.model_class not in MODEL_CLASSES:
            raise ValueError(f"unknown model class {self.model_class!r}; known: {sorted(MODEL_CLASSES)}")
        if self.batch_size < 1 or self.max_epochs < 1 or self.patience < 1:
            raise ValueError("batch_size, max_epochs and patience must all be >= 1")
        if not (self.learning_rate > 0) or self.weight_decay < 0:
            raise ValueError("learning_rate must be > 0 and weight_decay >= 0")
        if not (0.0 <= self.dropout < 1.0):
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if any(int(h) < 1 for h in self.hidden):
            raise ValueError(f"hidden layer widths must be >= 1, got {self.hidden}")

    def model_kwargs(self) -> dict[str, Any]:
        if self.model_class == "mlp":
            return {"hidden": [int(h) for h in self.hidden], "dropout": float(self.dropout)}
        return {}

    def as_params(self) -> dict[str, Any]:
        params = asdict(self)
        params["hidden"] = list(self.hidden)
        return params


@dataclass
class TrainingCurve:
    """Mean training loss and validation loss per epoch; ``best_epoch`` is 1-based."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False

    @property
    def epochs_run(self) -> int:
        return len(self.train_loss)


@dataclass
class FoldReport:
    index: int
    split: dict[str, Any]
    curve: TrainingCurve
    val_metrics: dict[str, float]
    train_metrics: dict[str, float]

    def summary(self) -> dict[str, Any]:
        return {
            **self.split,
            "best_epoch": self.curve.best_epoch,
            "epochs_run": self.curve.epochs_run,
            "stopped_early": self.curve.stopped_early,
            **{f"val_{k}": v for k, v in self.val_metrics.items()},
            **{f"train_{k}": v for k, v in self.train_metrics.items()},
        }


#: ``on_fold(report)`` after each fold finishes.
FoldCallback = Callable[[FoldReport], None]


@dataclass
class TrainingResult:
    """The candidate bundle (last fold's model) and what every fold measured."""

    bundle: ModelBundle
    folds: list[FoldReport]

    @property
    def final_fold(self) -> FoldReport:
        return self.folds[-1]

    def fold_metrics(self) -> list[dict[str, Any]]:
        return [f.summary() for f in self.folds]

    def cv_summary(self) -> dict[str, float]:
        aucs = [f.val_metrics["auc"] for f in self.folds]
        losses = [f.val_metrics["log_loss"] for f in self.folds]
        return {
            "cv_auc_mean": float(np.mean(aucs)),
            "cv_auc_std": float(np.std(aucs)),
            "cv_log_loss_mean": float(np.mean(losses)),
        }


def classification_metrics(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Log loss, ROC AUC, accuracy at 0.5 and mean confidence ``|p - 0.5| * 2``.

    AUC is undefined with a single class; that is raised, not papered over with 0.5.
    """
    y = np.asarray(y).astype(np.int64).ravel()
    proba = np.asarray(proba, dtype=np.float64).ravel()
    if len(y) != len(proba) or len(y) == 0:
        raise ValueError(f"need equal, non-empty labels and probabilities; got {len(y)} and {len(proba)}")
    if not np.isfinite(proba).all() or (proba < 0).any() or (proba > 1).any():
        raise ValueError("probabilities must be finite and within [0, 1]")
    if len(np.unique(y)) < 2:
        raise ValueError(f"AUC is undefined: all {len(y)} labels are {int(y[0])}")
    return {
        "log_loss": float(log_loss(y, np.clip(proba, 1e-7, 1 - 1e-7), labels=[0, 1])),
        "auc": float(roc_auc_score(y, proba)),
        "accuracy": float(((proba > 0.5).astype(np.int64) == y).mean()),
        "avg_confidence": float(np.mean(np.abs(proba - 0.5) * 2.0)),
        "n": int(len(y)),
    }


def feature_matrix(frame: pd.DataFrame, feature_columns: Sequence[str]) -> np.ndarray:
    """The feature columns as a float64 matrix; missing columns or non-finite values are errors."""
    missing = [c for c in feature_columns if c not in frame.columns]
    if missing:
        raise ValueError(f"frame is missing feature columns {missing}")
    x = frame[list(feature_columns)].to_numpy(dtype=np.float64)
    if not np.isfinite(x).all():
        bad = [c for c in feature_columns if not np.isfinite(frame[c].to_numpy(dtype=np.float64)).all()]
        raise ValueError(f"feature columns contain NaN or infinite values: {bad}")
    return x


def label_vector(frame: pd.DataFrame, label_column: str = "label") -> np.ndarray:
    if label_column not in frame.columns:
        raise ValueError(f"frame has no label column {label_column!r}")
    y = frame[label_column].to_numpy()
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0 or 1; found {sorted(set(np.unique(y)) - {0, 1})[:5]}")
    return y.astype(np.float32)


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    """Deterministic kernels for the duration of a fit, without leaking the global switch."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def _mean_loss(model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    model.eval()
    total = 0.0
    with torch.inference_mode():
        for start in range(0, len(x), batch):
            xb, yb = x[start : start + batch], y[start : start + batch]
            total += float(loss_fn(model(xb), yb)) * len(xb)
    return total / len(x)


def fit_model(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    feature_names: Sequence[str],
    config: TrainConfig,
    on_epoch: EpochCallback | None = None,
    label: str = "fit",
) -> tuple[ModelBundle, TrainingCurve]:
    """Fit one model with early stopping on ``(x_val, y_val)``; return its bundle and curve."""
    x_train = np.asarray(x_train, dtype=np.float64)
    x_val = np.asarray(x_val, dtype=np.float64)
    if x_train.ndim != 2 or x_val.ndim != 2 or x_train.shape[1] != x_val.shape[1]:
        raise ValueError(f"incompatible feature shapes {x_train.shape} and {x_val.shape}")
    if x_train.shape[1] != len(feature_names):
        raise ValueError(f"{x_train.shape[1]} feature columns but {len(feature_names)} feature names")
    if len(x_train) == 0 or len(x_val) == 0:
        raise ValueError("training and validation sets must both be non-empty")
    if len(y_train) != len(x_train) or len(y_val) != len(x_val):
        raise ValueError("labels and features differ in length")

    scaler = StandardScaler.fit(x_train)
    xt = torch.from_numpy(scaler.transform(x_train))
    yt = torch.as_tensor(np.asarray(y_train, dtype=np.float32))
    xv = torch.from_numpy(scaler.transform(x_val))
    yv = torch.as_tensor(np.asarray(y_val, dtype=np.float32))

    with _deterministic():
        # Seeding the global generator fixes weight init and dropout masks; a private
        # generator fixes the batch order independently of anything else drawing numbers.
        torch.manual_seed(config.seed)
        batch_gen = torch.Generator().manual_seed(config.seed)
        model = build_model(config.model_class, n_features=len(feature_names), **config.model_kwargs())
        optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
        loss_fn = nn.BCEWithLogitsLoss()

        curve = TrainingCurve()
        best_loss = math.inf
        best_state = copy.deepcopy(model.state_dict())
        stale = 0
        for epoch in range(1, config.max_epochs + 1):
            model.train()
            order = torch.randperm(len(xt), generator=batch_gen)
            running = 0.0
            for start in range(0, len(order), config.batch_size):
                idx = order[start : start + config.batch_size]
                optimizer.zero_grad()
                loss = loss_fn(model(xt[idx]), yt[idx])
                loss.backward()
                optimizer.step()
                running += float(loss.detach()) * len(idx)
            train_loss = running / len(xt)
            val_loss = _mean_loss(model, loss_fn, xv, yv, max(config.batch_size, 4096))
            if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
                raise FloatingPointError(f"{label}: loss diverged at epoch {epoch} ({train_loss}, {val_loss})")
            curve.train_loss.append(train_loss)
            curve.val_loss.append(val_loss)
            if on_epoch is not None:
                on_epoch(label, epoch, train_loss, val_loss)
            # A minimal relative improvement keeps float noise from resetting patience forever.
            if val_loss < best_loss - 1e-6 * abs(best_loss if math.isfinite(best_loss) else 1.0):
                best_loss = val_loss
                best_state = copy.deepcopy(model.state_dict())
                curve.best_epoch = epoch
                stale = 0
            else:
                stale += 1
                if stale >= config.patience:
                    curve.stopped_early = True
                    break
        model.load_state_dict(best_state)

    bundle = ModelBundle(
        model=model,
        model_class=config.model_class,
        model_kwargs=config.model_kwargs(),
        scaler=scaler,
        feature_names=list(feature_names),
        metadata={"best_epoch": curve.best_epoch, "n_train": int(len(x_train)), "seed": config.seed},
    )
    return bundle, curve


def train_walk_forward(
    frame: pd.DataFrame,
    feature_columns: Sequence[str],
    plan: WalkForwardPlan,
    config: TrainConfig,
    on_epoch: EpochCallback | None = None,
    label_column: str = "label",
    on_fold: FoldCallback | None = None,
) -> TrainingResult:
    """Fit one model per fold of ``plan``; the last fold's model becomes the candidate."""
    x = feature_matrix(frame, feature_columns)
    y = label_vector(frame, label_column)
    reports: list[FoldReport] = []
    bundle: ModelBundle | None = None
    for fold in plan.folds:
        bundle, curve = fit_model(
            x[fold.train_idx],
            y[fold.train_idx],
            x[fold.val_idx],
            y[fold.val_idx],
            feature_columns,
            config,
            on_epoch=on_epoch,
            label=f"fold {fold.index}",
        )
        report = FoldReport(
            index=fold.index,
            split=fold.describe(),
            curve=curve,
            val_metrics=classification_metrics(y[fold.val_idx], bundle.predict_proba(x[fold.val_idx])),
            train_metrics=classification_metrics(y[fold.train_idx], bundle.predict_proba(x[fold.train_idx])),
        )
        reports.append(report)
        if on_fold is not None:
            on_fold(report)
    if bundle is None:
        raise ValueError("the walk-forward plan has no folds")
    return TrainingResult(bundle=bundle, folds=reports)


def fit_shuffled_label_model(
    frame: pd.DataFrame,
    feature_columns: Sequence[str],
    fold: Fold,
    config: TrainConfig,
    label_column: str = "label",
) -> ModelBundle:
    """The same recipe on ``fold`` with labels permuted: a model that *cannot* have learned
    anything real, whose test AUC is the leakage guard's baseline."""
    x = feature_matrix(frame, feature_columns)
    y = label_vector(frame, label_column)
    rng = np.random.default_rng(config.seed + 1)
    y_train = rng.permutation(y[fold.train_idx])
    y_val = rng.permutation(y[fold.val_idx])
    bundle, _ = fit_model(
        x[fold.train_idx], y_train, x[fold.val_idx], y_val, feature_columns, config, label="shuffled baseline"
    )
    return bundle
