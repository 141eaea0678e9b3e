"""Trading-desk metrics of the paper account, from the warehouse tables, plus their pictures.

Every number comes from :mod:`deploy_ops.trading.metrics` (the functions the promotion gates use): the
stored account curve, fills and round trips are put back into a ``PortfolioResult`` and handed
to ``summarize``, so paper results and backtests are measured the same way, Sharpe convention
included.
"""
from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from deploy_ops.trading.backtest import PortfolioResult
from deploy_ops.trading.metrics import CRYPTO, profit_factor, summarize, win_rate
from autotrader_assets.defs.trading.warehouse import ensure_tables

#: Points drawn per curve; a year of minute bars would otherwise make a slow, multi-MB picture.
MAX_PLOT_POINTS = 4000

PERFORMANCE_TABLE_DDL = """
create table if not exists trading_performance_daily (
    date date primary key,
    day_open_equity double not null,
    end_equity double not null,
    pnl double not null,
    return double not null,
    n_fills integer not null,
    n_trades integer not null,
    win_rate double,
    profit_factor double,
    max_drawdown double not null,
    trades_per_minute double not null,
    blocked_at_start boolean not null,
    tripped boolean not null
)
"""


@dataclass
class History:
    """The paper account's stored history (tz-aware UTC timestamps)."""

    account: pd.DataFrame
    equity: pd.DataFrame
    fills: pd.DataFrame
    trades: pd.DataFrame
    latest_instruments: pd.DataFrame

    @property
    def empty(self) -> bool:
        return self.account.empty


def _utc(frame: pd.DataFrame, *cols: str) -> pd.DataFrame:
    for col in cols:
        frame[col] = pd.to_datetime(frame[col]).dt.tz_localize("UTC")
    return frame


def load_history(con: duckdb.DuckDBPyConnection) -> History:
    """Everything the metrics need, read in date and time order."""
    ensure_tables(con)
    account = con.execute("select * from paper_account_state order by date").df()
    equity = _utc(con.execute("select date, ts, equity, cash, halted from paper_equity order by ts").df(), "ts")
    fills = _utc(con.execute("select * from paper_fills order by ts, instrument").df(), "ts")
    trades = _utc(con.execute("select * from paper_trades order by exit_ts, instrument").df(), "entry_ts", "exit_ts")
    latest = con.execute(
        "select * from paper_instrument_state where date = (select max(date) from paper_account_state) "
        "order by instrument"
    ).df()
    for frame in (account, equity, fills, trades, latest):
        if "date" in frame:
            frame["date"] = pd.to_datetime(frame["date"]).dt.date
    return History(account, equity, fills, trades, latest)


def as_portfolio(equity: pd.DataFrame, fills: pd.DataFrame, trades: pd.DataFrame, initial_equity: float) -> PortfolioResult:
    """Stored paper rows as the engine's result type, so ``deploy_ops.trading.metrics`` measures them."""
    index = pd.DatetimeIndex(equity["ts"])
    return PortfolioResult(
        results={},
        equity=pd.Series(equity["equity"].to_numpy(dtype=np.float64), index=index, name="equity"),
        cash=pd.Series(equity["cash"].to_numpy(dtype=np.float64), index=index, name="cash"),
        fills=fills.reset_index(drop=True),
        trades=trades.reset_index(drop=True),
        initial_equity=float(initial_equity),
        weights={},
    )


def _finite_or_none(value: Any) -> float | None:
    if value is None or isinstance(value, str):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def daily_table(history: History, periods_per_year: int = CRYPTO) -> pd.DataFrame:
    """One row per date: PnL, return, fills, trades, win rate, profit factor, drawdown, breaker."""
    rows = []
    for acct in history.account.itertuples(index=False):
        eq = history.equity[history.equity["date"] == acct.date]
        fills = history.fills[history.fills["date"] == acct.date]
        trades = history.trades[history.trades["date"] == acct.date]
        summary = summarize(as_portfolio(eq, fills, trades, acct.day_open_equity), periods_per_year)
        pf = summary["profit_factor"]["value"]
        rows.append(
            {
                "date": acct.date,
                "day_open_equity": float(acct.day_open_equity),
                "end_equity": float(acct.end_equity),
                "pnl": float(acct.end_equity - acct.day_open_equity),
                "return": float(acct.end_equity / acct.day_open_equity - 1.0),
                "n_fills": int(summary["n_fills"]),
                "n_trades": int(summary["n_trades"]),
                "win_rate": summary["win_rate"],
                "profit_factor": math.inf if pf == "inf" else pf,
                "max_drawdown": float(summary["max_drawdown"]["value"]),
                "trades_per_minute": float(summary["trades_per_minute"]),
                "blocked_at_start": bool(acct.blocked_at_start),
                "tripped": acct.trip_at is not None and not pd.isna(acct.trip_at),
            }
        )
    return pd.DataFrame(rows)


def instrument_table(history: History) -> pd.DataFrame:
    """Current position and results per instrument (each instrument trades its own equal sleeve)."""
    if history.latest_instruments.empty:
        return pd.DataFrame()
    n = len(history.latest_instruments)
    start_capital = float(history.account["day_open_equity"].iloc[0]) / n
    rows = []
    for s in history.latest_instruments.itertuples(index=False):
        last_close = float(s.last_close) if not pd.isna(s.last_close) else float("nan")
        notional = float(s.units) * last_close if s.units != 0.0 else 0.0
        sleeve = float(s.cash) + notional
        fills = history.fills[history.fills["instrument"] == s.instrument]
        trades = history.trades[history.trades["instrument"] == s.instrument]
        pf = profit_factor(trades[["pnl"]])
        rows.append(
            {
                "instrument": s.instrument,
                "units": float(s.units),
                "last_close": last_close,
                "notional": notional,
                "equity": sleeve,
                "pnl": sleeve - start_capital,
                "realized_pnl": float(trades["pnl"].sum()),
                "n_fills": int(len(fills)),
                "n_trades": int(len(trades)),
                "win_rate": win_rate(trades[["pnl"]]),
                "profit_factor": pf.value,
                "halted": bool(s.halted),
                "slot": s.slot,
                "model_version": s.model_version,
            }
        )
    return pd.DataFrame(rows)


def overall(history: History, periods_per_year: int = CRYPTO) -> dict[str, Any]:
    """``deploy_ops.trading.metrics.summarize`` over the whole history, plus today's PnL."""
    initial = float(history.account["day_open_equity"].iloc[0])
    summary = summarize(as_portfolio(history.equity, history.fills, history.trades, initial), periods_per_year)
    last = history.account.iloc[-1]
    summary["current_date"] = str(last["date"])
    summary["current_equity"] = float(last["end_equity"])
    summary["daily_pnl"] = float(last["end_equity"] - last["day_open_equity"])
    summary["n_dates"] = int(len(history.account))
    return summary


# -- pictures ------------------------------------------------------------------------------------


def _thin(series: pd.Series) -> pd.Series:
    if len(series) <= MAX_PLOT_POINTS:
        return series
    step = int(math.ceil(len(series) / MAX_PLOT_POINTS))
    # Keep the last point so the picture ends at the current equity.
    picked = np.unique(np.r_[np.arange(0, len(series), step), len(series) - 1])
    return series.iloc[picked]


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def equity_png(equity: pd.Series, initial_equity: float, trips: list[pd.Timestamp] = ()) -> bytes:
    """The account equity curve, the starting capital dashed, breaker trips as red lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.2))
    shown = _thin(equity)
    ax.plot(shown.index, shown.to_numpy(), color="#1f77b4", linewidth=1.2, label="equity")
    ax.axhline(initial_equity, color="grey", linestyle="--", linewidth=0.8, label="starting capital")
    for i, ts in enumerate(trips):
        ax.axvline(ts, color="red", linewidth=1.0, label="circuit breaker" if i == 0 else None)
    ax.set_title("Paper account equity")
    ax.set_ylabel("equity")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.autofmt_xdate()
    return _png(fig)


def drawdown_png(equity: pd.Series, initial_equity: float, limit: float | None = None) -> bytes:
    """Drawdown from the running peak (starting capital included), with the breaker's limit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = equity.to_numpy(dtype=np.float64)
    peaks = np.maximum.accumulate(np.maximum(values, initial_equity))
    dd = pd.Series(-(peaks - values) / peaks, index=equity.index)
    shown = _thin(dd)
    fig, ax = plt.subplots(figsize=(9, 2.6))
    ax.fill_between(shown.index, shown.to_numpy(), 0.0, color="#d62728", alpha=0.35, step="post")
    ax.plot(shown.index, shown.to_numpy(), color="#d62728", linewidth=0.8)
    if limit is not None:
        ax.axhline(-limit, color="black", linestyle="--", linewidth=0.8, label=f"breaker limit -{limit:.0%}")
        ax.legend(loc="lower left", fontsize=8)
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set_title("Drawdown from peak")
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    return _png(fig)


def png_markdown(png: bytes, alt: str) -> str:
    """Markdown image with the PNG inline as a data URI (the Dagster UI renders it)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        return f"{value:,.4f}" if abs(value) < 10 else f"{value:,.2f}"
    return str(value)


def markdown_table(frame: pd.DataFrame) -> str:
    """A pipe table for asset metadata."""
    if frame.empty:
        return "_no rows_"
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines)


def write_daily(con: duckdb.DuckDBPyConnection, daily: pd.DataFrame) -> None:
    """Replace ``trading_performance_daily`` with ``daily`` (one transaction)."""
    con.execute(PERFORMANCE_TABLE_DDL)
    # DuckDB doubles hold infinity, so a day with winners and no losers keeps its inf.
    frame = daily.copy()
    con.execute("begin transaction")
    try:
        con.execute("delete from trading_performance_daily")
        if not frame.empty:
            con.register("_perf_daily", frame)
            cols = ", ".join(f'"{c}"' for c in frame.columns)
            con.execute(f"insert into trading_performance_daily ({cols}) select {cols} from _perf_daily")
            con.unregister("_perf_daily")
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        raise


__all__ = [
    "History",
    "MAX_PLOT_POINTS",
    "as_portfolio",
    "daily_table",
    "drawdown_png",
    "equity_png",
    "instrument_table",
    "load_history",
    "markdown_table",
    "overall",
    "png_markdown",
    "write_daily",
]
