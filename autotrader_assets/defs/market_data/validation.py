"""Data-quality rules for 1-minute bars, as pure functions the asset checks call."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pandera.pandas as pa

MINUTES_PER_DAY = 1440


def _same_partition_as_previous(df: pd.DataFrame) -> pd.Series:
    return (df["instrument"] == df["instrument"].shift()) & (df["date"] == df["date"].shift())


def _volume_all_or_none(df: pd.DataFrame) -> pd.Series:
    """A partition has volume on every bar, or on none (a volume-less source such as FX spot)."""
    missing = df["volume"].isna()
    if not missing.any():  # the common case costs one pass, not a groupby
        return ~missing
    return ~missing | missing.groupby([df["date"], df["instrument"]]).transform("all")


def bar_schema() -> pa.DataFrameSchema:
    """The pandera schema for bars of one or many partitions.

    Frames carry a ``date`` column (the partition date, ``YYYY-MM-DD``); uniqueness and ordering
    are checked inside each (date, instrument) partition with vectorised checks, so a whole
    backfill validates in one call instead of one call per partition.
    """
    positive = [pa.Check.gt(0)]
    return pa.DataFrameSchema(
        {
            "ts": pa.Column("datetime64[ns, UTC]", nullable=False),
            "instrument": pa.Column(str, nullable=False),
            "date": pa.Column(str, nullable=False),
            "open": pa.Column(float, checks=positive, nullable=False),
            "high": pa.Column(float, checks=positive, nullable=False),
            "low": pa.Column(float, checks=positive, nullable=False),
            "close": pa.Column(float, checks=positive, nullable=False),
            # NaN only for a volume-less source (FX spot): see the partition-wide check below.
            "volume": pa.Column(float, checks=[pa.Check.ge(0)], nullable=True),
            "source": pa.Column(str, nullable=False),
        },
        checks=[
            pa.Check(_volume_all_or_none, error="volume missing on some bars of a partition (all or none)"),
            pa.Check(
                lambda df: ~df.duplicated(["date", "instrument", "ts"], keep=False),
                error="timestamps are not unique",
            ),
            pa.Check(
                lambda df: ~_same_partition_as_previous(df) | (df["ts"] > df["ts"].shift()),
                error="timestamps are not increasing",
            ),
            pa.Check(
                lambda df: df["ts"].dt.floor("D").dt.tz_localize(None)
                == pd.to_datetime(df["date"], format="%Y-%m-%d", cache=True),
                error="timestamp outside partition date",
            ),
            pa.Check(
                lambda df: df["high"] >= np.maximum(df["open"], df["close"]),
                error="high below max(open, close)",
            ),
            pa.Check(
                lambda df: df["low"] <= np.minimum(df["open"], df["close"]),
                error="low above min(open, close)",
            ),
        ],
        strict=True,
        ordered=False,
        coerce=False,
    )


@dataclass
class SchemaReport:
    passed: bool
    n_rows: int
    n_failures: int
    failure_cases: pd.DataFrame  # schema_context, column, check, check_number, failure_case, index


def validate_bars(df: pd.DataFrame, date: str | None = None) -> SchemaReport:
    """Lazily validate bars, collecting every failure instead of stopping at the first.

    ``df`` is one partition (give its ``date``) or many partitions with a ``date`` column.
    """
    if "date" not in df.columns:
        df = df.assign(date=date if date is not None else df["ts"].dt.strftime("%Y-%m-%d"))
    try:
        bar_schema().validate(df, lazy=True)
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases.copy()
        return SchemaReport(False, len(df), len(cases), cases)
    return SchemaReport(True, len(df), 0, pd.DataFrame())


def partition_failures(parts: list[tuple[str, str]], df: pd.DataFrame) -> tuple[int, set[str], pd.DataFrame]:
    """Validate the rows of many partitions at once (``df`` has a ``date`` column).

    Returns the rows checked, the failed ``date|instrument`` keys (an empty partition fails) and
    the failure cases with their partition.
    """
    report = validate_bars(df)
    present = set(zip(df["date"], df["instrument"])) if len(df) else set()
    empty = [f"{d}|{i}" for d, i in parts if (d, i) not in present]
    failed = set(empty)
    cases = pd.DataFrame()
    if not report.passed:
        cases = report.failure_cases[["column", "check", "failure_case", "index"]].copy()
        idx = pd.to_numeric(cases["index"], errors="coerce")
        valid = idx.notna() & idx.isin(df.index)
        part = pd.Series("(frame)", index=cases.index, dtype="object")
        part[valid] = (df.loc[idx[valid], "date"] + "|" + df.loc[idx[valid], "instrument"]).to_numpy()
        cases.insert(0, "partition", part)
        cases["failure_case"] = cases["failure_case"].astype(str)
        failed |= set(part[valid])
    if empty:
        cases = pd.concat([cases, pd.DataFrame({"partition": empty, "check": "partition is empty"})], ignore_index=True)
    return report.n_rows, failed, cases


def missing_fraction(df: pd.DataFrame, expected_minutes: int = MINUTES_PER_DAY) -> float:
    """Fraction of the expected 1-minute bars that are absent (duplicates do not count twice)."""
    present = df["ts"].nunique() if len(df) else 0
    return max(0.0, 1.0 - present / expected_minutes)


def find_gaps(df: pd.DataFrame, min_minutes: int = 2) -> pd.DataFrame:
    """Runs of missing minutes of at least ``min_minutes`` bars (start, end, missing bars)."""
    if len(df) < 2:
        return pd.DataFrame(columns=["after", "before", "missing_bars"])
    ts = df["ts"].sort_values().reset_index(drop=True)
    step = ts.diff().dt.total_seconds().div(60).fillna(1)
    mask = step > min_minutes
    return pd.DataFrame(
        {"after": ts.shift(1)[mask].astype(str), "before": ts[mask].astype(str), "missing_bars": (step[mask] - 1).astype(int)}
    ).reset_index(drop=True)


def return_outliers(df: pd.DataFrame, z_bound: float) -> pd.DataFrame:
    """Bars whose log return is beyond ``z_bound`` robust z-scores (median / MAD * 1.4826)."""
    if len(df) < 3:
        return df.iloc[0:0].assign(log_return=[], robust_z=[])
    ordered = df.sort_values("ts")
    r = np.log(ordered["close"]).diff()
    med = r.median()
    mad = (r - med).abs().median() * 1.4826
    if not np.isfinite(mad) or mad == 0:
        return df.iloc[0:0].assign(log_return=[], robust_z=[])
    z = (r - med) / mad
    out = ordered.assign(log_return=r, robust_z=z)
    return out[z.abs() > z_bound]


def missing_fractions(df: pd.DataFrame, parts: list[tuple[str, str]], expected_minutes: int = MINUTES_PER_DAY) -> dict[str, float]:
    """``missing_fraction`` for many partitions at once (``df`` has a ``date`` column)."""
    present = df.groupby(["date", "instrument"])["ts"].nunique() if len(df) else pd.Series(dtype=float)
    out = {}
    for date, instrument in parts:
        n = int(present.get((date, instrument), 0))
        out[f"{date}|{instrument}"] = round(max(0.0, 1.0 - n / expected_minutes), 4)
    return out


def find_gaps_many(df: pd.DataFrame, min_minutes: int = 2) -> pd.DataFrame:
    """Gaps of every partition in one vectorised pass (``df`` has a ``date`` column)."""
    cols = ["partition", "after", "before", "missing_bars"]
    if len(df) < 2:
        return pd.DataFrame(columns=cols)
    d = df.sort_values(["date", "instrument", "ts"])
    same = (d["date"] == d["date"].shift()) & (d["instrument"] == d["instrument"].shift())
    step = d["ts"].diff().dt.total_seconds().div(60)
    mask = same & (step > min_minutes)
    return pd.DataFrame(
        {
            "partition": (d["date"] + "|" + d["instrument"])[mask],
            "after": d["ts"].shift(1)[mask].astype(str),
            "before": d["ts"][mask].astype(str),
            "missing_bars": (step[mask] - 1).astype(int),
        }
    ).reset_index(drop=True)


def return_outliers_many(df: pd.DataFrame, z_bound: float) -> pd.DataFrame:
    """``return_outliers`` per partition, vectorised with grouped medians."""
    if len(df) < 3:
        return df.iloc[0:0].assign(log_return=[], robust_z=[])
    d = df.sort_values(["date", "instrument", "ts"])
    key = [d["date"], d["instrument"]]
    r = np.log(d["close"]).groupby(key).diff()
    med = r.groupby(key).transform("median")
    mad = (r - med).abs().groupby(key).transform("median") * 1.4826
    z = (r - med) / mad.where(mad > 0)
    out = d.assign(log_return=r, robust_z=z)
    return out[z.abs() > z_bound]
