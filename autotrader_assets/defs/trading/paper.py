"""Paper trading, one UTC day at a time: probabilities -> targets -> the backtest engine -> book.

Pure functions, no I/O. The account is one pool of capital split equally over its instruments at
the first date (each instrument a sleeve of :func:`deploy_ops.trading.backtest.run_portfolio`); every
later date continues from the previous date's :class:`AccountState`. Fills happen at the next
bar's open with fees and slippage, exactly as in the promotion and rollout backtests, because
it is the same engine.

The circuit breaker is evaluated on the account equity at every bar close
(:func:`deploy_ops.trading.breaker.find_trip`). When it trips at bar ``i`` the day is run again with
every sleeve forced flat from bar ``i`` (its decision there is "flat", filled at bar ``i + 1``'s
open); nothing before bar ``i`` changes, so the trip is found again at the same bar when the day
is recomputed. A day that starts while a trip is in force -- one the store still holds, or one
found on an earlier day that no operator has reset -- places no new orders at all.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from deploy_ops.trading.backtest import (
    DEFAULT_INITIAL_EQUITY,
    BacktestState,
    PortfolioResult,
    run_portfolio,
    signals_to_positions,
)
from deploy_ops.trading.breaker import Trip, find_trip

_DAY = pd.Timedelta(days=1)


class PaperTradingError(ValueError):
    """Inputs that cannot be paper-traded as given (the message says what to fix)."""


@dataclass(frozen=True)
class SignalParams:
    """How a probability of an up-move becomes a target position (see ``signals_to_positions``)."""

    long_threshold: float = 0.55
    short_threshold: float = 0.45
    allow_short: bool = True
    sizing: str = "fixed"
    max_position: float = 1.0

    def __post_init__(self) -> None:
        # Checked now: a day blocked by the breaker never maps a probability, and a bad setting
        # must not wait for the first tradable day to surface.
        try:
            signals_to_positions(
                np.array([0.5]),
                long_threshold=self.long_threshold,
                short_threshold=self.short_threshold,
                allow_short=self.allow_short,
                sizing=self.sizing,
                max_position=self.max_position,
            )
        except ValueError as exc:
            raise PaperTradingError(f"invalid signal parameters: {exc}") from exc


@dataclass(frozen=True)
class PaperParams:
    """Costs, starting capital, signal mapping and breaker limits of the paper account."""

    fee_bps: float
    slippage_bps: float
    #: The breaker limits have no default here: ``defs/trading/params.py`` takes them from settings.
    daily_loss_limit: float
    drawdown_limit: float
    initial_equity: float = DEFAULT_INITIAL_EQUITY
    signal: SignalParams = field(default_factory=SignalParams)

    def __post_init__(self) -> None:
        for name in ("fee_bps", "slippage_bps"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                raise PaperTradingError(f"{name} must be a finite non-negative number, got {value}")
        if not (math.isfinite(self.initial_equity) and self.initial_equity > 0.0):
            raise PaperTradingError(f"initial_equity must be a positive finite number, got {self.initial_equity}")


@dataclass(frozen=True)
class AccountState:
    """The paper account after the last bar of ``date``: what the next date continues from.

    ``equity`` is the last account mark (the next day's opening equity), ``peak_equity`` the
    highest mark ever (drawdown base), ``halted_since`` the market time of the trip that halted
    the account, or None while it trades.
    """

    date: dt.date
    states: Mapping[str, BacktestState]
    equity: float
    peak_equity: float
    halted_since: pd.Timestamp | None = None


@dataclass(frozen=True)
class BreakerView:
    """What the breaker store says when a run starts.

    ``active_trip_at``: market time of the trip while the breaker is tripped, else None.
    ``reset_trips``: market times of trips that an operator has reset (approved)."""

    active_trip_at: pd.Timestamp | None = None
    reset_trips: frozenset = frozenset()


@dataclass
class DayInput:
    """One date's bars (ts, open, close at least) and P(up) per bar, per instrument.

    A NaN probability means "no prediction" (features still warming up): target flat."""

    date: dt.date
    bars: Mapping[str, pd.DataFrame]
    proba: Mapping[str, np.ndarray]


@dataclass
class DayResult:
    """One paper-traded date: the engine's result, the account curve and the breaker's view."""

    date: dt.date
    portfolio: PortfolioResult
    proba: dict[str, np.ndarray]
    targets: dict[str, np.ndarray]
    closes: dict[str, np.ndarray]
    day_open_equity: float
    start_peak_equity: float
    blocked_at_start: bool
    block_reason: str | None
    trip: Trip | None
    halted_from: pd.Timestamp | None
    end: AccountState

    @property
    def equity(self) -> pd.Series:
        """Account equity marked at each bar close of the day."""
        return self.portfolio.equity

    def account_curve(self) -> pd.DataFrame:
        """Per bar: equity, cash, running peak, drawdown from it, loss vs the day's open, halted."""
        equity = self.portfolio.equity.to_numpy(dtype=np.float64)
        peak = np.maximum.accumulate(np.maximum(equity, self.start_peak_equity))
        ts = self.portfolio.equity.index
        halted = np.zeros(len(ts), dtype=bool) if self.halted_from is None else np.asarray(ts >= self.halted_from)
        return pd.DataFrame(
            {
                "ts": ts,
                "equity": equity,
                "cash": self.portfolio.cash.reindex(ts).to_numpy(dtype=np.float64),
                "peak_equity": peak,
                "drawdown": (peak - equity) / peak,
                "day_loss": (self.day_open_equity - equity) / self.day_open_equity,
                "halted": halted,
            }
        )


def day_bounds(date: dt.date) -> tuple[pd.Timestamp, pd.Timestamp]:
    """[start, end) of a UTC calendar day as timestamps."""
    start = pd.Timestamp(date).tz_localize("UTC")
    return start, start + _DAY


def targets_from_proba(proba: np.ndarray, signal: SignalParams) -> np.ndarray:
    """Target position per bar; bars without a prediction (NaN) are flat."""
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 1:
        raise PaperTradingError(f"probabilities must be 1-D, got shape {p.shape}")
    out = np.zeros(len(p))
    valid = ~np.isnan(p)
    if valid.any():
        out[valid] = signals_to_positions(
            p[valid],
            long_threshold=signal.long_threshold,
            short_threshold=signal.short_threshold,
            allow_short=signal.allow_short,
            sizing=signal.sizing,
            max_position=signal.max_position,
        )
    return out


def confidence(proba: np.ndarray) -> tuple[float | None, int]:
    """Mean model confidence |p - 0.5| * 2 over bars that have a prediction, and their count."""
    p = np.asarray(proba, dtype=np.float64)
    valid = p[~np.isnan(p)]
    if len(valid) == 0:
        return None, 0
    return float(np.mean(np.abs(valid - 0.5) * 2.0)), int(len(valid))


def _to_utc(ts: pd.Timestamp | None) -> pd.Timestamp | None:
    if ts is None:
        return None
    ts = pd.Timestamp(ts)
    return ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")


def _check_day(day: DayInput) -> None:
    if not day.bars:
        raise PaperTradingError(f"{day.date}: no instruments to trade")
    if set(day.bars) != set(day.proba):
        raise PaperTradingError(
            f"{day.date}: bars and probabilities cover different instruments: {sorted(set(day.bars) ^ set(day.proba))}"
        )
    start, end = day_bounds(day.date)
    for name, bars in day.bars.items():
        if len(bars) == 0:
            raise PaperTradingError(f"{day.date} {name}: no bars")
        if len(day.proba[name]) != len(bars):
            raise PaperTradingError(f"{day.date} {name}: {len(day.proba[name])} probabilities for {len(bars)} bars")
        ts = pd.DatetimeIndex(bars["ts"])
        ts = ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")
        if ts.min() < start or ts.max() >= end:
            raise PaperTradingError(f"{day.date} {name}: bars from {ts.min()} to {ts.max()} fall outside the day")


def block_at_start(
    date: dt.date, previous: AccountState | None, breaker: BreakerView
) -> tuple[str | None, pd.Timestamp | None]:
    """Why ``date`` may place no orders at all, and the trip it stays halted by; (None, None) if it trades.

    Blocked while a trip that halted the account on an earlier date is not reset, or while the
    store holds a trip from before the day's first bar."""
    start, _ = day_bounds(date)
    active = _to_utc(breaker.active_trip_at)
    reset = frozenset(_to_utc(t) for t in breaker.reset_trips)
    carried = _to_utc(previous.halted_since) if previous is not None else None
    if carried is not None and carried not in reset:
        return f"circuit breaker tripped at {carried.isoformat()} and not reset", carried
    if active is not None and active < start:
        return f"circuit breaker tripped at {active.isoformat()} and not reset", active
    return None, None


def run_paper_day(
    day: DayInput, previous: AccountState | None, params: PaperParams, breaker: BreakerView = BreakerView()
) -> DayResult:
    """Paper-trade one date from ``previous`` (None: a fresh account with ``initial_equity``).

    See the module docstring for the breaker rules. Raises PaperTradingError when the date does
    not follow ``previous`` or the instruments differ from the account's."""
    _check_day(day)
    start, end = day_bounds(day.date)
    names = sorted(day.bars)
    active = _to_utc(breaker.active_trip_at)

    if previous is not None:
        if previous.date >= day.date:
            raise PaperTradingError(f"{day.date} does not come after the account's last date {previous.date}")
        if set(previous.states) != set(names):
            raise PaperTradingError(
                f"{day.date}: the account trades {sorted(previous.states)} but the day has bars for {names}; "
                f"an account's instruments are fixed at its first date (recompute from that date to change them)"
            )
        day_open, peak = float(previous.equity), float(previous.peak_equity)
    else:
        day_open = peak = float(params.initial_equity)

    block_reason, halted_since = block_at_start(day.date, previous, breaker)
    blocked = block_reason is not None

    halt_ts = start if blocked else (active if active is not None and start <= active < end else None)
    states = None
    if previous is not None:
        states = {}
        for name in names:
            state = previous.states[name]
            if blocked:
                # No new orders: whatever was pending becomes "flat" (a flatten, if anything is held).
                state = dataclasses.replace(state, halted=True, pending_target=0.0)
            elif state.halted:
                state = dataclasses.replace(state, halted=False)  # its trip has been reset
            states[name] = state

    bars = {name: day.bars[name] for name in names}
    proba = {name: np.asarray(day.proba[name], dtype=np.float64) for name in names}
    targets = {name: targets_from_proba(proba[name], params.signal) for name in names}

    def run(halt: pd.Timestamp | None) -> PortfolioResult:
        common = dict(fee_bps=params.fee_bps, slippage_bps=params.slippage_bps, halt_from_ts=halt)
        if states is not None:
            return run_portfolio(bars, targets, states=states, **common)
        return run_portfolio(bars, targets, initial_equity=params.initial_equity, **common)

    result = run(halt_ts)
    trip = None
    if not blocked:
        found = find_trip(result.equity, day_open, peak, params.daily_loss_limit, params.drawdown_limit)
        if found is not None and (halt_ts is None or found.at < halt_ts):
            halt_ts = found.at
            result = run(halt_ts)
        # A later crossing, after the account was already halted, is not a cause of the halt.
        if found is not None and found.at <= halt_ts:
            trip = found
        if halt_ts is not None:
            halted_since = halt_ts

    end_equity = float(result.equity.iloc[-1])
    end_state = AccountState(
        date=day.date,
        states=dict(result.final_states),
        equity=end_equity,
        peak_equity=float(max(peak, float(result.equity.max()))),
        halted_since=halted_since,
    )
    return DayResult(
        date=day.date,
        portfolio=result,
        proba=proba,
        targets=targets,
        closes={name: bars[name]["close"].to_numpy(dtype=np.float64) for name in names},
        day_open_equity=day_open,
        start_peak_equity=peak,
        blocked_at_start=blocked,
        block_reason=block_reason,
        trip=trip,
        halted_from=halt_ts,
        end=end_state,
    )


def run_paper_days(
    days: Iterable[DayInput],
    previous: AccountState | None,
    params: PaperParams,
    breaker: BreakerView = BreakerView(),
) -> list[DayResult]:
    """Paper-trade consecutive dates, each continuing from the one before.

    The same as calling :func:`run_paper_day` date by date: a trip found on one date halts the
    following ones (through ``halted_since``) until an operator resets it."""
    results: list[DayResult] = []
    state = previous
    for day in days:
        if state is not None and day.date != state.date + dt.timedelta(days=1):
            raise PaperTradingError(f"{day.date} does not directly follow {state.date}: dates must be consecutive")
        result = run_paper_day(day, state, params, breaker)
        results.append(result)
        state = result.end
    return results


def plan_dates(selected: Sequence[dt.date], computed: Sequence[dt.date]) -> tuple[list[dt.date], dt.date | None]:
    """Which dates a run must compute, and the date whose end state it starts from.

    Every date from the earliest selected one to the latest of the selected and the already
    computed later ones: recomputing a date recomputes everything after it, so the account's
    history stays one consistent chain. The start state is the day before the first date, which
    must have been computed unless no earlier date was (then the account starts fresh)."""
    if not selected:
        raise PaperTradingError("no dates selected")
    first = min(selected)
    later = [d for d in computed if d > first]
    last = max([*selected, *later])
    work = [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
    earlier = [d for d in computed if d < first]
    if not earlier:
        return work, None
    before = first - dt.timedelta(days=1)
    if max(earlier) != before:
        raise PaperTradingError(
            f"paper trading {first} needs the account state of {before}, but the account's dates before "
            f"{first} end at {max(earlier)}: materialize {max(earlier) + dt.timedelta(days=1)} .. {before} first "
            f"(or a range starting there)"
        )
    return work, before


__all__ = [
    "AccountState",
    "BreakerView",
    "DayInput",
    "DayResult",
    "PaperParams",
    "PaperTradingError",
    "SignalParams",
    "confidence",
    "day_bounds",
    "plan_dates",
    "block_at_start",
    "run_paper_day",
    "run_paper_days",
    "targets_from_proba",
]
