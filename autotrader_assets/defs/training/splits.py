"""Purged walk-forward cross-validation over time, plus a final untouched test period.

Rows are split by *timestamp*, never by row, so all instruments' bars at one instant land on
the same side of every boundary. The timeline is cut into::

    | chunk 0 | chunk 1 | ... | chunk k |  embargo  |  test  |

Fold ``i`` validates on chunk ``i + 1`` and trains on everything before it (an expanding
window), minus

* an *embargo* just before the validation start (at least the label horizon), and
* *purged* rows whose label window ``[ts, label_end_ts]`` reaches into the validation period,

so no training label reads a price the validation rows also see. The test period sits after
one more embargo and is never part of any fold.

No Dagster imports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Fold:
    """One walk-forward fold: positional row indices into the frame that was split."""

    index: int
    train_idx: np.ndarray
    val_idx: np.ndarray
    train_start: pd.Timestamp
    train_end: pd.Timestamp
    val_start: pd.Timestamp
    val_end: pd.Timestamp
    n_purged: int

    def describe(self) -> dict[str, Any]:
        return {
            "fold": self.index,
            "n_train": int(len(self.train_idx)),
            "n_val": int(len(self.val_idx)),
            "n_purged": int(self.n_purged),
            "train_start": str(self.train_start),
            "train_end": str(self.train_end),
            "val_start": str(self.val_start),
            "val_end": str(self.val_end),
        }


@dataclass(frozen=True)
class WalkForwardPlan:
    """All folds plus the test period; ``embargo`` and ``horizon`` are what was enforced."""

    folds: tuple[Fold, ...]
    test_idx: np.ndarray
    test_start: pd.Timestamp
    test_end: pd.Timestamp
    embargo: pd.Timedelta
    horizon: pd.Timedelta

    @property
    def final_fold(self) -> Fold:
        return self.folds[-1]

    def describe(self) -> dict[str, Any]:
        return {
            "folds": [f.describe() for f in self.folds],
            "n_test": int(len(self.test_idx)),
            "test_start": str(self.test_start),
            "test_end": str(self.test_end),
            "embargo": str(self.embargo),
            "label_horizon": str(self.horizon),
        }


def _as_timestamps(values: Any, name: str) -> np.ndarray:
    series = pd.Series(values)
    if not pd.api.types.is_datetime64_any_dtype(series):
        raise ValueError(f"{name} must be datetimes, got {series.dtype}")
    if series.isna().any():
        raise ValueError(f"{name} contains missing timestamps")
    return series.to_numpy()


def purged_walk_forward(
    ts: Any,
    label_end_ts: Any,
    n_folds: int = 4,
    test_fraction: float = 0.2,
    embargo: pd.Timedelta | None = None,
) -> WalkForwardPlan:
    """Split rows (given by their timestamps and label end timestamps) into purged folds.

    ``embargo`` defaults to the label horizon (the median ``label_end_ts - ts``) and may not be
    shorter: a shorter gap would let ordinary training labels overlap validation. Rows whose
    label window is longer than the embargo are purged individually.
    """
    ts_arr = _as_timestamps(ts, "ts")
    end_arr = _as_timestamps(label_end_ts, "label_end_ts")
    if len(ts_arr) != len(end_arr):
        raise ValueError(f"ts has {len(ts_arr)} rows but label_end_ts has {len(end_arr)}")
    if len(ts_arr) == 0:
        raise ValueError("cannot split an empty frame")
    if isinstance(n_folds, bool) or not isinstance(n_folds, (int, np.integer)) or n_folds < 1:
        raise ValueError(f"n_folds must be an integer >= 1, got {n_folds!r}")
    if not (0.0 < float(test_fraction) < 1.0):
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    if (end_arr < ts_arr).any():
        raise ValueError("label_end_ts precedes ts for some rows")

    # The nominal horizon is the typical label window (all of them, for labels.py output);
    # rarer longer windows are what the purge below exists for.
    horizon = pd.Timedelta(np.median((end_arr - ts_arr).astype("timedelta64[ns]").astype(np.int64)), unit="ns")
    embargo = horizon if embargo is None else pd.Timedelta(embargo)
    if embargo < horizon:
        raise ValueError(f"embargo {embargo} is shorter than the label horizon {horizon}")

    uniq = np.unique(ts_arr)
    n_test = max(1, math.ceil(len(uniq) * float(test_fraction)))
    if n_test >= len(uniq):
        raise ValueError(f"test_fraction {test_fraction} leaves no timestamps for training")
    test_start = uniq[len(uniq) - n_test]
    test_mask = ts_arr >= test_start
    dev_mask = (ts_arr < test_start - embargo) & (end_arr < test_start)

    dev_uniq = np.unique(ts_arr[dev_mask])
    if len(dev_uniq) < n_folds + 1:
        raise ValueError(
            f"only {len(dev_uniq)} distinct timestamps before the test period: too few for {n_folds} folds"
        )
    chunks = np.array_split(dev_uniq, n_folds + 1)

    folds: list[Fold] = []
    for i in range(n_folds):
        val_block = chunks[i + 1]
        val_start, val_end = val_block[0], val_block[-1]
        val_mask = dev_mask & (ts_arr >= val_start) & (ts_arr <= val_end)
        before = dev_mask & (ts_arr < val_start - embargo)
        # On regular bars the embargo alone keeps labels out of validation; the purge is what
        # guarantees it for label windows longer than the embargo.
        train_mask = before & (end_arr < val_start)
        n_purged = int(before.sum() - train_mask.sum())
        train_idx = np.flatnonzero(train_mask)
        val_idx = np.flatnonzero(val_mask)
        if len(train_idx) == 0 or len(val_idx) == 0:
            raise ValueError(
                f"fold {i} is empty (train {len(train_idx)} rows, validation {len(val_idx)} rows): "
                "use fewer folds, a shorter embargo or more data"
            )
        folds.append(
            Fold(
                index=i,
                train_idx=train_idx,
                val_idx=val_idx,
                train_start=pd.Timestamp(ts_arr[train_idx].min()),
                train_end=pd.Timestamp(ts_arr[train_idx].max()),
                val_start=pd.Timestamp(val_start),
                val_end=pd.Timestamp(val_end),
                n_purged=n_purged,
            )
        )

    test_idx = np.flatnonzero(test_mask)
    return WalkForwardPlan(
        folds=tuple(folds),
        test_idx=test_idx,
        test_start=pd.Timestamp(test_start),
        test_end=pd.Timestamp(ts_arr[test_idx].max()),
        embargo=embargo,
        horizon=horizon,
    )
