"""Synthetic bar and feature frames with *known* predictability, for tests, demos and benches.

A geometric random walk has no predictable direction, so any model scoring clearly better
than a coin on it has leaked the future: that is the ground truth the leakage guard is tested
against. The features are the dbt model's definitions (``dbt_project/models/features/
bar_features.sql``) on contiguous 1-minute bars, where a k-minute window is k bars:
``tests/integration/test_data_pipeline.py::test_synthetic_features_match_dbt`` holds them equal.
Test code only: the platform's features come from dbt alone.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy.signal import lfilter

from autotrader_assets.settings import FEATURE_COLUMNS

#: Bars an instrument needs before every feature is defined (the longest rolling window).
WARMUP_BARS = 60


def random_walk_bars(
    instruments: Sequence[str] = ("BTCUSDT", "ETHUSDT"),
    start: str = "2024-01-01",
    days: int = 3,
    seed: int = 0,
    bar_minutes: int = 1,
    vol: float = 0.001,
    start_price: float = 100.0,
    ar1: float = 0.0,
) -> pd.DataFrame:
    """Driftless 1-minute OHLCV random walks: columns instrument, ts (naive UTC), date, OHLCV.

    ``ar1`` > 0 makes each log return carry a share of the previous one (momentum): a small,
    honest, learnable edge. With ``ar1 = 0`` nothing is predictable.
    """
    if days < 1 or not instruments:
        raise ValueError("need at least one day and one instrument")
    if not -1.0 < ar1 < 1.0:
        raise ValueError(f"ar1 must be in (-1, 1) for a stationary return process, got {ar1}")
    rng = np.random.default_rng(seed)
    n = days * 24 * 60 // bar_minutes
    ts = pd.date_range(pd.Timestamp(start), periods=n, freq=f"{bar_minutes}min")
    frames = []
    for instrument in instruments:
        log_ret = lfilter([1.0], [1.0, -ar1], rng.normal(0.0, vol, size=n))
        close = start_price * np.exp(np.cumsum(log_ret))
        open_ = np.concatenate([[start_price], close[:-1]])
        wiggle = np.abs(rng.normal(0.0, vol / 2, size=n))
        frames.append(
            pd.DataFrame(
                {
                    "instrument": instrument,
                    "ts": ts,
                    "date": ts.date,
                    "open": open_,
                    "high": np.maximum(open_, close) * (1 + wiggle),
                    "low": np.minimum(open_, close) * (1 - wiggle),
                    "close": close,
                    "volume": rng.lognormal(3.0, 0.5, size=n),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _features_one(bars: pd.DataFrame) -> pd.DataFrame:
    close, open_, high, low, vol = (bars[c] for c in ("close", "open", "high", "low", "volume"))
    logc = np.log(close)
    out = pd.DataFrame(index=bars.index)
    ret_1 = logc.diff(1)
    for k in (1, 5, 15, 60):
        out[f"ret_{k}"] = logc.diff(k)
    # Windows as in SQL: partial at the start (warm-up hides those rows), sample std (ddof 1).
    out["rv_15"] = ret_1.rolling(15, min_periods=2).std()
    out["rv_60"] = ret_1.rolling(60, min_periods=2).std()
    delta = close.diff()
    gain = delta.clip(lower=0).rolling(14, min_periods=1).mean()
    loss = (-delta.clip(upper=0)).rolling(14, min_periods=1).mean()
    total = gain + loss
    # A flat window is neutral (50), 14 straight up-moves are 100.
    out["rsi_14"] = np.where(total == 0, 50.0, 100.0 * (gain / total.where(total != 0)))
    # MACD on simple moving averages, normalised by price; the signal is a 9-bar mean.
    sma12 = close.rolling(12, min_periods=1).mean()
    sma26 = close.rolling(26, min_periods=1).mean()
    out["macd"] = (sma12 - sma26) / close
    out["macd_signal"] = out["macd"].rolling(9, min_periods=1).mean()
    out["macd_hist"] = out["macd"] - out["macd_signal"]
    sma20 = close.rolling(20, min_periods=1).mean()
    sd20 = close.rolling(20, min_periods=2).std()
    out["bb_pos_20"] = np.where(sd20 > 0, (close - sma20) / (2 * sd20.where(sd20 > 0)), 0.0)
    vol_mean = vol.rolling(60, min_periods=1).mean()
    vol_sd = vol.rolling(60, min_periods=2).std()
    out["volume_z_60"] = np.where(vol_sd > 0, (vol - vol_mean) / vol_sd.where(vol_sd > 0), 0.0)
    out["range_hl"] = (high - low) / close
    out["range_co"] = (close - open_) / open_
    # Mirrors the warehouse: features are NULL for the first 60 minutes of history.
    out.iloc[:WARMUP_BARS] = np.nan
    return out[list(FEATURE_COLUMNS)]


def bar_features_frame(bars: pd.DataFrame) -> pd.DataFrame:
    """The shape of the warehouse table ``bar_features``: instrument, ts, date, open, close and
    the FEATURE_COLUMNS computed from past bars only (NaN during each instrument's warm-up)."""
    parts = []
    for _, group in bars.sort_values(["instrument", "ts"]).groupby("instrument", sort=True):
        group = group.reset_index(drop=True)
        feats = _features_one(group)
        parts.append(pd.concat([group[["instrument", "ts", "date", "open", "close"]], feats], axis=1))
    return pd.concat(parts, ignore_index=True)
