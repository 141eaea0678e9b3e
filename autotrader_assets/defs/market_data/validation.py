"""Data-quality rules for OHLCV bars, as pure functions the asset checks and the CLI call.

Completeness is judged against each instrument's session calendar (``calendars.py``;
``Settings.calendar_for`` picks it) at the data's own bar interval (detected from the bars
unless given): a day the market is closed is expected empty and 0% missing, a partial FX
Sunday expects only its in-session bars, and 5-minute data expects 288 bars on a 24/7 day.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pandera.pandas as pa

from autotrader_assets.defs.market_data import calendars
from autotrader_assets.settings import default_calendar

MINUTES_PER_DAY = 1440
#: Bar interval assumed when a frame has no two bars of one partition to measure it from.
DEFAULT_INTERVAL_SECONDS = 60
#: Outlier rule: a return beyond this multiple of the z bound is listed even without a reversal.
EXTREME_MULTIPLE = 10.0
#: Outlier rule: a spike "returns" when the next bar ends within this fraction of the jump
#: from the level before it (so it undoes at least half of it, and at most one and a half).
RETURN_TOLERANCE = 0.5

#: A calendar for every instrument (a name), per instrument (a mapping, the rest by the default
#: rule), a function instrument -> name, or None: the default rule ``settings.default_calendar``
#: (no AUTOTRADER_CALENDARS mapping). Definitions and the CLI pass ``settings.calendar_for``.
CalendarSpec = str | Mapping[str, str] | Callable[[str], str] | None
#: Bar interval in seconds: one for every instrument, per instrument, or None: detected.
IntervalSpec = int | Mapping[str, int] | None


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
                lambda df: (
                    df["ts"].dt.floor("D").dt.tz_localize(None)
                    == pd.to_datetime(df["date"], format="%Y-%m-%d", cache=True)
                ),
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


def calendar_lookup(calendar: CalendarSpec = None) -> Callable[[str], str]:
    """instrument -> session calendar name, from a ``CalendarSpec`` (see there)."""
    if calendar is None:
        return default_calendar
    if isinstance(calendar, str):
        return lambda _instrument: calendar
    if isinstance(calendar, Mapping):
        mapping = dict(calendar)
        return lambda instrument: mapping.get(instrument) or default_calendar(instrument)
    return calendar


def _with_date(df: pd.DataFrame) -> pd.DataFrame:
    if "date" in df.columns:
        return df
    return df.assign(date=df["ts"].dt.strftime("%Y-%m-%d") if len(df) else pd.Series([], dtype="object"))


class _Bars:
    """Integer views of a frame of bars, computed once per call: the string columns are
    factorised (sorted, so partition codes order like ``date, instrument``), bar times are ns,
    and ``order`` sorts rows by partition then time. Group-bys on these ints, not on strings,
    keep the calendar-aware rules about as cheap as the calendar-blind ones were."""

    def __init__(self, df: pd.DataFrame):
        self.df = _with_date(df)
        self.ts = calendars.as_ns(self.df["ts"])
        date_codes, dates = pd.factorize(self.df["date"].astype(str).to_numpy(), sort=True)
        self.inst, self.instruments = pd.factorize(self.df["instrument"].to_numpy(), sort=True)
        self.dates = np.asarray(dates, dtype=object)
        self.date_code = date_codes
        self.part = date_codes.astype(np.int64) * max(len(self.instruments), 1) + self.inst
        self.day0 = pd.to_datetime(pd.Index(self.dates), format="%Y-%m-%d").asi8[date_codes]
        self.order = np.lexsort((self.ts, self.part))

    def rows_of(self) -> dict[str, np.ndarray]:
        """instrument -> its row positions."""
        by = np.argsort(self.inst, kind="stable")
        bounds = np.searchsorted(self.inst[by], np.arange(len(self.instruments) + 1))
        return {str(name): by[bounds[k] : bounds[k + 1]] for k, name in enumerate(self.instruments)}

    def key(self, rows: np.ndarray) -> np.ndarray:
        """``date|instrument`` of the given rows."""
        return self.dates[self.date_code[rows]] + "|" + np.asarray(self.instruments, dtype=object)[self.inst[rows]]


def _detect(bars: _Bars) -> dict[str, int]:
    o = bars.order
    steps = np.diff(bars.ts[o]) // 10**9
    same = bars.part[o][1:] == bars.part[o][:-1]
    inst = bars.inst[o][1:]
    out = {}
    for k, name in enumerate(bars.instruments):
        s = steps[same & (inst == k) & (steps > 0)]
        if len(s):
            values, counts = np.unique(s, return_counts=True)
            out[str(name)] = int(values[np.argmax(counts)])
    return out


def detect_intervals(df: pd.DataFrame) -> dict[str, int]:
    """Bar interval (seconds) of each instrument of ``df``: the most common positive step between
    consecutive bars of one partition. Gaps (an outage, a weekend, a daily halt) are a minority of
    steps, so they do not change it. Instruments with no two bars in one partition are absent."""
    return _detect(_Bars(df)) if len(df) >= 2 else {}


def interval_lookup(df: pd.DataFrame | _Bars, interval_seconds: IntervalSpec = None) -> Callable[[str], int]:
    """instrument -> bar interval in seconds: given, else detected from ``df``, else 60."""
    if isinstance(interval_seconds, (int, np.integer)):
        return lambda _instrument: int(interval_seconds)
    given = dict(interval_seconds or {})
    bars = df if isinstance(df, _Bars) else _Bars(df)
    detected = _detect(bars) if len(bars.ts) >= 2 else {}
    return lambda instrument: int(given.get(instrument) or detected.get(instrument) or DEFAULT_INTERVAL_SECONDS)


def _bar_buckets(bars: _Bars, cal_of, iv_of) -> tuple[np.ndarray, np.ndarray]:
    """For each row: its bar's open time on the interval grid (ns) and whether the bar lies in a
    session of its instrument's calendar."""
    bucket = np.empty_like(bars.ts)
    inside = np.zeros(len(bars.ts), bool)
    for instrument, idx in bars.rows_of().items():
        interval = iv_of(instrument)
        step = interval * 10**9
        bucket[idx] = bars.ts[idx] // step * step
        inside[idx] = calendars.in_session(cal_of(instrument), bucket[idx], interval)
    return bucket, inside


def closed_partitions(parts: list[tuple[str, str]], *, calendar: CalendarSpec = None) -> set[str]:
    """The ``date|instrument`` keys whose day has no session: empty is what they should be."""
    cal_of = calendar_lookup(calendar)
    return {f"{d}|{i}" for d, i in parts if calendars.is_closed(cal_of(i), d)}


def partition_failures(
    parts: list[tuple[str, str]], df: pd.DataFrame, *, calendar: CalendarSpec = None
) -> tuple[int, set[str], pd.DataFrame]:
    """Validate the rows of many partitions at once (``df`` has a ``date`` column).

    Returns the rows checked, the failed ``date|instrument`` keys and the failure cases with their
    partition. An empty partition fails, unless its calendar has no session that day (a Saturday
    of FX, an exchange holiday): that one is expected empty and passes. Bars outside the session
    do not fail here (see ``out_of_session_bars``).
    """
    report = validate_bars(df)
    present = set(zip(df["date"], df["instrument"])) if len(df) else set()
    closed = closed_partitions([p for p in parts if p not in present], calendar=calendar)
    empty = [f"{d}|{i}" for d, i in parts if (d, i) not in present and f"{d}|{i}" not in closed]
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


def _missing(df: pd.DataFrame, parts, calendar: CalendarSpec, interval_seconds: IntervalSpec) -> dict[str, float]:
    cal_of = calendar_lookup(calendar)
    present: dict[tuple[str, str], int] = {}
    if len(df):
        bars = _Bars(df)
        iv_of = interval_lookup(bars, interval_seconds)
        bucket, inside = _bar_buckets(bars, cal_of, iv_of)
        # Only in-session bars of the partition's own day count: a bar outside the session is
        # reported by out_of_session_bars, not counted as filling an expected slot.
        keep = inside & (bucket >= bars.day0) & (bucket < bars.day0 + calendars.DAY_NS)
        # (partition, second of the day) identifies a bar slot; duplicates count once. Rows in
        # ``order`` are sorted by partition then time, so equal slots are adjacent.
        o = bars.order[keep[bars.order]]
        slots = bars.part[o] * 86_400 + (bucket[o] - bars.day0[o]) // 10**9
        slots = slots[np.r_[True, slots[1:] != slots[:-1]]] if len(slots) else slots
        counts = np.bincount(slots // 86_400)
        codes = np.flatnonzero(counts)
        counts = counts[codes]
        n_inst = max(len(bars.instruments), 1)
        for code, n in zip(codes.tolist(), counts.tolist()):
            present[(str(bars.dates[code // n_inst]), str(bars.instruments[code % n_inst]))] = n
    else:
        iv_of = interval_lookup(df, interval_seconds)
    out = {}
    for date, instrument in parts:
        expected = calendars.expected_bars(cal_of(instrument), date, iv_of(instrument))
        n = present.get((str(date), instrument), 0)
        out[f"{date}|{instrument}"] = 0.0 if expected == 0 else max(0.0, 1.0 - n / expected)
    return out


def missing_fraction(
    df: pd.DataFrame,
    expected_minutes: int | None = None,
    *,
    date: str | None = None,
    instrument: str | None = None,
    calendar: CalendarSpec = None,
    interval_seconds: IntervalSpec = None,
) -> float:
    """Fraction of one partition's expected bars that are absent (duplicates count once).

    Expected bars come from the instrument's session calendar at the bars' interval; a closed day
    is 0.0 missing. ``date`` and ``instrument`` default to the frame's; give them for a frame that
    may be empty (an empty frame with no date is 1.0 missing: nothing places it on a calendar).
    ``expected_minutes`` keeps the old fixed count (bars present / that many), calendar-blind.
    """
    if expected_minutes is not None:
        present = df["ts"].nunique() if len(df) else 0
        return max(0.0, 1.0 - present / expected_minutes)
    if date is None:
        if not len(df):
            return 1.0
        date = str(df["date"].iloc[0]) if "date" in df.columns else df["ts"].iloc[0].strftime("%Y-%m-%d")
    if instrument is None:
        instrument = str(df["instrument"].iloc[0]) if "instrument" in df.columns and len(df) else ""
    frame = df.assign(date=date, instrument=instrument) if len(df) else df
    return _missing(frame, [(date, instrument)], calendar, interval_seconds)[f"{date}|{instrument}"]


def missing_fractions(
    df: pd.DataFrame,
    parts: list[tuple[str, str]],
    expected_minutes: int | None = None,
    *,
    calendar: CalendarSpec = None,
    interval_seconds: IntervalSpec = None,
) -> dict[str, float]:
    """``missing_fraction`` for many partitions at once (``df`` has a ``date`` column), rounded
    to 4 places. The interval of each instrument is detected over the whole frame."""
    if expected_minutes is not None:
        present = df.groupby(["date", "instrument"])["ts"].nunique() if len(df) else pd.Series(dtype=float)
        return {f"{d}|{i}": round(max(0.0, 1.0 - int(present.get((d, i), 0)) / expected_minutes), 4) for d, i in parts}
    return {k: round(v, 4) for k, v in _missing(df, parts, calendar, interval_seconds).items()}


def out_of_session_bars(
    df: pd.DataFrame, *, calendar: CalendarSpec = None, interval_seconds: IntervalSpec = None
) -> pd.DataFrame:
    """Bars whose time is outside their calendar's sessions (Saturday FX bars, bars in CME's daily
    halt), one row per partition: partition, calendar, bars, first, last.

    A warning, not a schema failure: prices outside the session are not wrong prices, and a
    calendar is a model of the market (provider session edges, special sessions) that a blocking
    rule would turn into lost good data. Many of them usually mean the calendar mapping or the
    timestamps' time zone is wrong; the completeness check shows them.
    """
    cols = ["partition", "calendar", "bars", "first", "last"]
    if not len(df):
        return pd.DataFrame(columns=cols)
    cal_of = calendar_lookup(calendar)
    bars = _Bars(df)
    _bucket, inside = _bar_buckets(bars, cal_of, interval_lookup(bars, interval_seconds))
    rows = np.flatnonzero(~inside)
    if not len(rows):
        return pd.DataFrame(columns=cols)
    out = pd.DataFrame(
        {"partition": bars.key(rows), "instrument": bars.df["instrument"].to_numpy()[rows], "ts": bars.ts[rows]}
    )
    agg = out.groupby(["partition", "instrument"])["ts"].agg(["size", "min", "max"]).reset_index()
    return pd.DataFrame(
        {
            "partition": agg["partition"],
            "calendar": agg["instrument"].map(cal_of),
            "bars": agg["size"].astype(int),
            "first": pd.to_datetime(agg["min"], utc=True).astype(str),
            "last": pd.to_datetime(agg["max"], utc=True).astype(str),
        }
    )


def find_gaps(
    df: pd.DataFrame, min_bars: int = 2, *, calendar: CalendarSpec = None, interval_seconds: IntervalSpec = None
) -> pd.DataFrame:
    """Runs of at least ``min_bars`` missing in-session bars in one partition (after, before,
    missing bars); a closed stretch (the FX weekend, a daily halt) is not a gap."""
    if len(df) < 2:
        return pd.DataFrame(columns=["after", "before", "missing_bars"])
    frame = df if "instrument" in df.columns else df.assign(instrument="")
    return find_gaps_many(frame, min_bars, calendar=calendar, interval_seconds=interval_seconds).drop(
        columns="partition"
    )


def find_gaps_many(
    df: pd.DataFrame, min_bars: int = 2, *, calendar: CalendarSpec = None, interval_seconds: IntervalSpec = None
) -> pd.DataFrame:
    """Gaps of every partition in one vectorised pass (``df`` has a ``date`` column).

    The missing bars between two consecutive bars are the expected bar times of the calendar
    strictly between them, at the instrument's interval: 5-minute bars 10 minutes apart miss 1
    bar, and FX bars on both sides of the weekend or CME bars on both sides of the halt miss none.
    """
    cols = ["partition", "after", "before", "missing_bars"]
    if len(df) < 2:
        return pd.DataFrame(columns=cols)
    cal_of = calendar_lookup(calendar)
    bars = _Bars(df)
    iv_of = interval_lookup(bars, interval_seconds)
    bucket, _inside = _bar_buckets(bars, cal_of, iv_of)
    o = bars.order
    same = np.r_[False, bars.part[o][1:] == bars.part[o][:-1]]
    prev = np.r_[bucket[o][:1], bucket[o][:-1]]
    missing = np.zeros(len(o), np.int64)
    inst = bars.inst[o]
    for k, name in enumerate(bars.instruments):
        sel = np.flatnonzero(same & (inst == k))
        if len(sel):
            interval = iv_of(str(name))
            missing[sel] = calendars.expected_bar_count(
                cal_of(str(name)), prev[sel] + interval * 10**9, bucket[o][sel], interval
            )
    hit = np.flatnonzero(same & (missing >= min_bars))
    ts = bars.ts[o]
    return pd.DataFrame(
        {
            "partition": bars.key(o[hit]),
            "after": pd.Series(pd.to_datetime(ts[hit - 1], utc=True)).astype(str),
            "before": pd.Series(pd.to_datetime(ts[hit], utc=True)).astype(str),
            "missing_bars": missing[hit].astype(int),
        },
        columns=cols,
    )


def return_outliers(df: pd.DataFrame, z_bound: float) -> pd.DataFrame:
    """``return_outliers_many`` on one partition."""
    return return_outliers_many(_with_date(df), z_bound)


def return_outliers_many(
    df: pd.DataFrame, z_bound: float, *, extreme_multiple: float = EXTREME_MULTIPLE
) -> pd.DataFrame:
    """Bars whose close looks like a bad print, per (date, instrument) partition.

    ``r`` is the log return of a bar's close over the previous bar of its partition. Its scale
    is the largest of:

    * 1.4826 x the median absolute deviation (from the median return) of the NON-ZERO returns:
      on a quiet instrument most minute returns are exactly zero, and the MAD of all returns
      collapses to (almost) nothing, making ordinary one-tick moves look enormous;
    * the mean absolute return: a day whose moves come in bursts (an open, a news release) is
      not judged by the scale of its quiet hours;
    * the smallest non-zero absolute return (one price tick): a move of a few ticks is never
      an outlier.

    ``robust_z = (r - median r) / scale``. A bar is listed when either

    * ``spike-and-return``: ``|robust_z| > z_bound``, the next bar's return is also beyond
      ``z_bound`` the other way, and the next close lands within half the jump of the close
      before the spike (``|r + r_next| <= 0.5 |r|``): one isolated print, the signature of a
      bad tick (a 100x close is +4.6 then -4.6);
    * ``extreme``: ``|robust_z| > extreme_multiple * z_bound`` (10x), reversal or not: a level
      shift (a unit change), or a spike on the partition's last bar with no next bar to judge.
      The bar right after a listed spike (its way back) is not listed again.

    Real moves are fat-tailed (minute returns reach robust z 15-30 on news) but they persist or
    retrace only partly; requiring the immediate round trip is what keeps them out. A bad print
    that lasts several bars is caught only by the ``extreme`` rule.
    """
    cols = {"log_return": [], "robust_z": [], "rule": []}
    if len(df) < 3:
        return df.iloc[0:0].assign(**cols)
    bars = _Bars(df)
    d = bars.df.iloc[bars.order]
    g = bars.part[bars.order]
    r = np.log(d["close"]).groupby(g).diff()
    nonzero = r.ne(0) & r.notna()
    med = r.groupby(g).transform("median")
    mad_nz = (r - med).abs().where(nonzero).groupby(g).transform("median") * 1.4826
    tick = r.abs().where(nonzero).groupby(g).transform("min")
    mean_abs = r.abs().groupby(g).transform("mean")
    scale = np.fmax(np.fmax(mad_nz, tick), mean_abs)
    scale = scale.where(scale > 0)
    z = (r - med) / scale
    r_next = r.groupby(g).shift(-1)
    z_next = (r_next - med) / scale
    spike = (z.abs() > z_bound) & (z_next.abs() > z_bound) & ((r + r_next).abs() <= RETURN_TOLERANCE * r.abs())
    # The bar after a spike-and-return carries the way back (-4.6 after +4.6): the bad print is
    # the spike bar, so the return leg is not listed again as an extreme move.
    after_spike = spike.groupby(g).shift(1, fill_value=False).astype(bool)
    extreme = (z.abs() > extreme_multiple * z_bound) & ~after_spike
    out = d.assign(log_return=r, robust_z=z, rule=np.where(spike, "spike-and-return", "extreme"))
    return out[(spike | extreme).to_numpy()]
