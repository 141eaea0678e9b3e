"""Promotion gates: each passes and fails on its own property; the leakage guard on a random walk."""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from autotrader_assets.defs.training.candidate import SplitConfig, train_candidate
from autotrader_assets.defs.training.dataset import build_training_frame
from autotrader_assets.defs.training.evaluate import BacktestConfig, sharpe_noise_band
from autotrader_assets.defs.training.gates import (
    GATE_NAMES,
    LeakageThresholds,
    auc_gate,
    evaluate_gates,
    leakage_gate,
    max_drawdown_gate,
    output_shape_range_gate,
    run_gate,
    sharpe_vs_production_gate,
    weights_finite_gate,
)
from autotrader_assets.defs.training.train import TrainConfig
from autotrader_assets.settings import FEATURE_COLUMNS, Thresholds
from deploy_ops.models.bundle import ModelBundle, StandardScaler, build_model
from tests.support.synthetic import bar_features_frame, random_walk_bars

torch.set_num_threads(1)
THRESHOLDS = Thresholds()


def _bundle(n_features: int = 3, seed: int = 0) -> ModelBundle:
    torch.manual_seed(seed)
    model = build_model("mlp", n_features, hidden=[4], dropout=0.0)
    scaler = StandardScaler(mean=np.zeros(n_features), std=np.ones(n_features))
    return ModelBundle(model, "mlp", {"hidden": [4], "dropout": 0.0}, scaler, [f"f{i}" for i in range(n_features)])


# -- AUC floor ------------------------------------------------------------------------------------


def test_auc_gate():
    passed, meta = auc_gate(0.53, floor=0.51)
    assert passed and meta["auc_floor"] == 0.51 and "reason" not in meta
    passed, meta = auc_gate(0.51, floor=0.51)
    assert not passed and "not above the floor" in meta["reason"]
    assert not auc_gate(float("nan"), 0.51)[0]
    assert not auc_gate(None, 0.51)[0]


# -- Sharpe vs production -----------------------------------------------------------------------


def test_sharpe_gate_without_production_uses_the_floor():
    assert sharpe_vs_production_gate(0.4, None, floor_without_production=0.0)[0]
    passed, meta = sharpe_vs_production_gate(-0.1, None, floor_without_production=0.0)
    assert not passed and "no production model" in meta["reason"]


def test_sharpe_gate_against_production():
    passed, meta = sharpe_vs_production_gate(1.2, 1.0, 0.0, production_version=3)
    assert passed and meta["compared_to"] == "production v3"
    assert sharpe_vs_production_gate(1.0, 1.0, 0.0, 3)[0]  # equal is "not worse"
    passed, meta = sharpe_vs_production_gate(0.9, 1.0, 0.0, 3)
    assert not passed and "worse than production" in meta["reason"]
    assert not sharpe_vs_production_gate(None, 1.0, 0.0, 3)[0]


def _report(**test_overrides) -> dict:
    test = {
        "auc": 0.55,
        "sharpe": 1.5,
        "sharpe_reason": None,
        "sharpe_annualization": "sqrt(365)",
        "sharpe_returns": "daily",
        "sharpe_n_returns": 60,
        "max_drawdown": 0.05,
        "total_return": 0.02,
    }
    test.update(test_overrides)
    return {
        "test": test,
        "train": {"auc": 0.57},
        "shuffled_label_test_auc": 0.5,
        "production": None,
        "probe": np.zeros((4, 3)).tolist(),
    }


def test_sharpe_gate_from_report_covers_every_production_state():
    bundle = _bundle()
    report = _report()
    assert run_gate("sharpe_vs_production", report, bundle, THRESHOLDS)[0]

    report["production"] = {"version": 2, "unavailable_reason": None, "test": {"sharpe": 2.0, "sharpe_reason": None}}
    passed, meta = run_gate("sharpe_vs_production", report, bundle, THRESHOLDS)
    assert not passed and meta["production_sharpe"] == 2.0 and meta["sharpe_annualization"] == "sqrt(365)"

    report["production"]["test"] = {"sharpe": None, "sharpe_reason": "returns have zero standard deviation"}
    passed, meta = run_gate("sharpe_vs_production", report, bundle, THRESHOLDS)
    assert passed and "zero standard deviation" in meta["compared_to"]

    report["production"] = {"version": 2, "unavailable_reason": "production v2 needs features ['x']", "test": None}
    passed, meta = run_gate("sharpe_vs_production", report, bundle, THRESHOLDS)
    assert not passed and "needs features" in meta["reason"]

    undefined = _report(sharpe=None, sharpe_reason="returns have zero standard deviation")
    passed, meta = run_gate("sharpe_vs_production", undefined, bundle, THRESHOLDS)
    assert not passed and "zero standard deviation" in meta["reason"] and "60 daily returns" in meta["reason"]


def test_below_the_minimum_returns_the_promotion_gate_judges_total_return_not_sharpe():
    bundle = _bundle()
    assert THRESHOLDS.min_sharpe_returns == 30
    # 50.10 from 3 returns: not meaningful, shown as such, and not what the gate judges.
    lucky = _report(sharpe=50.10, sharpe_n_returns=3, total_return=-0.01)
    passed, meta = run_gate("sharpe_vs_production", lucky, bundle, THRESHOLDS)
    assert not passed and meta["judged_on"] == "total_return" and not meta["sharpe_meaningful"]
    assert meta["candidate_sharpe_text"] == "50.10 (3 daily returns; not meaningful below 30)"
    assert "total return -1.00% after costs is below 0" in meta["reason"] and "3 daily returns" in meta["reason"]
    assert meta["warning"].startswith("Sharpe not applicable: insufficient data (3 daily returns")

    # A worse Sharpe from few returns does not block a candidate that made more money.
    report = _report(sharpe=-2.0, sharpe_n_returns=8, total_return=0.03)
    report["production"] = {
        "version": 2,
        "unavailable_reason": None,
        "test": {"sharpe": 4.0, "sharpe_reason": None, "total_return": 0.01},
    }
    passed, meta = run_gate("sharpe_vs_production", report, bundle, THRESHOLDS)
    assert passed and meta["compared_to"] == "production v2" and meta["production_total_return"] == 0.01
    report["production"]["test"]["total_return"] = 0.05
    passed, meta = run_gate("sharpe_vs_production", report, bundle, THRESHOLDS)
    assert not passed and "below production's 5.00% on the same rows" in meta["reason"]
    # From the minimum on, the Sharpe decides again.
    enough = _report(sharpe=-0.5, sharpe_n_returns=30, total_return=0.03)
    passed, meta = run_gate("sharpe_vs_production", enough, bundle, THRESHOLDS)
    assert not passed and meta["judged_on"] == "sharpe" and meta["sharpe_meaningful"]


# -- drawdown -------------------------------------------------------------------------------------


def test_max_drawdown_gate():
    assert max_drawdown_gate(0.10, limit=0.15)[0]
    assert max_drawdown_gate(-0.10, limit=0.15)[0]  # sign convention does not matter
    passed, meta = max_drawdown_gate(0.15, limit=0.15)
    assert not passed and "not under the limit" in meta["reason"]
    assert not max_drawdown_gate(float("inf"), 0.15)[0]


# -- weights, output ------------------------------------------------------------------------------


def test_weights_finite_gate():
    bundle = _bundle()
    passed, meta = weights_finite_gate(bundle)
    assert passed and meta["n_values_checked"] > 0 and meta["non_finite_tensors"] == []

    broken = copy.deepcopy(bundle)
    with torch.no_grad():
        broken.model.net[0].weight[0, 0] = float("nan")
    passed, meta = weights_finite_gate(broken)
    assert not passed and meta["non_finite_tensors"] == ["net.0.weight"]

    bad_scaler = copy.deepcopy(bundle)
    bad_scaler.scaler = StandardScaler(mean=np.array([0.0, np.inf, 0.0]), std=np.ones(3))
    passed, meta = weights_finite_gate(bad_scaler)
    assert not passed and "scaler.mean" in meta["reason"]


class _TwoColumns(nn.Module):
    def forward(self, x):
        return torch.zeros(len(x), 2)


def test_output_shape_range_gate():
    probe = np.random.default_rng(0).normal(size=(16, 3))
    passed, meta = output_shape_range_gate(_bundle(), probe)
    assert passed and meta["output_shape"] == [16] and 0.0 <= meta["output_min"] <= meta["output_max"] <= 1.0

    wrong_shape = ModelBundle(_TwoColumns(), "mlp", {}, StandardScaler(np.zeros(3), np.ones(3)), ["a", "b", "c"])
    passed, meta = output_shape_range_gate(wrong_shape, probe)
    assert not passed and "shape" in meta["reason"]

    nan_out = copy.deepcopy(_bundle())
    with torch.no_grad():
        nan_out.model.net[-1].bias.fill_(float("nan"))
    passed, meta = output_shape_range_gate(nan_out, probe)
    assert not passed and "non-finite" in meta["reason"]

    passed, meta = output_shape_range_gate(_bundle(), probe[:, :2])  # wrong feature count
    assert not passed and "ValueError" in meta["reason"]

    with pytest.raises(ValueError, match="probe"):
        output_shape_range_gate(_bundle(), np.zeros((0, 3)))


# -- leakage (pure) ---------------------------------------------------------------------------------


def test_leakage_gate_passes_plausible_numbers():
    passed, meta = leakage_gate(test_auc=0.54, shuffled_auc=0.50, train_auc=0.56)
    assert passed and not meta["leakage_suspected"] and meta["max_plausible_auc"] == 0.75


@pytest.mark.parametrize(
    "test_auc, shuffled_auc, train_auc, needle",
    [
        (0.80, 0.60, 0.82, "plausible maximum"),
        (0.74, 0.45, 0.75, "shuffled-label baseline"),
        (0.55, 0.35, 0.56, "trained on shuffled labels"),
        (0.60, 0.50, 0.52, "beats train AUC"),
    ],
)
def test_leakage_gate_flags_each_implausibility(test_auc, shuffled_auc, train_auc, needle):
    passed, meta = leakage_gate(test_auc, shuffled_auc, train_auc)
    assert not passed and meta["leakage_suspected"] and needle in meta["reason"]


def test_leakage_thresholds_are_configurable_and_reported():
    strict = LeakageThresholds(max_plausible_auc=0.53)
    passed, meta = leakage_gate(0.54, 0.50, 0.56, strict)
    assert not passed and meta["max_plausible_auc"] == 0.53
    assert not leakage_gate(float("nan"), 0.5, 0.5)[0]


def test_run_gate_rejects_unknown_names_and_evaluate_gates_covers_all():
    with pytest.raises(ValueError, match="unknown gate"):
        run_gate("vibes", _report(), _bundle(), THRESHOLDS)
    results = evaluate_gates(_report(), _bundle(), THRESHOLDS)
    assert tuple(results) == GATE_NAMES
    assert all(passed for passed, _ in results.values())


# -- leakage guard end to end on a random walk ------------------------------------------------------


@pytest.fixture(scope="module")
def random_walk() -> pd.DataFrame:
    bars = random_walk_bars(instruments=("BTCUSDT",), days=24, seed=11)
    frame, _ = build_training_frame(bar_features_frame(bars), horizon=5, feature_columns=FEATURE_COLUMNS)
    return frame


RW_TRAIN = TrainConfig(model_class="mlp", hidden=(8,), max_epochs=4, patience=2, learning_rate=3e-3, seed=0)
RW_SPLIT = SplitConfig(n_folds=2, test_fraction=0.4)
# Zero costs and an always-in-the-market signal: a model without edge then earns ~0 gross.
GROSS = BacktestConfig(fee_bps=0.0, slippage_bps=0.0, long_threshold=0.5, short_threshold=0.5)


def test_honest_features_on_a_random_walk_look_like_a_coin_flip(random_walk):
    outcome = train_candidate(random_walk, FEATURE_COLUMNS, RW_TRAIN, GROSS, RW_SPLIT)
    report = outcome.report()
    assert abs(report["test"]["auc"] - 0.5) < 0.05
    assert abs(report["shuffled_label_test_auc"] - 0.5) < 0.05
    n_returns = report["test"]["sharpe_n_returns"]
    assert n_returns >= 9
    assert report["test"]["n_trades"] > 100  # the strategy did trade: its Sharpe is a measurement
    assert abs(report["test"]["sharpe"]) < sharpe_noise_band(n_returns)
    passed, meta = run_gate("leakage", report, outcome.bundle, THRESHOLDS)
    assert passed, meta


def test_a_feature_equal_to_the_future_return_is_caught(random_walk):
    leaky = random_walk.assign(peek=random_walk["fwd_log_return"])
    features = [*FEATURE_COLUMNS, "peek"]
    outcome = train_candidate(leaky, features, RW_TRAIN, GROSS, RW_SPLIT)
    report = outcome.report()
    passed, meta = run_gate("leakage", report, outcome.bundle, THRESHOLDS)
    assert not passed
    assert meta["leakage_suspected"] and "plausible maximum" in meta["reason"]
    assert report["test"]["auc"] > 0.75
    # the same leak would otherwise have sailed through the performance gates
    assert run_gate("auc_floor", report, outcome.bundle, THRESHOLDS)[0]
    assert report["test"]["sharpe"] > sharpe_noise_band(report["test"]["sharpe_n_returns"])


def test_sharpe_noise_band():
    assert sharpe_noise_band(365) == pytest.approx(4.0)
    assert sharpe_noise_band(10, n_sigmas=2) == pytest.approx(2 * math.sqrt(36.5))
    with pytest.raises(ValueError):
        sharpe_noise_band(1)


def test_backtest_of_predictions_trades_each_instrument_from_one_account():
    from autotrader_assets.defs.training.evaluate import backtest_predictions

    ts = pd.date_range("2024-01-01", periods=3 * 1440, freq="1min")
    rows = []
    for instrument, drift in (("UP", 1e-4), ("DOWN", -1e-4)):
        close = 100 * np.exp(np.cumsum(np.full(len(ts), drift)))
        rows.append(pd.DataFrame({"instrument": instrument, "ts": ts, "open": close, "close": close}))
    frame = pd.concat(rows, ignore_index=True).sort_values(["ts", "instrument"]).reset_index(drop=True)
    perfect = np.where(frame["instrument"] == "UP", 0.9, 0.1)
    metrics, result = backtest_predictions(frame, perfect, BacktestConfig(fee_bps=4.0, slippage_bps=2.0))
    assert set(result.results) == {"UP", "DOWN"}
    assert metrics["total_return"] > 0 and metrics["sharpe"] > 0 and metrics["fees_paid"] > 0
    assert metrics["sharpe_annualization"] == "sqrt(365)" and metrics["sharpe_returns"] == "daily"
    wrong = np.where(frame["instrument"] == "UP", 0.1, 0.9)
    assert backtest_predictions(frame, wrong, BacktestConfig(4.0, 2.0))[0]["total_return"] < 0
    with pytest.raises(ValueError, match="probabilities for"):
        backtest_predictions(frame, perfect[:-1], BacktestConfig(4.0, 2.0))
    with pytest.raises(ValueError, match="short_threshold"):
        BacktestConfig(4.0, 2.0, long_threshold=0.4, short_threshold=0.6)
