"""Trading sessions: which bar open times a UTC day of an instrument should have.

A partition is a UTC day; a market's sessions do not follow UTC days (FX opens on Sunday
evening, CME's Globex session runs from 17:00 to 16:00 Chicago time, NYSE trades 14:30-21:00
UTC in winter). Every calendar is reduced to one shape, half-open ``[open, close)`` sessions
in UTC, and every question the data checks ask is answered from those arrays:

* ``crypto``: always open (24/7).
* ``fx``: spot FX, 24/5: from Sunday 17:00 to Friday 17:00 New York time, the interbank
  week that starts and ends at the New York close. That is 22:00 UTC while New York is on
  standard time and 21:00 UTC in its summer: DST is handled, because a fixed 22:00 UTC would
  call the first summer hour of every week "outside the session" and the last summer hour of
  every Friday "missing". Holidays (25 December, 1 January) count as open: liquidity thins
  but quotes go on, and a check that warns on a thin holiday is better than one that hides a
  missing weekday.
* any other name: a pandas-market-calendars calendar (every exchange-calendars name such as
  ``XNYS`` or ``CMES`` included), with its holidays, early closes and lunch breaks. For CME
  futures use a Globex product calendar such as ``CME Globex Equity`` (17:00-16:00 Chicago,
  so the daily 16:00-17:00 halt is closed); exchange-calendars' ``CMES`` runs 17:00-17:00
  and has no halt.

A bar whose open time is ``t`` and interval ``I`` covers ``[t, t + I)``; it is expected when that
span overlaps a session, with ``t`` on the UTC grid of ``I`` (``I`` divides a day). So 5-minute
bars of a 24/7 day are 288 expected bars, and an hourly bar at 14:00 is expected on a day
when NYSE opens at 14:30.

Everything is vectorised over numpy arrays of nanoseconds; exchange schedules are computed
once per (calendar, year) and the per-day answers are memoised, so a backfill of thousands of
partitions asks the calendar library a handful of times.
"""

from __future__ import annotations

import datetime as dt
import functools

import numpy as np
import pandas as pd

from autotrader_assets.settings import BUILTIN_CALENDARS, calendar_names

CRYPTO, FX = BUILTIN_CALENDARS
DAY_NS = 86_400 * 10**9
#: The FX week opens and closes at 17:00 in New York (the interbank rollover).
FX_TZ = "America/New_York"
FX_OPEN_CLOSE = pd.Timedelta(hours=17)
#: Beyond any bar time (year 2116): the end of the single 24/7 session.
_FAR = np.int64(2**62)


class CalendarError(ValueError):
    """An unknown calendar name or an interval the calendar arithmetic cannot use."""


@functools.cache
def resolve(name: str) -> str:
    """The canonical calendar name (built-in names case-insensitive), or ``CalendarError``."""
    if name.lower() in BUILTIN_CALENDARS:
        return name.lower()
    names = calendar_names()
    if name not in names:
        raise CalendarError(f"unknown session calendar {name!r}; valid: {', '.join(names)}")
    return name


def _step_ns(interval_seconds: int) -> int:
    iv = int(interval_seconds)
    if iv <= 0 or iv != interval_seconds or 86_400 % iv:
        raise CalendarError(f"bar interval {interval_seconds!r} s must be a whole number of seconds that divides a day")
    return iv * 10**9


def _day_start_ns(date: str | dt.date | pd.Timestamp) -> int:
    ts = pd.Timestamp(date)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return int(ts.normalize().value)


# -- sessions as arrays --------------------------------------------------------------------------
def _fx_sessions(lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """FX weeks overlapping ``[lo, hi)`` ns (Sunday 17:00 -> Friday 17:00 New York)."""
    first = pd.Timestamp(lo, unit="ns").normalize() - pd.Timedelta(days=7)
    last = pd.Timestamp(hi, unit="ns").normalize() + pd.Timedelta(days=1)
    sundays = pd.date_range(first, last, freq="W-SUN")
    # 17:00 on a Sunday or Friday is never in a DST transition (those happen at 02:00).
    opens = (sundays + FX_OPEN_CLOSE).tz_localize(FX_TZ).tz_convert("UTC").asi8
    closes = (sundays + pd.Timedelta(days=5) + FX_OPEN_CLOSE).tz_localize(FX_TZ).tz_convert("UTC").asi8
    return opens, closes


@functools.cache
def _library_calendar(name: str):
    import pandas_market_calendars as pmc

    return pmc.get_calendar(name)


@functools.lru_cache(maxsize=512)
def _library_year(name: str, year: int) -> tuple[np.ndarray, np.ndarray]:
    """Sessions labelled in ``year`` (lunch breaks cut out), as sorted ns arrays."""
    sched = _library_calendar(name).schedule(f"{year}-01-01", f"{year}-12-31")
    if sched.empty:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    opens = sched["market_open"].to_numpy("datetime64[ns]").astype(np.int64)
    closes = sched["market_close"].to_numpy("datetime64[ns]").astype(np.int64)
    if "break_start" in sched and "break_end" in sched:
        bs = sched["break_start"].to_numpy("datetime64[ns]").astype(np.int64)
        be = sched["break_end"].to_numpy("datetime64[ns]").astype(np.int64)
        nat = np.iinfo(np.int64).min  # NaT: no break that day
        brk = (bs != nat) & (be != nat) & (be > bs) & (bs > opens) & (be < closes)
        opens = np.concatenate([opens, be[brk]])
        closes = np.concatenate([np.where(brk, bs, closes), closes[brk]])
    order = np.argsort(opens, kind="stable")
    return opens[order], closes[order]


def _library_sessions(name: str, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    # Sessions are labelled by the day they close; one can open the evening before (Globex),
    # so the label of a session overlapping [lo, hi) is between lo's day and the day after hi.
    years = range(pd.Timestamp(lo, unit="ns").year, pd.Timestamp(hi + DAY_NS, unit="ns").year + 1)
    parts = [_library_year(name, y) for y in years]
    opens = np.concatenate([p[0] for p in parts])
    closes = np.concatenate([p[1] for p in parts])
    keep = (closes > lo) & (opens < hi)
    return opens[keep], closes[keep]


def sessions(calendar: str, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """``[open, close)`` sessions (ns, UTC, sorted) of ``calendar`` that overlap ``[lo, hi)``."""
    name = resolve(calendar)
    if name == CRYPTO:
        return np.array([0], np.int64), np.array([_FAR], np.int64)
    if name == FX:
        return _fx_sessions(lo, hi)
    return _library_sessions(name, lo, hi)


def _grid(calendar: str, lo: int, hi: int, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sessions widened to the bar grid and merged: bar open times ``t`` (multiples of ``step``)
    whose bar ``[t, t + step)`` overlaps a session are exactly the grid points of
    ``[floor(open), ceil(close))``. Returns (starts, ends, bars before each block), covering at
    least ``[lo, hi)``."""
    year = pd.Timestamp(lo, unit="ns").year
    if hi <= pd.Timestamp(year + 1, 1, 1).value + DAY_NS:
        # The common case (one partition, one chunk of a backfill) reuses its year's grid.
        return _grid_year(resolve(calendar), year, step)
    return _make_grid(calendar, lo, hi, step)


@functools.lru_cache(maxsize=256)
def _grid_year(calendar: str, year: int, step: int):
    return _make_grid(
        calendar, pd.Timestamp(year, 1, 1).value - DAY_NS, pd.Timestamp(year + 1, 1, 1).value + DAY_NS, step
    )


def _make_grid(calendar: str, lo: int, hi: int, step: int):
    opens, closes = sessions(calendar, lo - DAY_NS, hi + DAY_NS)
    if not len(opens):
        return opens, closes, np.zeros(1, np.int64)
    go = opens // step * step
    gc = -(-closes // step) * step
    # Widening can make neighbouring sessions touch or overlap (a 30-minute lunch inside one
    # hourly bar): merge them so no bar is counted twice.
    new_block = np.r_[True, go[1:] > np.maximum.accumulate(gc)[:-1]]
    idx = np.flatnonzero(new_block)
    starts, ends = go[idx], np.maximum.reduceat(gc, idx)
    before = np.r_[0, np.cumsum((ends - starts) // step)]
    return starts, ends, before


def _bars_before(grid, x: np.ndarray, step: int) -> np.ndarray:
    """Number of expected bar open times ``< x`` counted from the first block of ``grid``."""
    starts, ends, before = grid
    if not len(starts):
        return np.zeros(len(x), np.int64)
    i = np.searchsorted(ends, x, side="right")  # blocks entirely before x
    j = np.minimum(i, len(starts) - 1)
    partial = np.where(i < len(starts), np.clip(-(-(x - starts[j]) // step), 0, None), 0)
    return before[i] + partial


# -- the questions the checks ask ------------------------------------------------------------------
def expected_bar_count(calendar: str, start, end, interval_seconds: int = 60) -> np.ndarray:
    """Expected bar open times ``t`` with ``start <= t < end`` (ns arrays, vectorised)."""
    step = _step_ns(interval_seconds)
    start = np.asarray(start, dtype=np.int64)
    end = np.asarray(end, dtype=np.int64)
    if not start.size:
        return np.zeros(0, np.int64)
    grid = _grid(calendar, int(start.min()), int(end.max()), step)
    return np.maximum(_bars_before(grid, end, step) - _bars_before(grid, start, step), 0)


def in_session(calendar: str, ts, interval_seconds: int = 60) -> np.ndarray:
    """Whether each bar (open time ``ts``, ns or datetimes) overlaps a session of ``calendar``."""
    step = _step_ns(interval_seconds)
    t = as_ns(ts)
    if not t.size:
        return np.zeros(0, bool)
    t = t // step * step
    starts, ends, _ = _grid(calendar, int(t.min()), int(t.max()) + step, step)
    if not len(starts):
        return np.zeros(t.size, bool)
    i = np.searchsorted(ends, t, side="right")
    j = np.minimum(i, len(starts) - 1)
    return (i < len(starts)) & (starts[j] <= t)


@functools.lru_cache(maxsize=16_384)
def _expected_bars(calendar: str, day_ns: int, interval_seconds: int) -> int:
    if calendar == CRYPTO:
        return DAY_NS // _step_ns(interval_seconds)
    return int(expected_bar_count(calendar, [day_ns], [day_ns + DAY_NS], interval_seconds)[0])


def expected_bars(calendar: str, date, interval_seconds: int = 60) -> int:
    """How many bars a UTC day should have: 1440 for a 24/7 day at 1 minute, 288 at 5 minutes,
    0 on a closed day (a Saturday in FX, an exchange holiday)."""
    return _expected_bars(resolve(calendar), _day_start_ns(date), _step_ns(interval_seconds) // 10**9)


@functools.lru_cache(maxsize=4_096)
def _session_minutes(calendar: str, day_ns: int, interval_seconds: int) -> pd.DatetimeIndex:
    step = _step_ns(interval_seconds)
    grid = np.arange(day_ns, day_ns + DAY_NS, step, dtype=np.int64)
    return pd.DatetimeIndex(pd.to_datetime(grid[in_session(calendar, grid, interval_seconds)], utc=True))


def session_minutes(calendar: str, date, interval_seconds: int = 60) -> pd.DatetimeIndex:
    """The expected bar open times (UTC) of ``date`` at ``interval_seconds``; empty when closed."""
    return _session_minutes(resolve(calendar), _day_start_ns(date), _step_ns(interval_seconds) // 10**9)


def is_closed(calendar: str, date) -> bool:
    """True when no session of ``calendar`` overlaps the UTC day ``date`` (an empty day is expected)."""
    return expected_bars(calendar, date, 60) == 0


def as_ns(ts) -> np.ndarray:
    """Bar times (a datetime Series/Index, tz-aware or UTC-naive, or ns integers) as int64 ns UTC."""
    if isinstance(ts, (pd.Series, pd.Index)):
        if isinstance(ts.dtype, pd.DatetimeTZDtype):
            ts = ts.dt.tz_convert("UTC") if isinstance(ts, pd.Series) else ts.tz_convert("UTC")
        return ts.to_numpy("datetime64[ns]").astype(np.int64)
    arr = np.asarray(ts)
    return arr.astype("datetime64[ns]").astype(np.int64) if arr.dtype.kind == "M" else arr.astype(np.int64)
