"""Tests for deploy_ops.trading.backtest: fills, costs, timing, carried state, halts, ruin, portfolios."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from deploy_ops.trading.backtest import (
    BacktestState,
    run_backtest,
    run_portfolio,
    signals_to_positions,
)


def make_bars(n: int, seed: int = 0, sigma: float = 1e-3, gap_sigma: float = 2e-4, start="2024-01-01") -> pd.DataFrame:
    """Random-walk 1-minute bars; each open gaps a little from the previous close."""
    rng = np.random.default_rng(seed)
    close = np.empty(n)
    open_ = np.empty(n)
    price = 100.0
    for i in range(n):
        open_[i] = price * np.exp(rng.normal(0.0, gap_sigma))
        close[i] = open_[i] * np.exp(rng.normal(0.0, sigma))
        price = close[i]
    return pd.DataFrame(
        {
            "ts": pd.date_range(start, periods=n, freq="1min", tz="UTC"),
            "open": open_,
            "high": np.maximum(open_, close) * 1.0005,
            "low": np.minimum(open_, close) * 0.9995,
            "close": close,
        }
    )


def hand_bars(opens, closes) -> pd.DataFrame:
    """Bars from explicit prices, one minute apart from 2024-01-01 00:00 UTC."""
    opens = np.asarray(opens, dtype=float)
    closes = np.asarray(closes, dtype=float)
    return pd.DataFrame(
        {
            "ts": pd.date_range("2024-01-01", periods=len(opens), freq="1min", tz="UTC"),
            "open": opens,
            "high": np.maximum(opens, closes),
            "low": np.minimum(opens, closes),
            "close": closes,
        }
    )


def reference_backtest(bars: pd.DataFrame, targets, fee_bps: float, slippage_bps: float, equity0: float):
    """A deliberately naive per-bar loop of the documented rules, for cross-checking the engine.

    Sizing is found by fixed-point iteration on "notional after the trade = target x equity after
    costs" rather than by the engine's closed form, so the two share no algebra.
    """
    opens = bars["open"].to_numpy()
    closes = bars["close"].to_numpy()
    fee, slip = fee_bps * 1e-4, slippage_bps * 1e-4
    cash, units, held = equity0, 0.0, 0.0
    equity, positions, fills = [], [], []
    for j in range(len(bars)):
        if j >= 1 and targets[j - 1] != held:
            held = t = float(targets[j - 1])
            o = opens[j]
            before = cash + units * o
            after = before
            for _ in range(100):
                d = t * after / o - units
                price = o * (1 + slip) if d > 0 else o * (1 - slip)
                new_after = before - abs(d) * abs(price - o) - abs(d) * price * fee
                if abs(new_after - after) <= 1e-15 * abs(before):
                    break
                after = new_after
            new_units = t * after / o
            d = new_units - units
            price = o * (1 + slip) if d > 0 else o * (1 - slip)
            fee_paid = abs(d) * price * fee
            cash -= d * price + fee_paid
            units = new_units
            fills.append((j, "buy" if d > 0 else "sell", abs(d), price, fee_paid))
        positions.append(units)
        equity.append(cash + units * closes[j])
    return np.array(equity), np.array(positions), fills


# --------------------------------------------------------------------------- signals_to_positions


def test_signals_fixed_sizing_with_and_without_shorts():
    proba = np.array([0.9, 0.56, 0.55, 0.5, 0.45, 0.44, 0.1])
    assert signals_to_positions(proba).tolist() == [1.0, 1.0, 0.0, 0.0, 0.0, -1.0, -1.0]
    assert signals_to_positions(proba, allow_short=False).tolist() == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert signals_to_positions(proba, max_position=0.5).tolist() == [0.5, 0.5, 0.0, 0.0, 0.0, -0.5, -0.5]


def test_signals_confidence_sizing_scales_from_threshold_to_certainty():
    proba = np.array([1.0, 0.775, 0.6, 0.5, 0.225, 0.0])
    out = signals_to_positions(proba, long_threshold=0.55, short_threshold=0.45, sizing="confidence", max_position=2.0)
    np.testing.assert_allclose(out, [2.0, 1.0, 2.0 * 0.05 / 0.45, 0.0, -1.0, -2.0])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(proba=[0.5, np.nan]), "non-finite"),
        (dict(proba=[0.5, 1.2]), r"\[0, 1\]"),
        (dict(proba=[[0.5]]), "1-D"),
        (dict(proba=[0.5], long_threshold=0.4, short_threshold=0.6), "short_threshold <= long_threshold"),
        (dict(proba=[0.5], sizing="kelly"), "sizing"),
        (dict(proba=[0.5], max_position=0.0), "max_position"),
    ],
)
def test_signals_reject_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        signals_to_positions(**kwargs)


# --------------------------------------------------------------------------- hand-computed fills


def test_hand_computed_round_trip_prices_fees_slippage_and_equity():
    bars = hand_bars([100, 101, 102, 103, 104], [100.5, 101.5, 102.5, 103.5, 104.5])
    res = run_backtest(bars, [1, 1, 0, 0, 0], fee_bps=10, slippage_bps=5, initial_equity=10_000)

    buy_price = 101 * 1.0005
    units = 10_000 / (buy_price * 1.001)  # all equity in, net of the fee
    sell_price = 103 * 0.9995
    proceeds = units * sell_price
    final_cash = proceeds - proceeds * 0.001

    f = res.fills
    assert f["ts"].tolist() == [bars.ts[1], bars.ts[3]]
    assert f["side"].tolist() == ["buy", "sell"]
    np.testing.assert_allclose(f["price"], [buy_price, sell_price], rtol=1e-15)
    np.testing.assert_allclose(f["units"], [units, units], rtol=1e-12)
    np.testing.assert_allclose(f["notional"], [units * buy_price, proceeds], rtol=1e-12)
    np.testing.assert_allclose(f["fee"], [units * buy_price * 0.001, proceeds * 0.001], rtol=1e-12)
    np.testing.assert_allclose(f["slippage_cost"], [units * 101 * 0.0005, units * 103 * 0.0005], rtol=1e-12)

    np.testing.assert_allclose(res.positions, [0, units, units, 0, 0], rtol=1e-12)
    np.testing.assert_allclose(res.cash, [10_000, 0, 0, final_cash, final_cash], rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(res.equity, [10_000, units * 101.5, units * 102.5, final_cash, final_cash], rtol=1e-12)
    assert list(res.equity.index) == list(bars.ts)
    assert len(res.trades) == 1
    trade = res.trades.iloc[0]
    assert (trade.entry_ts, trade.exit_ts, trade.side) == (bars.ts[1], bars.ts[3], "long")
    assert trade.pnl == pytest.approx(final_cash - 10_000, rel=1e-12)
    assert res.final_state.units == 0.0 and res.final_state.cash == pytest.approx(final_cash, rel=1e-12)


def test_hand_computed_short_then_flip_long_splits_the_round_trips():
    bars = hand_bars([100, 100, 90, 95, 95], [100, 90, 95, 95, 95])
    res = run_backtest(bars, [-1, 1, 0, 0, 0], fee_bps=0, slippage_bps=0, initial_equity=1_000)
    # Short 10 units at 100, cover at 90 (+100), then long with all equity (1100) at 90.
    assert res.fills["side"].tolist() == ["sell", "buy", "sell"]
    np.testing.assert_allclose(res.fills["units"], [10.0, 10.0 + 1100 / 90, 1100 / 90], rtol=1e-12)
    np.testing.assert_allclose(res.trades["pnl"], [100.0, 1100 / 90 * 5], rtol=1e-12)
    assert res.trades["side"].tolist() == ["short", "long"]
    assert res.trades["exit_ts"].tolist() == [bars.ts[2], bars.ts[3]]
    assert res.equity.iloc[-1] == pytest.approx(1_000 + 100 + 1100 / 90 * 5, rel=1e-12)


def test_flip_fill_fee_is_split_between_the_two_trips_and_trips_sum_to_total_pnl():
    bars = make_bars(400, seed=3)
    rng = np.random.default_rng(3)
    targets = rng.choice([-1.0, 0.0, 1.0], size=400)
    targets[-2:] = 0.0  # end flat so every trip is closed
    res = run_backtest(bars, targets, fee_bps=7, slippage_bps=3, initial_equity=50_000)
    assert res.final_state.units == 0.0
    assert res.trades["pnl"].sum() == pytest.approx(res.equity.iloc[-1] - 50_000, rel=1e-9)
    # A flip closes a trip and opens one at the same fill.
    assert (res.trades["exit_ts"].iloc[:-1].to_numpy() == res.trades["entry_ts"].iloc[1:].to_numpy()).any()


def test_cash_changes_by_exactly_each_fills_cash_flow():
    bars = make_bars(300, seed=4)
    targets = signals_to_positions(np.random.default_rng(4).uniform(size=300), sizing="confidence")
    res = run_backtest(bars, targets, fee_bps=10, slippage_bps=5)
    signed = np.where(res.fills["side"] == "buy", 1.0, -1.0) * res.fills["units"]
    flows = -(signed * res.fills["price"]) - res.fills["fee"]
    cash_after = res.cash.loc[res.fills["ts"]].to_numpy()
    cash_before = np.concatenate([[100_000.0], cash_after[:-1]])
    np.testing.assert_allclose(cash_after - cash_before, flows, rtol=1e-9, atol=1e-6)
    # Slippage is exactly the distance between the open and the fill price.
    opens = bars.set_index("ts").loc[res.fills["ts"], "open"].to_numpy()
    np.testing.assert_allclose(res.fills["slippage_cost"], res.fills["units"] * np.abs(res.fills["price"] - opens))


def test_full_long_target_leaves_no_negative_cash():
    bars = make_bars(500, seed=5)
    targets = np.where(np.arange(500) % 7 < 4, 1.0, 0.0)
    res = run_backtest(bars, targets, fee_bps=10, slippage_bps=5)
    assert res.cash.min() >= -1e-6
    held = res.positions > 0
    np.testing.assert_allclose(res.cash[held], 0.0, atol=1e-6)


def test_engine_matches_a_naive_per_bar_reference_loop():
    bars = make_bars(600, seed=6)
    proba = np.random.default_rng(6).uniform(size=600)
    for targets in (
        signals_to_positions(proba),
        signals_to_positions(proba, sizing="confidence", max_position=1.5),
        signals_to_positions(proba, allow_short=False, max_position=0.5),
    ):
        res = run_backtest(bars, targets, fee_bps=10, slippage_bps=5, initial_equity=25_000)
        equity, positions, fills = reference_backtest(bars, targets, 10, 5, 25_000)
        np.testing.assert_allclose(res.equity.to_numpy(), equity, rtol=1e-10)
        np.testing.assert_allclose(res.positions.to_numpy(), positions, rtol=1e-10, atol=1e-12)
        assert res.fills["ts"].tolist() == [bars.ts[j] for j, *_ in fills]
        assert res.fills["side"].tolist() == [side for _, side, *_ in fills]
        np.testing.assert_allclose(res.fills["units"], [u for _, _, u, _, _ in fills], rtol=1e-9)
        np.testing.assert_allclose(res.fills["fee"], [fe for *_, fe in fills], rtol=1e-9)


# --------------------------------------------------------------------------- timing / look-ahead


def test_target_fills_at_the_next_bars_open_never_its_own_bar():
    bars = hand_bars([10, 20, 30, 40, 50], [11, 21, 31, 41, 51])
    res = run_backtest(bars, [0, 0, 1, 1, 1], fee_bps=0, slippage_bps=0, initial_equity=1_200)
    assert res.fills["ts"].tolist() == [bars.ts[3]]
    assert res.fills["price"].tolist() == [40.0]
    assert res.positions.tolist() == [0.0, 0.0, 0.0, 30.0, 30.0]
    # The last bar's decision is not filled in this run: it is handed on as pending.
    res2 = run_backtest(bars, [0, 0, 0, 0, 1], fee_bps=0, slippage_bps=0)
    assert res2.fills.empty and res2.final_state.pending_target == 1.0


def test_every_fill_is_one_bar_after_the_decision_that_caused_it():
    bars = make_bars(2_000, seed=8)
    targets = signals_to_positions(np.random.default_rng(8).uniform(size=2_000))
    res = run_backtest(bars, targets, fee_bps=5, slippage_bps=2)
    pos = bars.ts.searchsorted(res.fills["ts"])
    decision_changed = np.flatnonzero(np.diff(np.r_[0.0, targets]) != 0)
    decision_changed = decision_changed[decision_changed < len(bars) - 1]
    np.testing.assert_array_equal(pos, decision_changed + 1)
    np.testing.assert_array_equal(res.fills["target"], targets[decision_changed])


def test_results_up_to_a_bar_do_not_depend_on_later_bars():
    bars = make_bars(1_000, seed=9)
    targets = signals_to_positions(np.random.default_rng(9).uniform(size=1_000), sizing="confidence")
    base = run_backtest(bars, targets, fee_bps=10, slippage_bps=5)
    future = bars.copy()
    cut = 600
    future.loc[cut + 1 :, ["open", "high", "low", "close"]] *= 1.7  # rewrite the future
    alt_targets = targets.copy()
    alt_targets[cut + 1 :] = -alt_targets[cut + 1 :]
    alt = run_backtest(future, alt_targets, fee_bps=10, slippage_bps=5)
    np.testing.assert_array_equal(base.equity.iloc[: cut + 1].to_numpy(), alt.equity.iloc[: cut + 1].to_numpy())
    early = base.fills["ts"] <= bars.ts[cut]
    pd.testing.assert_frame_equal(base.fills[early], alt.fills[alt.fills["ts"] <= bars.ts[cut]])


def _bar_return_z(equity: pd.Series, equity0: float) -> float:
    returns = np.diff(np.log(np.r_[equity0, equity.to_numpy()]))
    return float(returns.mean() / (returns.std(ddof=1) / np.sqrt(len(returns))))


def test_look_ahead_signal_earns_nothing_when_filled_at_the_next_open():
    """A signal that knows its own bar's direction only pays if filled inside that bar."""
    n = 20_000
    bars = make_bars(n, seed=10, gap_sigma=0.0)  # open = previous close: a pure random walk
    peek = np.where(bars["close"] > bars["open"], 1.0, -1.0)

    honest = run_backtest(bars, peek, fee_bps=0, slippage_bps=0)
    z_honest = _bar_return_z(honest.equity, 100_000)
    assert abs(z_honest) < 4.0, f"no edge expected, got z={z_honest:.2f}"

    # The same signal moved one bar earlier is what a same-bar fill would amount to.
    cheating = np.r_[peek[1:], 0.0]
    leaked = run_backtest(bars, cheating, fee_bps=0, slippage_bps=0)
    assert _bar_return_z(leaked.equity, 100_000) > 50.0
    assert leaked.equity.iloc[-1] > 1e6 * honest.equity.iloc[-1]

    # With costs the honest version can only lose: at most what it paid in fees and slippage.
    costly = run_backtest(bars, peek, fee_bps=10, slippage_bps=5)
    paid = costly.fills["fee"].sum() + costly.fills["slippage_cost"].sum()
    assert costly.equity.iloc[-1] < 100_000
    assert 100_000 - costly.equity.iloc[-1] <= paid * 1.25


# --------------------------------------------------------------------------- carried state


def _run_in_chunks(bars, targets, splits, **kwargs):
    results, state = [], None
    edges = [0, *splits, len(bars)]
    for a, b in zip(edges[:-1], edges[1:]):
        chunk = bars.iloc[a:b].reset_index(drop=True)
        if state is None:
            res = run_backtest(chunk, targets[a:b], **kwargs)
        else:
            cost_kwargs = {k: kwargs[k] for k in ("fee_bps", "slippage_bps")}
            res = run_backtest(chunk, targets[a:b], state=state, **cost_kwargs)
        results.append(res)
        state = res.final_state
    return results


def _assert_chunks_equal_whole(whole, parts):
    np.testing.assert_allclose(pd.concat([p.equity for p in parts]).to_numpy(), whole.equity.to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(
        pd.concat([p.cash for p in parts]).to_numpy(), whole.cash.to_numpy(), rtol=1e-12, atol=1e-7
    )
    np.testing.assert_allclose(
        pd.concat([p.positions for p in parts]).to_numpy(), whole.positions.to_numpy(), rtol=1e-12, atol=1e-12
    )
    assert pd.concat([p.equity for p in parts]).index.equals(whole.equity.index)
    fills = pd.concat([p.fills for p in parts], ignore_index=True)
    assert fills["ts"].tolist() == whole.fills["ts"].tolist()
    assert fills["side"].tolist() == whole.fills["side"].tolist()
    np.testing.assert_array_equal(fills["target"], whole.fills["target"])
    for col in ("units", "price", "notional", "fee", "slippage_cost"):
        np.testing.assert_allclose(fills[col], whole.fills[col], rtol=1e-11)
    trades = pd.concat([p.trades for p in parts], ignore_index=True)
    for col in ("entry_ts", "exit_ts", "side"):
        assert trades[col].tolist() == whole.trades[col].tolist()
    np.testing.assert_allclose(trades["pnl"], whole.trades["pnl"], rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(trades["entry_price"], whole.trades["entry_price"], rtol=1e-12)
    a, b = parts[-1].final_state, whole.final_state
    assert (a.held_target, a.pending_target, a.last_ts, a.halted, a.ruined, a.open_trade_entry_ts) == (
        b.held_target,
        b.pending_target,
        b.last_ts,
        b.halted,
        b.ruined,
        b.open_trade_entry_ts,
    )
    assert a.cash == pytest.approx(b.cash, rel=1e-12, abs=1e-7)
    assert a.units == pytest.approx(b.units, rel=1e-12)
    assert a.open_trade_cash_flow == pytest.approx(b.open_trade_cash_flow, rel=1e-9, abs=1e-6)


@pytest.mark.parametrize("sizing", ["fixed", "confidence"])
def test_consecutive_chunks_with_carried_state_equal_one_run(sizing):
    n = 3_000
    bars = make_bars(n, seed=11)
    targets = signals_to_positions(np.random.default_rng(11).uniform(size=n), sizing=sizing)
    kwargs = dict(fee_bps=10, slippage_bps=5, initial_equity=100_000)
    whole = run_backtest(bars, targets, **kwargs)
    # Splits at arbitrary points, right after a decision change, and a one-bar chunk.
    change = int(np.flatnonzero(np.diff(targets) != 0)[10]) + 1
    for splits in ([1_000], [change, change + 1, 2_222], [1, 2, n - 1]):
        parts = _run_in_chunks(bars, targets, splits, **kwargs)
        _assert_chunks_equal_whole(whole, parts)


def test_chunk_boundary_inside_an_open_trade_keeps_the_trade_whole():
    bars = make_bars(10, seed=12)
    targets = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0, 0], dtype=float)
    whole = run_backtest(bars, targets, fee_bps=10, slippage_bps=5)
    parts = _run_in_chunks(bars, targets, [4], fee_bps=10, slippage_bps=5)
    assert parts[0].trades.empty
    assert parts[0].final_state.open_trade_entry_ts == bars.ts[1]
    assert len(parts[1].trades) == 1 and parts[1].trades.entry_ts.iloc[0] == bars.ts[1]
    _assert_chunks_equal_whole(whole, parts)


def test_chunks_with_a_halt_equal_one_run_and_the_halt_persists():
    n = 400
    bars = make_bars(n, seed=13)
    targets = signals_to_positions(np.random.default_rng(13).uniform(size=n))
    whole = run_backtest(bars, targets, fee_bps=10, slippage_bps=5, halt_from_index=150)
    first = run_backtest(bars.iloc[:200], targets[:200], fee_bps=10, slippage_bps=5, halt_from_index=150)
    second = run_backtest(
        bars.iloc[200:].reset_index(drop=True), targets[200:], fee_bps=10, slippage_bps=5, state=first.final_state
    )
    _assert_chunks_equal_whole(whole, [first, second])
    assert second.fills.empty and (second.positions == 0).all()


def test_state_must_not_overlap_and_must_not_be_mixed_with_initial_values():
    bars = make_bars(20, seed=14)
    first = run_backtest(bars.iloc[:10], np.ones(10), fee_bps=1, slippage_bps=1)
    with pytest.raises(ValueError, match="overlap"):
        run_backtest(bars.iloc[5:], np.ones(15), fee_bps=1, slippage_bps=1, state=first.final_state)
    with pytest.raises(ValueError, match="not both"):
        run_backtest(bars.iloc[10:], np.ones(10), fee_bps=1, slippage_bps=1, state=first.final_state, initial_cash=5.0)


def test_pending_target_of_a_state_fills_at_the_first_open():
    bars = hand_bars([50, 55, 60], [52, 57, 62])
    state = BacktestState(cash=1_000.0, units=0.0, held_target=0.0, pending_target=1.0)
    res = run_backtest(bars, [1, 1, 0], fee_bps=0, slippage_bps=0, state=state)
    assert res.fills["ts"].tolist() == [bars.ts[0]]
    np.testing.assert_allclose(res.positions, [20.0, 20.0, 20.0])
    assert res.final_state.pending_target == 0.0 and res.final_state.held_target == 1.0
    unchanged = run_backtest(
        bars, [0, 0, 0], fee_bps=0, slippage_bps=0, state=dataclasses.replace(state, pending_target=0.0)
    )
    assert unchanged.fills.empty and res.initial_equity == unchanged.initial_equity == 1_000.0


def test_seeded_position_rebalances_to_the_first_target():
    bars = hand_bars([100, 110, 120], [105, 115, 125])
    res = run_backtest(bars, [0.5, 0.5, 0.5], fee_bps=0, slippage_bps=0, initial_position_units=10, initial_cash=0.0)
    # Equity at bar 1's open is 1100; half of it stays in the asset: 5 units.
    assert res.initial_equity == 1_000.0
    assert res.fills["side"].tolist() == ["sell"]
    np.testing.assert_allclose(res.fills["units"], [5.0])
    np.testing.assert_allclose(res.equity, [1_050, 550 + 5 * 115, 550 + 5 * 125])
    assert res.final_state.open_trade_entry_ts == bars.ts[0]
    with pytest.raises(ValueError, match="initial_cash is required"):
        run_backtest(bars, [0, 0, 0], fee_bps=0, slippage_bps=0, initial_position_units=1.0)


# --------------------------------------------------------------------------- halt and ruin


def test_halt_flattens_at_the_next_open_and_blocks_new_orders():
    bars = make_bars(12, seed=15)
    res = run_backtest(bars, np.ones(12), fee_bps=10, slippage_bps=5, halt_from_index=5)
    assert res.fills["ts"].tolist() == [bars.ts[1], bars.ts[6]]
    assert res.fills["side"].tolist() == ["buy", "sell"]
    assert (res.positions.iloc[6:] == 0).all() and (res.positions.iloc[1:6] > 0).all()
    assert (res.targets.iloc[5:] == 0).all()
    assert res.halted_at == bars.ts[5] and res.final_state.halted
    assert res.fills["price"].iloc[1] == pytest.approx(bars.open[6] * 0.9995)

    later = make_bars(5, seed=16, start="2024-01-01 00:12")
    still = run_backtest(later, np.ones(5), fee_bps=10, slippage_bps=5, state=res.final_state)
    assert still.fills.empty and still.final_state.halted
    reset = run_backtest(
        later, np.ones(5), fee_bps=10, slippage_bps=5, state=dataclasses.replace(res.final_state, halted=False)
    )
    assert reset.fills["ts"].tolist() == [later.ts[1]]


def test_short_squeeze_ruins_the_account_liquidates_and_stops_trading():
    bars = hand_bars([100, 100, 150, 260, 100, 100], [100, 150, 260, 250, 100, 100])
    res = run_backtest(bars, [-1, -1, -1, -1, -1, -1], fee_bps=0, slippage_bps=0, initial_equity=1_000)
    # Short 10 at 100 leaves 2000 cash; at 260 equity is 2000 - 2600 < 0.
    assert res.ruined_at == bars.ts[2]
    assert res.fills["side"].tolist() == ["sell", "buy"]
    assert res.fills["ts"].iloc[1] == bars.ts[3]
    assert res.equity.iloc[-1] == pytest.approx(2_000 - 10 * 260)
    assert (res.positions.iloc[3:] == 0).all() and res.final_state.ruined
    later = make_bars(3, seed=1, start="2024-01-01 00:06")
    after = run_backtest(later, np.ones(3), fee_bps=0, slippage_bps=0, state=res.final_state)
    assert after.fills.empty


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "mutate, targets, message",
    [
        (lambda b: b.assign(close=b.close.where(b.index != 3)), None, r"bars.close .* row 3"),
        (lambda b: b.assign(open=b.open.where(b.index != 0)), None, r"bars.open .* row 0"),
        (lambda b: b.assign(open=-b.open), None, "positive"),
        (lambda b: b.iloc[0:0], [], "empty"),
        (lambda b: b.drop(columns="open"), None, "missing column"),
        (lambda b: b.iloc[::-1].reset_index(drop=True), None, "strictly increasing"),
        (lambda b: pd.concat([b, b.iloc[[4]]], ignore_index=True), np.zeros(11), "strictly increasing"),
        (lambda b: b, np.zeros(9), "9 values but bars has 10"),
        (lambda b: b, np.r_[np.zeros(9), np.nan], "non-finite value at index 9"),
    ],
)
def test_bad_input_raises_clear_errors(mutate, targets, message):
    bars = mutate(make_bars(10, seed=17))
    targets = np.zeros(10) if targets is None else targets
    with pytest.raises(ValueError, match=message):
        run_backtest(bars, targets, fee_bps=1, slippage_bps=1)


def test_bad_parameters_raise_clear_errors():
    bars = make_bars(10, seed=18)
    zeros = np.zeros(10)
    with pytest.raises(ValueError, match="fee_bps"):
        run_backtest(bars, zeros, fee_bps=-1, slippage_bps=0)
    with pytest.raises(ValueError, match="slippage_bps"):
        run_backtest(bars, zeros, fee_bps=0, slippage_bps=float("nan"))
    with pytest.raises(ValueError, match="halt_from_index"):
        run_backtest(bars, zeros, fee_bps=0, slippage_bps=0, halt_from_index=11)
    with pytest.raises(ValueError, match="initial_equity"):
        run_backtest(bars, zeros, fee_bps=0, slippage_bps=0, initial_equity=0)
    with pytest.raises(ValueError, match="not both"):
        run_backtest(bars, zeros, fee_bps=0, slippage_bps=0, initial_equity=10, initial_cash=10)
    with pytest.raises(ValueError, match="cannot be sized"):
        run_backtest(bars, np.full(10, 200.0), fee_bps=100, slippage_bps=0)
    with pytest.raises(ValueError, match="does not match bars.ts"):
        shifted = pd.Series(zeros, index=bars.ts + pd.Timedelta(minutes=1))
        run_backtest(bars, shifted, fee_bps=0, slippage_bps=0)
    with pytest.raises(ValueError, match="DataFrame"):
        run_backtest(bars.to_dict(), zeros, fee_bps=0, slippage_bps=0)


def test_naive_timestamps_are_taken_as_utc():
    bars = make_bars(5, seed=19)
    naive = bars.assign(ts=bars.ts.dt.tz_localize(None))
    res = run_backtest(naive, np.ones(5), fee_bps=0, slippage_bps=0)
    assert str(res.equity.index.tz) == "UTC" and res.equity.index.equals(pd.DatetimeIndex(bars.ts))


# --------------------------------------------------------------------------- portfolio


def test_portfolio_is_the_sum_of_equal_sleeves_aligned_on_time():
    a = make_bars(300, seed=20)
    b = make_bars(300, seed=21).drop(index=range(100, 110)).reset_index(drop=True)  # missing bars
    ta = signals_to_positions(np.random.default_rng(20).uniform(size=len(a)))
    tb = signals_to_positions(np.random.default_rng(21).uniform(size=len(b)))
    pf = run_portfolio(
        {"BTCUSDT": a, "ETHUSDT": b}, {"BTCUSDT": ta, "ETHUSDT": tb}, fee_bps=10, slippage_bps=5, initial_equity=200_000
    )
    ra = run_backtest(a, ta, fee_bps=10, slippage_bps=5, initial_equity=100_000)
    rb = run_backtest(b, tb, fee_bps=10, slippage_bps=5, initial_equity=100_000)
    expected = ra.equity + rb.equity.reindex(ra.equity.index).ffill()
    np.testing.assert_allclose(pf.equity.to_numpy(), expected.to_numpy(), rtol=1e-12)
    assert pf.initial_equity == 200_000 and pf.weights == {"BTCUSDT": 0.5, "ETHUSDT": 0.5}
    assert len(pf.fills) == len(ra.fills) + len(rb.fills)
    assert set(pf.fills["instrument"]) == {"BTCUSDT", "ETHUSDT"}
    assert pf.fills["ts"].is_monotonic_increasing


def test_portfolio_weights_halt_and_continuation():
    bars = {"A": make_bars(200, seed=22), "B": make_bars(200, seed=23)}
    targets = {k: signals_to_positions(np.random.default_rng(i).uniform(size=200)) for i, k in enumerate(bars)}
    kw = dict(fee_bps=10, slippage_bps=5)
    weighted = run_portfolio(bars, targets, weights={"A": 0.75, "B": 0.25}, initial_equity=1_000, **kw)
    assert weighted.results["A"].initial_equity == 750 and weighted.results["B"].initial_equity == 250

    halt_ts = bars["A"].ts[120]
    whole = run_portfolio(bars, targets, halt_from_ts=halt_ts, **kw)
    assert whole.halted_at == halt_ts
    assert all((r.positions.iloc[121:] == 0).all() for r in whole.results.values())

    first = run_portfolio({k: v.iloc[:100] for k, v in bars.items()}, {k: v[:100] for k, v in targets.items()}, **kw)
    second = run_portfolio(
        {k: v.iloc[100:].reset_index(drop=True) for k, v in bars.items()},
        {k: v[100:] for k, v in targets.items()},
        states=first.final_states,
        halt_from_ts=halt_ts,
        **kw,
    )
    np.testing.assert_allclose(pd.concat([first.equity, second.equity]).to_numpy(), whole.equity.to_numpy(), rtol=1e-12)


def test_portfolio_rejects_inconsistent_input():
    bars = {"A": make_bars(10, seed=24)}
    t = {"A": np.zeros(10)}
    with pytest.raises(ValueError, match="differ"):
        run_portfolio(bars, {"B": np.zeros(10)}, fee_bps=0, slippage_bps=0)
    with pytest.raises(ValueError, match="sum to 1"):
        run_portfolio(bars, t, weights={"A": 0.5}, fee_bps=0, slippage_bps=0)
    with pytest.raises(ValueError, match="empty"):
        run_portfolio({}, {}, fee_bps=0, slippage_bps=0)
    with pytest.raises(ValueError, match="A: target_position has 9"):
        run_portfolio(bars, {"A": np.zeros(9)}, fee_bps=0, slippage_bps=0)
