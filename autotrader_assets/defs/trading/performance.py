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

from autotrader_assets.defs.trading.warehouse import ensure_tables
from deploy_ops.trading.backtest import PortfolioResult
from deploy_ops.trading.metrics import CRYPTO, profit_factor, summarize, win_rate

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


def as_portfolio(
    equity: pd.DataFrame, fills: pd.DataFrame, trades: pd.DataFrame, initial_equity: float
) -> PortfolioResult:
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

    shown = _thin(drawdown_series(equity, initial_equity))
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
    """Markdown image with the PNG inline as a data URI. The Dagster UI renders it, but a value
    this long sits behind a "[Show Markdown]" button (see :func:`sparkline_markdown`)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


#: The Dagster 1.13 UI renders a Markdown metadata value in place on the asset page only when it is
#: shorter than 1000 characters (``MetadataEntry.tsx``: ``expandSmallValues && mdStr.length < 1000``);
#: a longer one is a "[Show Markdown]" button.
INLINE_MARKDOWN_LIMIT = 1000
SPARK_W, SPARK_H = 360, 72


def _fmt_money(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"


def _spark_svg(
    values: np.ndarray, *, color: str, baseline: float | None, labels: tuple[str, str, str], fill: bool
) -> str:
    lo, hi = float(np.min(values)), float(np.max(values))
    if baseline is not None:
        lo, hi = min(lo, baseline), max(hi, baseline)
    span = hi - lo or 1.0
    top, bottom = 12, SPARK_H - 12

    def y(v: float) -> int:
        return round(bottom - (v - lo) / span * (bottom - top))

    xs = np.linspace(0, SPARK_W - 1, len(values)).round().astype(int)
    ys = [y(v) for v in values]
    path = f"M{xs[0]} {ys[0]}" + "".join(
        f"l{xs[i] - xs[i - 1]}{'' if ys[i] < ys[i - 1] else ' '}{ys[i] - ys[i - 1]}" for i in range(1, len(values))
    )
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{SPARK_W}" height="{SPARK_H}">']
    if baseline is not None:
        parts.append(f'<path d="M0 {y(baseline)}H{SPARK_W}" stroke="#999" stroke-dasharray="3"/>')
    if fill:
        parts.append(
            f'<path d="{path}V{y(baseline if baseline is not None else lo)}H0z" fill="{color}" fill-opacity=".3"/>'
        )
    parts.append(f'<path d="{path}" fill="none" stroke="{color}" stroke-width="1.5"/>')
    top_label, bottom_label, end_label = labels
    parts.append(
        f'<g font-size="10" font-family="sans-serif" fill="#888"><text y="9">{top_label}</text>'
        f'<text y="{SPARK_H - 1}">{bottom_label}</text>'
        f'<text x="{SPARK_W}" y="9" text-anchor="end">{end_label}</text></g></svg>'
    )
    return "".join(parts)


def sparkline_markdown(
    series: pd.Series, alt: str, *, kind: str, baseline: float | None = None, limit: int = INLINE_MARKDOWN_LIMIT
) -> str:
    """A small SVG chart of ``series`` as a Markdown image short enough for the Dagster UI to show
    on the asset page itself (under ``limit`` characters: fewer points until it fits).

    ``kind`` is ``equity`` (the line, the starting capital ``baseline`` dashed, max/min/last in
    money) or ``drawdown`` (a red area under 0, the deepest fall in %). The full-size PNG charts
    stay beside it for detail.
    """
    values = series.to_numpy(dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return f"*{alt}: no data yet*"
    if len(values) == 1:
        values = np.repeat(values, 2)
    points = min(len(values), 160)
    while True:
        picked = values[np.unique(np.linspace(0, len(values) - 1, points).round().astype(int))]
        if kind == "equity":
            first = baseline if baseline else picked[0]
            labels = (
                f"max {_fmt_money(values.max())}",
                f"min {_fmt_money(values.min())}",
                f"now {_fmt_money(values[-1])} ({values[-1] / first - 1:+.1%})",
            )
            svg = _spark_svg(picked, color="#1f77b4", baseline=baseline, labels=labels, fill=False)
        elif kind == "drawdown":
            labels = ("0%", f"worst {values.min():.1%}", f"now {values[-1]:.1%}")
            svg = _spark_svg(picked, color="#d62728", baseline=0.0, labels=labels, fill=True)
        else:
            raise ValueError(f"unknown sparkline kind {kind!r}; use 'equity' or 'drawdown'")
        text = f"![{alt}](data:image/svg+xml;base64,{base64.b64encode(svg.encode()).decode('ascii')})"
        if len(text) < limit or points <= 8:
            return text
        points = max(8, int(points * 0.8))


def drawdown_series(equity: pd.Series, initial_equity: float) -> pd.Series:
    """Fall from the running peak (starting capital included), as a negative fraction."""
    values = equity.to_numpy(dtype=np.float64)
    peaks = np.maximum.accumulate(np.maximum(values, initial_equity))
    return pd.Series(-(peaks - values) / peaks, index=equity.index)


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
    "drawdown_series",
    "equity_png",
    "instrument_table",
    "load_history",
    "markdown_table",
    "overall",
    "png_markdown",
    "sparkline_markdown",
    "write_daily",
]
