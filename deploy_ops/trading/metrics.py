"""Trading metrics on backtest and paper-trading results, each carrying its own convention.

A Sharpe ratio without its annualization and sampling is not comparable across reports, so
the ratio is returned together with the convention that produced it, and every "cannot be
computed" case says why instead of returning a silent NaN. ``summarize`` gives a JSON-safe
dict: infinity is written as the string "inf" with a note, timestamps as ISO strings.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from deploy_ops.trading.backtest import BacktestResult, PortfolioResult

#: Crypto trades every calendar day.
CRYPTO = 365
#: Exchange-traded equities: trading days per year.
EQUITIES = 252


@dataclass(frozen=True)
class SharpeRatio:
    """Annualized Sharpe ratio (risk-free 0) with the convention used; value None plus reason if undefined."""

    value: float | None
    annualization: str
    periods_per_year: int
    ddof: int
    returns: str
    n_returns: int
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-safe dict."""
        return asdict(self)


@dataclass(frozen=True)
class MaxDrawdown:
    """Largest fall from a running peak of equity, as a positive fraction, with where it happened."""

    value: float
    peak_ts: pd.Timestamp | None
    trough_ts: pd.Timestamp | None

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-safe dict (timestamps as ISO strings)."""
        return {"value": self.value, "peak_ts": _iso(self.peak_ts), "trough_ts": _iso(self.trough_ts)}


@dataclass(frozen=True)
class ProfitFactor:
    """Gross profit / gross loss over closed trades.

    ``value`` is ``math.inf`` when there were winners and no losers (``reason`` says so) and
    None when nothing was closed or nothing was won or lost.
    """

    value: float | None
    gross_profit: float
    gross_loss: float
    n_trades: int
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-safe dict: infinity is the string "inf" and the reason explains it."""
        out = asdict(self)
        if self.value is not None and math.isinf(self.value):
            out["value"] = "inf"
        return out


def _iso(ts) -> str | None:
    return None if ts is None else pd.Timestamp(ts).isoformat()


def _equity_series(equity) -> pd.Series:
    if not isinstance(equity, pd.Series):
        raise ValueError(f"equity must be a pandas Series indexed by timestamp, got {type(equity).__name__}")
    if len(equity) == 0:
        raise ValueError("equity is empty")
    if not isinstance(equity.index, pd.DatetimeIndex):
        raise ValueError("equity must be indexed by a DatetimeIndex")
    values = equity.to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError("equity has non-finite values")
    if not equity.index.is_monotonic_increasing:
        raise ValueError("equity index must be sorted by time")
    return equity


def _trades_frame(trades) -> pd.DataFrame:
    if not isinstance(trades, pd.DataFrame) or "pnl" not in trades.columns:
        raise ValueError("trades must be a DataFrame with a 'pnl' column (BacktestResult.trades)")
    if not np.isfinite(trades["pnl"].to_numpy(dtype=np.float64)).all():
        raise ValueError("trades.pnl has non-finite values")
    return trades


def total_pnl(result: BacktestResult | PortfolioResult) -> float:
    """Money made over the run: last marked equity minus the equity the run started from."""
    if not isinstance(result, (BacktestResult, PortfolioResult)):
        raise ValueError(f"total_pnl needs a BacktestResult or PortfolioResult, got {type(result).__name__}")
    return float(result.equity.iloc[-1] - result.initial_equity)


def daily_returns(equity: pd.Series, initial_equity: float | None = None) -> pd.Series:
    """Daily simple returns of account equity on UTC calendar days.

    Each day's equity is its last mark; the first day's return is measured against
    ``initial_equity`` (the account value before the first bar), or against the first mark
    when it is not given. Days without any bar are left out, not filled with zero returns,
    so an equities calendar is not padded with weekends.
    """
    equity = _equity_series(equity)
    idx = equity.index
    idx = idx.tz_localize("UTC") if idx.tz is None else idx.tz_convert("UTC")
    daily = pd.Series(equity.to_numpy(dtype=np.float64), index=idx).resample("1D").last().dropna()
    if initial_equity is None:
        start = float(equity.iloc[0])
    else:
        start = float(initial_equity)
        if not math.isfinite(start):
            raise ValueError("initial_equity must be finite")
    if start <= 0.0:
        raise ValueError(f"returns need a positive starting equity, got {start}")
    previous = daily.shift(1)
    previous.iloc[0] = start
    if (previous <= 0.0).any():
        raise ValueError("equity fell to or below zero: daily returns are undefined after ruin")
    returns = daily / previous - 1.0
    returns.name = "return"
    return returns


def sharpe_ratio(returns: pd.Series, periods_per_year: int = CRYPTO) -> SharpeRatio:
    """Annualized Sharpe of periodic (daily) returns: mean / std(ddof=1) * sqrt(periods_per_year).

    Fewer than two returns, or returns with zero dispersion, give value None with a reason.
    """
    if (
        isinstance(periods_per_year, bool)
        or not isinstance(periods_per_year, (int, np.integer))
        or periods_per_year <= 0
    ):
        raise ValueError(f"periods_per_year must be a positive integer, got {periods_per_year!r}")
    values = np.asarray(returns, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError("returns must be 1-D")
    if not np.isfinite(values).all():
        raise ValueError("returns have non-finite values")
    convention = dict(
        annualization=f"sqrt({int(periods_per_year)})",
        periods_per_year=int(periods_per_year),
        ddof=1,
        returns="daily",
        n_returns=int(len(values)),
    )
    if len(values) < 2:
        return SharpeRatio(value=None, reason=f"needs at least 2 returns, got {len(values)}", **convention)
    # Identical returns can leave a ~1e-18 residue in std; treat exact constancy as zero dispersion.
    if values.max() == values.min():
        return SharpeRatio(value=None, reason="returns have zero standard deviation", **convention)
    std = float(np.std(values, ddof=1))
    value = float(np.mean(values) / std * math.sqrt(periods_per_year))
    return SharpeRatio(value=value, **convention)


def sharpe_meaningful(n_returns: int | None, min_returns: int) -> bool:
    """Whether a Sharpe from ``n_returns`` returns says anything: at least ``min_returns``
    (settings ``Thresholds.min_sharpe_returns``). Below it the standard error of an annualised
    Sharpe, about sqrt(periods_per_year / n), dwarfs any difference worth acting on."""
    if isinstance(min_returns, bool) or not isinstance(min_returns, (int, np.integer)) or min_returns < 2:
        raise ValueError(f"min_returns must be an integer >= 2, got {min_returns!r}")
    return n_returns is not None and int(n_returns) >= int(min_returns)


def sharpe_text(
    value: float | None, n_returns: int | None, min_returns: int, *, returns: str = "daily", digits: int = 2
) -> str:
    """A Sharpe as people should read it: the value, how many returns it comes from, and a
    "not meaningful" mark below ``min_returns``, e.g. ``50.10 (3 daily returns; not meaningful
    below 30)``."""
    shown = "undefined" if value is None or not math.isfinite(float(value)) else f"{float(value):.{digits}f}"
    n = "?" if n_returns is None else str(int(n_returns))
    note = "" if sharpe_meaningful(n_returns, min_returns) else f"; not meaningful below {int(min_returns)}"
    return f"{shown} ({n} {returns} returns{note})"


def max_drawdown(equity: pd.Series, initial_equity: float | None = None) -> MaxDrawdown:
    """Largest peak-to-trough fall of equity as a positive fraction of the peak.

    ``initial_equity``, when given, counts as the first peak (a run that loses from its very
    first bar is in drawdown from its starting capital; its peak_ts is then None, as the
    starting capital has no bar). A value above 1 means equity went below zero. Returns 0 with
    no timestamps when equity never falls below a previous peak.
    """
    equity = _equity_series(equity)
    values = equity.to_numpy(dtype=np.float64)
    if initial_equity is not None:
        if not (math.isfinite(initial_equity) and initial_equity > 0.0):
            raise ValueError(f"initial_equity must be positive and finite, got {initial_equity}")
        values = np.concatenate([[float(initial_equity)], values])
    if values[0] <= 0.0:
        raise ValueError("drawdown needs a positive starting equity")
    peaks = np.maximum.accumulate(values)
    drawdowns = (peaks - values) / peaks
    trough = int(np.argmax(drawdowns))
    depth = float(drawdowns[trough])
    if depth <= 0.0:
        return MaxDrawdown(value=0.0, peak_ts=None, trough_ts=None)
    peak = int(np.flatnonzero(values[: trough + 1] == peaks[trough])[-1])
    offset = 1 if initial_equity is not None else 0
    # Position 0 is the starting capital, which has no bar timestamp of its own.
    peak_ts = None if peak - offset < 0 else equity.index[peak - offset]
    return MaxDrawdown(value=depth, peak_ts=peak_ts, trough_ts=equity.index[trough - offset])


def profit_factor(trades: pd.DataFrame) -> ProfitFactor:
    """Gross profit over gross loss of closed trades; inf (flagged) when nothing lost, None when no trades."""
    trades = _trades_frame(trades)
    pnl = trades["pnl"].to_numpy(dtype=np.float64)
    gross_profit = float(pnl[pnl > 0].sum())
    gross_loss = float(-pnl[pnl < 0].sum())
    n = int(len(pnl))
    if n == 0:
        return ProfitFactor(None, 0.0, 0.0, 0, reason="no closed trades")
    if gross_loss == 0.0:
        if gross_profit == 0.0:
            return ProfitFactor(None, 0.0, 0.0, n, reason="all closed trades broke even")
        return ProfitFactor(math.inf, gross_profit, 0.0, n, reason="no losing trades: profit factor is infinite")
    return ProfitFactor(gross_profit / gross_loss, gross_profit, gross_loss, n)


def win_rate(trades: pd.DataFrame) -> float | None:
    """Fraction of closed trades with positive pnl; None when no trade was closed."""
    trades = _trades_frame(trades)
    if len(trades) == 0:
        return None
    return float((trades["pnl"].to_numpy(dtype=np.float64) > 0).mean())


def trades_per_minute(result: BacktestResult | PortfolioResult) -> float:
    """Executions (fills) per minute of wall-clock time covered by the run's bars.

    Counts fills, not round trips: this is the order rate a broker and its rate limits see.
    """
    if not isinstance(result, (BacktestResult, PortfolioResult)):
        raise ValueError(f"trades_per_minute needs a BacktestResult or PortfolioResult, got {type(result).__name__}")
    idx = result.equity.index
    # Bars are 1-minute, so n bars span n minutes: the last bar's minute counts.
    minutes = (idx[-1] - idx[0]) / pd.Timedelta(minutes=1) + 1.0
    return float(len(result.fills) / minutes)


def summarize(result: BacktestResult | PortfolioResult, periods_per_year: int = CRYPTO) -> dict[str, Any]:
    """Every metric of a run in one JSON-safe dict (no NaN, no inf, no Timestamp objects)."""
    if not isinstance(result, (BacktestResult, PortfolioResult)):
        raise ValueError(f"summarize needs a BacktestResult or PortfolioResult, got {type(result).__name__}")
    # After ruin the account has no positive base to measure returns against.
    returns = daily_returns(result.equity, result.initial_equity) if result.equity.min() > 0 else None
    if returns is None:
        sharpe = {
            "value": None,
            "annualization": f"sqrt({int(periods_per_year)})",
            "periods_per_year": int(periods_per_year),
            "ddof": 1,
            "returns": "daily",
            "n_returns": 0,
            "reason": "equity fell to or below zero",
        }
    else:
        sharpe = sharpe_ratio(returns, periods_per_year).to_dict()
    final_equity = float(result.equity.iloc[-1])
    fills = result.fills
    ruined_at = getattr(result, "ruined_at", None)
    if isinstance(result, PortfolioResult):
        ruined = [r.ruined_at for r in result.results.values() if r.ruined_at is not None]
        ruined_at = min(ruined) if ruined else None
    return {
        "initial_equity": float(result.initial_equity),
        "final_equity": final_equity,
        "total_pnl": total_pnl(result),
        "total_return": final_equity / float(result.initial_equity) - 1.0,
        "sharpe": sharpe,
        "max_drawdown": max_drawdown(result.equity, result.initial_equity).to_dict(),
        "profit_factor": profit_factor(result.trades).to_dict(),
        "win_rate": win_rate(result.trades),
        "n_trades": int(len(result.trades)),
        "n_fills": int(len(fills)),
        "trades_per_minute": trades_per_minute(result),
        "fees_paid": float(fills["fee"].sum()),
        "slippage_paid": float(fills["slippage_cost"].sum()),
        "n_days": int(0 if returns is None else len(returns)),
        "start": _iso(result.equity.index[0]),
        "end": _iso(result.equity.index[-1]),
        "halted_at": _iso(result.halted_at),
        "ruined_at": _iso(ruined_at),
    }


__all__ = [
    "CRYPTO",
    "EQUITIES",
    "MaxDrawdown",
    "ProfitFactor",
    "SharpeRatio",
    "daily_returns",
    "max_drawdown",
    "profit_factor",
    "sharpe_meaningful",
    "sharpe_ratio",
    "sharpe_text",
    "summarize",
    "total_pnl",
    "trades_per_minute",
    "win_rate",
]
