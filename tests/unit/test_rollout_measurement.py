"""The rollout Sharpe gate's annualisation: bars per year from the bar spacing, whatever the
timestamps' unit. DuckDB hands ``bar_features.ts`` to pandas as ``datetime64[us]``; read as
nanoseconds, one-minute bars looked 60 ms apart and every rollout Sharpe came out sqrt(1000)x
too large (the canary of the end-to-end test reported -4886 for what is -154.5)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from deploy_ops.rollout.measurement import MINUTES_PER_YEAR, backtest_sharpe, periods_per_year


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_minute_bars_are_minutes_per_year_in_every_unit(unit):
    ts = pd.date_range("2024-03-14 20:00", periods=240, freq="1min", tz="UTC").as_unit(unit)
    assert periods_per_year(ts) == MINUTES_PER_YEAR == 525_600
    assert periods_per_year(pd.Series(ts)) == MINUTES_PER_YEAR


def test_five_minute_bars_in_microseconds():
    ts = pd.date_range("2024-03-14", periods=50, freq="5min", tz="UTC").as_unit("us")
    assert periods_per_year(ts) == 365 * 24 * 12


def test_backtest_sharpe_does_not_depend_on_the_timestamp_unit():
    rng = np.random.default_rng(3)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, 240)))
    base = pd.DataFrame(
        {
            "ts": pd.date_range("2024-03-14 20:00", periods=240, freq="1min", tz="UTC"),
            "open": np.r_[close[0], close[:-1]],
            "close": close,
        }
    )
    proba = {"BTCUSDT": rng.uniform(0.3, 0.7, 240)}
    results = {}
    for unit in ("ns", "us"):
        bars = base.assign(ts=base["ts"].dt.as_unit(unit))
        results[unit] = backtest_sharpe(proba, {"BTCUSDT": bars}, fee_bps=4.0, slippage_bps=2.0)
    (ns_value, ns_detail), (us_value, us_detail) = results["ns"], results["us"]
    assert us_detail["periods_per_year"] == ns_detail["periods_per_year"] == MINUTES_PER_YEAR
    assert us_value is not None and us_value == pytest.approx(ns_value, rel=1e-12)
