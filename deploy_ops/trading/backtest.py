"""Backtest engine: model probabilities -> target positions -> next-bar-open fills -> equity.

One engine serves the promotion gates, the deployment Sharpe gates and paper trading, so the
three can never disagree about what a signal earned.

Conventions (the ones a reader needs to trust a number):

* Timing. The target decided on bar ``i`` (using information up to bar ``i``'s close) is
  filled at bar ``i + 1``'s OPEN, never on bar ``i``. Equity is marked at each bar's close.
* Costs. Buys fill at ``open * (1 + slippage)``, sells at ``open * (1 - slippage)``; the fee is
  ``fee_bps`` of the traded notional at the fill price. ``slippage_cost`` in the fills is the
  units times the distance between the open and the fill price.
* Sizing. A target is a fraction of account equity. An order is sent only when the target
  changes; between changes the units are held (the exposure drifts with the price). At a fill
  the new units are chosen so that, after paying fee and slippage, the position's notional at
  the bar's open is exactly ``target`` times the post-trade equity. A target of 1.0 therefore
  leaves cash at exactly zero: no accidental margin.
* Ruin. If the account's equity is not positive at a close, or at the open where an order
  would be sized, the position is liquidated at the next possible open and the account stops
  trading (``ruined_at``); sizing a fraction of a negative equity would flip the position.

Why this is fast without a compiled loop: with that sizing, the post-trade equity of fill
``k`` is the post-trade equity of fill ``k - 1`` times a factor that depends only on the two
targets and the open-to-open price ratio (the absolute value in the cost is resolved by
trying the buy and the sell solution and keeping the consistent one). The whole path is
then one cumulative product over the fills, and per-bar equity is a forward fill.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import pandas as pd

DEFAULT_INITIAL_EQUITY = 100_000.0
_BPS = 1e-4
_FILL_COLUMNS = ["ts", "side", "units", "price", "notional", "fee", "slippage_cost", "target"]
_TRADE_COLUMNS = ["entry_ts", "exit_ts", "side", "entry_price", "exit_price", "pnl"]


@dataclass(frozen=True)
class BacktestState:
    """Everything needed to continue a backtest on the next chunk of bars.

    ``held_target`` is the target of the last order executed (None when unknown, e.g. a
    position seeded from a broker), ``pending_target`` the target decided on the last bar,
    which executes at the next chunk's first open. The ``open_trade_*`` fields keep the
    round trip that is still open so win rate and profit factor span chunk boundaries.
    ``halted`` (circuit breaker) and ``ruined`` persist: a halted account stays flat until a
    caller deliberately resets the flag (``dataclasses.replace(state, halted=False)``).
    """

    cash: float
    units: float
    held_target: float | None
    pending_target: float | None
    last_ts: pd.Timestamp | None = None
    last_close: float | None = None
    open_trade_entry_ts: pd.Timestamp | None = None
    open_trade_entry_price: float | None = None
    open_trade_cash_flow: float = 0.0
    halted: bool = False
    ruined: bool = False

    @property
    def equity(self) -> float:
        """Account value marked at the last close seen (cash when flat or never marked)."""
        if self.units == 0.0:
            return self.cash
        if self.last_close is None:
            raise ValueError("state holds units but no last_close to mark them at")
        return self.cash + self.units * self.last_close


@dataclass
class BacktestResult:
    """Outcome of one instrument's backtest.

    ``fills``: one row per execution (ts, side, units, price, notional, fee, slippage_cost,
    target). ``positions``/``cash``/``equity``: per-bar Series indexed by the bars' UTC ts,
    positions in units held through the bar, equity marked at the close. ``targets``: the
    effective decided target per bar (after halt and ruin). ``trades``: closed round trips
    (entry_ts, exit_ts, side, entry_price, exit_price, pnl). ``final_state`` continues the run.
    """

    fills: pd.DataFrame
    positions: pd.Series
    cash: pd.Series
    equity: pd.Series
    targets: pd.Series
    trades: pd.DataFrame
    final_state: BacktestState
    initial_equity: float
    fee_bps: float
    slippage_bps: float
    halted_at: pd.Timestamp | None = None
    ruined_at: pd.Timestamp | None = None

    @property
    def final_cash(self) -> float:
        """Cash after the last bar."""
        return self.final_state.cash

    @property
    def final_units(self) -> float:
        """Units held after the last bar."""
        return self.final_state.units

    @property
    def pending_target(self) -> float | None:
        """Target decided on the last bar, to be filled at the next bar's open."""
        return self.final_state.pending_target


@dataclass
class PortfolioResult:
    """Account-level outcome over several instruments traded from one capital pool.

    ``equity``/``cash``: sums over instruments on the union of their timestamps (an
    instrument without a bar at a ts contributes its last value). ``fills``/``trades``: the
    per-instrument tables stacked with an ``instrument`` column. ``results`` keeps each
    instrument's BacktestResult and ``final_states`` the states to continue from.
    """

    results: dict[str, BacktestResult]
    equity: pd.Series
    cash: pd.Series
    fills: pd.DataFrame
    trades: pd.DataFrame
    initial_equity: float
    weights: dict[str, float]
    final_states: dict[str, BacktestState] = field(default_factory=dict)
    halted_at: pd.Timestamp | None = None


def signals_to_positions(
    proba,
    long_threshold: float = 0.55,
    short_threshold: float = 0.45,
    allow_short: bool = True,
    sizing: str = "fixed",
    max_position: float = 1.0,
) -> np.ndarray:
    """Map P(up) per bar to a target position, as a fraction of equity, per bar.

    Above ``long_threshold`` go long, below ``short_threshold`` go short (flat when
    ``allow_short`` is False), in between stay flat. ``sizing="fixed"`` uses
    ``max_position``; ``"confidence"`` scales linearly from 0 at the threshold to
    ``max_position`` at probability 1 (long) or 0 (short).
    """
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"proba must be 1-D, got shape {p.shape}")
    if p.size and not np.isfinite(p).all():
        bad = int(np.flatnonzero(~np.isfinite(p))[0])
        raise ValueError(f"proba has a non-finite value at index {bad}")
    if p.size and (p.min() < 0.0 or p.max() > 1.0):
        raise ValueError("proba must lie in [0, 1]")
    if not 0.0 <= short_threshold <= long_threshold <= 1.0:
        raise ValueError(f"need 0 <= short_threshold <= long_threshold <= 1, got {short_threshold}, {long_threshold}")
    if not (math.isfinite(max_position) and max_position > 0.0):
        raise ValueError(f"max_position must be a positive finite number, got {max_position}")
    long_mask = p > long_threshold
    short_mask = (p < short_threshold) if allow_short else np.zeros(p.shape, dtype=bool)
    if sizing == "fixed":
        long_size = np.full(p.shape, max_position)
        short_size = long_size
    elif sizing == "confidence":
        with np.errstate(divide="ignore", invalid="ignore"):
            long_size = max_position * (p - long_threshold) / (1.0 - long_threshold)
            short_size = max_position * (short_threshold - p) / short_threshold
    else:
        raise ValueError(f"sizing must be 'fixed' or 'confidence', got {sizing!r}")
    out = np.where(long_mask, long_size, np.where(short_mask, -short_size, 0.0))
    return np.clip(out, -max_position, max_position)


def _validate_bars(bars: pd.DataFrame) -> tuple[pd.DatetimeIndex, np.ndarray, np.ndarray]:
    """UTC timestamps, opens and closes of well-formed bars; ValueError naming the first defect."""
    if not isinstance(bars, pd.DataFrame):
        raise ValueError(f"bars must be a pandas DataFrame, got {type(bars).__name__}")
    missing = [c for c in ("ts", "open", "close") if c not in bars.columns]
    if missing:
        raise ValueError(f"bars is missing column(s) {missing}")
    if len(bars) == 0:
        raise ValueError("bars is empty: nothing to backtest")
    ts = pd.DatetimeIndex(bars["ts"])
    ts = ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")
    if ts.hasnans:
        raise ValueError("bars.ts has missing timestamps")
    if len(ts) > 1 and not (np.diff(ts.asi8) > 0).all():
        raise ValueError("bars.ts must be strictly increasing (sorted, no duplicates)")
    arrays = []
    for col in ("open", "close"):
        values = bars[col].to_numpy(dtype=np.float64)
        finite_positive = np.isfinite(values) & (values > 0.0)
        if not finite_positive.all():
            i = int(np.flatnonzero(~finite_positive)[0])
            raise ValueError(f"bars.{col} must be finite and positive; bad value {values[i]!r} at row {i}")
        arrays.append(values)
    return ts, arrays[0], arrays[1]


def _validate_targets(target_position, ts: pd.DatetimeIndex) -> np.ndarray:
    """Targets as a float array aligned with the bars; ValueError on length, alignment or NaN."""
    if isinstance(target_position, pd.Series) and isinstance(target_position.index, pd.DatetimeIndex):
        # A time-indexed series that does not line up with the bars would silently shift signals.
        idx = target_position.index
        idx = idx.tz_localize("UTC") if idx.tz is None else idx.tz_convert("UTC")
        if not idx.equals(ts):
            raise ValueError("target_position's DatetimeIndex does not match bars.ts")
    t = np.asarray(target_position, dtype=np.float64)
    if t.ndim != 1:
        raise ValueError(f"target_position must be 1-D, got shape {t.shape}")
    if len(t) != len(ts):
        raise ValueError(f"target_position has {len(t)} values but bars has {len(ts)} rows")
    if not np.isfinite(t).all():
        i = int(np.flatnonzero(~np.isfinite(t))[0])
        raise ValueError(f"target_position has a non-finite value at index {i}")
    return t


def _check_cost(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0.0:
        raise ValueError(f"{name} must be a finite non-negative number, got {value}")
    return value


def _chain(opens, targets, cash0, units0, kb, ks):
    """Post-trade equity, units and cash at each order, plus the equity each order was sized on.

    Every step solves E+ = E- - kappa * |t * E+ - prior_notional| in closed form: the buy and the
    sell solutions are both computed and the one consistent with its own sign is kept. The first
    order is solved in money terms (the seeded cash and units need not match any target); later
    ones as ratios to the previous post-trade equity, so the path is one cumulative product.
    """
    held_notional = units0 * opens[0]
    base = cash0 + held_notional
    t0 = targets[0]
    e_buy = (base + kb * held_notional) / (1.0 + kb * t0)
    e_sell = (base - ks * held_notional) / (1.0 - ks * t0)
    if t0 * e_buy > held_notional:
        e0, traded0 = e_buy, True
    elif t0 * e_sell < held_notional:
        e0, traded0 = e_sell, True
    else:
        e0, traded0 = base, False
    t_prev = targets[:-1]
    t = targets[1:]
    # w: the held notional at this open over the previous post-trade equity; g: that equity
    # grown by the held position's move. Buffers are reused: these arrays can hold millions.
    w = opens[1:] / opens[:-1]
    w *= t_prev
    g = w - t_prev
    g += 1.0
    h_buy = kb * w
    h_buy += g
    den = kb * t
    den += 1.0
    h_buy /= den
    h_sell = ks * w
    np.subtract(g, h_sell, out=h_sell)
    np.multiply(t, -ks, out=den)
    den += 1.0
    h_sell /= den
    np.multiply(t, h_buy, out=den)
    buy = den > w
    np.multiply(t, h_sell, out=den)
    sell = den < w
    sell &= ~buy
    h = h_buy
    np.copyto(h, h_sell, where=sell)
    moved = buy | sell
    np.copyto(h, g, where=~moved)
    e_plus = np.empty_like(opens)
    e_plus[0] = e0
    np.cumprod(h, out=e_plus[1:])
    e_plus[1:] *= e0
    e_pre = np.empty_like(opens)
    e_pre[0] = base
    np.multiply(e_plus[:-1], g, out=e_pre[1:])
    units = targets * e_plus / opens
    cash = e_plus * (1.0 - targets)
    traded = np.empty(len(opens), dtype=bool)
    traded[0] = traded0
    traded[1:] = moved
    return e_pre, units, cash, traded


def _resolve_start(state, initial_equity, initial_position_units, initial_cash, first_open, first_ts):
    """The opening book as a BacktestState, and the account value the run starts from."""
    if state is not None:
        if initial_equity is not None or initial_cash is not None or initial_position_units != 0.0:
            raise ValueError("pass either state or initial_equity/initial_cash/initial_position_units, not both")
        if not isinstance(state, BacktestState):
            raise ValueError(f"state must be a BacktestState, got {type(state).__name__}")
        for name in ("cash", "units"):
            if not math.isfinite(getattr(state, name)):
                raise ValueError(f"state.{name} must be finite")
        if state.last_ts is not None and pd.Timestamp(state.last_ts) >= first_ts:
            raise ValueError(
                f"bars start at {first_ts}, not after the state's last bar {state.last_ts}: chunks must not overlap"
            )
        mark = state.last_close if state.last_close is not None else first_open
        start_equity = state.cash + state.units * mark
        return state, start_equity
    units0 = float(initial_position_units)
    if not math.isfinite(units0):
        raise ValueError("initial_position_units must be finite")
    if initial_cash is None:
        if units0 != 0.0:
            raise ValueError("initial_cash is required when initial_position_units is not zero")
        cash0 = DEFAULT_INITIAL_EQUITY if initial_equity is None else float(initial_equity)
        if not (math.isfinite(cash0) and cash0 > 0.0):
            raise ValueError(f"initial_equity must be a positive finite number, got {initial_equity}")
    else:
        if initial_equity is not None:
            raise ValueError("pass initial_equity or initial_cash, not both (equity follows from cash and units)")
        cash0 = float(initial_cash)
        if not math.isfinite(cash0):
            raise ValueError("initial_cash must be finite")
    seeded = BacktestState(
        cash=cash0,
        units=units0,
        held_target=0.0 if units0 == 0.0 else None,
        pending_target=None,
        open_trade_entry_ts=first_ts if units0 != 0.0 else None,
        open_trade_entry_price=first_open if units0 != 0.0 else None,
        # A seeded position is booked as if bought at the first open: its pnl starts there.
        open_trade_cash_flow=-units0 * first_open,
    )
    return seeded, cash0 + units0 * first_open


def run_backtest(
    bars: pd.DataFrame,
    target_position,
    *,
    fee_bps: float,
    slippage_bps: float,
    initial_equity: float | None = None,
    initial_position_units: float = 0.0,
    initial_cash: float | None = None,
    halt_from_index: int | None = None,
    state: BacktestState | None = None,
) -> BacktestResult:
    """Backtest ONE instrument's per-bar target positions (fractions of equity) on 1-minute bars.

    ``bars`` needs ts, open, close (high/low are not used: fills happen at opens and marks at
    closes). ``initial_equity`` (default 100,000) starts a flat account; ``initial_cash`` with
    ``initial_position_units`` seeds a held position; ``state`` (a previous result's
    ``final_state``) continues a run so that consecutive chunks equal one whole run.
    ``halt_from_index`` forces the target to 0 from that bar on (flatten at the next open, no new
    orders); ``len(bars)`` only marks the final state as halted.
    """
    ts, opens, closes = _validate_bars(bars)
    n = len(ts)
    decided = _validate_targets(target_position, ts).copy()
    fee = _check_cost("fee_bps", fee_bps) * _BPS
    slip = _check_cost("slippage_bps", slippage_bps) * _BPS
    if slip >= 1.0:
        raise ValueError("slippage_bps must be below 10,000 (a sell price must stay positive)")
    kb = slip + fee * (1.0 + slip)
    ks = slip + fee * (1.0 - slip)
    max_abs_target = float(np.abs(decided).max())
    if max(kb, ks) * max_abs_target >= 1.0:
        raise ValueError(
            f"a target of {max_abs_target} cannot be sized with these costs: cost fraction x leverage must stay below 1"
        )
    start, start_equity = _resolve_start(
        state, initial_equity, initial_position_units, initial_cash, float(opens[0]), ts[0]
    )

    halt_idx: int | None = None
    if halt_from_index is not None:
        if isinstance(halt_from_index, bool) or not isinstance(halt_from_index, (int, np.integer)):
            raise ValueError(f"halt_from_index must be an integer, got {halt_from_index!r}")
        if not 0 <= int(halt_from_index) <= n:
            raise ValueError(f"halt_from_index must be in [0, {n}], got {halt_from_index}")
        halt_idx = int(halt_from_index)
        decided[halt_idx:] = 0.0
    if start.halted or start.ruined:
        # The order decided before the previous chunk ended still executes, exactly as it would
        # have in one uninterrupted run; nothing new is decided.
        decided[:] = 0.0

    pending = start.pending_target
    ruin_bar: int | None = None
    sim = _simulate(ts, opens, closes, decided, pending, start, fee, slip, kb, ks)
    if not start.ruined:
        bust = _first_ruin(sim)
        if bust is not None:
            # Liquidate: an order that would be sized on non-positive equity becomes a close-out,
            # and nothing is decided after the first non-positive mark.
            kind, ruin_bar = bust
            if kind == "close":
                decided[ruin_bar:] = 0.0
            elif ruin_bar == 0:
                pending = 0.0
                decided[:] = 0.0
            else:
                decided[ruin_bar - 1 :] = 0.0
            sim = _simulate(ts, opens, closes, decided, pending, start, fee, slip, kb, ks)
    return _assemble(sim, ts, opens, closes, decided, start, start_equity, fee_bps, slippage_bps, halt_idx, ruin_bar)


def _simulate(ts, opens, closes, decided, pending, start, fee, slip, kb, ks):
    """Orders, their fills and the per-bar book for one pass over the bars."""
    n = len(ts)
    held0 = np.nan if start.held_target is None else start.held_target
    # An order executes at bar j's open when the decision of bar j - 1 differs from the one
    # before it. Bar 0 executes the carried pending decision; NaN (unknown held target)
    # compares unequal to everything, so a seeded position is always rebalanced once.
    is_order = np.empty(n, dtype=bool)
    is_order[0] = pending is not None and pending != held0
    if n > 1:
        before_first = held0 if pending is None else pending
        is_order[1] = decided[0] != before_first
        np.not_equal(decided[1:-1], decided[:-2], out=is_order[2:])
    order_bars = np.flatnonzero(is_order)
    order_targets = decided[np.maximum(order_bars - 1, 0)]
    if len(order_bars) and order_bars[0] == 0:
        order_targets[0] = pending
    if n > 1:
        held = float(decided[n - 2])
    else:
        held = start.held_target if pending is None else float(pending)
    if len(order_bars):
        e_pre, units, cash, traded = _chain(opens[order_bars], order_targets, start.cash, start.units, kb, ks)
    else:
        e_pre, units, cash, traded = np.empty(0), np.empty(0), np.empty(0), np.empty(0, dtype=bool)
    fill_bars = order_bars[traded]
    fill_units = units[traded]
    fill_cash = cash[traded]
    # Forward-fill the book from each fill to the bars that follow it; the opening book before.
    spans = np.empty(len(fill_bars) + 1, dtype=np.int64)
    spans[0] = fill_bars[0] if len(fill_bars) else n
    if len(fill_bars):
        np.subtract(fill_bars[1:], fill_bars[:-1], out=spans[1:-1])
        spans[-1] = n - fill_bars[-1]
    units_bar = np.repeat(np.concatenate([[start.units], fill_units]), spans)
    cash_bar = np.repeat(np.concatenate([[start.cash], fill_cash]), spans)
    equity_bar = units_bar * closes
    equity_bar += cash_bar
    return {
        "order_bars": order_bars,
        "e_pre": e_pre,
        "fill_bars": fill_bars,
        "fill_units": fill_units,
        "fill_targets": order_targets[traded],
        "units_bar": units_bar,
        "cash_bar": cash_bar,
        "equity_bar": equity_bar,
        "held": held,
        "fee": fee,
        "slip": slip,
    }


def _first_ruin(sim):
    """Earliest bar where the account is bust, as ('open', bar) or ('close', bar); None if never."""
    e_pre, equity = sim["e_pre"], sim["equity_bar"]
    if (not len(e_pre) or e_pre.min() > 0.0) and equity.min() > 0.0:
        return None
    candidates = []
    bad_pre = np.flatnonzero(sim["e_pre"] <= 0.0)
    if len(bad_pre):
        candidates.append((int(sim["order_bars"][bad_pre[0]]), 0, "open"))
    bad_close = np.flatnonzero(sim["equity_bar"] <= 0.0)
    if len(bad_close):
        candidates.append((int(bad_close[0]), 1, "close"))
    if not candidates:
        return None
    bar, _, kind = min(candidates)
    return kind, bar


def _assemble(sim, ts, opens, closes, decided, start, start_equity, fee_bps, slippage_bps, halt_idx, ruin_bar):
    """Turn one simulation pass into the public result: fills, per-bar book, trades, final state."""
    n = len(ts)
    units_bar, cash_bar, equity_bar = sim["units_bar"], sim["cash_bar"], sim["equity_bar"]
    fill_bars = sim["fill_bars"]
    units_after = sim["fill_units"]
    units_before = np.empty_like(units_after)
    if len(units_after):
        units_before[0] = start.units
        units_before[1:] = units_after[:-1]
    delta = units_after - units_before
    is_buy = delta > 0.0
    o = opens[fill_bars]
    price = np.where(is_buy, o * (1.0 + sim["slip"]), o * (1.0 - sim["slip"]))
    qty = np.abs(delta)
    notional = qty * price
    fee_paid = notional * sim["fee"]
    fill_ts = ts[fill_bars]
    fills = pd.DataFrame(
        {
            "ts": fill_ts,
            "side": pd.Categorical.from_codes(is_buy.astype(np.int8), categories=["sell", "buy"]),
            "units": qty,
            "price": price,
            "notional": notional,
            "fee": fee_paid,
            "slippage_cost": qty * o * sim["slip"],
            "target": sim["fill_targets"],
        },
        columns=_FILL_COLUMNS,
        copy=False,
    )
    trades, open_trade = _round_trips(fill_ts, price, units_before, units_after, delta, fee_paid, start)

    final_state = BacktestState(
        cash=float(cash_bar[-1]),
        units=float(units_bar[-1]),
        held_target=sim["held"],
        pending_target=float(decided[-1]),
        last_ts=ts[-1],
        last_close=float(closes[-1]),
        open_trade_entry_ts=open_trade[0],
        open_trade_entry_price=open_trade[1],
        open_trade_cash_flow=open_trade[2],
        halted=start.halted or halt_idx is not None,
        ruined=start.ruined or ruin_bar is not None,
    )
    return BacktestResult(
        fills=fills,
        positions=pd.Series(units_bar, index=ts, name="units"),
        cash=pd.Series(cash_bar, index=ts, name="cash"),
        equity=pd.Series(equity_bar, index=ts, name="equity"),
        targets=pd.Series(decided, index=ts, name="target"),
        trades=trades,
        final_state=final_state,
        initial_equity=float(start_equity),
        fee_bps=float(fee_bps),
        slippage_bps=float(slippage_bps),
        halted_at=ts[halt_idx] if halt_idx is not None and halt_idx < n else None,
        ruined_at=ts[ruin_bar] if ruin_bar is not None and ruin_bar < n else None,
    )


def _round_trips(fill_ts, price, units_before, units_after, delta, fee_paid, start):
    """Closed round trips from the fills, and the (entry ts, entry price, cash flow) of the open one.

    A round trip runs from leaving flat to returning to flat; a fill that flips the sign closes
    one trip and opens the next, its fee split in proportion to the units of each part. A trip's
    pnl is the sum of its cash flows, so scaling in and out is accounted for.
    """
    s1 = np.sign(units_after)
    s0 = np.empty_like(s1)
    if len(s1):
        s0[0] = np.sign(start.units)
        s0[1:] = s1[:-1]
    changed = s1 != s0
    crosses = changed & (s0 != 0)
    opens_new = changed & (s1 != 0)
    cash_flow = -delta * price - fee_paid
    contrib_old = cash_flow.copy()
    contrib_old[s0 == 0] = 0.0
    contrib_new = np.where(opens_new, cash_flow, 0.0)
    flips = np.flatnonzero(crosses & opens_new)
    if len(flips):
        share = np.abs(units_before[flips]) / np.abs(delta[flips])
        close_part = units_before[flips] * price[flips] - fee_paid[flips] * share
        contrib_old[flips] = close_part
        contrib_new[flips] = cash_flow[flips] - close_part
    cum = np.cumsum(contrib_old)

    open_idx = np.flatnonzero(opens_new)
    close_idx = np.flatnonzero(crosses)
    # Per trip: cash flow of its opening fill, cum at the opening fill, entry ts/price/side.
    entry_cf = contrib_new[open_idx]
    entry_cum = cum[open_idx]
    entry_ts = fill_ts[open_idx]
    entry_price = price[open_idx]
    entry_side = s1[open_idx]
    if start.units != 0.0:
        # The trip open at the start of this chunk comes first, with what it booked before.
        carried_ts = pd.NaT if start.open_trade_entry_ts is None else pd.Timestamp(start.open_trade_entry_ts)
        entry_cf = np.concatenate([[start.open_trade_cash_flow], entry_cf])
        entry_cum = np.concatenate([[0.0], entry_cum])
        entry_ts = pd.DatetimeIndex([carried_ts], tz="UTC").append(entry_ts)
        entry_price = np.concatenate(
            [[np.nan if start.open_trade_entry_price is None else start.open_trade_entry_price], entry_price]
        )
        entry_side = np.concatenate([[np.sign(start.units)], entry_side])
    n_closed = len(close_idx)
    pnl = entry_cf[:n_closed] + cum[close_idx] - entry_cum[:n_closed]
    trades = pd.DataFrame(
        {
            "entry_ts": entry_ts[:n_closed],
            "exit_ts": fill_ts[close_idx],
            "side": pd.Categorical.from_codes(
                (entry_side[:n_closed] > 0).astype(np.int8), categories=["short", "long"]
            ),
            "entry_price": entry_price[:n_closed],
            "exit_price": price[close_idx],
            "pnl": pnl,
        },
        columns=_TRADE_COLUMNS,
        copy=False,
    )
    if len(entry_cf) > n_closed:
        last_cum = cum[-1] if len(cum) else 0.0
        open_cf = float(entry_cf[-1] + last_cum - entry_cum[-1])
        entry = entry_ts[-1]
        open_trade = (None if pd.isna(entry) else entry, float(entry_price[-1]), open_cf)
    else:
        open_trade = (None, None, 0.0)
    return trades, open_trade


def run_portfolio(
    bars_by_instrument: Mapping[str, pd.DataFrame],
    targets_by_instrument: Mapping[str, object],
    *,
    fee_bps: float,
    slippage_bps: float,
    initial_equity: float | None = None,
    weights: Mapping[str, float] | None = None,
    states: Mapping[str, BacktestState] | None = None,
    halt_from_ts: pd.Timestamp | str | None = None,
) -> PortfolioResult:
    """Backtest several instruments from one account and sum them into account equity.

    Capital (``initial_equity``, default 100,000) is split equally or by ``weights`` (non-negative,
    summing to 1); each instrument's targets are fractions of its own sleeve. ``states`` (a
    previous PortfolioResult's ``final_states``) continues every sleeve instead. ``halt_from_ts``
    is the account circuit breaker: every instrument is forced flat from its first bar at or after
    that time.
    """
    names = list(bars_by_instrument)
    if not names:
        raise ValueError("bars_by_instrument is empty")
    if set(targets_by_instrument) != set(names):
        raise ValueError(
            f"instruments differ between bars and targets: {sorted(set(names) ^ set(targets_by_instrument))}"
        )
    if states is not None:
        if initial_equity is not None or weights is not None:
            raise ValueError("pass states (continuation) or initial_equity/weights (fresh start), not both")
        if set(states) != set(names):
            raise ValueError(f"states must cover exactly the instruments: {sorted(set(names) ^ set(states))}")
        weight_map = {}
    else:
        capital = DEFAULT_INITIAL_EQUITY if initial_equity is None else float(initial_equity)
        if not (math.isfinite(capital) and capital > 0.0):
            raise ValueError(f"initial_equity must be a positive finite number, got {initial_equity}")
        if weights is None:
            weight_map = {name: 1.0 / len(names) for name in names}
        else:
            if set(weights) != set(names):
                raise ValueError(f"weights must cover exactly the instruments: {sorted(set(names) ^ set(weights))}")
            weight_map = {k: float(v) for k, v in weights.items()}
            if any(not math.isfinite(v) or v < 0.0 for v in weight_map.values()):
                raise ValueError("weights must be finite and non-negative")
            if abs(sum(weight_map.values()) - 1.0) > 1e-9:
                raise ValueError(f"weights must sum to 1, got {sum(weight_map.values())}")
    halt_ts = None
    if halt_from_ts is not None:
        halt_ts = pd.Timestamp(halt_from_ts)
        halt_ts = halt_ts.tz_localize("UTC") if halt_ts.tz is None else halt_ts.tz_convert("UTC")

    results: dict[str, BacktestResult] = {}
    for name in names:
        bars = bars_by_instrument[name]
        halt_index = None
        if halt_ts is not None:
            ts = pd.DatetimeIndex(bars["ts"]) if isinstance(bars, pd.DataFrame) and "ts" in bars else None
            if ts is not None and len(ts):
                ts = ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")
                halt_index = int(ts.searchsorted(halt_ts, side="left"))
        try:
            if states is not None:
                res = run_backtest(
                    bars,
                    targets_by_instrument[name],
                    fee_bps=fee_bps,
                    slippage_bps=slippage_bps,
                    state=states[name],
                    halt_from_index=halt_index,
                )
            elif weight_map[name] == 0.0:
                raise ValueError("a zero weight gives the instrument no capital; leave it out instead")
            else:
                res = run_backtest(
                    bars,
                    targets_by_instrument[name],
                    fee_bps=fee_bps,
                    slippage_bps=slippage_bps,
                    initial_equity=capital * weight_map[name],
                    halt_from_index=halt_index,
                )
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from exc
        results[name] = res

    equity = _sum_aligned({k: r.equity for k, r in results.items()}, {k: r.initial_equity for k, r in results.items()})
    cash = _sum_aligned(
        {k: r.cash for k, r in results.items()},
        {k: (states[k].cash if states is not None else r.initial_equity) for k, r in results.items()},
    )
    fills = pd.concat([r.fills.assign(instrument=k) for k, r in results.items()], ignore_index=True)
    fills = fills.sort_values("ts", kind="stable", ignore_index=True)
    trades = pd.concat([r.trades.assign(instrument=k) for k, r in results.items()], ignore_index=True)
    trades = trades.sort_values("exit_ts", kind="stable", ignore_index=True)
    halted = [r.halted_at for r in results.values() if r.halted_at is not None]
    return PortfolioResult(
        results=results,
        equity=equity,
        cash=cash,
        fills=fills,
        trades=trades,
        initial_equity=float(sum(r.initial_equity for r in results.values())),
        weights=weight_map,
        final_states={k: r.final_state for k, r in results.items()},
        halted_at=min(halted) if halted else None,
    )


def _sum_aligned(series: dict[str, pd.Series], before_first: dict[str, float]) -> pd.Series:
    """Sum per-instrument series on the union of timestamps, carrying each one's last value."""
    frame = pd.concat(series, axis=1)
    frame = frame.ffill()
    for name, value in before_first.items():
        frame[name] = frame[name].fillna(value)
    out = frame.sum(axis=1)
    out.name = next(iter(series.values())).name
    return out


__all__ = [
    "BacktestResult",
    "BacktestState",
    "DEFAULT_INITIAL_EQUITY",
    "PortfolioResult",
    "run_backtest",
    "run_portfolio",
    "signals_to_positions",
]
