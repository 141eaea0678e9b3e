"""Completeness and outlier rules on real market data: calendars, intervals, quiet instruments."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from autotrader_assets.defs.market_data.calendars import session_minutes
from autotrader_assets.defs.market_data.replay import ReplaySource
from autotrader_assets.defs.market_data.schema import BAR_COLUMNS
from autotrader_assets.defs.market_data.validation import (
    closed_partitions,
    detect_intervals,
    find_gaps_many,
    missing_fraction,
    missing_fractions,
    out_of_session_bars,
    partition_failures,
    return_outliers,
    return_outliers_many,
)
from tests.support.pipeline import shared_file

FEB_2012 = [d.strftime("%Y-%m-%d") for d in pd.date_range("2012-02-01", "2012-02-29")]
SATURDAYS = ["2012-02-04", "2012-02-11", "2012-02-18", "2012-02-25"]


def load_bars(path, instrument: str) -> pd.DataFrame:
    """A real CSV as warehouse rows (``date`` column, volume NaN when the file has none)."""
    raw = pd.read_csv(path)
    ts = pd.to_datetime(raw.iloc[:, 0], utc=True)
    df = pd.DataFrame(
        {
            "ts": ts,
            "instrument": instrument,
            **{c: raw[c].astype(float) for c in ("open", "high", "low", "close")},
            "volume": raw["volume"].astype(float) if "volume" in raw else np.nan,
            "source": "file",
        }
    )[BAR_COLUMNS]
    return df.assign(date=df["ts"].dt.strftime("%Y-%m-%d"))


@pytest.fixture(scope="module")
def gbpusd() -> pd.DataFrame:
    df = load_bars(shared_file("fx_1m", "GBPUSD_m1_ask_2012.csv"), "GBPUSD")
    return df[df["date"] < "2012-03-01"].reset_index(drop=True)  # one stray 2012-03-01 00:00 bar


@pytest.fixture(scope="module")
def btc_perp() -> pd.DataFrame:
    return load_bars(shared_file("crypto_1m", "BTCUSDT-PERP_1m_2021-12-31_2022-02-01.csv"), "BTCUSDT")


# -- calendars in completeness: the real GBPUSD month -------------------------------------------
def test_fx_saturdays_are_expected_empty_and_pass(gbpusd):
    parts = [(d, "GBPUSD") for d in FEB_2012]
    assert not set(gbpusd["date"]) & set(SATURDAYS)
    # GBPUSD is on the fx calendar by the default rule (a pair of currencies)
    _rows, failed, cases = partition_failures(parts, gbpusd)
    assert failed == set() and cases.empty
    assert closed_partitions(parts) == {f"{d}|GBPUSD" for d in SATURDAYS}
    # what a 24/7 calendar said before: every Saturday an empty, failing partition
    _rows, failed_24_7, _ = partition_failures(parts, gbpusd, calendar="crypto")
    assert failed_24_7 == {f"{d}|GBPUSD" for d in SATURDAYS}


def test_an_empty_open_day_still_fails(gbpusd):
    without_monday = gbpusd[gbpusd["date"] != "2012-02-06"]
    _rows, failed, cases = partition_failures([("2012-02-06", "GBPUSD"), ("2012-02-04", "GBPUSD")], without_monday)
    assert failed == {"2012-02-06|GBPUSD"}
    assert cases["check"].tolist() == ["partition is empty"]


def test_fx_completeness_counts_only_in_session_minutes(gbpusd):
    frac = missing_fractions(gbpusd, [(d, "GBPUSD") for d in FEB_2012])
    # Sundays open at 22:00 UTC: 120 expected minutes. 2012-02-05 has 116 (22:00 and three more absent).
    assert frac["2012-02-05|GBPUSD"] == pytest.approx(round(4 / 120, 4))
    assert frac["2012-02-19|GBPUSD"] == 0.0  # all 120
    # Fridays close at 22:00 UTC: 1320 expected. 2012-02-03 has 1317, 2012-02-10 has 1318.
    assert frac["2012-02-03|GBPUSD"] == pytest.approx(round(3 / 1320, 4))
    assert frac["2012-02-10|GBPUSD"] == pytest.approx(round(2 / 1320, 4))
    assert all(frac[f"{d}|GBPUSD"] == 0.0 for d in SATURDAYS)
    # every day of the month is under the 5% warning limit (worst: the 2012-02-05 Sunday, 3.3%)
    assert max(frac.values()) == frac["2012-02-05|GBPUSD"] < 0.05
    # the 24/7 expectation this replaces: a Sunday "92% missing", a Friday 8%
    blind = missing_fractions(gbpusd, [("2012-02-05", "GBPUSD"), ("2012-02-03", "GBPUSD")], calendar="crypto")
    assert blind["2012-02-05|GBPUSD"] > 0.9 and blind["2012-02-03|GBPUSD"] > 0.08


def test_a_closed_day_is_zero_missing_for_one_partition():
    empty = pd.DataFrame(columns=BAR_COLUMNS)
    assert missing_fraction(empty, date="2012-02-04", instrument="GBPUSD") == 0.0
    assert missing_fraction(empty, date="2012-02-06", instrument="GBPUSD") == 1.0
    assert missing_fraction(empty) == 1.0  # nothing places it on a calendar


def test_the_fx_weekend_is_not_a_gap(gbpusd):
    gaps = find_gaps_many(gbpusd)
    # the few real holes are short; nothing spans the weekend (Friday 21:59 -> Sunday 22:00)
    assert gaps["missing_bars"].max() <= 4
    assert not gaps["partition"].str.startswith(tuple(SATURDAYS)).any()


def test_bars_outside_the_session_are_listed_but_do_not_fail(gbpusd):
    assert out_of_session_bars(gbpusd).empty
    saturday_bar = gbpusd.iloc[[100]].assign(ts=pd.Timestamp("2012-02-04 12:00", tz="UTC"), date="2012-02-04")
    df = pd.concat([gbpusd, saturday_bar], ignore_index=True)
    listed = out_of_session_bars(df)
    assert listed.to_dict("records") == [
        {
            "partition": "2012-02-04|GBPUSD",
            "calendar": "fx",
            "bars": 1,
            "first": "2012-02-04 12:00:00+00:00",
            "last": "2012-02-04 12:00:00+00:00",
        }
    ]
    _rows, failed, _ = partition_failures([("2012-02-04", "GBPUSD")], df)
    assert failed == set()
    # and an out-of-session bar does not fill an expected slot
    assert missing_fractions(df, [("2012-02-04", "GBPUSD")]) == {"2012-02-04|GBPUSD": 0.0}


# -- a CME future with its daily halt ----------------------------------------------------------------
def _bars_at(times: pd.DatetimeIndex, instrument: str) -> pd.DataFrame:
    n = len(times)
    close = 1300.0 + np.cumsum(np.random.default_rng(1).normal(0, 0.25, n))
    return pd.DataFrame(
        {
            "ts": times,
            "instrument": instrument,
            "open": close,
            "high": close + 0.5,
            "low": close - 0.5,
            "close": close,
            "volume": 10.0,
            "source": "file",
            "date": times.strftime("%Y-%m-%d"),
        }
    )


def test_cme_daily_halt_is_neither_missing_nor_a_gap():
    day = _bars_at(session_minutes("CME Globex Equity", "2012-02-06"), "ES")  # 1380 bars, halt 22:00-23:00
    cme = {"ES": "CME Globex Equity"}
    assert missing_fractions(day, [("2012-02-06", "ES")], calendar=cme) == {"2012-02-06|ES": 0.0}
    assert find_gaps_many(day, calendar=cme).empty
    # judged 24/7, the halt is a daily hour missing (4.2%) and a 60-bar gap
    assert missing_fractions(day, [("2012-02-06", "ES")], calendar="crypto") == {"2012-02-06|ES": round(60 / 1440, 4)}
    assert find_gaps_many(day, calendar="crypto")["missing_bars"].tolist() == [60]
    assert closed_partitions([("2012-02-04", "ES")], calendar=cme) == {"2012-02-04|ES"}


# -- the data's interval ---------------------------------------------------------------------------------
def test_five_minute_files_are_not_80_percent_missing():
    """Full days of the six files: 0% missing except ADA_BTC's 2018-01-15 (40 bars missing in three holes, 13.9%)."""
    for name in (
        "ADA_BTC-5m.csv",
        "DASH_BTC-5m.csv",
        "ETC_BTC-5m.csv",
        "ETH_BTC-5m.csv",
        "LTC_BTC-5m.csv",
        "XMR_BTC-5m.csv",
    ):
        df = load_bars(shared_file("crypto_5m", name), name.split("-")[0].replace("_", ""))
        instrument = df["instrument"].iloc[0]
        assert detect_intervals(df) == {instrument: 300}
        # the file's first and last days are partial (it starts at 04:55, ends mid-day): judge the full ones
        days = sorted(df["date"].unique())[1:-1]
        frac = missing_fractions(df, [(d, instrument) for d in days])
        assert np.median(list(frac.values())) == 0.0
        # what is missing is exactly what the gaps list, in 5-minute bars (288 a day)
        gaps = find_gaps_many(df, min_bars=1).groupby("partition")["missing_bars"].sum()
        assert {k: round(v * 288) for k, v in frac.items() if v} == {k: int(n) for k, n in gaps.items() if k in frac}
        # counted against a 1-minute expectation, as before, every day was 80% missing
        blind = missing_fractions(df, [(days[0], instrument)], interval_seconds=60)
        assert blind[f"{days[0]}|{instrument}"] == pytest.approx(0.8, abs=0.01)


def test_gaps_are_counted_in_bars_of_the_interval():
    times = pd.date_range("2024-02-01", periods=288, freq="5min", tz="UTC")
    df = _bars_at(times.delete([10, 11, 12]), "ETHBTC")
    gaps = find_gaps_many(df)
    assert gaps["missing_bars"].tolist() == [3]
    assert missing_fractions(df, [("2024-02-01", "ETHBTC")]) == {"2024-02-01|ETHBTC": round(3 / 288, 4)}


# -- outliers ------------------------------------------------------------------------------------------
def test_no_ordinary_fx_day_flags(gbpusd):
    assert return_outliers_many(gbpusd, z_bound=12).empty
    # For the record: the largest one-bar move of the month is robust z 29.3 (2012-02-21 02:49,
    # +0.31%, news during the Greek bailout talks: it persists, so it is no bad print), and the
    # largest spike-and-return is z 10.0 (the thin Sunday open, 2012-02-05 22:37, -0.15% then +0.19%).
    all_z = return_outliers_many(gbpusd, z_bound=0, extreme_multiple=0)
    top = all_z.loc[all_z["robust_z"].abs().idxmax()]
    assert str(top["ts"]) == "2012-02-21 02:49:00+00:00" and top["robust_z"] == pytest.approx(29.3, abs=0.1)
    near = return_outliers_many(gbpusd, z_bound=8)
    assert near["ts"].astype(str).tolist() == ["2012-02-05 22:37:00+00:00"]
    assert near["robust_z"].abs().iloc[0] == pytest.approx(10.0, abs=0.1)


def test_the_plain_mad_rule_flagged_ordinary_fx_days(gbpusd):
    """What the issue saw: median/MAD z-scores of every return, no reversal, bound 12."""
    d = gbpusd.sort_values("ts")
    r = np.log(d["close"]).groupby(d["date"]).diff()
    med = r.groupby(d["date"]).transform("median")
    mad = (r - med).abs().groupby(d["date"]).transform("median") * 1.4826
    flagged_days = d.loc[((r - med) / mad).abs() > 12, "date"].unique()
    assert len(flagged_days) >= 10


def test_a_100x_spike_in_the_fx_file_is_flagged(gbpusd):
    spiked = gbpusd.copy()
    at = spiked.index[spiked["ts"] == pd.Timestamp("2012-02-07 12:00", tz="UTC")][0]
    spiked.loc[at, ["close", "high"]] *= 100
    out = return_outliers_many(spiked, z_bound=12)
    assert out.index.tolist() == [at]
    assert out["rule"].tolist() == ["spike-and-return"] and out["log_return"].iloc[0] == pytest.approx(
        np.log(100), abs=0.01
    )


def test_a_spike_on_the_last_bar_of_a_day_is_flagged_as_extreme(gbpusd):
    spiked = gbpusd.copy()
    at = spiked.index[spiked["ts"] == pd.Timestamp("2012-02-07 23:59", tz="UTC")][0]
    spiked.loc[at, ["close", "high"]] *= 100
    out = return_outliers_many(spiked, z_bound=12)
    assert out.index.tolist() == [at] and out["rule"].tolist() == ["extreme"]


def test_btc_perp_flags_nothing(btc_perp):
    # A liquid, continuous market: its largest one-bar move is robust z 23.9 (2022-01-07 08:27),
    # a move that persisted; its largest spike-and-return is z 8.8, under the bound of 12.
    assert return_outliers_many(btc_perp, z_bound=12).empty
    assert return_outliers_many(btc_perp, z_bound=9).empty


def test_quiet_instrument_spike_is_caught_and_ticks_are_not():
    """80% of returns exactly zero: the MAD of all returns is 0, so the plain rule divided by zero
    and reported nothing, not even a 100x spike."""
    rng = np.random.default_rng(5)
    ticks = rng.choice([0, 0, 0, 0, 0, 0, 0, 0, 1, -1], size=1440) * rng.integers(1, 4, size=1440)
    close = 1.2000 + np.cumsum(ticks) * 1e-4
    df = _bars_at(pd.date_range("2024-02-01", periods=1440, freq="min", tz="UTC"), "EURCHF").assign(
        open=close, high=close, low=close, close=close
    )
    r = np.log(df["close"]).diff()
    assert (r == 0).mean() > 0.75 and (r - r.median()).abs().median() == 0
    assert return_outliers_many(df, z_bound=12).empty  # 1-3 tick moves are ordinary
    spiked = df.copy()
    spiked.loc[700, ["close", "high"]] *= 100
    out = return_outliers_many(spiked, z_bound=12)
    assert out.index.tolist() == [700]


def test_outliers_of_one_partition_without_a_date_column():
    day = ReplaySource(seed=3).day_bars("BTCUSDT", "2024-02-01")
    spiked = day.copy()
    spiked.loc[500, "close"] *= 1.2
    assert return_outliers(spiked, z_bound=12).index.tolist() == [500]


def test_callers_that_pass_only_parts_and_frame_keep_working(gbpusd):
    """The asset and the CLI call these positionally; the calendar comes from settings."""
    chunk = [(d, "GBPUSD") for d in FEB_2012[:7]]
    frame = gbpusd[gbpusd["date"].isin(FEB_2012[:7])]
    n, failed, _cases = partition_failures(chunk, frame)
    assert n == len(frame) and failed == set()
    assert set(missing_fractions(frame, chunk)) == {f"{d}|GBPUSD" for d in FEB_2012[:7]}
    one = frame[frame["date"] == "2012-02-05"].drop(columns="date")
    assert missing_fraction(one) == pytest.approx(4 / 120)
    assert missing_fraction(one, expected_minutes=1440) == pytest.approx(1 - 116 / 1440)  # the old fixed count
