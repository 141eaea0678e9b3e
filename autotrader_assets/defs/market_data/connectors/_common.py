"""Helpers every connector shares: the requested time window, the per-bar checks of a JSON
payload, the raw frame they build, and the final normalized frame."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from autotrader_assets.defs.market_data.schema import (
    DUPLICATES_ATTR,
    INTERVAL_ATTR,
    MalformedPayloadError,
    normalize_bars,
    with_bar_attrs,
)

ONE_MINUTE = pd.Timedelta(minutes=1)
RAW_VALUE_COLUMNS = ("open", "high", "low", "close", "volume")
#: The keys of a bar object in Alpaca's and IBKR's JSON (``t`` is the open time), by column.
BAR_OBJECT_FIELDS = (("o", "open"), ("h", "high"), ("l", "low"), ("c", "close"), ("v", "volume"))


def utc_timestamp(value: Any, name: str) -> pd.Timestamp:
    """Coerce ``value`` to a UTC Timestamp; naive values are taken to be UTC already."""
    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a timestamp, got {value!r}") from exc
    if ts is pd.NaT:
        raise ValueError(f"{name} must be a timestamp, got NaT")
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def utc_range(start: Any, end: Any) -> tuple[pd.Timestamp, pd.Timestamp]:
    """Validate a half-open ``[start, end)`` request window and return it in UTC."""
    start_ts = utc_timestamp(start, "start")
    end_ts = utc_timestamp(end, "end")
    if end_ts < start_ts:
        raise ValueError(f"end {end_ts.isoformat()} is before start {start_ts.isoformat()}")
    return start_ts, end_ts


def to_epoch_ms(ts: pd.Timestamp) -> int:
    """Milliseconds since the epoch of a tz-aware timestamp."""
    return int(ts.value // 1_000_000)


def normalize_raw(raw: pd.DataFrame, instrument: str, source: str) -> pd.DataFrame:
    """:func:`normalize_bars` that also accepts an empty frame without columns."""
    if raw.empty:
        raw = pd.DataFrame(
            {
                "ts": pd.Series([], dtype="datetime64[ns, UTC]"),
                **{c: pd.Series([], dtype="float64") for c in RAW_VALUE_COLUMNS},
            }
        )
    return normalize_bars(raw, instrument, source)


def finish(raw: pd.DataFrame, instrument: str, source: str, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    """Normalize ``raw`` (ts + OHLCV columns) and keep only bars opening in ``[start, end)``.

    Identical duplicates (overlapping pages) are dropped and counted, conflicting ones kept for
    the schema check to show (:func:`normalize_bars`). The interval is measured on everything
    the broker returned, which is at least as long as the window.
    """
    bars = normalize_raw(raw, instrument, source)
    inside = (bars["ts"] >= start) & (bars["ts"] < end)
    return with_bar_attrs(
        bars.loc[inside].reset_index(drop=True), bars.attrs[INTERVAL_ATTR], bars.attrs[DUPLICATES_ATTR]
    )


def finite_number(value: Any, where: str, name: str) -> float:
    """A JSON number or numeric string as a finite float; anything else is a malformed payload."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise MalformedPayloadError(f"{where}: {name} {value!r} is not a number")
    try:
        number = float(value)
    except ValueError as exc:
        raise MalformedPayloadError(f"{where}: {name} {value!r} is not a number") from exc
    if not math.isfinite(number):
        raise MalformedPayloadError(f"{where}: {name} {value!r} is not finite")
    return number


def object_bar(bar: Any, where: str) -> tuple[Any, list[float]]:
    """One bar object of a JSON payload: its raw open time ``t`` (each API has its own format)
    and its open, high, low, close and volume as finite floats; anything else is malformed."""
    if not isinstance(bar, dict):
        raise MalformedPayloadError(f"{where}: expected an object, got {type(bar).__name__}")
    missing = [k for k in ("t", *(k for k, _ in BAR_OBJECT_FIELDS)) if k not in bar]
    if missing:
        raise MalformedPayloadError(f"{where}: missing fields {missing}")
    return bar["t"], [finite_number(bar[k], where, name) for k, name in BAR_OBJECT_FIELDS]


def raw_bars(ts: pd.Series, values: Sequence[Sequence[float]]) -> pd.DataFrame:
    """The raw ``ts`` + OHLCV frame a connector parsed from one page (``ts`` in UTC)."""
    frame = pd.DataFrame(list(values), columns=list(RAW_VALUE_COLUMNS), dtype="float64")
    frame.insert(0, "ts", ts.reset_index(drop=True))
    return frame
