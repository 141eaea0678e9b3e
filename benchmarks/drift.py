"""Benchmark: the platform's PSI (``defs/monitoring/psi.py``) vs a plain numpy histogram of the same bins.

    .venv/bin/python benchmarks/drift.py [--features 50] [--rows 1000000] [--repeats 3] [--seed 0]

A reference of 100k rows per feature is fitted once, untimed (that is what a model bundle stores:
decile edges and proportions). The timed part is what ``feature_drift`` does on a day's rows:
bin ``--features`` columns of ``--rows`` values each (1% NaN) and compute every PSI. The
baseline bins the same columns with ``numpy.histogram`` over the same bins (``[-inf, interior
edges, +inf]``) and applies the same floored PSI formula; both must give the same values. The
process is pinned to one core; each side is timed as the best of ``--repeats``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from autotrader_assets.defs.monitoring import psi as P  # noqa: E402


def make_columns(n_features: int, n_rows: int, seed: int) -> tuple[dict, dict]:
    """Reference (100k rows) and current (``n_rows``) columns; the current ones drift a little."""
    rng = np.random.default_rng(seed)
    reference, current = {}, {}
    for i in range(n_features):
        scale = 1.0 + 0.01 * i
        reference[f"f{i:02d}"] = rng.standard_t(5, size=100_000) * scale
        x = rng.standard_t(5, size=n_rows) * scale * (1.0 + 0.002 * i) + 0.001 * i
        x[rng.integers(0, n_rows, size=n_rows // 100)] = np.nan
        current[f"f{i:02d}"] = x
    return reference, current


def ours(reference: dict, current: dict) -> dict[str, float]:
    result = P.drift_against(reference, current, list(current))
    return {f.feature: f.psi for f in result.features}


def numpy_histogram(reference: dict, current: dict) -> dict[str, float]:
    out = {}
    for name, x in current.items():
        edges = np.asarray(reference["quantile_edges"][name])
        bins = np.concatenate(([-np.inf], np.unique(edges[1:-1]), [np.inf]))
        counts = np.histogram(x[~np.isnan(x)], bins)[0]
        actual = np.maximum(counts / counts.sum(), P.FLOOR)
        expected = np.maximum(np.asarray(reference["proportions"][name]), P.FLOOR)
        out[name] = float(np.sum((actual - expected) * np.log(actual / expected)))
    return out


def best_of(fn, repeats: int, *args) -> tuple[float, dict]:
    best, value = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    ref_cols, current = make_columns(args.features, args.rows, args.seed)
    reference = P.fit_reference(ref_cols)
    ours(reference, current)  # warm-up: page in the arrays
    t_ours, v_ours = best_of(ours, args.repeats, reference, current)
    t_np, v_np = best_of(numpy_histogram, args.repeats, reference, current)
    worst = max(abs(v_ours[k] - v_np[k]) for k in v_ours)
    if worst > 1e-9:
        print(f"MISMATCH: PSI differs from the numpy baseline by {worst:.3g}")
        return 1
    print(f"PSI of {args.features} features x {args.rows:,} rows (1% NaN), one core, best of {args.repeats}:")
    print(f"  autotrader psi.drift_against   {t_ours:7.3f} s")
    print(f"  numpy.histogram, same bins     {t_np:7.3f} s")
    print(f"  ratio ours / numpy             {t_ours / t_np:7.3f}x  (aim <= 1.5x and < 1 s)")
    print(f"  max |PSI difference|           {worst:.1e};  max PSI {max(v_ours.values()):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
