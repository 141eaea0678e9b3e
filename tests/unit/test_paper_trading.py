"""Paper trading's pure parts: carry-over between dates through the warehouse, the breaker
flattening at the next bar and blocking later dates until an approved reset, date planning."""

from __future__ import annotations

import datetime as dt

import duckdb
import numpy as np
import pandas as pd
import pytest

from autotrader_assets.defs.trading import warehouse as wh
from autotrader_assets.defs.trading.paper import (
    BreakerView,
    DayInput,
    PaperParams,
    PaperTradingError,
    SignalParams,
    confidence,
    plan_dates,
    run_paper_day,
    run_paper_days,
    targets_from_proba,
)
from autotrader_assets.defs.trading.service import breaker_view
from autotrader_assets.settings import Thresholds
from deploy_ops.db import make_engine
from deploy_ops.trading.backtest import run_portfolio
from deploy_ops.trading.breaker import BreakerStore

D0 = dt.date(2024, 3, 1)
NAMES = ["AAAUSDT", "BBBUSDT", "CCCUSDT"]
SERVING = {n: {"slot": "blue", "model_version": "v1"} for n in NAMES}
NOW = dt.datetime(2024, 4, 1, tzinfo=dt.timezone.utc)


def make_days(n_days: int, n_bars: int = 1440, seed: int = 3, names=NAMES) -> list[DayInput]:
    """Calm random walks (open = previous close, continuous across days) and regime-like P(up)."""
    rng = np.random.default_rng(seed)
    total = n_days * n_bars
    days = [DayInput(D0 + dt.timedelta(days=d), {}, {}) for d in range(n_days)]
    for k, name in enumerate(names):
        close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 2e-4, total)))
        open_ = np.r_[100.0, close[:-1]]
        proba = np.clip(0.5 + 0.2 * np.sin(np.arange(total) / 90.0 + k) + rng.normal(0, 0.004, total), 0, 1)
        proba[:60] = np.nan  # warm-up of the feature windows on the very first date
        for d, day in enumerate(days):
            sl = slice(d * n_bars, (d + 1) * n_bars)
            ts = pd.date_range(pd.Timestamp(day.date, tz="UTC"), periods=n_bars, freq="1min")
            day.bars[name] = pd.DataFrame({"ts": ts, "open": open_[sl], "close": close[sl]})
            day.proba[name] = proba[sl]
    return days


#: The breaker limits as the settings default them (PaperParams has no defaults for them).
LIMITS = dict(daily_loss_limit=Thresholds().breaker_daily_loss, drawdown_limit=Thresholds().breaker_drawdown)
PARAMS = PaperParams(fee_bps=4.0, slippage_bps=2.0, **LIMITS)


def write(con, results):
    frames = [wh.frames_for(r, PARAMS, SERVING, "run", NOW) for r in results]
    wh.replace_dates(con, [r.date for r in results], frames)


def table(con, name: str) -> pd.DataFrame:
    cols = [c for c in con.execute(f"select * from {name} limit 0").df().columns if c not in ("computed_at", "run_id")]
    order = ", ".join(c for c in ("date", "instrument", "ts") if c in cols)
    return con.execute(f"select {', '.join(cols)} from {name} order by {order}").df()


# -- carry-over ----------------------------------------------------------------------------------


def test_five_dates_one_by_one_equal_one_chunk_exactly():
    days = make_days(5)
    chunk = run_paper_days(days, None, PARAMS)
    assert all(r.trip is None and not r.blocked_at_start for r in chunk)  # a calm week: the breaker stays out
    assert sum(len(r.portfolio.fills) for r in chunk) > 50  # and the account really trades

    # One date per run, each continuing from the state the previous run stored in the warehouse.
    one_by_one = duckdb.connect()
    previous = None
    for day in days:
        if previous is not None:
            previous = wh.load_account(one_by_one, previous)
        result = run_paper_day(day, previous, PARAMS)
        write(one_by_one, [result])
        previous = day.date
    backfill = duckdb.connect()
    write(backfill, chunk)

    for name in wh.TABLES:
        pd.testing.assert_frame_equal(table(one_by_one, name), table(backfill, name), check_exact=True)
    last = wh.load_account(one_by_one, days[-1].date)
    assert last == chunk[-1].end  # every carried field, bit for bit
    # Each date opens exactly where the previous one closed.
    account = table(one_by_one, "paper_account_state")
    assert (account["day_open_equity"].to_numpy()[1:] == account["end_equity"].to_numpy()[:-1]).all()

    # And the chained dates are the engine's own uninterrupted run over the five days.
    bars = {n: pd.concat([d.bars[n] for d in days], ignore_index=True) for n in NAMES}
    targets = {n: targets_from_proba(np.concatenate([d.proba[n] for d in days]), PARAMS.signal) for n in NAMES}
    whole = run_portfolio(
        bars, targets, fee_bps=PARAMS.fee_bps, slippage_bps=PARAMS.slippage_bps, initial_equity=PARAMS.initial_equity
    )
    chained = pd.concat([r.equity for r in chunk])
    assert chained.index.equals(whole.equity.index)
    np.testing.assert_allclose(chained.to_numpy(), whole.equity.to_numpy(), rtol=1e-12)
    fills = pd.concat([r.portfolio.fills for r in chunk], ignore_index=True)
    assert fills["ts"].tolist() == whole.fills["ts"].tolist()


def test_positions_cash_and_open_trades_cross_the_date_boundary():
    days = make_days(2)
    first, second = run_paper_days(days, None, PARAMS)
    midnight = days[1].bars[NAMES[0]]["ts"].iloc[0]
    assert any(s.units != 0.0 for s in first.end.states.values()), "the crafted signals hold a position overnight"
    for name, state in first.end.states.items():
        book = second.portfolio.results[name]
        if state.pending_target == state.held_target:
            # Nothing to execute at the first open: the overnight book is day 2's first book.
            assert book.positions.iloc[0] == state.units and book.cash.iloc[0] == state.cash
            assert book.fills.empty or book.fills["ts"].iloc[0] > midnight
        else:
            # The order decided at day 1's last close fills at day 2's first open.
            assert book.fills["ts"].iloc[0] == midnight and book.fills["target"].iloc[0] == state.pending_target
    overnight = second.portfolio.trades[second.portfolio.trades["entry_ts"] < midnight]
    assert len(overnight) > 0, "a round trip opened on day 1 closes on day 2 and keeps its entry"
    assert second.day_open_equity == first.end.equity
    assert second.start_peak_equity == first.end.peak_equity


# -- breaker -------------------------------------------------------------------------------------


def crash_days(n_days: int = 3, n_bars: int = 300) -> list[DayInput]:
    """One instrument, always long. Day 1 is flat at 100; from bar 100 of day 1 it falls 1% a bar
    for 20 bars, then stays flat; later days are flat at the low."""
    closes = np.full(n_days * n_bars, 100.0)
    fall = 100.0 * 0.99 ** np.arange(1, 21)
    closes[100:120] = fall
    closes[120:] = fall[-1]
    opens = np.r_[100.0, closes[:-1]]
    days = []
    for d in range(n_days):
        sl = slice(d * n_bars, (d + 1) * n_bars)
        date = D0 + dt.timedelta(days=d)
        ts = pd.date_range(pd.Timestamp(date, tz="UTC"), periods=n_bars, freq="1min")
        days.append(
            DayInput(
                date,
                {"AAAUSDT": pd.DataFrame({"ts": ts, "open": opens[sl], "close": closes[sl]})},
                {"AAAUSDT": np.full(n_bars, 0.9)},
            )
        )
    return days


FREE = PaperParams(fee_bps=0.0, slippage_bps=0.0, **LIMITS)


def test_breaker_trips_at_the_right_bar_and_flattens_at_the_next_open():
    day = crash_days(1)[0]
    result = run_paper_day(day, None, FREE)
    # Long 1,000 units from bar 1's open at 100; equity = 1,000 x close. 0.99**5 = 0.951 (4.9% down)
    # and 0.99**6 = 0.941: the day's loss first exceeds 5% at bar 105.
    assert result.trip is not None
    assert result.trip.index == 105 and result.trip.reasons == ("daily_loss",)
    assert result.trip.equity == pytest.approx(100_000 * 0.99**6)
    pos = result.portfolio.results["AAAUSDT"]
    fills = pos.fills
    assert list(fills["side"].astype(str)) == ["buy", "sell"]
    assert fills["ts"].iloc[1] == day.bars["AAAUSDT"]["ts"].iloc[106]  # the next bar's open
    assert fills["price"].iloc[1] == day.bars["AAAUSDT"]["open"].iloc[106]
    assert (pos.positions.iloc[106:] == 0.0).all() and (pos.positions.iloc[1:106] == 1000.0).all()
    assert result.end.halted_since == result.trip.at
    # The loss stops at the flatten: equity after it stays at the exit value, not the day's low.
    assert result.end.equity == pytest.approx(100_000 * 0.99**6)
    curve = result.account_curve()
    assert curve["halted"].tolist() == [False] * 105 + [True] * (len(curve) - 105)


def test_a_tripped_account_places_no_orders_on_later_dates_until_reset(tmp_path):
    url = f"sqlite:///{tmp_path / 'state.db'}"
    store = BreakerStore(url)
    days = crash_days(3)
    day1 = run_paper_day(days[0], None, FREE, breaker_view(store)[0])
    store.trip(day1.trip.reason, day1.trip.to_details(), at=day1.trip.at)

    view = breaker_view(store)[0]
    assert view.active_trip_at == day1.trip.at
    day2 = run_paper_day(days[1], day1.end, FREE, view)
    day3 = run_paper_day(days[2], day2.end, FREE, view)
    for blocked in (day2, day3):
        assert blocked.blocked_at_start and "not reset" in blocked.block_reason
        assert len(blocked.portfolio.fills) == 0
        assert (blocked.portfolio.results["AAAUSDT"].positions == 0.0).all()
        assert blocked.end.equity == day1.end.equity

    # Even without the store (say it was rolled back to an older snapshot) the account state
    # itself keeps later dates halted: the trip is carried in halted_since.
    assert run_paper_day(days[1], day1.end, FREE, BreakerView()).blocked_at_start

    store.reset(approved_by="alice", reason="crash understood")
    resumed = run_paper_day(days[1], day1.end, FREE, breaker_view(store)[0])
    assert not resumed.blocked_at_start and resumed.trip is None
    assert list(resumed.portfolio.fills["side"].astype(str)) == ["buy"]
    assert resumed.portfolio.fills["ts"].iloc[0] == days[1].bars["AAAUSDT"]["ts"].iloc[1]
    make_engine(url).dispose()


def test_recomputing_a_tripped_day_reproduces_the_same_trip_and_book():
    days = crash_days(2)
    first = run_paper_days(days, None, FREE)
    # The store now holds the trip; recomputing sees it in force from the trip bar on.
    again = run_paper_days(days, None, FREE, BreakerView(active_trip_at=first[0].trip.at))
    assert again[0].trip == first[0].trip
    assert again[1].blocked_at_start
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.equity.to_numpy(), b.equity.to_numpy())
        assert a.end == b.end
    # After an approved reset of that trip, a recompute halts the rest of the trip's day as
    # before, and the next day trades.
    reset = run_paper_days(days, None, FREE, BreakerView(reset_trips=frozenset({first[0].trip.at})))
    assert reset[0].trip == first[0].trip and reset[0].end.equity == first[0].end.equity
    assert not reset[1].blocked_at_start and len(reset[1].portfolio.fills) == 1


def test_a_trip_held_by_the_store_before_the_first_date_blocks_a_fresh_account():
    day = crash_days(1)[0]
    stored = pd.Timestamp(D0, tz="UTC") - pd.Timedelta(hours=1)
    result = run_paper_day(day, None, FREE, BreakerView(active_trip_at=stored))
    assert result.blocked_at_start and len(result.portfolio.fills) == 0
    assert result.end.equity == FREE.initial_equity and result.end.halted_since == stored


# -- smaller pure parts --------------------------------------------------------------------------


def test_targets_and_confidence_ignore_missing_predictions():
    proba = np.array([np.nan, 0.9, 0.5, 0.1, np.nan])
    np.testing.assert_array_equal(targets_from_proba(proba, SignalParams()), [0.0, 1.0, 0.0, -1.0, 0.0])
    np.testing.assert_array_equal(targets_from_proba(proba, SignalParams(allow_short=False)), [0.0, 1.0, 0.0, 0.0, 0.0])
    mean, n = confidence(proba)
    assert n == 3 and mean == pytest.approx((0.8 + 0.0 + 0.8) / 3)
    assert confidence(np.array([np.nan])) == (None, 0)


def test_plan_dates_recomputes_every_later_date_and_refuses_gaps():
    d = [D0 + dt.timedelta(days=i) for i in range(6)]
    assert plan_dates([d[0]], []) == ([d[0]], None)
    assert plan_dates([d[2]], [d[0], d[1]]) == ([d[2]], d[1])
    # Re-running day 1 recomputes days 1..4 from day 0's state.
    assert plan_dates([d[1]], d[:5]) == (d[1:5], d[0])
    # A later computed date beyond a hole pulls the hole in too.
    assert plan_dates([d[1]], [d[0], d[1], d[4]]) == (d[1:5], d[0])
    with pytest.raises(PaperTradingError, match="materialize 2024-03-03 .. 2024-03-05"):
        plan_dates([d[5]], [d[0], d[1]])
    with pytest.raises(PaperTradingError, match="no dates"):
        plan_dates([], [])


def test_inconsistent_inputs_are_refused_with_the_reason():
    days = make_days(3, n_bars=120)
    first = run_paper_day(days[0], None, PARAMS)
    with pytest.raises(PaperTradingError, match="does not directly follow"):
        run_paper_days([days[2]], first.end, PARAMS)
    with pytest.raises(PaperTradingError, match="does not come after"):
        run_paper_day(days[0], first.end, PARAMS)
    fewer = DayInput(days[1].date, {n: days[1].bars[n] for n in NAMES[:2]}, {n: days[1].proba[n] for n in NAMES[:2]})
    with pytest.raises(PaperTradingError, match="instruments are fixed"):
        run_paper_day(fewer, first.end, PARAMS)
    short = DayInput(days[1].date, dict(days[1].bars), {**days[1].proba, NAMES[0]: days[1].proba[NAMES[0]][:-1]})
    with pytest.raises(PaperTradingError, match="probabilities for"):
        run_paper_day(short, first.end, PARAMS)
    wrong_day = DayInput(days[1].date, dict(days[0].bars), dict(days[0].proba))
    with pytest.raises(PaperTradingError, match="outside the day"):
        run_paper_day(wrong_day, first.end, PARAMS)
    with pytest.raises(PaperTradingError, match="fee_bps"):
        PaperParams(fee_bps=-1.0, slippage_bps=0.0, **LIMITS)


def test_replace_dates_is_all_or_nothing():
    days = make_days(2, n_bars=120)
    results = run_paper_days(days, None, PARAMS)
    con = duckdb.connect()
    write(con, results)
    before = {name: table(con, name) for name in wh.TABLES}
    frames = [wh.frames_for(r, PARAMS, SERVING, "run2", NOW) for r in results]
    frames[1]["paper_fills"] = frames[1]["paper_fills"].assign(units=None)  # violates NOT NULL
    with pytest.raises(duckdb.ConstraintException):
        wh.replace_dates(con, [r.date for r in results], frames)
    for name in wh.TABLES:
        pd.testing.assert_frame_equal(table(con, name), before[name])


def test_a_write_refuses_when_another_run_changed_the_account_meanwhile():
    days = make_days(2, n_bars=120)
    results = run_paper_days(days, None, PARAMS)
    con = duckdb.connect()
    write(con, results[:1])
    seen = wh.account_fingerprint(con)
    # Another run rewrites date 1 between this run's read and its write.
    con.execute("update paper_account_state set run_id = 'other-run'")
    before = {name: table(con, name) for name in wh.TABLES}
    frames = [wh.frames_for(r, PARAMS, SERVING, "this-run", NOW) for r in results]
    with pytest.raises(wh.ConcurrentUpdateError, match="nothing was written"):
        wh.replace_dates(con, [r.date for r in results], frames, expected=seen)
    for name in wh.TABLES:
        pd.testing.assert_frame_equal(table(con, name), before[name])
    wh.replace_dates(con, [r.date for r in results], frames, expected=wh.account_fingerprint(con))
    assert len(wh.computed_dates(con)) == 2


def test_bad_signal_parameters_are_refused_up_front():
    with pytest.raises(PaperTradingError, match="sizing"):
        SignalParams(sizing="kelly")
    with pytest.raises(PaperTradingError, match="short_threshold"):
        SignalParams(long_threshold=0.4, short_threshold=0.6)


def test_performance_from_the_warehouse_is_the_metrics_of_the_chained_days():
    from autotrader_assets.defs.trading import performance as perf
    from deploy_ops.trading import metrics

    days = make_days(3)
    results = run_paper_days(days, None, PARAMS)
    con = duckdb.connect()
    write(con, results)
    history = perf.load_history(con)
    summary = perf.overall(history)
    equity = pd.concat([r.equity for r in results])
    trades = pd.concat([r.portfolio.trades for r in results], ignore_index=True)
    assert summary["current_equity"] == results[-1].end.equity
    assert summary["total_pnl"] == pytest.approx(results[-1].end.equity - PARAMS.initial_equity)
    assert summary["daily_pnl"] == pytest.approx(results[-1].end.equity - results[-1].day_open_equity)
    assert summary["n_fills"] == sum(len(r.portfolio.fills) for r in results)
    assert summary["win_rate"] == metrics.win_rate(trades)
    assert summary["max_drawdown"]["value"] == pytest.approx(metrics.max_drawdown(equity, PARAMS.initial_equity).value)
    returns = metrics.daily_returns(equity, PARAMS.initial_equity)
    assert summary["sharpe"]["value"] == pytest.approx(metrics.sharpe_ratio(returns).value)
    assert summary["sharpe"]["annualization"] == "sqrt(365)" and summary["sharpe"]["n_returns"] == 3

    daily = perf.daily_table(history)
    assert daily["pnl"].to_numpy() == pytest.approx([r.end.equity - r.day_open_equity for r in results])
    assert daily["n_fills"].tolist() == [len(r.portfolio.fills) for r in results]
    positions = perf.instrument_table(history)
    assert positions["instrument"].tolist() == NAMES
    assert positions["units"].tolist() == [results[-1].end.states[n].units for n in NAMES]
    # The sleeves add up to the account.
    assert positions["equity"].sum() == pytest.approx(results[-1].end.equity, rel=1e-12)
    png = perf.equity_png(equity, PARAMS.initial_equity, [equity.index[100]])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert perf.png_markdown(png, "equity").startswith("![equity](data:image/png;base64,iVBOR")
    assert perf.drawdown_png(equity, PARAMS.initial_equity, 0.15)[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_sensor_requests_a_rollback_only_for_a_trip_still_in_force(tmp_path):
    from autotrader_assets.defs.trading.rollback_decision import ALERT_EVENT, pending_rollbacks

    url = f"sqlite:///{tmp_path / 'state.db'}"
    store = BreakerStore(url)
    assert pending_rollbacks(store, 0) == ([], [], 0)
    store.trip("old loss", {}, at=pd.Timestamp("2024-03-01 10:00", tz="UTC"))
    store.reset(approved_by="alice", reason="handled before the sensor ran")
    store.trip("new loss", {}, at=pd.Timestamp("2024-03-02 10:00", tz="UTC"))
    requests, skipped, cursor = pending_rollbacks(store, 0)
    assert [r.run_key for r in requests] == [f"circuit-breaker-trip-{store.status().trip_id}"]
    assert len(skipped) == 1 and "no longer in force" in skipped[0]
    assert [e.details["reason"] for e in store.events.events_since(0, kinds=[ALERT_EVENT])] == ["new loss"]
    assert pending_rollbacks(store, cursor) == ([], [], cursor)
    make_engine(url).dispose()


def test_signal_thresholds_follow_the_production_model_unless_configured():
    from autotrader_assets.defs.trading.assets import PaperTradingConfig, resolve_signal

    gated = {"long_threshold": 0.6, "short_threshold": 0.4, "allow_short": False}
    assert resolve_signal(PaperTradingConfig(), gated) == gated
    assert resolve_signal(PaperTradingConfig(long_threshold=0.7), gated) == {**gated, "long_threshold": 0.7}
    assert resolve_signal(PaperTradingConfig(), {}) == {
        "long_threshold": 0.55,
        "short_threshold": 0.45,
        "allow_short": True,
    }
