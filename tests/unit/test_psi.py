"""The pinned PSI convention (``defs/monitoring/psi.py``), against computations written out here."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from autotrader_assets.defs.monitoring import psi as P
from tests.support.pipeline import shared_file


def independent_psi(reference: np.ndarray, current: np.ndarray) -> float:
    """The convention by a different road: numpy.histogram over [-inf, interior deciles, +inf]."""
    ref = reference[~np.isnan(reference)]
    cur = current[~np.isnan(current)]
    edges = np.quantile(ref, np.linspace(0, 1, 11))
    bins = np.concatenate(([-np.inf], np.unique(edges[1:-1]), [np.inf]))
    e = np.histogram(ref, bins)[0] / ref.size
    a = np.histogram(cur, bins)[0] / cur.size
    e, a = np.maximum(e, 1e-4), np.maximum(a, 1e-4)
    return float(sum((ai - ei) * math.log(ai / ei) for ai, ei in zip(a, e)))


def test_identical_samples_give_zero():
    x = np.random.default_rng(1).normal(size=5000)
    assert P.psi(x, x) == 0.0
    # A fresh draw from the same distribution stays far below the 0.2 warning.
    assert P.psi(x, np.random.default_rng(2).normal(size=5000)) < 0.02


def test_a_known_shift_matches_the_hand_computation():
    # Reference 0..999: deciles at 99.9, 199.8, ..., 899.1, 100 values in each bin. Shifted by
    # 150 the current sample 150..1149 has 0 values below 99.9 (floored to 1e-4), 50 in
    # [99.9, 199.8), 100 in each of the next seven bins and 250 from 899.1 upwards.
    reference = np.arange(1000, dtype=float)
    current = reference + 150
    expected = (
        (1e-4 - 0.1) * math.log(1e-4 / 0.1)
        + (0.05 - 0.1) * math.log(0.05 / 0.1)
        + 7 * 0.0
        + (0.25 - 0.1) * math.log(0.25 / 0.1)
    )
    assert P.psi(reference, current) == pytest.approx(expected, abs=1e-9)
    assert expected == pytest.approx(0.8622, abs=1e-4)  # 0.6901 + 0.0347 + 0.1374


def test_matches_the_independent_histogram_computation():
    rng = np.random.default_rng(7)
    reference = rng.standard_t(4, size=20_000)
    current = rng.standard_t(4, size=7_000) * 1.3 + 0.2
    current[::50] = np.nan
    assert P.psi(reference, current) == pytest.approx(independent_psi(reference, current), abs=1e-12)


def test_nan_rows_are_excluded_and_counted():
    reference = np.arange(1000, dtype=float)
    current = np.concatenate([reference, np.full(300, np.nan)])
    result = P.feature_psi("x", P.quantile_edges(reference), current)
    assert result.n_nan == 300 and result.n_current == 1000
    assert result.psi == pytest.approx(0.0, abs=1e-12)


def test_open_outer_bins_keep_values_beyond_the_reference_range():
    reference = np.arange(1000, dtype=float)
    result = P.feature_psi("x", P.quantile_edges(reference), np.array([-1e9, 1e9, 5.0, 995.0]))
    assert result.n_current == 4
    assert result.actual[0] == 0.5 and result.actual[-1] == 0.5


def test_constant_reference_is_a_finding_not_a_division_by_zero():
    reference = np.zeros(500)
    same = P.feature_psi("volume_z_60", P.quantile_edges(reference), np.zeros(200), None)
    assert same.constant_reference and same.psi == pytest.approx(0.0, abs=1e-12)
    assert "reference is constant (0)" in same.note
    moved = P.feature_psi("volume_z_60", P.quantile_edges(reference), np.r_[np.zeros(100), np.ones(100)], None)
    # Two bins: below 0 (nothing in either) and at/above 0 (everything): the moved half stays
    # at/above 0, so the PSI is finite and small; the note tells the operator why.
    assert moved.constant_reference and math.isfinite(moved.psi)


def test_edges_only_bundles_use_the_quantile_levels():
    # Ties: the first three deciles of the reference are all 0 (60% zeros): level proportions
    # give the bin below 0 nothing and [0, next) 0.6 of the mass, like the real counts do.
    reference = np.r_[np.zeros(600), np.arange(1, 401, dtype=float)]
    edges = P.quantile_edges(reference)
    cuts = P.bin_cuts(edges)
    counts, _ = P.bin_counts(reference, cuts)
    assert P.level_proportions(edges)[:2].tolist() == pytest.approx([0.0, 0.6])
    assert (counts / counts.sum())[:2].tolist() == pytest.approx([0.0, 0.6], abs=0.01)
    # With continuous data the levels are the deciles' 0.1 each.
    assert P.level_proportions(P.quantile_edges(np.arange(1000.0))).tolist() == pytest.approx([0.1] * 10)


def test_fit_reference_round_trips_through_drift_against():
    rng = np.random.default_rng(3)
    cols = {"a": rng.normal(size=3000), "b": rng.exponential(size=3000)}
    ref = P.fit_reference(cols)
    assert ref["n_bins"] == 10 and len(ref["quantile_edges"]["a"]) == 11
    assert sum(ref["proportions"]["b"]) == pytest.approx(1.0)
    result = P.drift_against(ref, {"a": cols["a"], "b": cols["b"] + 1.0}, ["a", "b", "c"], version="3")
    assert result.missing_reference == ["c"]
    assert result.worst().feature == "b" and result.features[0].psi == pytest.approx(0.0, abs=1e-12)
    assert result.worst().level(0.2, 0.3) == "critical"


@pytest.mark.parametrize(
    "edges, message",
    [([1.0, 2.0], "at least 3 values"), ([0.0, float("nan"), 1.0], "finite"), ([0.0, 2.0, 1.0], "non-decreasing")],
)
def test_bad_references_are_refused_by_name(edges, message):
    with pytest.raises(P.DriftInputError, match=message):
        P.feature_psi("x", edges, np.ones(3))


def test_a_missing_current_column_is_named():
    ref = P.fit_reference({"ret_1": np.arange(100.0)})
    with pytest.raises(P.DriftInputError, match="'ret_1' is missing"):
        P.drift_against(ref, {}, ["ret_1"])


def test_btc_perp_first_vs_last_week_of_january_2022():
    path = shared_file("crypto_1m", "BTCUSDT-PERP_1m_2021-12-31_2022-02-01.csv")
    bars = pd.read_csv(path, parse_dates=["timestamp"])
    bars["ret_1"] = np.log(bars["close"]).diff()
    bars["range_hl"] = (bars["high"] - bars["low"]) / bars["close"]
    first = bars[(bars.timestamp >= "2022-01-01") & (bars.timestamp < "2022-01-08")]
    last = bars[(bars.timestamp >= "2022-01-25") & (bars.timestamp < "2022-02-01")]
    assert len(first) == len(last) == 7 * 1440

    ret = P.psi(first["ret_1"].to_numpy(), last["ret_1"].to_numpy())
    rng = P.psi(first["range_hl"].to_numpy(), last["range_hl"].to_numpy())
    close = P.psi(first["close"].to_numpy(), last["close"].to_numpy())
    # Found: ret_1 0.0198, range_hl 0.119, close 8.28.
    # 1-minute returns keep their shape (std 0.090% -> 0.099%): stable, far below 0.2.
    assert 0.005 < ret < 0.05
    # The bar range widened (median 0.076% -> 0.098%) after the January 21-24 sell-off: a
    # moderate shift, still below the 0.2 warning.
    assert 0.08 < rng < 0.2
    # The price level is not a stationary feature: BTC fell from ~47k to ~37k, so every bar of
    # the last week lies below the first week's lowest decile. With the reference bins at 0.1
    # each the PSI is then (1 - 0.1) ln(1/0.1) + 9 (1e-4 - 0.1) ln(1e-4/0.1), by hand:
    assert last["close"].max() < np.quantile(first["close"], 0.1)
    edges = P.quantile_edges(first["close"].to_numpy())
    counts, _ = P.bin_counts(first["close"].to_numpy(), P.bin_cuts(edges))
    e = np.maximum(counts / counts.sum(), 1e-4)
    by_hand = (1 - e[0]) * math.log(1 / e[0]) + sum((1e-4 - ei) * math.log(1e-4 / ei) for ei in e[1:])
    assert close == pytest.approx(by_hand, abs=1e-9)
    assert close == pytest.approx(0.9 * math.log(10) + 9 * 0.0999 * math.log(1000), abs=0.01)
