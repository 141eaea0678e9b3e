"""Tests for deploy_ops.trading.metrics, cross-checked against empyrical where it has the same metric."""

from __future__ import annotations

import json
import math

import empyrical
import numpy as np
import pandas as pd
import pytest

from deploy_ops.trading.backtest import run_backtest, run_portfolio, signals_to_positions
from deploy_ops.trading.metrics import (
    CRYPTO,
    EQUITIES,
    daily_returns,
    max_drawdown,
    profit_factor,
    sharpe_ratio,
    summarize,
    total_pnl,
    trades_per_minute,
    win_rate,
)


def minute_bars(days: int, seed: int, drift: float = 0.0) -> pd.DataFrame:
    """Random-walk 1-minute bars over whole UTC days."""
    n = days * 1440
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(drift, 1e-3, n)))
    open_ = np.r_[100.0, close[:-1]]
    return pd.DataFrame(
        {
            "ts": pd.date_range("2024-03-01", periods=n, freq="1min", tz="UTC"),
            "open": open_,
            "high": np.maximum(open_, close),
            "low": np.minimum(open_, close),
            "close": close,
        }
    )


def trades_with(pnls) -> pd.DataFrame:
    """A trades table with the given pnls (other columns irrelevant to these metrics)."""
    return pd.DataFrame({"pnl": np.asarray(pnls, dtype=float)})


# --------------------------------------------------------------------------- daily returns


def test_daily_returns_take_the_last_mark_of_each_utc_day_and_start_from_initial_equity():
    idx = pd.DatetimeIndex(["2024-01-01 00:00", "2024-01-01 23:59", "2024-01-02 12:00", "2024-01-04 01:00"], tz="UTC")
    equity = pd.Series([100.0, 110.0, 99.0, 118.8], index=idx)
    r = daily_returns(equity, initial_equity=100.0)
    # 2024-01-03 has no bar: it is left out rather than counted as a zero return.
    assert list(r.index.strftime("%Y-%m-%d")) == ["2024-01-01", "2024-01-02", "2024-01-04"]
    np.testing.assert_allclose(r.to_numpy(), [0.10, -0.10, 0.20])
    np.testing.assert_allclose(daily_returns(equity).to_numpy(), [0.10, -0.10, 0.20])
    np.testing.assert_allclose(daily_returns(equity, initial_equity=88.0).iloc[0], 110.0 / 88.0 - 1.0)


def test_daily_returns_bucket_by_utc_day_whatever_the_index_timezone():
    ny = pd.DatetimeIndex(["2024-01-01 18:00", "2024-01-01 20:00"], tz="America/New_York")  # 23:00, 01:00 UTC
    r = daily_returns(pd.Series([105.0, 110.25], index=ny), initial_equity=100.0)
    assert list(r.index.strftime("%Y-%m-%d")) == ["2024-01-01", "2024-01-02"]
    np.testing.assert_allclose(r.to_numpy(), [0.05, 0.05])


def test_daily_returns_compound_back_to_the_equity_curve():
    res = run_backtest(
        minute_bars(6, seed=1),
        signals_to_positions(np.random.default_rng(1).uniform(size=6 * 1440)),
        fee_bps=1,
        slippage_bps=1,
    )
    r = daily_returns(res.equity, res.initial_equity)
    assert len(r) == 6
    assert res.initial_equity * np.prod(1.0 + r.to_numpy()) == pytest.approx(res.equity.iloc[-1], rel=1e-12)
    np.testing.assert_allclose(
        empyrical.cum_returns_final(r.to_numpy()), res.equity.iloc[-1] / res.initial_equity - 1.0, rtol=1e-10
    )


# --------------------------------------------------------------------------- sharpe


@pytest.mark.parametrize("periods", [CRYPTO, EQUITIES])
def test_sharpe_matches_empyrical_and_uses_ddof_1(periods):
    r = np.random.default_rng(2).normal(0.001, 0.02, 60)
    s = sharpe_ratio(pd.Series(r), periods)
    assert s.value == pytest.approx(empyrical.sharpe_ratio(r, annualization=periods), rel=1e-12)
    assert s.value == pytest.approx(r.mean() / r.std(ddof=1) * math.sqrt(periods), rel=1e-12)
    assert s.value != pytest.approx(r.mean() / r.std(ddof=0) * math.sqrt(periods), rel=1e-6)
    assert s.to_dict() == {
        "value": s.value,
        "annualization": f"sqrt({periods})",
        "periods_per_year": periods,
        "ddof": 1,
        "returns": "daily",
        "n_returns": 60,
        "reason": None,
    }


def test_sharpe_of_a_backtests_daily_returns_matches_empyrical():
    res = run_backtest(
        minute_bars(20, seed=3),
        signals_to_positions(np.random.default_rng(3).uniform(size=20 * 1440)),
        fee_bps=0.5,
        slippage_bps=0.5,
    )
    r = daily_returns(res.equity, res.initial_equity)
    assert sharpe_ratio(r).value == pytest.approx(empyrical.sharpe_ratio(r, annualization=365), rel=1e-12)


@pytest.mark.parametrize(
    "returns, reason",
    [([], "at least 2"), ([0.01], "at least 2"), ([0.003, 0.003, 0.003], "zero standard deviation")],
)
def test_sharpe_undefined_cases_say_why(returns, reason):
    s = sharpe_ratio(pd.Series(returns, dtype=float), CRYPTO)
    assert s.value is None and reason in s.reason
    assert s.periods_per_year == 365 and s.annualization == "sqrt(365)"


def test_sharpe_rejects_bad_input():
    with pytest.raises(ValueError, match="non-finite"):
        sharpe_ratio(pd.Series([0.01, np.nan, 0.02]))
    with pytest.raises(ValueError, match="periods_per_year"):
        sharpe_ratio(pd.Series([0.01, 0.02]), 0)


# --------------------------------------------------------------------------- drawdown


def test_max_drawdown_hand_case_with_peak_and_trough_timestamps():
    idx = pd.date_range("2024-01-01", periods=6, freq="1D", tz="UTC")
    equity = pd.Series([100.0, 120.0, 90.0, 130.0, 104.0, 125.0], index=idx)
    dd = max_drawdown(equity)
    assert dd.value == pytest.approx(0.25)
    assert (dd.peak_ts, dd.trough_ts) == (idx[1], idx[2])
    # A later, deeper fall from a higher peak wins: 130 -> 97.5 is also 25%, 130 -> 91 is 30%.
    equity.iloc[4] = 91.0
    dd = max_drawdown(equity)
    assert dd.value == pytest.approx(0.30) and (dd.peak_ts, dd.trough_ts) == (idx[3], idx[4])
    assert dd.to_dict() == {"value": dd.value, "peak_ts": idx[3].isoformat(), "trough_ts": idx[4].isoformat()}


def test_max_drawdown_counts_the_starting_capital_as_a_peak():
    idx = pd.date_range("2024-01-01", periods=3, freq="1D", tz="UTC")
    equity = pd.Series([95.0, 90.0, 99.0], index=idx)
    assert max_drawdown(equity).value == pytest.approx(5 / 95)
    dd = max_drawdown(equity, initial_equity=100.0)
    assert dd.value == pytest.approx(0.10) and dd.peak_ts is None and dd.trough_ts == idx[1]


def test_max_drawdown_is_zero_for_a_rising_curve():
    idx = pd.date_range("2024-01-01", periods=3, freq="1D", tz="UTC")
    dd = max_drawdown(pd.Series([1.0, 2.0, 3.0], index=idx))
    assert dd.value == 0.0 and dd.peak_ts is None and dd.trough_ts is None


def test_max_drawdown_matches_empyrical_on_the_same_returns():
    r = np.random.default_rng(4).normal(0.0, 0.03, 250)
    idx = pd.date_range("2024-01-01", periods=250, freq="1D", tz="UTC")
    equity = pd.Series(1_000.0 * np.cumprod(1.0 + r), index=idx)
    ours = max_drawdown(equity, initial_equity=1_000.0).value
    assert ours == pytest.approx(-empyrical.max_drawdown(r), rel=1e-12)
    assert ours > 0.05
    # Same number on a backtest's account equity via its daily returns (daily marks only).
    res = run_backtest(
        minute_bars(15, seed=5),
        signals_to_positions(np.random.default_rng(5).uniform(size=15 * 1440)),
        fee_bps=0.5,
        slippage_bps=0.5,
    )
    daily = daily_returns(res.equity, res.initial_equity)
    daily_equity = pd.Series(res.initial_equity * np.cumprod(1.0 + daily.to_numpy()), index=daily.index)
    assert max_drawdown(daily_equity, res.initial_equity).value == pytest.approx(
        -empyrical.max_drawdown(daily.to_numpy()), rel=1e-10
    )


@pytest.mark.parametrize(
    "equity, message",
    [
        (pd.Series([], dtype=float, index=pd.DatetimeIndex([], tz="UTC")), "empty"),
        (pd.Series([1.0, np.nan], index=pd.date_range("2024", periods=2, tz="UTC")), "non-finite"),
        (pd.Series([1.0, 2.0]), "DatetimeIndex"),
        ([1.0, 2.0], "pandas Series"),
    ],
)
def test_equity_metrics_reject_bad_input(equity, message):
    with pytest.raises(ValueError, match=message):
        max_drawdown(equity)
    with pytest.raises(ValueError, match=message):
        daily_returns(equity)


# --------------------------------------------------------------------------- trades


def test_profit_factor_and_win_rate_hand_case():
    t = trades_with([30.0, -10.0, 20.0, -15.0, 0.0])
    pf = profit_factor(t)
    assert pf.value == pytest.approx(50.0 / 25.0) and pf.reason is None
    assert (pf.gross_profit, pf.gross_loss, pf.n_trades) == (50.0, 25.0, 5)
    assert win_rate(t) == pytest.approx(2 / 5)


def test_profit_factor_is_flagged_infinite_without_losses():
    pf = profit_factor(trades_with([5.0, 7.0]))
    assert pf.value == math.inf and "no losing trades" in pf.reason
    assert pf.to_dict()["value"] == "inf"
    json.dumps(pf.to_dict(), allow_nan=False)


def test_profit_factor_and_win_rate_without_trades_or_without_winners_and_losers():
    empty = profit_factor(trades_with([]))
    assert empty.value is None and empty.reason == "no closed trades"
    assert win_rate(trades_with([])) is None
    flat = profit_factor(trades_with([0.0, 0.0]))
    assert flat.value is None and "broke even" in flat.reason
    assert profit_factor(trades_with([-1.0])).value == 0.0


def test_trade_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="pnl"):
        profit_factor(pd.DataFrame({"profit": [1.0]}))
    with pytest.raises(ValueError, match="non-finite"):
        win_rate(trades_with([1.0, np.inf]))


# --------------------------------------------------------------------------- whole-result metrics


def test_total_pnl_and_trades_per_minute():
    bars = minute_bars(1, seed=6).iloc[:10].reset_index(drop=True)
    res = run_backtest(bars, [1, 0, 1, 0, 0, 0, 0, 0, 0, 0], fee_bps=10, slippage_bps=5, initial_equity=1_000)
    assert total_pnl(res) == pytest.approx(res.equity.iloc[-1] - 1_000)
    assert total_pnl(res) < 0  # round trips on a flat-ish walk pay fees
    assert trades_per_minute(res) == pytest.approx(4 / 10)
    with pytest.raises(ValueError, match="BacktestResult"):
        total_pnl(res.equity)


def test_summarize_is_json_safe_and_consistent_with_the_parts():
    bars = minute_bars(5, seed=7)
    res = run_backtest(
        bars,
        signals_to_positions(np.random.default_rng(7).uniform(size=len(bars))),
        fee_bps=1,
        slippage_bps=1,
        halt_from_index=len(bars) - 100,
    )
    s = summarize(res, CRYPTO)
    json.dumps(s, allow_nan=False)
    assert s["total_pnl"] == pytest.approx(total_pnl(res))
    assert s["sharpe"] == sharpe_ratio(daily_returns(res.equity, res.initial_equity), CRYPTO).to_dict()
    assert s["max_drawdown"]["value"] == pytest.approx(max_drawdown(res.equity, res.initial_equity).value)
    assert s["n_fills"] == len(res.fills) and s["n_trades"] == len(res.trades) and s["n_days"] == 5
    assert s["win_rate"] == pytest.approx(win_rate(res.trades))
    assert s["halted_at"] == bars.ts.iloc[-100].isoformat() and s["ruined_at"] is None
    assert s["fees_paid"] == pytest.approx(res.fills["fee"].sum())


def test_summarize_writes_infinite_profit_factor_explicitly():
    bars = minute_bars(1, seed=8).iloc[:5].reset_index(drop=True)
    bars["open"] = [100.0, 100.0, 110.0, 120.0, 120.0]
    bars["close"] = [100.0, 110.0, 120.0, 120.0, 120.0]
    res = run_backtest(bars, [1, 1, 0, 0, 0], fee_bps=0, slippage_bps=0)
    s = summarize(res)
    assert s["profit_factor"]["value"] == "inf" and "no losing trades" in s["profit_factor"]["reason"]
    assert s["win_rate"] == 1.0
    assert s["sharpe"]["value"] is None and "at least 2" in s["sharpe"]["reason"]
    json.dumps(s, allow_nan=False)


def test_summarize_portfolio_and_ruined_account():
    bars = {"A": minute_bars(2, seed=9), "B": minute_bars(2, seed=10)}
    targets = {
        k: signals_to_positions(np.random.default_rng(i).uniform(size=len(v))) for i, (k, v) in enumerate(bars.items())
    }
    pf = run_portfolio(bars, targets, fee_bps=1, slippage_bps=1)
    s = summarize(pf, EQUITIES)
    json.dumps(s, allow_nan=False)
    assert s["sharpe"]["periods_per_year"] == 252 and s["n_fills"] == len(pf.fills)

    squeeze = pd.DataFrame(
        {
            "ts": pd.date_range("2024-01-01", periods=4, freq="1min", tz="UTC"),
            "open": [100.0, 100.0, 250.0, 250.0],
            "high": 0.0,
            "low": 0.0,
            "close": [100.0, 250.0, 250.0, 250.0],
        }
    )
    bust = run_backtest(squeeze, [-1.0] * 4, fee_bps=0, slippage_bps=0)
    s = summarize(bust)
    json.dumps(s, allow_nan=False)
    assert s["ruined_at"] == squeeze.ts[1].isoformat()
    assert s["sharpe"]["value"] is None and "zero" in s["sharpe"]["reason"]
    assert s["max_drawdown"]["value"] > 1.0
