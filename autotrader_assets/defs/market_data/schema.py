"""The normalized bar frame every source returns (its pandera schema is in ``validation``)."""
from __future__ import annotations

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


def normalize_bars(df: pd.DataFrame, instrument: str, source: str) -> pd.DataFrame:
    """Coerce a frame with ts/open/high/low/close/volume to the normalized shape.

    Sorts by time and drops exact duplicate timestamps (keeping the last, i.e. the most recent
    revision a broker sent). Raises :class:`MalformedPayloadError` for missing columns or values
    that are not numbers.
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
    out = out.sort_values("ts", kind="stable").drop_duplicates("ts", keep="last")
    return out.reset_index(drop=True)[BAR_COLUMNS]
