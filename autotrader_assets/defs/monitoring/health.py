"""The platform's health check for one date: every finding with its severity and runbook. No Dagster.

Five sources, each a pure function of plain frames so it is tested without a run:

* drift: the date's ``feature_drift`` rows (PSI above ``psi_warn`` / ``psi_critical``);
* data quality: the date's published ``market_bars`` judged by the same rules as the
  ``market_bars_completeness`` and ``market_bars_outliers`` checks (``validation.py``), recomputed
  here because a range run records those checks once for the whole range, not per date;
* model confidence: mean of max(p, 1 - p) over rolling 2-hour windows of the paper account's
  predictions (all instruments pooled per bar), warning below ``min_confidence`` (0.6);
* win rate: closed paper trades over rolling 4-hour windows (by exit time), warning below
  ``min_win_rate`` (50%) in a window with at least :data:`MIN_TRADES_PER_WINDOW` trades;
* serving: error rate and p99 of every ready slot's ``/metrics`` (counters since the slot
  started, read when the check runs): critical above ``max_error_rate``, warning above
  ``max_p99_latency_ms``.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import duckdb
import pandas as pd

from deploy_ops.events import RUNBOOKS
from deploy_ops.rollout.measurement import parse_serving_metrics, server_delta
from deploy_ops.serving.client import ServingClient, ServingError
from deploy_ops.state import DeploymentStateStore

CONFIDENCE_WINDOW = pd.Timedelta(hours=2)
WIN_RATE_WINDOW = pd.Timedelta(hours=4)
#: A window's win rate means little on a handful of trades: 3 losses in a row are 0%.
MIN_TRADES_PER_WINDOW = 10
SEVERITY_ORDER = {"ok": 0, "info": 1, "warning": 2, "critical": 3}
HEALTH_TABLE = "model_health"
HEALTH_DDL = f"""
create table if not exists {HEALTH_TABLE} (
    date date not null,
    "check" varchar not null,
    severity varchar not null,
    summary varchar not null,
    details varchar not null,
    runbook varchar not null,
    run_id varchar,
    computed_at timestamp not null
)"""

RUNBOOK = {
    "drift": RUNBOOKS["feature_drift_critical"],
    "data_quality": "docs/runbooks/data-restore.md#1-validate",
    "confidence": RUNBOOKS["model_health_finding"],
    "win_rate": RUNBOOKS["model_health_finding"],
    "serving": "docs/runbooks/serving-slots.md#1-status",
}


@dataclass(frozen=True)
class Finding:
    """One thing the health check found: which check, how bad, what, the numbers, what to do."""

    check: str
    severity: str
    summary: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def runbook(self) -> str:
        return RUNBOOK[self.check]

    def row(self) -> dict[str, Any]:
        return {"check": self.check, "severity": self.severity, "summary": self.summary, "runbook": self.runbook}


def worst_severity(findings: Sequence[Finding]) -> str:
    return max((f.severity for f in findings), key=SEVERITY_ORDER.__getitem__, default="ok")


# -- drift -------------------------------------------------------------------------------------
def drift_findings(drift: pd.DataFrame, warn: float, critical: float, problem: str | None = None) -> list[Finding]:
    """Findings from the date's ``feature_drift`` rows (``problem``: why there are none)."""
    if problem:
        return [Finding("drift", "warning", problem)]
    scored = drift.dropna(subset=["psi"])
    if scored.empty:
        return [Finding("drift", "warning", "feature drift was not computed for this date: materialize feature_drift")]
    out = []
    for level, bound in (("critical", critical), ("warning", warn)):
        hit = scored[scored["psi"] > bound]
        if level == "warning":
            hit = hit[hit["psi"] <= critical]
        if len(hit):
            listed = ", ".join(f"{r.feature} {r.psi:.3f}" for r in hit.head(5).itertuples())
            out.append(
                Finding(
                    "drift",
                    level,
                    f"{len(hit)} feature(s) with PSI above {bound:g}: {listed}",
                    {
                        "features": {r.feature: round(float(r.psi), 6) for r in hit.itertuples()},
                        "model_versions": sorted(set(hit["model_version"].astype(str))),
                    },
                )
            )
    return out


# -- data quality ------------------------------------------------------------------------------
def data_quality_findings(
    bars: pd.DataFrame, parts: list[tuple[str, str]], max_missing: float, z_bound: float, calendar: Callable[[str], str]
) -> list[Finding]:
    """Missing bars above ``max_missing`` and bad prints, by the market_bars checks' rules."""
    from autotrader_assets.defs.market_data.validation import missing_fractions, return_outliers_many

    out = []
    fractions = missing_fractions(bars, parts, calendar=calendar)
    over = {k: v for k, v in fractions.items() if v > max_missing}
    if over:
        out.append(
            Finding(
                "data_quality",
                "warning",
                f"{len(over)} partition(s) miss more than {max_missing:.0%} of their bars: "
                + ", ".join(f"{k} {v:.1%}" for k, v in sorted(over.items())),
                {"missing_fraction": over, "limit": max_missing},
            )
        )
    outliers = return_outliers_many(bars, z_bound) if len(bars) else bars
    if len(outliers):
        by = outliers.groupby("instrument").size().to_dict()
        out.append(
            Finding(
                "data_quality",
                "warning",
                f"{len(outliers)} outlier bar(s) (robust z > {z_bound:g}): "
                + ", ".join(f"{k} {v}" for k, v in sorted(by.items())),
                {"outliers_by_instrument": {k: int(v) for k, v in by.items()}, "robust_z_bound": z_bound},
            )
        )
    return out


# -- model confidence --------------------------------------------------------------------------
def rolling_confidence(positions: pd.DataFrame, window: pd.Timedelta = CONFIDENCE_WINDOW) -> pd.Series:
    """Mean of max(p, 1-p) over trailing ``window``s, indexed by window end; only full windows."""
    scored = positions.dropna(subset=["proba"])
    if scored.empty:
        return pd.Series(dtype=float)
    conf = 0.5 + (scored["proba"].astype(float) - 0.5).abs()
    per_bar = conf.groupby(pd.DatetimeIndex(scored["ts"])).agg(["sum", "count"]).sort_index()
    sums = per_bar["sum"].rolling(window).sum()
    counts = per_bar["count"].rolling(window).sum()
    full = per_bar.index >= per_bar.index[0] + window - pd.Timedelta(minutes=1)
    return (sums / counts)[full]


def confidence_findings(positions: pd.DataFrame, min_confidence: float) -> list[Finding]:
    means = rolling_confidence(positions)
    if means.empty:
        return [Finding("confidence", "info", "fewer than 2 hours of predictions: model confidence not judged")]
    below = means[means < min_confidence]
    if below.empty:
        return []
    low_at = below.idxmin()
    return [
        Finding(
            "confidence",
            "warning",
            f"model confidence below {min_confidence:g}: lowest 2-hour mean of max(p, 1-p) {below.min():.3f} "
            f"(window ending {low_at:%H:%M}), {len(below) / len(means):.0%} of windows below",
            {
                "lowest": round(float(below.min()), 6),
                "lowest_window_end": str(low_at),
                "windows_below": int(len(below)),
                "windows": int(len(means)),
                "threshold": min_confidence,
            },
        )
    ]


# -- win rate ----------------------------------------------------------------------------------
def rolling_win_rate(
    trades: pd.DataFrame, window: pd.Timedelta = WIN_RATE_WINDOW, min_trades: int = MIN_TRADES_PER_WINDOW
) -> pd.DataFrame:
    """Win rate of the trades closed in each trailing ``window`` (at each exit), where the window
    is full and holds at least ``min_trades`` trades: columns win_rate, trades."""
    if trades.empty:
        return pd.DataFrame(columns=["win_rate", "trades"])
    t = trades.assign(win=(trades["pnl"] > 0).astype(float)).set_index(pd.DatetimeIndex(trades["exit_ts"])).sort_index()
    wins = t["win"].rolling(window).sum()
    n = t["win"].rolling(window).count()
    frame = pd.DataFrame({"win_rate": wins / n, "trades": n})
    full = frame.index >= frame.index[0] + window
    return frame[full & (frame["trades"] >= min_trades)]


def win_rate_findings(trades: pd.DataFrame, min_win_rate: float) -> list[Finding]:
    windows = rolling_win_rate(trades)
    if windows.empty:
        return [
            Finding(
                "win_rate",
                "info",
                f"no full 4-hour window with {MIN_TRADES_PER_WINDOW}+ closed trades: win rate not judged",
                {"closed_trades": int(len(trades))},
            )
        ]
    below = windows[windows["win_rate"] < min_win_rate]
    if below.empty:
        return []
    # Positional: several trades often close on the same bar, so exit times repeat in the index.
    at = int(below["win_rate"].to_numpy().argmin())
    low, worst = below.index[at], below.iloc[at]
    return [
        Finding(
            "win_rate",
            "warning",
            f"win rate below {min_win_rate:.0%}: lowest 4-hour window {worst['win_rate']:.0%} "
            f"of {int(worst['trades'])} trades (ending {low:%H:%M})",
            {
                "lowest": round(float(worst["win_rate"]), 6),
                "lowest_window_end": str(low),
                "windows_below": int(len(below)),
                "windows": int(len(windows)),
                "threshold": min_win_rate,
            },
        )
    ]


# -- serving -----------------------------------------------------------------------------------
def scrape_slots(state: DeploymentStateStore, token: str | None = None) -> list[dict[str, Any]]:
    """Every ready slot's cumulative counters from its ``/metrics`` (or the error reading them)."""
    out = []
    for name, slot in state.slots().items():
        if not slot.is_ready or not slot.url:
            continue
        entry: dict[str, Any] = {"slot": name, "version": slot.version, "url": slot.url}
        try:
            with ServingClient(slot.url, token=token, read_timeout=2.0) as client:
                entry.update(server_delta(None, parse_serving_metrics(client.metrics_text())))
        except ServingError as exc:
            entry["error"] = str(exc)[:300]
        out.append(entry)
    return out


def serving_findings(scrapes: list[dict[str, Any]], max_error_rate: float, max_p99_ms: float) -> list[Finding]:
    out = []
    for s in scrapes:
        where = f"slot {s['slot']} (version {s['version']})"
        if "error" in s:
            out.append(
                Finding(
                    "serving",
                    "critical",
                    f"{where} is recorded ready but /metrics is unreachable: {s['error']}",
                    {"slot": s["slot"], "url": s["url"]},
                )
            )
            continue
        numbers = {k: s.get(k) for k in ("slot", "version", "requests", "errors_5xx", "error_rate", "p99_ms")}
        if s.get("error_rate") is not None and s["error_rate"] > max_error_rate:
            out.append(
                Finding(
                    "serving",
                    "critical",
                    f"{where}: {s['error_rate']:.2%} of {s['requests']} /predict requests failed (> {max_error_rate:.0%})",
                    numbers,
                )
            )
        if s.get("p99_ms") is not None and s["p99_ms"] > max_p99_ms:
            out.append(
                Finding("serving", "warning", f"{where}: p99 latency {s['p99_ms']:.0f} ms > {max_p99_ms:g} ms", numbers)
            )
    return out


# -- the table ---------------------------------------------------------------------------------
def read_paper_day(con: duckdb.DuckDBPyConnection, date: dt.date) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The date's predictions (instrument, ts, proba) and closed trades (exit_ts, pnl)."""
    tables = {r[0] for r in con.execute("select table_name from information_schema.tables").fetchall()}
    positions = pd.DataFrame(columns=["instrument", "ts", "proba"])
    trades = pd.DataFrame(columns=["exit_ts", "pnl"])
    if "paper_positions" in tables:
        positions = con.execute("select instrument, ts, proba from paper_positions where date = ?", [date]).df()
    if "paper_trades" in tables:
        trades = con.execute("select exit_ts, pnl from paper_trades where date = ?", [date]).df()
    return positions, trades


def read_day_bars(con: duckdb.DuckDBPyConnection, date: dt.date, instruments: Sequence[str]) -> pd.DataFrame:
    tables = {r[0] for r in con.execute("select table_name from information_schema.tables").fetchall()}
    if "market_bars" not in tables:
        return pd.DataFrame(columns=["ts", "date", "instrument", "open", "high", "low", "close", "volume"])
    frame = con.execute(
        "select ts, cast(date as varchar) as date, instrument, open, high, low, close, volume from market_bars "
        "where date = ? and instrument in (select unnest(?)) order by instrument, ts",
        [date, list(instruments)],
    ).df()
    frame["ts"] = pd.to_datetime(frame["ts"]).dt.tz_localize("UTC")
    return frame


def write_findings(
    con: duckdb.DuckDBPyConnection, date: dt.date, findings: Sequence[Finding], run_id: str | None = None
) -> set[tuple[str, str]]:
    """Replace the date's findings in one transaction; returns the (check, severity) pairs the
    date had before, so the caller raises events only for what is new."""
    con.execute(HEALTH_DDL)
    before = {
        (c, s)
        for c, s in con.execute(f'select "check", severity from {HEALTH_TABLE} where date = ?', [date]).fetchall()
    }
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    con.execute("begin transaction")
    try:
        con.execute(f"delete from {HEALTH_TABLE} where date = ?", [date])
        for f in findings:
            con.execute(
                f"insert into {HEALTH_TABLE} values (?, ?, ?, ?, ?, ?, ?, ?)",
                [date, f.check, f.severity, f.summary, json.dumps(f.details, default=str), f.runbook, run_id, now],
            )
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        raise
    return before


def read_findings(con: duckdb.DuckDBPyConnection, dates: Sequence[str] | None = None) -> pd.DataFrame:
    """Stored findings, by date then severity (``make run`` prints them)."""
    tables = {r[0] for r in con.execute("select table_name from information_schema.tables").fetchall()}
    if HEALTH_TABLE not in tables:
        return pd.DataFrame(columns=["date", "check", "severity", "summary", "runbook"])
    frame = con.execute(
        f'select cast(date as varchar) as date, "check", severity, summary, runbook from {HEALTH_TABLE} order by date'
    ).df()
    if dates is not None:
        frame = frame[frame["date"].isin(list(dates))]
    order = frame["severity"].map(SEVERITY_ORDER).fillna(0)
    return frame.assign(_o=-order).sort_values(["date", "_o"], kind="stable").drop(columns="_o").reset_index(drop=True)
