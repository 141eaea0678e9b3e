"""Traffic replay for a rollout: recent feature rows and bars per instrument, validated."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd

#: A traffic source: instrument -> (feature rows, bars). Features are a DataFrame with named
#: columns (selected per model version) or a 2-D array already in the models' feature order;
#: bars need ts, open and close, one row per feature row.
TrafficSource = Callable[[str], "tuple[pd.DataFrame | np.ndarray, pd.DataFrame]"]


@dataclass
class Replay:
    """One instrument's recent feature rows and bars, warm-up rows (NaN features) dropped."""

    instrument: str
    features: pd.DataFrame | np.ndarray
    bars: pd.DataFrame

    def __len__(self) -> int:
        return len(self.bars)

    def rows_for(self, feature_names: Sequence[str]) -> np.ndarray:
        """The feature matrix in this model's feature order."""
        if isinstance(self.features, pd.DataFrame):
            missing = [n for n in feature_names if n not in self.features.columns]
            if missing:
                raise ValueError(f"traffic for {self.instrument} lacks the model's features {missing}")
            return self.features[list(feature_names)].to_numpy(dtype=np.float64)
        if self.features.shape[1] != len(feature_names):
            raise ValueError(
                f"traffic for {self.instrument} has {self.features.shape[1]} feature columns; "
                f"the model expects {len(feature_names)} ({list(feature_names)})"
            )
        return np.asarray(self.features, dtype=np.float64)


def load_replay(source: TrafficSource, instrument: str, min_rows: int = 2) -> Replay:
    """Call the traffic source and validate what it returned (clear errors, nothing guessed)."""
    got = source(instrument)
    if not isinstance(got, tuple) or len(got) != 2:
        raise ValueError(f"traffic source must return (features, bars) for {instrument}, got {type(got).__name__}")
    features, bars = got
    if not isinstance(bars, pd.DataFrame):
        raise ValueError(f"traffic source: bars for {instrument} must be a DataFrame, got {type(bars).__name__}")
    missing = [c for c in ("ts", "open", "close") if c not in bars.columns]
    if missing:
        raise ValueError(f"traffic source: bars for {instrument} lack column(s) {missing}")
    if isinstance(features, pd.DataFrame):
        values = features.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    else:
        values = np.asarray(features, dtype=np.float64)
        if values.ndim != 2:
            raise ValueError(f"traffic source: features for {instrument} must be 2-D, got shape {values.shape}")
    if len(values) != len(bars):
        raise ValueError(f"traffic source: {len(values)} feature rows but {len(bars)} bars for {instrument}")
    usable = np.isfinite(values).all(axis=1)
    if isinstance(features, pd.DataFrame):
        features = features.loc[usable].reset_index(drop=True)
    else:
        features = values[usable]
    bars = bars.loc[usable].reset_index(drop=True)
    if len(bars) < min_rows:
        raise ValueError(
            f"traffic source: only {len(bars)} usable rows (finite features) for {instrument}; need {min_rows}"
        )
    return Replay(instrument, features, bars)
