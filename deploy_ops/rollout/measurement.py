"""What a rollout stage measures: the slots' ``/metrics`` (request counts, latency histogram,
Prometheus' histogram quantile, the delta between two scrapes) and the Sharpe gate (backtest Sharpe
of live vs candidate predictions on the same bars).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import pandas as pd
from prometheus_client.parser import text_string_to_metric_families

from deploy_ops.rollout.reports import (
    GateReading,
)
from deploy_ops.trading.backtest import run_portfolio, signals_to_positions
from deploy_ops.trading.metrics import sharpe_ratio

MINUTES_PER_YEAR = 365 * 24 * 60


def parse_serving_metrics(text: str, endpoint: str = "/predict") -> dict[str, Any]:
    """Request counts by status and the latency histogram of one endpoint from ``/metrics``."""
    by_status: dict[str, float] = {}
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("endpoint") != endpoint:
                continue
            if sample.name == "autotrader_serving_requests_total":
                status = sample.labels.get("status", "?")
                by_status[status] = by_status.get(status, 0.0) + float(sample.value)
            elif sample.name == "autotrader_serving_request_duration_seconds_bucket":
                le = float(sample.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + float(sample.value)
    return {"by_status": by_status, "buckets": buckets}


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus' ``histogram_quantile`` on cumulative ``{le: count}`` buckets (seconds)."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return prev_bound  # the highest finite bound is the best answer there is
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


def server_delta(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> dict[str, Any]:
    """Requests, 5xx answers and p99 a slot served between two scrapes of its ``/metrics``."""
    if after is None:
        return {"available": False}
    before = before or {"by_status": {}, "buckets": {}}

    def diff(a: Mapping, b: Mapping) -> dict:
        out = {k: a.get(k, 0.0) - b.get(k, 0.0) for k in a}
        # A restarted process resets its counters: then everything after is new.
        return dict(a) if any(v < 0 for v in out.values()) else out

    statuses = diff(after["by_status"], before["by_status"])
    buckets = diff(after["buckets"], before["buckets"])
    requests_ = sum(statuses.values())
    errors = sum(v for k, v in statuses.items() if k.startswith("5"))
    p99 = histogram_quantile(0.99, buckets)
    return {
        "available": True,
        "requests": int(requests_),
        "errors_5xx": int(errors),
        "error_rate": errors / requests_ if requests_ else None,
        "p99_ms": p99 * 1000.0 if p99 is not None else None,
        "by_status": {k: int(v) for k, v in sorted(statuses.items()) if v},
    }


def periods_per_year(ts: pd.Series | pd.DatetimeIndex) -> int:
    """Bars per year implied by the median bar spacing (24/7 markets)."""
    # In nanoseconds whatever the input's unit: DuckDB hands timestamps over as datetime64[us],
    # whose integers read as nanoseconds made every bar 1000x shorter (and the Sharpe sqrt(1000)x).
    index = pd.DatetimeIndex(ts).as_unit("ns")
    if len(index) < 2:
        return MINUTES_PER_YEAR
    step = float(np.median(np.diff(index.asi8))) / 1e9
    if step <= 0:
        return MINUTES_PER_YEAR
    return max(1, int(round(365 * 24 * 3600 / step)))


def backtest_sharpe(
    probabilities: Mapping[str, np.ndarray], bars: Mapping[str, pd.DataFrame], *, fee_bps: float, slippage_bps: float
) -> tuple[float | None, dict[str, Any]]:
    """Annualised per-bar Sharpe of trading ``probabilities`` on ``bars`` through the backtest engine.

    Per-bar rather than daily returns: a rollout stage replays minutes or hours of bars, far
    too few days for a daily Sharpe."""
    targets = {i: signals_to_positions(np.asarray(p, dtype=np.float64)) for i, p in probabilities.items()}
    result = run_portfolio({i: bars[i] for i in targets}, targets, fee_bps=fee_bps, slippage_bps=slippage_bps)
    equity = result.equity
    previous = equity.shift(1)
    previous.iloc[0] = result.initial_equity
    returns = equity / previous - 1.0
    ppy = periods_per_year(equity.index)
    ratio = sharpe_ratio(returns, periods_per_year=ppy)
    detail = {
        "total_return": float(equity.iloc[-1] / result.initial_equity - 1.0),
        "n_bars": int(len(equity)),
        "n_fills": int(len(result.fills)),
        "periods_per_year": ppy,
        "reason": ratio.reason,
    }
    return ratio.value, detail


def bar_label(periods_per_year: int | None) -> str:
    """``1-minute`` for 525600 periods a year, ``5-minute``, ``30-second`` ...: the returns' frequency."""
    if not periods_per_year:
        return "bar"
    seconds = 365 * 24 * 3600 / int(periods_per_year)
    if seconds >= 60 and abs(seconds / 60 - round(seconds / 60)) < 1e-6:
        return f"{int(round(seconds / 60))}-minute"
    return f"{seconds:.0f}-second"


def sharpe_gate(
    live: float | None,
    candidate: float | None,
    max_drop: float,
    *,
    n_returns: int,
    min_returns: int,
    periods_per_year: int | None = None,
) -> GateReading:
    """Fail when the candidate's Sharpe is more than ``max_drop`` below the live one, or when the
    two series have fewer than ``min_returns`` bar returns (too few to compare: the stage fails
    with "insufficient data" rather than promote on noise; the rollout is the last gate before
    production, and a longer stage or more replay rows gives it the data).

    The floor is ``live - max_drop * |live|`` so the rule keeps its meaning when the live Sharpe
    is negative. A Sharpe of None (no trades or no dispersion: the model earned nothing) counts
    as 0 for the comparison; two Nones compare equal. Both are annualised per-bar Sharpes, so on
    1-minute bars they are large numbers (sqrt(525600) ~ 725 times the per-bar ratio); the detail
    says so, with the number of returns, so "28 vs 64" reads as what it is."""
    basis = f"annualised from {n_returns} {bar_label(periods_per_year)} returns each"
    if n_returns < min_returns:
        return GateReading(
            "sharpe",
            False,
            None,
            float(min_returns),
            f"insufficient data: {basis}, fewer than the {min_returns} a Sharpe needs to mean anything; "
            f"replay more rows (--traffic-rows) or lengthen the stage",
        )
    if live is None and candidate is None:
        return GateReading(
            "sharpe", True, None, None, f"neither model's returns vary over these bars (no trades); {basis}"
        )
    live_v = 0.0 if live is None else float(live)
    cand_v = 0.0 if candidate is None else float(candidate)
    floor = live_v - max_drop * abs(live_v)
    passed = cand_v >= floor
    if live_v == 0:
        relation = f"candidate {cand_v:.1f} vs live {live_v:.1f}: must not be below 0"
    else:
        change = (cand_v - live_v) / abs(live_v)
        relation = (
            f"candidate {cand_v:.1f} vs live {live_v:.1f}: "
            + (f"{-change:.0%} below live" if change < 0 else f"{change:.0%} above live")
            + (f", within the {max_drop:.0%} allowed" if passed else f", more than the {max_drop:.0%} allowed")
            + f" (floor {floor:.1f})"
        )
    return GateReading("sharpe", passed, cand_v, floor, f"{relation}; {basis}")
