"""Session calendars: what a UTC day of an instrument should contain, and the settings that pick them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from autotrader_assets.defs.market_data import calendars
from autotrader_assets.defs.market_data.calendars import (
    CalendarError,
    expected_bar_count,
    expected_bars,
    in_session,
    is_closed,
    session_minutes,
)
from autotrader_assets.settings import SettingsError, default_calendar, load_settings

FEB_2012_SATURDAYS = ["2012-02-04", "2012-02-11", "2012-02-18", "2012-02-25"]


def _utc(s: str) -> pd.Timestamp:
    return pd.Timestamp(s, tz="UTC")


# -- crypto and the bar interval ------------------------------------------------------------------
def test_crypto_is_always_open_and_counts_bars_at_the_interval():
    assert expected_bars("crypto", "2024-02-03") == 1440  # a Saturday too
    assert expected_bars("crypto", "2024-02-03", interval_seconds=300) == 288
    assert expected_bars("crypto", "2024-02-03", interval_seconds=3600) == 24
    mins = session_minutes("crypto", "2024-02-03", 300)
    assert mins[0] == _utc("2024-02-03 00:00") and mins[-1] == _utc("2024-02-03 23:55") and len(mins) == 288
    assert not is_closed("crypto", "2024-12-25")


@pytest.mark.parametrize("interval", [0, -60, 7 * 60, 90.5])
def test_an_interval_that_does_not_divide_a_day_is_refused(interval):
    with pytest.raises(CalendarError, match="divides a day"):
        expected_bars("crypto", "2024-02-03", interval_seconds=interval)


def test_an_unknown_calendar_is_refused_with_the_valid_names():
    with pytest.raises(CalendarError, match=r"unknown session calendar 'NOPE'.*crypto, fx, .*XNYS"):
        expected_bars("NOPE", "2024-02-03")


# -- fx -------------------------------------------------------------------------------------------------
def test_fx_week_in_winter_is_sunday_22_to_friday_22_utc():
    for saturday in FEB_2012_SATURDAYS:
        assert is_closed("fx", saturday) and len(session_minutes("fx", saturday)) == 0
    sunday = session_minutes("fx", "2012-02-05")
    assert sunday[0] == _utc("2012-02-05 22:00") and sunday[-1] == _utc("2012-02-05 23:59") and len(sunday) == 120
    friday = session_minutes("fx", "2012-02-03")
    assert friday[0] == _utc("2012-02-03 00:00") and friday[-1] == _utc("2012-02-03 21:59") and len(friday) == 1320
    assert expected_bars("fx", "2012-02-06") == 1440  # Monday: all day
    assert expected_bars("fx", "2012-02-05", interval_seconds=300) == 24


def test_fx_week_follows_new_york_daylight_saving():
    # 17:00 New York is 21:00 UTC in July: a fixed 22:00 UTC would call the first hour of the
    # week out of session and the last hour of Friday missing.
    assert session_minutes("fx", "2024-07-07")[0] == _utc("2024-07-07 21:00")
    assert session_minutes("fx", "2024-07-05")[-1] == _utc("2024-07-05 20:59")
    assert expected_bars("fx", "2024-07-07") == 180 and expected_bars("fx", "2024-07-05") == 1260


def test_fx_weekend_has_no_expected_bars_between_friday_close_and_sunday_open():
    after = np.array([_utc("2012-02-03 21:59").value])
    before = np.array([_utc("2012-02-05 22:00").value])
    # bars strictly between the last Friday bar and the first Sunday bar: none expected
    assert expected_bar_count("fx", after + 60 * 10**9, before)[0] == 0
    assert expected_bar_count("crypto", after + 60 * 10**9, before)[0] == 2880


# -- exchange calendars from the library ---------------------------------------------------------------
def test_cme_globex_equity_has_the_daily_halt_and_a_closed_saturday():
    day = session_minutes("CME Globex Equity", "2012-02-06")
    assert len(day) == 1380  # 1440 minus the 16:00-17:00 Chicago halt (22:00-23:00 UTC in winter)
    assert _utc("2012-02-06 21:59") in day and _utc("2012-02-06 23:00") in day
    assert not any(_utc("2012-02-06 22:00") <= t < _utc("2012-02-06 23:00") for t in day)
    assert is_closed("CME Globex Equity", "2012-02-04")
    assert expected_bars("CME Globex Equity", "2012-02-05") == 60  # Sunday: the week opens at 23:00 UTC


def test_exchange_sessions_holidays_and_lunch_breaks():
    assert expected_bars("XNYS", "2012-02-06") == 390
    assert is_closed("XNYS", "2024-12-25") and is_closed("XNYS", "2012-02-05")
    # an hourly bar is expected when it overlaps the session: 14:00 covers the 14:30 open
    hourly = session_minutes("XNYS", "2012-02-06", 3600)
    assert [t.hour for t in hourly] == [14, 15, 16, 17, 18, 19, 20]
    # Hong Kong's lunch break is not trading time: 09:30-12:00 and 13:00-16:00 local
    assert expected_bars("XHKG", "2012-02-06") == 150 + 180


@pytest.mark.parametrize("calendar", ["crypto", "fx", "CME Globex Equity", "XNYS"])
def test_in_session_agrees_with_session_minutes(calendar):
    grid = pd.date_range("2012-02-03", "2012-02-07", freq="min", tz="UTC", inclusive="left")
    inside = in_session(calendar, grid)
    expected = pd.DatetimeIndex(
        np.concatenate(
            [session_minutes(calendar, d).asi8 for d in ["2012-02-03", "2012-02-04", "2012-02-05", "2012-02-06"]]
        )
    ).tz_localize("UTC")
    assert grid[inside].equals(expected)


def test_the_calendar_library_is_asked_once_per_year_for_thousands_of_days(monkeypatch):
    """A backfill asks about every partition; the schedule is built per (calendar, year) and
    per-day answers are memoised, so 4 years x 365 days cost 6 schedule builds (one year either
    side for sessions that cross New Year)."""
    calendars._library_year.cache_clear()
    calendars._expected_bars.cache_clear()
    calendars._grid_year.cache_clear()
    real = calendars._library_calendar("XNYS")
    calls = []

    class Counting:
        def schedule(self, start, end):
            calls.append((start, end))
            return real.schedule(start, end)

    monkeypatch.setattr(calendars, "_library_calendar", lambda name: Counting())
    days = pd.date_range("2018-01-01", "2021-12-31").strftime("%Y-%m-%d")
    counts = [expected_bars("XNYS", d) for d in days]
    assert len(calls) == 6
    assert sum(c > 0 for c in counts) == 1008  # NYSE trading days 2018-2021
    calls.clear()
    assert [expected_bars("XNYS", d) for d in days] == counts and not calls


# -- settings: which calendar an instrument has ----------------------------------------------------------
@pytest.fixture
def env(monkeypatch):
    monkeypatch.delenv("AUTOTRADER_CALENDARS", raising=False)
    monkeypatch.setenv("AUTOTRADER_HOME", "/tmp/autotrader-calendar-tests")
    return monkeypatch


def test_default_rule_currency_pairs_are_fx_the_rest_24_7(env):
    s = load_settings()
    assert s.calendars == ()
    assert [s.calendar_for(i) for i in ("GBPUSD", "eurusd", "USDJPY")] == ["fx"] * 3
    # crypto tickers are not currencies: the replay instruments and BTCUSD stay 24/7
    assert [s.calendar_for(i) for i in ("BTCUSDT", "BTCUSD", "ETHBTC", "SOLUSD", "ES")] == ["crypto"] * 5
    assert default_calendar("GBPUSDT") == "crypto"


def test_calendars_from_the_environment(env):
    env.setenv("AUTOTRADER_CALENDARS", "es=CME Globex Equity, BTCUSD=FX ,AAPL=XNYS")
    s = load_settings()
    assert s.calendar_for("ES") == "CME Globex Equity"
    assert s.calendar_for("BTCUSD") == "fx"  # built-in names are case-insensitive
    assert s.calendar_for("AAPL") == "XNYS"
    assert s.calendar_for("GBPUSD") == "fx" and s.calendar_for("BTCUSDT") == "crypto"


@pytest.mark.parametrize(
    "raw, message",
    [
        ("ES=CME", r"unknown calendar\(s\) CME; valid: crypto, fx, .*CME Globex Equity.*XNYS"),
        ("ES", "is not INSTRUMENT=CALENDAR"),
        ("=fx", "is not INSTRUMENT=CALENDAR"),
        ("ES=", "is not INSTRUMENT=CALENDAR"),
        ("ES=XNYS,es=CMES", "maps ES twice"),
    ],
)
def test_bad_calendar_settings_are_refused(env, raw, message):
    env.setenv("AUTOTRADER_CALENDARS", raw)
    with pytest.raises(SettingsError, match=message):
        load_settings()
