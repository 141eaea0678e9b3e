"""Benchmark: deploy_ops.trading.backtest vs vectorbt's Portfolio.from_signals on the same signals.

    .venv/bin/python benchmarks/backtest.py [--bars N] [--repeats R] [--seed S]

Both engines get the same seeded 1-minute random walk and the same random probabilities turned
into long/flat signals, the same fee and slippage, and fill at the next bar's open (vectorbt is
handed signals shifted by one bar and ``price=open``). Each is run once untimed first (vectorbt
compiles with numba on its first call), then timed as the best of ``--repeats`` runs of the
whole path: probabilities -> signals -> fills -> per-bar equity. Peak memory is measured in a
separate, untimed run with tracemalloc, because tracing slows allocation down.

Long/flat with a full-equity target is the case where both engines size identically (all cash
in, net of slippage and fee), so the script also prints how far apart their equity curves end.
vectorbt is only needed here: ``.venv/bin/pip install vectorbt "plotly<6" "pandas==2.3.3"``
(vectorbt 1.0 fails to import with plotly 6+, and unpinned it would pull pandas 3, which the
project cannot use). Without it the script says so and reports our engine alone.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import tracemalloc

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from deploy_ops.trading.backtest import run_backtest, signals_to_positions

FEE_BPS = 10.0
SLIPPAGE_BPS = 5.0
INITIAL_EQUITY = 100_000.0
LONG_THRESHOLD = 0.55
SHORT_THRESHOLD = 0.45


def make_data(n_bars: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """A 1-minute random walk (open = previous close) and uniform random P(up) per bar."""
    rng = np.random.default_rng(seed)
    log_ret = rng.normal(0.0, 1e-3, n_bars)
    close = 100.0 * np.exp(np.cumsum(log_ret))
    open_ = np.empty(n_bars)
    open_[0] = 100.0
    open_[1:] = close[:-1]
    bars = pd.DataFrame(
        {
            "ts": pd.date_range("2024-01-01", periods=n_bars, freq="1min", tz="UTC"),
            "open": open_,
            "high": np.maximum(open_, close),
            "low": np.minimum(open_, close),
            "close": close,
        }
    )
    return bars, rng.uniform(size=n_bars)


def ours(bars: pd.DataFrame, proba: np.ndarray) -> pd.Series:
    """Our whole path; returns per-bar equity."""
    target = signals_to_positions(proba, LONG_THRESHOLD, SHORT_THRESHOLD, allow_short=False)
    result = run_backtest(bars, target, fee_bps=FEE_BPS, slippage_bps=SLIPPAGE_BPS, initial_equity=INITIAL_EQUITY)
    return result.equity


def vectorbt_run(vbt, close: pd.Series, open_: np.ndarray, proba: np.ndarray) -> pd.Series:
    """vectorbt's whole path on the same decisions; returns per-bar equity."""
    long_now = proba > LONG_THRESHOLD
    # Decision on bar i executes at bar i + 1's open: shift the signals by one bar.
    wants = np.zeros(len(proba), dtype=bool)
    wants[1:] = long_now[:-1]
    prev = np.zeros(len(proba), dtype=bool)
    prev[1:] = wants[:-1]
    entries = wants & ~prev
    exits = ~wants & prev
    pf = vbt.Portfolio.from_signals(
        close,
        entries,
        exits,
        price=open_,
        fees=FEE_BPS * 1e-4,
        slippage=SLIPPAGE_BPS * 1e-4,
        init_cash=INITIAL_EQUITY,
        freq="1min",
    )
    return pf.value()


def best_times(fns, repeats: int) -> list[float]:
    """Best wall time of each function over ``repeats`` rounds.

    The functions take turns within each round, so background load on a shared machine hits
    both engines alike, and the minimum is the run least disturbed by it.
    """
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            gc.collect()
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def peak_memory(fn) -> int:
    """Peak bytes allocated (numpy buffers included) during one call."""
    gc.collect()
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print bars/s, the speed ratio and peak memory."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bars", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if args.bars < 2 or args.repeats < 1:
        parser.error("--bars must be >= 2 and --repeats >= 1")

    bars, proba = make_data(args.bars, args.seed)
    print(
        f"bars: {args.bars:,}  seed: {args.seed}  fee: {FEE_BPS} bps  slippage: {SLIPPAGE_BPS} bps  "
        f"signals: long if P(up) > {LONG_THRESHOLD}, else flat"
    )

    run_ours = lambda: ours(bars, proba)  # noqa: E731
    run_ours()  # warm-up: first-call imports and page faults
    n_fills = int((np.diff(np.r_[0.0, signals_to_positions(proba, allow_short=False)[:-1]]) != 0).sum())

    try:
        import vectorbt as vbt
    except Exception as exc:  # vectorbt is an optional benchmark-only dependency
        (t_ours,) = best_times([run_ours], args.repeats)
        report("ours", args.bars, t_ours, args.repeats, peak_memory(run_ours), f"~{n_fills:,} fills")
        print(
            f"vectorbt : not importable ({type(exc).__name__}: {exc}); install it with "
            '`.venv/bin/pip install vectorbt "plotly<6" "pandas==2.3.3"` to get the ratio'
        )
        return 0

    # vectorbt is given a tz-naive index: with a tz-aware one it spends seconds converting the
    # index to Python objects on every wrap, which would not be a fair comparison.
    close = pd.Series(bars["close"].to_numpy(), index=pd.DatetimeIndex(bars["ts"]).tz_localize(None))
    open_ = bars["open"].to_numpy()
    run_vbt = lambda: vectorbt_run(vbt, close, open_, proba)  # noqa: E731
    run_vbt()  # warm-up: numba JIT compilation
    t_ours, t_vbt = best_times([run_ours, run_vbt], args.repeats)
    report("ours", args.bars, t_ours, args.repeats, peak_memory(run_ours), f"~{n_fills:,} fills")
    report("vectorbt", args.bars, t_vbt, args.repeats, peak_memory(run_vbt), f"vectorbt {vbt.__version__}")
    ratio = t_vbt / t_ours
    print(f"ratio ours/vectorbt (throughput): {ratio:.2f}x  ({'faster' if ratio >= 1 else 'SLOWER'})")
    a, b = run_ours().to_numpy(), run_vbt().to_numpy()
    # vectorbt stops trading once the balance is dust (random signals pay fees on ~half the bars
    # and grind equity towards zero), so the curves are compared while it still trades.
    live = np.flatnonzero(b < 1.0)
    upto = int(live[0]) if len(live) else len(b)
    rel = np.abs(a[:upto] - b[:upto]) / b[:upto]
    print(
        f"equity agreement: max relative difference {rel.max():.2e} over the first {upto:,} bars "
        f"(while vectorbt's equity >= 1; ours ends at {a[-1]:.3g}, vectorbt at {b[-1]:.3g})"
    )
    return 0


def report(name: str, n_bars: int, seconds: float, repeats: int, peak: int, note: str) -> None:
    """One aligned result line."""
    print(
        f"{name:<9}: {n_bars / seconds:>14,.0f} bars/s  ({seconds * 1e3:8.1f} ms, best of {repeats})  "
        f"peak memory {peak / 2**20:7.1f} MiB  ({note})"
    )


if __name__ == "__main__":
    sys.exit(main())
