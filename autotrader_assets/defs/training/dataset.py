"""The training dataset: feature rows from the warehouse joined with forward-return labels.

Reads ``bar_features`` (the dbt feature model) for a date window and a set of instruments,
labels every bar (see :mod:`labels`), drops rows whose features are NULL (each instrument's
warm-up) and writes the result to the warehouse table ``training_dataset``. Downstream steps
receive a small reference (table name, fingerprint, horizon) instead of a pickled frame and
verify the fingerprint when they read the table back, so a dataset rebuilt in between is
detected instead of silently trained on.

No Dagster imports.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any, Sequence

import duckdb
import numpy as np
import pandas as pd

from autotrader_assets.defs.training.labels import LABEL_COLUMNS, add_forward_labels, class_balance

SOURCE_TABLE = "bar_features"
TRAINING_TABLE = "training_dataset"
#: Prices the labels (close) and the backtest (fills at open, marks at close) need.
PRICE_COLUMNS: tuple[str, ...] = ("open", "close")
ID_COLUMNS: tuple[str, ...] = ("instrument", "ts", "date")


class DatasetError(ValueError):
    """The warehouse cannot provide the dataset that was asked for."""


def _to_date(value: str | dt.date, what: str) -> dt.date:
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError as exc:
        raise DatasetError(f"{what} {value!r} is not an ISO date (YYYY-MM-DD)") from exc


def resolve_date_window(
    available_start: dt.date,
    available_end: dt.date,
    start_date: str | None = None,
    end_date: str | None = None,
    last_n_days: int | None = None,
) -> tuple[dt.date, dt.date]:
    """The inclusive date window to train on.

    Either an explicit ``start_date``/``end_date`` (each defaulting to the edge of what the
    warehouse holds) or ``last_n_days`` ending at the newest available date -- not both.
    """
    if last_n_days is not None and (start_date is not None or end_date is not None):
        raise DatasetError("give either last_n_days or start_date/end_date, not both")
    if last_n_days is not None:
        if last_n_days < 1:
            raise DatasetError(f"last_n_days must be >= 1, got {last_n_days}")
        return max(available_start, available_end - dt.timedelta(days=last_n_days - 1)), available_end
    start = _to_date(start_date, "start_date") if start_date is not None else available_start
    end = _to_date(end_date, "end_date") if end_date is not None else available_end
    if start_date is not None and end_date is not None and start > end:
        raise DatasetError(f"start_date {start} is after end_date {end}")
    if end < available_start or start > available_end:
        raise DatasetError(
            f"window {start}..{end} does not overlap the feature data ({available_start}..{available_end})"
        )
    return max(start, available_start), min(end, available_end)


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    return [
        r[0]
        for r in con.execute(
            "select column_name from information_schema.columns where table_name = ? order by ordinal_position", [table]
        ).fetchall()
    ]


def available_range(
    con: duckdb.DuckDBPyConnection, instruments: Sequence[str] | None
) -> tuple[dt.date, dt.date, list[str]]:
    """First and last date in ``bar_features`` and the instruments present (restricted to
    ``instruments`` when given; asking for an instrument with no rows is an error)."""
    if not _columns(con, SOURCE_TABLE):
        raise DatasetError(f"the warehouse has no {SOURCE_TABLE} table: materialize the feature models first")
    present = [r[0] for r in con.execute(f"select distinct instrument from {SOURCE_TABLE} order by 1").fetchall()]
    if instruments:
        missing = sorted(set(instruments) - set(present))
        if missing:
            raise DatasetError(f"no {SOURCE_TABLE} rows for instruments {missing}; present: {present}")
        chosen = sorted(set(instruments))
    else:
        chosen = present
    if not chosen:
        raise DatasetError(f"{SOURCE_TABLE} is empty")
    lo, hi = con.execute(
        f"select min(date), max(date) from {SOURCE_TABLE} where list_contains(?::varchar[], instrument)", [chosen]
    ).fetchone()
    return lo, hi, chosen


def read_bar_features(
    con: duckdb.DuckDBPyConnection,
    instruments: Sequence[str],
    start: dt.date,
    end: dt.date,
    feature_columns: Sequence[str],
) -> pd.DataFrame:
    """Feature rows of ``instruments`` on dates ``start..end`` (inclusive), in time order."""
    have = set(_columns(con, SOURCE_TABLE))
    missing = [c for c in (*ID_COLUMNS, *PRICE_COLUMNS, *feature_columns) if c not in have]
    if missing:
        raise DatasetError(f"{SOURCE_TABLE} lacks columns {missing}")
    cols = ", ".join(["instrument", "ts::timestamp as ts", "date", *PRICE_COLUMNS, *feature_columns])
    frame = con.execute(
        f"select {cols} from {SOURCE_TABLE} "
        "where date between ? and ? and list_contains(?::varchar[], instrument) order by ts, instrument",
        [start, end, list(instruments)],
    ).df()
    if frame.empty:
        raise DatasetError(f"no {SOURCE_TABLE} rows for {list(instruments)} between {start} and {end}")
    return frame


def build_training_frame(
    features: pd.DataFrame,
    horizon: int,
    feature_columns: Sequence[str],
    bar_interval: pd.Timedelta = pd.Timedelta(minutes=1),
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Label every bar, then drop rows with missing/non-finite features.

    Labelling happens before the drop so a warm-up bar can still be the *future* bar of a
    label; returns the frame and counts of what was dropped.
    """
    labelled = add_forward_labels(features, horizon=horizon, bar_interval=bar_interval)
    values = labelled[list(feature_columns)].to_numpy(dtype=np.float64)
    complete = np.isfinite(values).all(axis=1)
    out = labelled.loc[complete].reset_index(drop=True)
    dropped = {
        "rows_read": int(len(features)),
        "dropped_no_label": int(len(features) - len(labelled)),
        "dropped_missing_features": int((~complete).sum()),
    }
    if out.empty:
        raise DatasetError(
            f"no rows left after labelling (horizon {horizon}) and dropping incomplete features: {dropped}"
        )
    return out, dropped


def frame_fingerprint(frame: pd.DataFrame, feature_columns: Sequence[str]) -> str:
    """A sha256 over the rows that matter for training (ids, labels, features), order-sensitive."""
    cols = ["instrument", "ts", *LABEL_COLUMNS, *feature_columns]
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise DatasetError(f"cannot fingerprint a frame without {missing}")
    canon = frame[cols].copy()
    for c in ("ts", "label_end_ts"):
        canon[c] = pd.to_datetime(canon[c]).astype("datetime64[ns]").astype(np.int64)
    canon["label"] = canon["label"].astype(np.int64)
    hashed = pd.util.hash_pandas_object(canon, index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes()).hexdigest()


def write_training_table(con: duckdb.DuckDBPyConnection, frame: pd.DataFrame, table: str = TRAINING_TABLE) -> None:
    """Replace ``table`` with ``frame`` atomically (readers see the old or the new table)."""
    con.register("_training_rows", frame)
    try:
        con.execute(
            f"create or replace table {table} as "
            "select * replace (ts::timestamp as ts, label_end_ts::timestamp as label_end_ts, "
            "date::date as date, label::tinyint as label) from _training_rows order by ts, instrument"
        )
    finally:
        con.unregister("_training_rows")


def read_training_table(con: duckdb.DuckDBPyConnection, table: str = TRAINING_TABLE) -> pd.DataFrame:
    if not _columns(con, table):
        raise DatasetError(f"the warehouse has no {table} table: materialize training_dataset first")
    return con.execute(f"select * from {table} order by ts, instrument").df()


def dataset_summary(frame: pd.DataFrame) -> dict[str, Any]:
    """Rows, date range, class balance, instruments and (date|instrument) partitions covered."""
    dates = pd.to_datetime(frame["date"]).dt.strftime("%Y-%m-%d")
    pairs = sorted(set(zip(dates, frame["instrument"])))
    return {
        "rows": int(len(frame)),
        "start_date": min(dates),
        "end_date": max(dates),
        "first_ts": str(frame["ts"].min()),
        "last_ts": str(frame["ts"].max()),
        "instruments": sorted(frame["instrument"].unique().tolist()),
        "class_balance": class_balance(frame["label"]),
        "rows_per_instrument": {k: int(v) for k, v in frame.groupby("instrument").size().items()},
        # the multi-partition key format of bar_features: "<date>|<instrument>"
        "partitions": [f"{d}|{i}" for d, i in pairs],
    }
