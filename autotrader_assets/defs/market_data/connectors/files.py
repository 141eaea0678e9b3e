"""Bars from files on disk: OHLCV CSV/Parquet exports and Binance public kline archives.

Accepted layouts:

* CSV (optionally ``.gz``) or Parquet with a header. Column names are case-insensitive; the time
  column is the first of ``ts``, ``open_time``, ``timestamp``, ``date``, ``time``, ``datetime``
  present; times may be datetimes, ISO strings (naive means UTC) or epoch numbers in s, ms, us
  or ns, told apart by magnitude.
* Binance archive files from data.binance.vision: headerless 12-column CSV, bare or zipped. The
  open time is epoch milliseconds, but spot archives from 2025 on use microseconds; the same
  magnitude test handles both, per row, so a mix of old and new months loads correctly.

Bars are returned at the interval the file holds: a 5-minute file gives 5-minute bars.
"""
from __future__ import annotations

import glob
import gzip
import io
import logging
import re
import zipfile
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from autotrader_assets.defs.market_data.connectors._common import normalize_raw, utc_range
from autotrader_assets.defs.market_data.schema import MalformedPayloadError

log = logging.getLogger(__name__)

#: Candidate time columns, in order of preference: ``open_time`` before ``time`` so that a file
#: carrying both open and close times is read by its open time.
TIME_COLUMNS = ("ts", "open_time", "timestamp", "date", "time", "datetime")
VALUE_COLUMNS = ("open", "high", "low", "close", "volume")
SUPPORTED_SUFFIXES = (".csv", ".csv.gz", ".txt", ".zip", ".parquet", ".pq")

# Epoch magnitude bounds: seconds stay below 1e11 until the year 5138, and milliseconds,
# microseconds and nanoseconds of any date after 1973 exceed 1e11, 1e14 and 1e17.
_EPOCH_UNITS = ((1e11, 1_000_000_000), (1e14, 1_000_000), (1e17, 1_000), (np.inf, 1))
_ISO_DATE = re.compile(r"^\s*\"?\d{4}-\d{2}-\d{2}")

PathArg = str | PathLike[str]


def is_supported(path: Path) -> bool:
    """Whether ``path`` has a suffix this module can read."""
    name = path.name.lower()
    return any(name.endswith(s) for s in SUPPORTED_SUFFIXES)


def read_bar_file(path: PathArg) -> pd.DataFrame:
    """Read one bar file into a raw frame with ``ts`` (UTC) and float OHLCV columns, file order."""
    path = Path(path)
    name = path.name.lower()
    if not path.is_file():
        raise FileNotFoundError(f"bar file {path} does not exist or is not a file")
    if name.endswith((".parquet", ".pq")):
        return _table_to_bars(pd.read_parquet(path), str(path), header_lines=None)
    if name.endswith(".zip"):
        return _read_zip(path)
    if name.endswith(".csv.gz"):
        with gzip.open(path, "rb") as handle:
            return _read_csv_bytes(handle.read(), str(path))
    if name.endswith((".csv", ".txt")):
        return _read_csv_bytes(path.read_bytes(), str(path))
    raise ValueError(f"unsupported bar file {path}; expected one of {', '.join(SUPPORTED_SUFFIXES)}")


def _read_zip(path: Path) -> pd.DataFrame:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise MalformedPayloadError(f"{path}: not a readable zip archive: {exc}") from exc
    with archive:
        members = [
            m for m in archive.namelist()
            if m.lower().endswith((".csv", ".txt")) and not m.startswith("__MACOSX/")
        ]
        if not members:
            raise MalformedPayloadError(f"{path}: zip archive holds no CSV file")
        frames = [_read_csv_bytes(archive.read(m), f"{path}!{m}") for m in sorted(members)]
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def _read_csv_bytes(data: bytes, origin: str) -> pd.DataFrame:
    text_start = data[:4096].decode("utf-8-sig", errors="replace")
    first_line = next((line for line in text_start.splitlines() if line.strip()), "")
    if not first_line:
        raise MalformedPayloadError(f"{origin}: file is empty")
    first_field = first_line.split(",")[0].strip().strip('"')
    headerless = _is_number(first_field) or bool(_ISO_DATE.match(first_field))
    try:
        table = pd.read_csv(
            io.BytesIO(data), header=None if headerless else 0, encoding="utf-8-sig", skipinitialspace=True
        )
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise MalformedPayloadError(f"{origin}: not a readable CSV: {exc}") from exc
    return _table_to_bars(table, origin, header_lines=0 if headerless else 1)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _table_to_bars(table: pd.DataFrame, origin: str, header_lines: int | None) -> pd.DataFrame:
    """Pick the time and OHLCV columns of a table read from ``origin`` and validate them.

    ``header_lines`` is how many lines precede the data in a text file (for line numbers in
    errors); ``None`` for Parquet, which has no lines.
    """
    if header_lines == 0:
        if table.shape[1] < 6:
            raise MalformedPayloadError(
                f"{origin}: headerless file has {table.shape[1]} columns; expected open time, "
                "open, high, low, close, volume first (Binance kline archive layout)"
            )
        picked = table.iloc[:, :6].copy()
        picked.columns = ["time", *VALUE_COLUMNS]
        time_col = "time"
    else:
        lowered = [str(c).strip().lower() for c in table.columns]
        duplicated = sorted({c for c in lowered if lowered.count(c) > 1})
        if duplicated:
            raise MalformedPayloadError(f"{origin}: columns {duplicated} appear more than once (case-insensitive)")
        table = table.set_axis(lowered, axis=1)
        time_col = next((c for c in TIME_COLUMNS if c in table.columns), "")
        if not time_col:
            raise MalformedPayloadError(
                f"{origin}: no time column; expected one of {list(TIME_COLUMNS)}, found {lowered}"
            )
        missing = [c for c in VALUE_COLUMNS if c not in table.columns]
        if missing:
            raise MalformedPayloadError(f"{origin}: missing columns {missing}; found {lowered}")
        picked = table[[time_col, *VALUE_COLUMNS]]

    def where(row: int) -> str:
        line = "" if header_lines is None else f" (line {row + header_lines + 1})"
        return f"{origin}: row {row}{line}"

    out = pd.DataFrame({"ts": parse_times(picked[time_col], where)})
    for col in VALUE_COLUMNS:
        out[col] = _numeric_column(picked[col], col, where)
    return out


def _numeric_column(values: pd.Series, name: str, where: Any) -> pd.Series:
    numbers = pd.to_numeric(values, errors="coerce").astype("float64")
    bad = ~np.isfinite(numbers.to_numpy())
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        value = values.iloc[row]
        if pd.isna(value):
            raise MalformedPayloadError(f"{where(row)}: {name} is empty")
        if isinstance(value, np.generic):
            value = value.item()
        raise MalformedPayloadError(f"{where(row)}: {name} {value!r} is not a number")
    return numbers.reset_index(drop=True)


def parse_times(values: pd.Series, where: Any = lambda row: f"row {row}") -> pd.Series:
    """Parse a time column (datetimes, ISO strings or epoch s/ms/us/ns) to UTC timestamps.

    ``where(row)`` names a row in error messages.
    """
    values = values.reset_index(drop=True)
    if pd.api.types.is_datetime64_any_dtype(values):
        ts = values.dt.tz_localize("UTC") if values.dt.tz is None else values.dt.tz_convert("UTC")
        if ts.isna().any():
            row = int(np.flatnonzero(ts.isna().to_numpy())[0])
            raise MalformedPayloadError(f"{where(row)}: time is missing")
        return ts.astype("datetime64[ns, UTC]")
    numbers = pd.to_numeric(values, errors="coerce")
    if numbers.notna().all():
        return _epoch_to_utc(numbers, where)
    if pd.api.types.is_numeric_dtype(values):
        row = int(np.flatnonzero(numbers.isna().to_numpy())[0])
        raise MalformedPayloadError(f"{where(row)}: time is missing")
    text = values.astype("string").str.strip()
    ts = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
    bad = ts.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise MalformedPayloadError(f"{where(row)}: time {values.iloc[row]!r} is not a timestamp")
    return ts.astype("datetime64[ns, UTC]")


def _epoch_to_utc(numbers: pd.Series, where: Any) -> pd.Series:
    raw = numbers.to_numpy()
    if not np.isfinite(raw.astype("float64")).all() or (raw < 0).any():
        row = int(np.flatnonzero(~np.isfinite(raw.astype("float64")) | (raw < 0))[0])
        raise MalformedPayloadError(f"{where(row)}: time {raw[row]!r} is not an epoch timestamp")
    magnitude = np.abs(raw.astype("float64"))
    factor = np.select([magnitude < bound for bound, _ in _EPOCH_UNITS], [f for _, f in _EPOCH_UNITS])
    if np.issubdtype(raw.dtype, np.integer):
        nanos = raw.astype("int64") * factor.astype("int64")
    else:
        nanos = np.round(raw.astype("float64") * factor).astype("int64")
    return pd.Series(pd.to_datetime(nanos, unit="ns", utc=True), dtype="datetime64[ns, UTC]")


class FileSource:
    """Bars read from files: one file, a mapping of instruments to files, or a directory.

    * ``FileSource("btc.csv")``: one file, served for whatever instrument is asked;
    * ``FileSource({"BTCUSDT": "btc.csv", "ETHUSDT": ["eth-1.zip", "eth-2.zip"]})``;
    * ``FileSource(directory="archive/", pattern="{instrument}-1m-*.zip")``: every supported
      file matching the pattern, with ``{instrument}`` replaced (glob-escaped). The default
      ``{instrument}[._-]*`` matches ``BTC_1m.csv`` and ``BTC.csv`` but not ``BTCUSDT.csv``.

    Several files for one instrument are concatenated; overlaps keep the bar from the file that
    sorts last. Parsed files are cached until their size or modification time changes, so a
    daily-partitioned backfill reads each file once.
    """

    source_name = "file"

    def __init__(
        self,
        path: PathArg | Mapping[str, PathArg | list[PathArg]] | None = None,
        *,
        directory: PathArg | None = None,
        pattern: str = "{instrument}[._-]*",
        source_name: str = "file",
    ):
        if (path is None) == (directory is None):
            raise ValueError("give exactly one of path (a file or an instrument->file mapping) or directory")
        self.source_name = source_name
        self.pattern = pattern
        self.directory = Path(directory) if directory is not None else None
        self.path: Path | None = None
        self.paths: dict[str, list[Path]] | None = None
        if isinstance(path, Mapping):
            self.paths = {
                k: [Path(p) for p in (v if isinstance(v, (list, tuple)) else [v])] for k, v in path.items()
            }
        elif path is not None:
            self.path = Path(path)
        if self.directory is not None:
            if "{instrument}" not in pattern:
                raise ValueError(f"pattern {pattern!r} must contain '{{instrument}}'")
            if not self.directory.is_dir():
                raise FileNotFoundError(f"bar directory {self.directory} does not exist")
        self._cache: dict[Path, tuple[int, int, pd.DataFrame]] = {}

    def files_for(self, instrument: str) -> list[Path]:
        """The files holding ``instrument``'s bars, in the order they are concatenated."""
        if self.path is not None:
            return [self.path]
        if self.paths is not None:
            if instrument not in self.paths:
                raise KeyError(f"no file configured for instrument {instrument!r}; known: {sorted(self.paths)}")
            return self.paths[instrument]
        assert self.directory is not None
        glob_pattern = self.pattern.replace("{instrument}", glob.escape(instrument))
        matches = sorted(p for p in self.directory.glob(glob_pattern) if p.is_file())
        files = [p for p in matches if is_supported(p)]
        if not files:
            raise FileNotFoundError(
                f"no bar file for {instrument!r} in {self.directory} matching {glob_pattern!r}"
                + (f" (ignored unsupported: {[p.name for p in matches]})" if matches else "")
            )
        return files

    def load(self, instrument: str) -> pd.DataFrame:
        """Every bar of ``instrument`` in its files, normalized, without time filtering."""
        frames = [self._read_cached(p) for p in self.files_for(instrument)]
        frames = [f for f in frames if not f.empty]
        raw = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        return normalize_raw(raw, instrument, self.source_name)

    def fetch_bars(self, instrument: str, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        """Bars of ``instrument`` opening in ``[start, end)``."""
        start, end = utc_range(start, end)
        bars = self.load(instrument)
        inside = (bars["ts"] >= start) & (bars["ts"] < end)
        return bars.loc[inside].reset_index(drop=True)

    def _read_cached(self, path: Path) -> pd.DataFrame:
        try:
            stat = path.stat()
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"bar file {path} does not exist") from exc
        cached = self._cache.get(path)
        if cached is not None and cached[:2] == (stat.st_mtime_ns, stat.st_size):
            return cached[2]
        frame = read_bar_file(path)
        self._cache[path] = (stat.st_mtime_ns, stat.st_size, frame)
        return frame
