"""Test-period evaluation of a model bundle: classification quality and a costed backtest.

The backtest trades the model's signal on every instrument of the test rows from one account
(``deploy_ops.trading.backtest.run_portfolio``: equal capital sleeves, fills at the next bar's open,
fees and slippage), and the trading metrics come from ``deploy_ops.trading.metrics.summarize``, the
same code the rollout gates and paper trading use. Its Sharpe follows the crypto convention
(daily returns, sqrt(365)); the convention is stored beside the number because a Sharpe
without it cannot be compared.

No Dagster imports.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from autotrader_assets.defs.training.train import classification_metrics, feature_matrix, label_vector
from deploy_ops.models.bundle import ModelBundle
from deploy_ops.trading.backtest import PortfolioResult, run_portfolio, signals_to_positions
from deploy_ops.trading.metrics import CRYPTO, summarize


@dataclass(frozen=True)
class BacktestConfig:
    """How the model's probabilities become positions, and what trading costs."""

    fee_bps: float
    slippage_bps: float
    long_threshold: float = 0.55
    short_threshold: float = 0.45
    allow_short: bool = True
    periods_per_year: int = CRYPTO

    def __post_init__(self) -> None:
        if not (0.0 <= self.short_threshold <= self.long_threshold <= 1.0):
            raise ValueError(
                f"need 0 <= short_threshold <= long_threshold <= 1, got {self.short_threshold}, {self.long_threshold}"
            )
        if self.fee_bps < 0 or self.slippage_bps < 0:
            raise ValueError("fee_bps and slippage_bps must be >= 0")

    def as_params(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Evaluation:
    """Metrics of one bundle on one set of rows; ``equity`` is the account equity curve."""

    classification: dict[str, float]
    trading: dict[str, Any]
    equity: pd.Series

    def metrics(self) -> dict[str, Any]:
        return {**self.classification, **self.trading}


def predict(bundle: ModelBundle, frame: pd.DataFrame) -> np.ndarray:
    """P(up) for every row, using the bundle's own feature list and order."""
    return bundle.predict_proba(feature_matrix(frame, bundle.feature_names))


def flatten_trading_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """``metrics.summarize`` output -> flat, JSON-safe registry metrics (Sharpe with convention)."""
    sharpe = summary["sharpe"]
    profit = summary["profit_factor"]
    return {
        "sharpe": sharpe["value"],
        "sharpe_annualization": sharpe["annualization"],
        "sharpe_periods_per_year": sharpe["periods_per_year"],
        "sharpe_returns": sharpe["returns"],
        "sharpe_n_returns": sharpe["n_returns"],
        "sharpe_reason": sharpe.get("reason"),
        "max_drawdown": summary["max_drawdown"]["value"],
        "profit_factor": profit["value"],
        "profit_factor_reason": profit.get("reason"),
        "win_rate": summary["win_rate"],
        "total_return": summary["total_return"],
        "n_trades": summary["n_trades"],
        "n_fills": summary["n_fills"],
        "fees_paid": summary["fees_paid"],
        "slippage_paid": summary["slippage_paid"],
        "n_days": summary["n_days"],
    }


def backtest_predictions(
    frame: pd.DataFrame, proba: np.ndarray, config: BacktestConfig
) -> tuple[dict[str, Any], PortfolioResult]:
    """Trade ``proba`` (one per row of ``frame``) per instrument from one account."""
    proba = np.asarray(proba, dtype=np.float64)
    if len(proba) != len(frame):
        raise ValueError(f"{len(proba)} probabilities for {len(frame)} rows")
    missing = [c for c in ("instrument", "ts", "open", "close") if c not in frame.columns]
    if missing:
        raise ValueError(f"backtest needs columns {missing}")
    targets = signals_to_positions(
        proba,
        long_threshold=config.long_threshold,
        short_threshold=config.short_threshold,
        allow_short=config.allow_short,
    )
    work = frame[["instrument", "ts", "open", "close"]].assign(_target=targets)
    bars: dict[str, pd.DataFrame] = {}
    target_by: dict[str, np.ndarray] = {}
    for instrument, rows in work.groupby("instrument", sort=True):
        rows = rows.sort_values("ts", kind="stable")
        bars[str(instrument)] = rows[["ts", "open", "close"]].reset_index(drop=True)
        target_by[str(instrument)] = rows["_target"].to_numpy()
    result = run_portfolio(bars, target_by, fee_bps=config.fee_bps, slippage_bps=config.slippage_bps)
    return flatten_trading_summary(summarize(result, config.periods_per_year)), result


def evaluate_bundle(
    bundle: ModelBundle, frame: pd.DataFrame, config: BacktestConfig, label_column: str = "label"
) -> Evaluation:
    """Log loss, AUC, accuracy, average confidence and the costed backtest of ``bundle`` on ``frame``."""
    if frame.empty:
        raise ValueError("cannot evaluate on zero rows")
    proba = predict(bundle, frame)
    classification = classification_metrics(label_vector(frame, label_column), proba)
    trading, result = backtest_predictions(frame, proba, config)
    return Evaluation(classification=classification, trading=trading, equity=result.equity)


def sharpe_noise_band(n_returns: int, periods_per_year: int = CRYPTO, n_sigmas: float = 4.0) -> float:
    """How far from 0 an annualized Sharpe of a zero-edge strategy can land by chance.

    The standard error of a Sharpe estimated from ``n`` periodic returns is about
    ``sqrt(1 / n)`` per period, i.e. ``sqrt(periods_per_year / n)`` annualized.
    """
    if n_returns < 2:
        raise ValueError("a Sharpe needs at least 2 returns")
    return n_sigmas * math.sqrt(periods_per_year / n_returns)
