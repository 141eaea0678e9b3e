"""Training: seeded reproducibility, scaler fitted on training rows only, early stopping."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from autotrader_assets.defs.training.splits import purged_walk_forward
from autotrader_assets.defs.training.train import (
    TrainConfig,
    classification_metrics,
    feature_matrix,
    fit_model,
    fit_shuffled_label_model,
    label_vector,
    train_walk_forward,
)

torch.set_num_threads(1)
FEATURES = ["f_signal", "f_noise", "f_drift"]


def _frame(n_ts: int = 900, instruments=("AAA", "BBB"), signal: float = 2.0, seed: int = 0) -> pd.DataFrame:
    """A learnable problem: the label depends on ``f_signal``; ``f_drift`` trends over time so the
    training rows' mean differs clearly from the full frame's."""
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2024-01-01", periods=n_ts, freq="1min")
    parts = []
    for instrument in instruments:
        f_signal = rng.normal(size=n_ts)
        logit = signal * f_signal
        label = (rng.random(n_ts) < 1 / (1 + np.exp(-logit))).astype(int)
        parts.append(
            pd.DataFrame(
                {
                    "instrument": instrument,
                    "ts": ts,
                    "label_end_ts": ts + pd.Timedelta(minutes=5),
                    "f_signal": f_signal,
                    "f_noise": rng.normal(size=n_ts),
                    "f_drift": np.linspace(0, 10, n_ts) + rng.normal(0, 0.1, n_ts),
                    "label": label,
                }
            )
        )
    return pd.concat(parts, ignore_index=True).sort_values(["ts", "instrument"]).reset_index(drop=True)


FAST = TrainConfig(model_class="mlp", hidden=(8,), max_epochs=6, patience=2, batch_size=128, seed=3)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return _frame()


@pytest.fixture(scope="module")
def plan(frame):
    return purged_walk_forward(frame["ts"], frame["label_end_ts"], n_folds=2, test_fraction=0.2)


def _state(bundle):
    return {k: v.clone() for k, v in bundle.model.state_dict().items()}


def test_same_seed_gives_identical_models_and_curves(frame, plan):
    a = train_walk_forward(frame, FEATURES, plan, FAST)
    b = train_walk_forward(frame, FEATURES, plan, FAST)
    sa, sb = _state(a.bundle), _state(b.bundle)
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [f.curve.val_loss for f in a.folds] == [f.curve.val_loss for f in b.folds]
    assert a.bundle.to_bytes() == b.bundle.to_bytes()


def test_different_seed_gives_a_different_model(frame, plan):
    a = train_walk_forward(frame, FEATURES, plan, FAST)
    c = train_walk_forward(frame, FEATURES, plan, TrainConfig(**{**FAST.as_params(), "hidden": (8,), "seed": 4}))
    sa, sc = _state(a.bundle), _state(c.bundle)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_training_does_not_change_global_determinism_flag(frame, plan):
    before = torch.are_deterministic_algorithms_enabled()
    train_walk_forward(frame, FEATURES, plan, FAST)
    assert torch.are_deterministic_algorithms_enabled() == before


def test_scaler_is_fitted_on_the_final_folds_training_rows_only(frame, plan):
    result = train_walk_forward(frame, FEATURES, plan, FAST)
    x = feature_matrix(frame, FEATURES)
    train_rows = x[plan.final_fold.train_idx]
    np.testing.assert_allclose(result.bundle.scaler.mean, train_rows.mean(axis=0))
    np.testing.assert_allclose(result.bundle.scaler.std, train_rows.std(axis=0))
    # the drifting feature makes "fitted on everything" distinguishable from "fitted on train"
    assert abs(result.bundle.scaler.mean[2] - x[:, 2].mean()) > 0.5


def test_model_learns_a_real_signal(frame, plan):
    config = TrainConfig(model_class="logistic", max_epochs=15, patience=3, batch_size=64, learning_rate=0.02, seed=1)
    finished = []
    result = train_walk_forward(frame, FEATURES, plan, config, on_fold=lambda f: finished.append(f.index))
    assert finished == [0, 1]
    assert result.final_fold.val_metrics["auc"] > 0.8
    x, y = feature_matrix(frame, FEATURES), label_vector(frame)
    test = classification_metrics(y[plan.test_idx], result.bundle.predict_proba(x[plan.test_idx]))
    assert test["auc"] > 0.8
    assert len(result.fold_metrics()) == 2 and result.cv_summary()["cv_auc_mean"] > 0.75


def test_early_stopping_stops_and_restores_the_best_epoch():
    # Pure noise with a big, over-parameterised net: validation loss turns up quickly.
    rng = np.random.default_rng(5)
    x_train, y_train = rng.normal(size=(300, 3)), rng.integers(0, 2, 300).astype(np.float32)
    x_val, y_val = rng.normal(size=(300, 3)), rng.integers(0, 2, 300).astype(np.float32)
    config = TrainConfig(hidden=(64, 64), dropout=0.0, learning_rate=0.02, max_epochs=60, patience=2, batch_size=16)
    seen: list[tuple[str, int]] = []
    bundle, curve = fit_model(
        x_train, y_train, x_val, y_val, FEATURES, config, on_epoch=lambda lbl, ep, tl, vl: seen.append((lbl, ep))
    )
    assert curve.stopped_early
    assert curve.epochs_run < config.max_epochs
    assert curve.epochs_run == curve.best_epoch + config.patience
    assert seen == [("fit", e) for e in range(1, curve.epochs_run + 1)]
    assert min(curve.val_loss) == curve.val_loss[curve.best_epoch - 1]
    # the returned weights are the best epoch's, not the last epoch's
    with torch.inference_mode():
        loss = torch.nn.BCEWithLogitsLoss()(
            bundle.model(torch.from_numpy(bundle.scaler.transform(x_val))), torch.from_numpy(y_val)
        )
    assert float(loss) == pytest.approx(curve.val_loss[curve.best_epoch - 1], rel=1e-5)
    assert float(loss) < curve.val_loss[-1]


def test_shuffled_label_model_learns_nothing(frame, plan):
    config = TrainConfig(model_class="logistic", max_epochs=10, patience=3, batch_size=64, learning_rate=0.02)
    bundle = fit_shuffled_label_model(frame, FEATURES, plan.final_fold, config)
    x, y = feature_matrix(frame, FEATURES), label_vector(frame)
    auc = classification_metrics(y[plan.test_idx], bundle.predict_proba(x[plan.test_idx]))["auc"]
    assert abs(auc - 0.5) < 0.1


def test_classification_metrics_values_and_errors():
    m = classification_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.6, 0.9]))
    assert m["auc"] == 1.0 and m["accuracy"] == 1.0 and m["n"] == 4
    assert m["avg_confidence"] == pytest.approx(np.mean([0.8, 0.2, 0.2, 0.8]))
    assert m["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.6, 0.6, 0.9])))
    with pytest.raises(ValueError, match="undefined"):
        classification_metrics(np.array([1, 1]), np.array([0.2, 0.8]))
    with pytest.raises(ValueError, match="within"):
        classification_metrics(np.array([0, 1]), np.array([0.2, 1.2]))


def test_bad_inputs_are_rejected(frame):
    with pytest.raises(ValueError, match="NaN"):
        feature_matrix(frame.assign(f_noise=np.nan), FEATURES)
    with pytest.raises(ValueError, match="missing"):
        feature_matrix(frame, [*FEATURES, "nope"])
    with pytest.raises(ValueError, match="0 or 1"):
        label_vector(frame.assign(label=2))
    with pytest.raises(ValueError, match="unknown model class"):
        TrainConfig(model_class="transformer")
    with pytest.raises(ValueError, match="patience"):
        TrainConfig(patience=0)
    x = np.zeros((4, 3))
    with pytest.raises(ValueError, match="feature names"):
        fit_model(x, np.zeros(4), x, np.zeros(4), ["a"], FAST)
    with pytest.raises(ValueError, match="non-empty"):
        fit_model(x[:0], np.zeros(0), x, np.zeros(4), FEATURES, FAST)
