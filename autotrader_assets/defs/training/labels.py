"""Forward-return labels for the training set.

A row's label answers "is the log return from this bar's close to the close ``h`` bars later
positive?". Labels are computed per instrument *and per date* and only where the bar exactly
``h`` bar-intervals later exists: a label never spans a data gap or midnight, so the last ``h``
bars of each day (and bars before a gap) get no label and are dropped, never filled.

No Dagster imports: the ``training_dataset`` asset and the tests both call these functions.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: Columns :func:`add_forward_labels` appends.
LABEL_COLUMNS: tuple[str, ...] = ("fwd_log_return", "label", "label_end_ts")
KEY_COLUMNS: tuple[str, ...] = ("instrument", "ts")


def validate_horizon(horizon: int) -> int:
    """The horizon as an int >= 1, or a clear error."""
    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or int(horizon) < 1:
        raise ValueError(f"label horizon must be an integer number of bars >= 1, got {horizon!r}")
    return int(horizon)


def add_forward_labels(
    frame: pd.DataFrame,
    horizon: int,
    bar_interval: pd.Timedelta = pd.Timedelta(minutes=1),
    price_column: str = "close",
) -> pd.DataFrame:
    """Return ``frame`` restricted to rows that have a label, with :data:`LABEL_COLUMNS` added.

    ``fwd_log_return = log(close[t + h] / close[t])`` where ``t + h`` is exactly
    ``horizon * bar_interval`` later, same instrument, same ``date``; ``label`` is 1 when that
    return is > 0 and 0 otherwise (a flat return is not an up move); ``label_end_ts`` is the
    timestamp of the bar whose close the label reads, which the purged splits need.

    The frame needs ``instrument``, ``ts`` (datetimes) and ``price_column``; ``date`` is taken
    from the frame when present (the partition date), else derived from ``ts``. The result is
    sorted by ``ts`` then ``instrument`` with a fresh index.
    """
    horizon = validate_horizon(horizon)
    bar_interval = pd.Timedelta(bar_interval)
    if bar_interval <= pd.Timedelta(0):
        raise ValueError(f"bar_interval must be positive, got {bar_interval}")
    missing = [c for c in (*KEY_COLUMNS, price_column) if c not in frame.columns]
    if missing:
        raise ValueError(f"cannot label a frame without columns {missing}")
    clash = [c for c in LABEL_COLUMNS if c in frame.columns]
    if clash:
        raise ValueError(f"frame already has label columns {clash}")
    if not pd.api.types.is_datetime64_any_dtype(frame["ts"]):
        raise ValueError(f"'ts' must be datetimes, got {frame['ts'].dtype}")
    if frame["ts"].isna().any():
        raise ValueError("'ts' contains missing timestamps")
    if frame.duplicated(list(KEY_COLUMNS)).any():
        dupes = frame.loc[frame.duplicated(list(KEY_COLUMNS), keep=False), list(KEY_COLUMNS)].head(3)
        raise ValueError(f"duplicate (instrument, ts) rows, e.g. {dupes.to_dict('records')}")
    price = pd.to_numeric(frame[price_column], errors="coerce")
    if not (np.isfinite(price) & (price > 0)).all():
        raise ValueError(f"'{price_column}' must be finite and positive to take log returns")

    work = frame.copy()
    if "date" not in work.columns:
        work["date"] = work["ts"].dt.date
    # The future bar is found by exact timestamp, so a gap in the data yields no label rather
    # than a label over a longer, mislabelled horizon.
    future = work[["instrument", "date", "ts", price_column]].rename(
        columns={"ts": "label_end_ts", price_column: "_future_price"}
    )
    future["ts"] = future["label_end_ts"] - horizon * bar_interval
    labelled = work.merge(future, on=["instrument", "date", "ts"], how="inner", validate="one_to_one")
    labelled["fwd_log_return"] = np.log(labelled["_future_price"] / labelled[price_column])
    labelled["label"] = (labelled["fwd_log_return"] > 0).astype("int8")
    labelled = labelled[[c for c in work.columns] + list(LABEL_COLUMNS)]
    return labelled.sort_values(["ts", "instrument"], kind="stable").reset_index(drop=True)


def class_balance(labels: pd.Series) -> dict[str, float]:
    """Share of up (1) and down-or-flat (0) labels; empty input is an error, not 0/0."""
    if len(labels) == 0:
        raise ValueError("no labels to summarise")
    up = float((labels == 1).mean())
    return {"up": up, "down_or_flat": 1.0 - up}
