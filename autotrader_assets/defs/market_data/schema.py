"""The normalized bar frame every source returns (its pandera schema is in ``validation``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

#: Columns of the normalized frame, in order. ``ts`` is the bar *open* time in UTC.
BAR_COLUMNS: list[str] = ["ts", "instrument", "open", "high", "low", "close", "volume", "source"]
PRICE_COLUMNS: list[str] = ["open", "high", "low", "close"]


class MalformedPayloadError(ValueError):
    """A broker or file returned something that cannot be read as bars."""


def empty_bars() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "ts": pd.Series([], dtype="datetime64[ns, UTC]"),
            "instrument": pd.Series([], dtype="object"),
            "open": pd.Series([], dtype="float64"),
            "high": pd.Series([], dtype="float64"),
            "low": pd.Series([], dtype="float64"),
            "close": pd.Series([], dtype="float64"),
            "volume": pd.Series([], dtype="float64"),
            "source": pd.Series([], dtype="object"),
        }
    )


#: ``df.attrs`` keys every source sets on the frames it returns (see :func:`with_bar_attrs`).
INTERVAL_ATTR = "interval_seconds"
DUPLICATES_ATTR = "duplicates_dropped"


def detect_interval_seconds(df: pd.DataFrame) -> int | None:
    """The bar interval of ``df`` in seconds: the median of the positive gaps between bar times.

    The median ignores the minority of long gaps (outages, the FX weekend, an exchange's daily
    halt) and repeated timestamps. ``None`` when fewer than two distinct bar times exist, since
    one bar says nothing about the spacing.
    """
    if "ts" not in df.columns or len(df) < 2:
        return None
    ts = df["ts"].dropna()
    values = np.unique(ts.to_numpy(dtype="datetime64[ns]").astype("int64"))
    if len(values) < 2:
        return None
    step_ns = float(np.median(np.diff(values)))
    return int(round(step_ns / 1e9))


def with_bar_attrs(df: pd.DataFrame, interval_seconds: int | None, duplicates_dropped: int) -> pd.DataFrame:
    """Record on ``df`` what the asset reports about a fetch (the contract of every source).

    ``df.attrs["interval_seconds"]``: the bar interval (``int``, or ``None`` if unknown);
    ``df.attrs["duplicates_dropped"]``: identical duplicate rows removed (``int``).
    """
    df.attrs[INTERVAL_ATTR] = None if interval_seconds is None else int(interval_seconds)
    df.attrs[DUPLICATES_ATTR] = int(duplicates_dropped)
    return df


def normalize_bars(df: pd.DataFrame, instrument: str, source: str) -> pd.DataFrame:
    """Coerce a frame with ts/open/high/low/close/volume to the normalized shape.

    Sorts by time (stable). Rows repeating another row exactly (same ``ts`` and same OHLCV) are
    dropped and counted; rows sharing a ``ts`` with *different* values are all kept, side by side,
    so that the blocking schema check (``validation.bar_schema``: timestamps unique) fails and
    shows every conflicting row: choosing one would hide a data problem.

    ``volume`` may be NaN on every row for a source without volume (FX spot); the schema refuses
    a partition where it is missing on some rows only.

    The result carries ``df.attrs["duplicates_dropped"]`` (identical rows removed) and
    ``df.attrs["interval_seconds"]`` (:func:`detect_interval_seconds` of the result). Raises
    :class:`MalformedPayloadError` for missing columns or values that are not numbers.
    """
    missing = [c for c in ["ts", *PRICE_COLUMNS, "volume"] if c not in df.columns]
    if missing:
        raise MalformedPayloadError(f"{source}: bars are missing columns {missing}")
    out = pd.DataFrame()
    ts = df["ts"]
    if not pd.api.types.is_datetime64_any_dtype(ts):
        raise MalformedPayloadError(f"{source}: 'ts' must be datetimes, got {ts.dtype}")
    out["ts"] = ts.dt.tz_localize("UTC") if ts.dt.tz is None else ts.dt.tz_convert("UTC")
    out["ts"] = out["ts"].astype("datetime64[ns, UTC]")
    out["instrument"] = instrument
    for col in [*PRICE_COLUMNS, "volume"]:
        try:
            out[col] = pd.to_numeric(df[col], errors="raise").astype("float64")
        except (TypeError, ValueError) as exc:
            raise MalformedPayloadError(f"{source}: column {col!r} is not numeric: {exc}") from exc
    out["source"] = source
    out = out.sort_values("ts", kind="stable")
    identical = out.duplicated(["ts", *PRICE_COLUMNS, "volume"], keep="first")
    out = out.loc[~identical].reset_index(drop=True)[BAR_COLUMNS]
    return with_bar_attrs(out, detect_interval_seconds(out), int(identical.sum()))
