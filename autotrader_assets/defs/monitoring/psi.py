"""Population stability index: the one PSI convention of the platform. No Dagster here.

The convention (the same in ``feature_drift``, the drift sensor's decision, the tests and the
benchmark):

* **Bins**: the decile edges fitted on the reference sample (its non-NaN values at the quantile
  levels 0, 0.1, ..., 1, numpy's default linear interpolation), as stored in the model bundle's
  ``feature_reference``. The outer edges are dropped, so the first and last bins are **open**:
  ``(-inf, e1)`` and ``[e9, +inf)``; a current value beyond the reference's range lands in an
  outer bin instead of being lost. Interior edges that coincide (ties in the reference) are
  merged, so a reference with few distinct values gets fewer, wider bins.
* Bins are closed on the left, ``[e_i, e_i+1)``, like ``numpy.histogram``.
* **NaN** values are excluded from both samples and counted; proportions are over the rest.
* **Empty bins**: a proportion below ``1e-4`` is floored at ``1e-4`` (no renormalisation), so an
  empty bin adds a large but finite term instead of an infinite one.
* **PSI** = sum over bins of ``(a - e) * ln(a / e)``, natural log, ``a`` the current proportion and
  ``e`` the reference proportion.

The reference proportions are the ones stored beside the edges (``proportions``, counted with
this convention on the training rows). Bundles written before they were stored carry edges only:
their proportions are read off the quantile levels (a bin between cut points first reached at
levels ``i/10`` and ``j/10`` holds ``(j - i)/10``), which is exact for a continuous feature.

A constant reference feature (first edge == last edge) is not a division by zero: it has two bins
around its value, and the finding says the PSI only measures how much of the current day moved
off that value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

#: Decile bins.
N_BINS = 10
#: Floor of a bin proportion (empty bins), see the module docstring.
FLOOR = 1e-4
#: Stored beside every reference so a reader knows how its numbers were made.
CONVENTION = (
    "decile edges fitted on the reference (non-NaN values), open outer bins, bins closed on the left, "
    "interior ties merged, NaN excluded and counted, proportions floored at 1e-4, "
    "PSI = sum((a - e) * ln(a / e)), natural log"
)


class DriftInputError(ValueError):
    """A reference or a sample that PSI cannot be computed from (named in the message)."""


def quantile_edges(values: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """The ``n_bins + 1`` quantile edges of the non-NaN ``values`` (levels 0, 1/n, ..., 1)."""
    if n_bins < 2:
        raise DriftInputError(f"PSI needs at least 2 bins, got {n_bins}")
    x = np.asarray(values, dtype=np.float64)
    x = x[~np.isnan(x)]
    if x.size == 0:
        raise DriftInputError("no non-NaN reference values to fit bin edges on")
    return np.quantile(x, np.linspace(0.0, 1.0, n_bins + 1))


def _check_edges(edges: Sequence[float]) -> np.ndarray:
    e = np.asarray(edges, dtype=np.float64)
    if e.ndim != 1 or e.size < 3:
        raise DriftInputError(f"bin edges need at least 3 values (2 bins), got {list(np.atleast_1d(e))[:5]}")
    if not np.isfinite(e).all():
        raise DriftInputError(f"bin edges must be finite, got {e.tolist()}")
    if np.any(np.diff(e) < 0):
        raise DriftInputError(f"bin edges must be non-decreasing, got {e.tolist()}")
    return e


def bin_cuts(edges: Sequence[float]) -> np.ndarray:
    """The cut points of the convention: interior edges, ties merged (outer bins are open)."""
    e = _check_edges(edges)
    if e[0] == e[-1]:
        # Constant reference: one cut at its value, so "at or above it" and "below it" are the bins.
        return e[:1].copy()
    return np.unique(e[1:-1])


def bin_counts(values: np.ndarray, cuts: np.ndarray) -> tuple[np.ndarray, int]:
    """Counts per bin of ``[cut_i, cut_i+1)`` with open ends, and the number of NaN values.

    One vectorised comparison per cut point (``count(x < cut)``), then differences: for ten
    bins this is several times faster than sorting or a binary search per value."""
    x = np.asarray(values, dtype=np.float64)
    n_nan = int(np.count_nonzero(np.isnan(x)))
    n_valid = x.size - n_nan
    # NaN compares False with everything, so it is in no "below the cut" count.
    below = np.fromiter((np.count_nonzero(x < c) for c in cuts), dtype=np.int64, count=len(cuts))
    counts = np.diff(np.concatenate(([0], below, [n_valid])))
    return counts, n_nan


def floored_proportions(counts: np.ndarray) -> np.ndarray:
    """Counts as proportions of their total, each floored at :data:`FLOOR`."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        raise DriftInputError("no non-NaN values: proportions are undefined")
    return np.maximum(counts / total, FLOOR)


def psi_value(expected: np.ndarray, actual: np.ndarray) -> float:
    """sum((a - e) * ln(a / e)) of two proportion vectors already floored."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape:
        raise DriftInputError(f"reference has {e.size} bins, current {a.size}")
    return float(np.sum((a - e) * np.log(a / e)))


def level_proportions(edges: Sequence[float]) -> np.ndarray:
    """Reference proportions of a bundle that stored edges only, read off the quantile levels.

    A cut point first reached at edge index ``i`` of ``n`` has about ``i/n`` of the reference
    below it; the bins hold the differences (exact for a continuous reference)."""
    e = _check_edges(edges)
    n = e.size - 1
    cuts = bin_cuts(e)
    below = np.array([np.argmax(e == c) / n for c in cuts])
    return np.diff(np.concatenate(([0.0], below, [1.0])))


def fit_reference(columns: Mapping[str, np.ndarray], n_bins: int = N_BINS) -> dict[str, Any]:
    """The ``feature_reference`` a model bundle stores: per feature its quantile edges and the
    training rows' proportions in the convention's bins, plus the NaN counts."""
    edges: dict[str, list[float]] = {}
    proportions: dict[str, list[float]] = {}
    nan_rows: dict[str, int] = {}
    n_rows = None
    for name, values in columns.items():
        x = np.asarray(values, dtype=np.float64)
        n_rows = x.size if n_rows is None else n_rows
        e = quantile_edges(x, n_bins)
        counts, n_nan = bin_counts(x, bin_cuts(e))
        edges[name] = [float(v) for v in e]
        proportions[name] = [float(v) for v in counts / counts.sum()]
        nan_rows[name] = n_nan
    if n_rows is None:
        raise DriftInputError("no feature columns to describe")
    return {
        "n_rows": int(n_rows),
        "n_bins": int(n_bins),
        "quantile_edges": edges,
        "proportions": proportions,
        "nan_rows": nan_rows,
        "convention": CONVENTION,
    }


@dataclass(frozen=True)
class FeaturePSI:
    """One feature's PSI against its reference, with the bins it was computed on."""

    feature: str
    psi: float | None
    n_current: int
    n_nan: int
    cuts: list[float]
    expected: list[float]
    actual: list[float]
    constant_reference: bool = False
    note: str = ""

    def level(self, warn: float, critical: float) -> str:
        """``critical`` above ``critical``, ``warning`` above ``warn``, else ``ok`` (``none``: no PSI)."""
        if self.psi is None:
            return "none"
        if self.psi > critical:
            return "critical"
        if self.psi > warn:
            return "warning"
        return "ok"

    def row(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "psi": self.psi,
            "n_current": self.n_current,
            "n_nan": self.n_nan,
            "constant_reference": self.constant_reference,
            "note": self.note,
        }


def feature_psi(
    feature: str, edges: Sequence[float], current: np.ndarray, reference_proportions: Sequence[float] | None = None
) -> FeaturePSI:
    """PSI of ``current`` against a stored reference (edges, and proportions when the bundle has them)."""
    e = _check_edges(edges)
    cuts = bin_cuts(e)
    if reference_proportions is not None:
        expected_raw = np.asarray(reference_proportions, dtype=np.float64)
        if expected_raw.size != cuts.size + 1:
            raise DriftInputError(f"{feature}: reference has {expected_raw.size} proportions for {cuts.size + 1} bins")
    else:
        expected_raw = level_proportions(e)
    expected = np.maximum(expected_raw, FLOOR)
    counts, n_nan = bin_counts(current, cuts)
    constant = bool(e[0] == e[-1])
    note = ""
    if constant:
        note = (
            f"reference is constant ({e[0]:g}): the model learned nothing from it; the PSI only "
            f"measures the share of values that moved off {e[0]:g}"
        )
    n_valid = int(counts.sum())
    if n_valid == 0:
        return FeaturePSI(
            feature,
            None,
            0,
            n_nan,
            cuts.tolist(),
            expected.tolist(),
            [],
            constant,
            (note + "; " if note else "") + f"every current value is NaN ({n_nan} rows)",
        )
    actual = floored_proportions(counts)
    return FeaturePSI(
        feature,
        psi_value(expected, actual),
        n_valid,
        n_nan,
        cuts.tolist(),
        expected.tolist(),
        actual.tolist(),
        constant,
        note,
    )


def psi(reference: np.ndarray, current: np.ndarray, n_bins: int = N_BINS) -> float:
    """PSI of two raw samples under the convention (edges and proportions fitted on ``reference``)."""
    ref = np.asarray(reference, dtype=np.float64)
    e = quantile_edges(ref, n_bins)
    counts, _ = bin_counts(ref, bin_cuts(e))
    result = feature_psi("value", e, current, counts / counts.sum())
    if result.psi is None:
        raise DriftInputError(result.note)
    return result.psi


@dataclass
class DriftResult:
    """Every feature of one model version against its reference, on one day's rows."""

    version: str
    features: list[FeaturePSI]
    missing_reference: list[str] = field(default_factory=list)

    def worst(self) -> FeaturePSI | None:
        scored = [f for f in self.features if f.psi is not None]
        return max(scored, key=lambda f: f.psi) if scored else None

    def max_psi(self) -> float | None:
        worst = self.worst()
        return worst.psi if worst is not None else None


def drift_against(
    reference: Mapping[str, Any], current: Mapping[str, np.ndarray], features: Iterable[str], version: str = ""
) -> DriftResult:
    """PSI of every feature in ``features`` between a bundle's ``feature_reference`` and the
    current columns. A feature the reference does not describe is listed, not guessed."""
    edges = reference.get("quantile_edges") or {}
    proportions = reference.get("proportions") or {}
    out: list[FeaturePSI] = []
    missing: list[str] = []
    for name in features:
        if name not in edges:
            missing.append(name)
            continue
        if name not in current:
            raise DriftInputError(f"feature column {name!r} is missing from the current rows")
        out.append(feature_psi(name, edges[name], current[name], proportions.get(name)))
    return DriftResult(version=version, features=out, missing_reference=missing)


__all__ = [
    "CONVENTION",
    "DriftInputError",
    "DriftResult",
    "FLOOR",
    "FeaturePSI",
    "N_BINS",
    "bin_counts",
    "bin_cuts",
    "drift_against",
    "feature_psi",
    "fit_reference",
    "floored_proportions",
    "level_proportions",
    "psi",
    "psi_value",
    "quantile_edges",
]
