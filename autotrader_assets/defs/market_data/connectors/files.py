"""Bars from files on disk: OHLCV CSV/Parquet exports and Binance public kline archives.

Accepted layouts:

* CSV (optionally ``.gz``), Parquet or Feather (freqtrade's ``.feather`` candles) with a header.
  Column names are case-insensitive; the time column is the first of ``ts``, ``open_time``,
  ``timestamp``, ``timestamp_utc``, ``date``, ``time``, ``datetime`` present, unless a column
  mapping names it (``columns={"ts": "timestamp_utc", "close": "Close"}``); times may be
  datetimes, ISO strings (naive means UTC) or epoch numbers in s, ms, us or ns, told apart by
  magnitude. ``volume`` is optional: a file without it (FX spot has none) loads with NaN volume
  on every row, unless another column looks like a volume (then the file is refused until the
  mapping names it, so a renamed volume column is never silently dropped).
* Binance archive files from data.binance.vision: headerless 12-column CSV, bare or zipped. The
  open time is epoch milliseconds, but spot archives from 2025 on use microseconds; the same
  magnitude test handles both, per row, so a mix of old and new months loads correctly.

Bars are returned at the interval the file holds: a 5-minute file gives 5-minute bars, and every
frame :class:`FileSource` returns records it in ``df.attrs["interval_seconds"]``.
"""

from __future__ import annotations

import glob
import gzip
import io
import logging
import re
import zipfile
from collections.abc import Iterable, Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from autotrader_assets.defs.market_data.connectors._common import normalize_raw, utc_range
from autotrader_assets.defs.market_data.schema import (
    DUPLICATES_ATTR,
    MalformedPayloadError,
    detect_interval_seconds,
    with_bar_attrs,
)

log = logging.getLogger(__name__)

#: Candidate time columns, in order of preference: ``open_time`` before ``time`` so that a file
#: carrying both open and close times is read by its open time.
TIME_COLUMNS = ("ts", "open_time", "timestamp", "timestamp_utc", "date", "time", "datetime")
VALUE_COLUMNS = ("open", "high", "low", "close", "volume")
#: Names a column mapping may give a file column: the time column and the OHLCV columns.
MAPPABLE_COLUMNS = ("ts", *VALUE_COLUMNS)
SUPPORTED_SUFFIXES = (".csv", ".csv.gz", ".txt", ".zip", ".parquet", ".pq", ".feather")
#: Column of the raw frame holding a file's symbol column (when one is configured).
SYMBOL = "symbol"
DEFAULT_PATTERN = "{instrument}[._-]*"

#: The three unambiguous ways to give several instruments their bars, quoted by every refusal.
HOW_TO_CONFIGURE = (
    'give each instrument its own file (AUTOTRADER_FILE_SOURCE="GBPUSD=/data/gbpusd.csv,BTCUSDT=/data/btc.csv"), '
    'a directory and a file-name pattern (AUTOTRADER_FILE_DIR=/data AUTOTRADER_FILE_PATTERN="{instrument}_*.csv"), '
    "or a symbol column naming each row's instrument (AUTOTRADER_FILE_SYMBOL_COLUMN=symbol)"
)

# Epoch magnitude bounds: seconds stay below 1e11 until the year 5138, and milliseconds,
# microseconds and nanoseconds of any date after 1973 exceed 1e11, 1e14 and 1e17.
_EPOCH_UNITS = ((1e11, 1_000_000_000), (1e14, 1_000_000), (1e17, 1_000), (np.inf, 1))
_ISO_DATE = re.compile(r"^\s*\"?\d{4}-\d{2}-\d{2}")

PathArg = str | PathLike[str]


def is_supported(path: Path) -> bool:
    """Whether ``path`` has a suffix this module can read."""
    name = path.name.lower()
    return any(name.endswith(s) for s in SUPPORTED_SUFFIXES)


def read_bar_file(
    path: PathArg, columns: Mapping[str, str] | None = None, symbol_column: str | None = None
) -> pd.DataFrame:
    """Read one bar file into a raw frame with ``ts`` (UTC) and float OHLCV columns, file order.

    ``columns`` maps the names above (``ts``, ``open``, ... ``volume``) to the file's own column
    names; mapping ``volume`` to ``""`` loads the file without volume. With ``symbol_column`` the
    frame also has a ``symbol`` column (stripped strings) taken from that column.
    """
    path = Path(path)
    name = path.name.lower()
    options = _ReadOptions(dict(columns or {}), symbol_column)
    if not path.is_file():
        raise FileNotFoundError(f"bar file {path} does not exist or is not a file")
    if name.endswith((".parquet", ".pq")):
        return _table_to_bars(pd.read_parquet(path), str(path), None, options)
    if name.endswith(".feather"):
        try:
            table = pd.read_feather(path)
        except Exception as exc:  # pyarrow raises ArrowInvalid/OSError flavours for a bad file
            raise MalformedPayloadError(f"{path}: not a readable Feather file: {exc}") from exc
        return _table_to_bars(table, str(path), None, options)
    if name.endswith(".zip"):
        return _read_zip(path, options)
    if name.endswith(".csv.gz"):
        with gzip.open(path, "rb") as handle:
            return _read_csv_bytes(handle.read(), str(path), options)
    if name.endswith((".csv", ".txt")):
        return _read_csv_bytes(path.read_bytes(), str(path), options)
    raise ValueError(f"unsupported bar file {path}; expected one of {', '.join(SUPPORTED_SUFFIXES)}")


class _ReadOptions:
    """How to find the columns of a file with a header (the column mapping, the symbol column)."""

    def __init__(self, columns: dict[str, str], symbol_column: str | None):
        unknown = sorted(set(columns) - set(MAPPABLE_COLUMNS))
        if unknown:
            raise ValueError(f"column mapping names {unknown}; it may only map {list(MAPPABLE_COLUMNS)}")
        self.columns = {k: v.strip().lower() for k, v in columns.items()}
        self.symbol_column = symbol_column.strip().lower() if symbol_column else None

    @property
    def default(self) -> bool:
        return not self.columns and self.symbol_column is None


def _read_zip(path: Path, options: _ReadOptions) -> pd.DataFrame:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise MalformedPayloadError(f"{path}: not a readable zip archive: {exc}") from exc
    with archive:
        members = [
            m for m in archive.namelist() if m.lower().endswith((".csv", ".txt")) and not m.startswith("__MACOSX/")
        ]
        if not members:
            raise MalformedPayloadError(f"{path}: zip archive holds no CSV file")
        frames = [_read_csv_bytes(archive.read(m), f"{path}!{m}", options) for m in sorted(members)]
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def _read_csv_bytes(data: bytes, origin: str, options: _ReadOptions) -> pd.DataFrame:
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
    return _table_to_bars(table, origin, 0 if headerless else 1, options)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _table_to_bars(table: pd.DataFrame, origin: str, header_lines: int | None, options: _ReadOptions) -> pd.DataFrame:
    """Pick the time and OHLCV columns of a table read from ``origin`` and validate them.

    ``header_lines`` is how many lines precede the data in a text file (for line numbers in
    errors); ``None`` for Parquet and Feather, which have no lines.
    """
    symbols = None
    if header_lines == 0:
        if not options.default:
            raise MalformedPayloadError(
                f"{origin}: a headerless file has no column names, so a column mapping or a symbol "
                "column cannot apply to it"
            )
        if table.shape[1] < 6:
            raise MalformedPayloadError(
                f"{origin}: headerless file has {table.shape[1]} columns; expected open time, "
                "open, high, low, close, volume first (Binance kline archive layout)"
            )
        picked = table.iloc[:, :6].copy()
        picked.columns = ["time", *VALUE_COLUMNS]
        time_col, value_cols = "time", {c: c for c in VALUE_COLUMNS}
    else:
        lowered = [str(c).strip().lower() for c in table.columns]
        duplicated = sorted({c for c in lowered if lowered.count(c) > 1})
        if duplicated:
            raise MalformedPayloadError(f"{origin}: columns {duplicated} appear more than once (case-insensitive)")
        picked = table.set_axis(lowered, axis=1)
        mapped = options.columns
        absent = {k: v for k, v in mapped.items() if v and v not in picked.columns}
        if absent:
            raise MalformedPayloadError(
                f"{origin}: the column mapping names {absent} but the file's columns are {lowered}"
            )
        time_col = mapped.get("ts") or next((c for c in TIME_COLUMNS if c in picked.columns), "")
        if not time_col:
            raise MalformedPayloadError(
                f"{origin}: no time column; expected one of {list(TIME_COLUMNS)}, found {lowered} "
                '(name yours with a column mapping, e.g. AUTOTRADER_FILE_COLUMNS="ts=<column>")'
            )
        value_cols = {c: mapped.get(c, c) for c in VALUE_COLUMNS}
        missing = [c for c in ("open", "high", "low", "close") if value_cols[c] not in picked.columns]
        if missing:
            raise MalformedPayloadError(f"{origin}: missing columns {missing}; found {lowered}")
        if value_cols["volume"] and value_cols["volume"] not in picked.columns:
            used = {time_col, *value_cols.values(), options.symbol_column}
            volume_like = [c for c in lowered if "vol" in c and c not in used]
            if volume_like:
                raise MalformedPayloadError(
                    f"{origin}: no 'volume' column but {volume_like} looks like one; map it "
                    f'(AUTOTRADER_FILE_COLUMNS="volume={volume_like[0]}") or load without volume '
                    '(AUTOTRADER_FILE_COLUMNS="volume=")'
                )
            value_cols["volume"] = ""
        if options.symbol_column is not None:
            if options.symbol_column not in picked.columns:
                raise MalformedPayloadError(f"{origin}: no symbol column {options.symbol_column!r}; found {lowered}")
            symbols = picked[options.symbol_column]

    def where(row: int) -> str:
        line = "" if header_lines is None else f" (line {row + header_lines + 1})"
        return f"{origin}: row {row}{line}"

    out = pd.DataFrame({"ts": parse_times(picked[time_col], where)})
    for col, source_col in value_cols.items():
        if source_col:
            out[col] = _numeric_column(picked[source_col], col, where)
        else:
            # A volume-less source (FX spot): NaN on every row, never a made-up 0.
            out[col] = np.nan
    if symbols is not None:
        if symbols.isna().any():
            row = int(np.flatnonzero(symbols.isna().to_numpy())[0])
            raise MalformedPayloadError(f"{where(row)}: {options.symbol_column} is empty")
        out[SYMBOL] = symbols.astype(str).str.strip().to_numpy()
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


class FileSourceError(ValueError):
    """The file source cannot tell, without guessing, which bars belong to an instrument."""


class FileSource:
    """Bars read from files, each instrument from its own file(s) or rows: never one file for all.

    * ``FileSource("gbpusd.csv", instruments=["GBPUSD"])``: one file for one instrument. Without
      ``instruments`` the file belongs to the first instrument asked for, and any other is refused.
    * ``FileSource({"GBPUSD": "gbpusd.csv", "ETHUSDT": ["eth-1.zip", "eth-2.zip"]})``: a mapping;
      an instrument without an entry is refused.
    * ``FileSource(directory="archive/", pattern="{instrument}-1m-*.zip")``: every supported file
      matching the pattern, with ``{instrument}`` replaced (glob-escaped). The default
      ``{instrument}[._-]*`` matches ``BTC_1m.csv`` and ``BTC.csv`` but not ``BTCUSDT.csv``.
      Several matches are read as consecutive parts of one series (monthly archives); matches
      whose time spans overlap are refused, since they are different series or a stray copy.
    * ``symbol_column="symbol"`` with any of the above: only the rows whose symbol equals the
      instrument (case-insensitive) are its bars; an instrument absent from the file is refused.

    ``columns`` maps ``ts``/``open``/.../``volume`` to the files' own column names. Files given
    explicitly for one instrument are concatenated; identical repeated bars are dropped and
    counted, conflicting ones kept for the schema check to show (:func:`normalize_bars`).

    Every frame returned carries ``attrs["interval_seconds"]``, measured on the instrument's whole
    series (a short day, a partial Sunday, still reports the file's interval), and
    ``attrs["duplicates_dropped"]`` for the bars returned. Parsed files are cached until their
    size or modification time changes, so a daily-partitioned backfill reads each file once.
    """

    source_name = "file"

    def __init__(
        self,
        path: PathArg | Mapping[str, PathArg | list[PathArg]] | None = None,
        *,
        directory: PathArg | None = None,
        pattern: str | None = None,
        symbol_column: str | None = None,
        columns: Mapping[str, str] | None = None,
        instruments: Iterable[str] | None = None,
        source_name: str = "file",
    ):
        if (path is None) == (directory is None):
            raise ValueError(
                "give exactly one of path (a file or an instrument->file mapping) or directory; " + HOW_TO_CONFIGURE
            )
        self.source_name = source_name
        self.pattern = pattern or DEFAULT_PATTERN
        self.directory = Path(directory) if directory is not None else None
        self.symbol_column = symbol_column or None
        _ReadOptions(dict(columns or {}), self.symbol_column)  # refuse a bad mapping now, not at the first read
        self.columns = dict(columns or {})
        self.instruments = tuple(instruments) if instruments is not None else None
        self.path: Path | None = None
        self.paths: dict[str, list[Path]] | None = None
        if isinstance(path, Mapping):
            self.paths = {k: [Path(p) for p in (v if isinstance(v, (list, tuple)) else [v])] for k, v in path.items()}
            empty = sorted(k for k, v in self.paths.items() if not v)
            if empty:
                raise FileSourceError(f"no file given for instrument(s) {empty}; " + HOW_TO_CONFIGURE)
        elif path is not None:
            self.path = Path(path)
        if self.directory is not None:
            if "{instrument}" not in self.pattern:
                raise ValueError(f"pattern {self.pattern!r} must contain '{{instrument}}'")
            if not self.directory.is_dir():
                raise FileNotFoundError(f"bar directory {self.directory} does not exist")
        # The one instrument a single plain file belongs to (None until known).
        self._owner: str | None = None
        if self.instruments is not None:
            self._check_instruments(self.instruments)
        self._cache: dict[Path, tuple[int, int, pd.DataFrame]] = {}
        self._series: dict[str, tuple[tuple, pd.DataFrame, int | None]] = {}

    def _check_instruments(self, instruments: tuple[str, ...]) -> None:
        """Refuse, before any fetch, a configuration that cannot serve every instrument."""
        if self.path is not None and self.symbol_column is None:
            if len(set(instruments)) > 1:
                raise FileSourceError(
                    f"one file ({self.path}) cannot hold the bars of {len(set(instruments))} instruments "
                    f"({', '.join(instruments)}): it would serve the same bars to each. " + HOW_TO_CONFIGURE
                )
            self._owner = instruments[0] if instruments else None
        if self.paths is not None:
            unmapped = [i for i in instruments if i not in self.paths]
            if unmapped:
                raise FileSourceError(
                    f"no file configured for instrument(s) {unmapped} (configured: {sorted(self.paths)}); "
                    'add an entry for each, e.g. AUTOTRADER_FILE_SOURCE="'
                    + ",".join(f"{i}=/path/to/{i}.csv" for i in instruments)
                    + '", or remove them from AUTOTRADER_INSTRUMENTS'
                )

    def files_for(self, instrument: str) -> list[Path]:
        """The files holding ``instrument``'s bars, in the order they are concatenated."""
        if self.path is not None:
            if self.symbol_column is None:
                if self._owner is None:
                    self._owner = instrument
                elif instrument != self._owner:
                    raise FileSourceError(
                        f"the file {self.path} holds {self._owner!r}'s bars; refusing to serve it as "
                        f"{instrument!r}'s too. " + HOW_TO_CONFIGURE
                    )
            return [self.path]
        if self.paths is not None:
            if instrument not in self.paths:
                raise FileSourceError(
                    f"no file configured for instrument {instrument!r} (configured: {sorted(self.paths)}); "
                    f"add {instrument}=/path/to/file to AUTOTRADER_FILE_SOURCE"
                )
            return self.paths[instrument]
        assert self.directory is not None
        glob_pattern = self.pattern.replace("{instrument}", glob.escape(instrument))
        matches = sorted(p for p in self.directory.glob(glob_pattern) if p.is_file())
        files = [p for p in matches if is_supported(p)]
        if not files:
            raise FileNotFoundError(
                f"no bar file for {instrument!r} in {self.directory} matching {glob_pattern!r}"
                + (f" (ignored unsupported: {[p.name for p in matches]})" if matches else "")
                + '; rename the file or set AUTOTRADER_FILE_PATTERN (e.g. "{instrument}_*.csv")'
            )
        return files

    def _instrument_series(self, instrument: str) -> tuple[pd.DataFrame, int | None]:
        """Every raw bar of ``instrument`` (its files, its rows) and the series' interval."""
        files = self.files_for(instrument)
        signature = tuple((p, *self._stat(p)) for p in files)
        cached = self._series.get(instrument)
        if cached is not None and cached[0] == signature:
            return cached[1], cached[2]
        frames = [self._read_cached(p) for p in files]
        if self.symbol_column is not None:
            wanted = instrument.strip().casefold()
            frames = [f.loc[f[SYMBOL].str.casefold() == wanted] for f in frames]
            if all(f.empty for f in frames):
                found = sorted({s for f in (self._read_cached(p) for p in files) for s in f[SYMBOL].unique()})
                raise FileSourceError(
                    f"instrument {instrument!r} has no rows in column {self.symbol_column!r} of "
                    f"{[str(p) for p in files]}; symbols found: {found[:20]}"
                )
        if self.directory is not None and len(files) > 1:
            self._refuse_overlaps(instrument, files, frames)
        frames = [f for f in frames if not f.empty]
        raw = pd.concat(frames, ignore_index=True) if len(frames) > 1 else (frames[0] if frames else pd.DataFrame())
        if not raw.empty:
            # Sorted once (stable: rows of one time keep their file order), so each day's window
            # is a binary search rather than a scan of the whole series.
            raw = raw.sort_values("ts", kind="stable", ignore_index=True)
        interval = detect_interval_seconds(raw)
        self._series[instrument] = (signature, raw, interval)
        return raw, interval

    def _refuse_overlaps(self, instrument: str, files: list[Path], frames: list[pd.DataFrame]) -> None:
        spans = sorted((f["ts"].min(), f["ts"].max(), p) for p, f in zip(files, frames) if not f.empty)
        for (_, prev_end, prev), (start, _, path) in zip(spans, spans[1:]):
            if start <= prev_end:
                raise FileSourceError(
                    f"pattern {self.pattern!r} matches several files for {instrument!r} whose times overlap "
                    f"({prev.name} runs to {prev_end}, {path.name} starts at {start}): they are different "
                    "series or copies, and picking one would be a guess. Narrow AUTOTRADER_FILE_PATTERN, "
                    "move the extra file away, or name the files in AUTOTRADER_FILE_SOURCE"
                )

    def load(self, instrument: str) -> pd.DataFrame:
        """Every bar of ``instrument`` in its files, normalized, without time filtering."""
        raw, _interval = self._instrument_series(instrument)
        return normalize_raw(raw[[c for c in ("ts", *VALUE_COLUMNS) if c in raw.columns]], instrument, self.source_name)

    def fetch_bars(self, instrument: str, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        """Bars of ``instrument`` opening in ``[start, end)``."""
        start, end = utc_range(start, end)
        raw, interval = self._instrument_series(instrument)
        if raw.empty:
            window = raw
        else:
            # Cut the raw rows first: only the window is normalized, and the duplicate count is
            # the window's own.
            lo, hi = raw["ts"].searchsorted([start, end], side="left")
            window = raw.iloc[lo:hi][["ts", *VALUE_COLUMNS]]
        bars = normalize_raw(window, instrument, self.source_name)
        return with_bar_attrs(bars, interval, bars.attrs[DUPLICATES_ATTR])

    @staticmethod
    def _stat(path: Path) -> tuple[int, int]:
        try:
            stat = path.stat()
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"bar file {path} does not exist") from exc
        return stat.st_mtime_ns, stat.st_size

    def _read_cached(self, path: Path) -> pd.DataFrame:
        mtime, size = self._stat(path)
        cached = self._cache.get(path)
        if cached is not None and cached[:2] == (mtime, size):
            return cached[2]
        frame = read_bar_file(path, self.columns, self.symbol_column)
        self._cache[path] = (mtime, size, frame)
        return frame
