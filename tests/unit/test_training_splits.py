"""Purged walk-forward splits: disjoint, embargoed, purged, expanding, test period untouched."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from autotrader_assets.defs.training.labels import add_forward_labels
from autotrader_assets.defs.training.splits import purged_walk_forward

H = 5


def _labelled(instruments=("BTCUSDT", "ETHUSDT", "SOLUSDT"), days=2, horizon=H) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    parts = []
    for instrument in instruments:
        ts = pd.date_range("2024-03-01", periods=days * 1440, freq="1min")
        close = 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, len(ts))))
        parts.append(pd.DataFrame({"instrument": instrument, "ts": ts, "date": ts.date, "close": close}))
    return add_forward_labels(pd.concat(parts, ignore_index=True), horizon=horizon)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return _labelled()


@pytest.mark.parametrize("embargo_minutes", [None, 12])
def test_folds_are_disjoint_embargoed_and_purged(frame, embargo_minutes):
    embargo = None if embargo_minutes is None else pd.Timedelta(minutes=embargo_minutes)
    plan = purged_walk_forward(frame["ts"], frame["label_end_ts"], n_folds=4, test_fraction=0.2, embargo=embargo)
    expected_embargo = pd.Timedelta(minutes=embargo_minutes or H)
    assert plan.embargo == expected_embargo
    assert plan.horizon == pd.Timedelta(minutes=H)
    assert len(plan.folds) == 4
    ts, end = frame["ts"].to_numpy(), frame["label_end_ts"].to_numpy()
    for fold in plan.folds:
        assert len(fold.train_idx) and len(fold.val_idx)
        assert not set(fold.train_idx) & set(fold.val_idx)
        # by timestamp, not by row: no instant is on both sides
        assert not set(ts[fold.train_idx]) & set(ts[fold.val_idx])
        val_start = ts[fold.val_idx].min()
        # embargo: the last training bar is at least `embargo` before validation starts
        assert val_start - ts[fold.train_idx].max() > expected_embargo
        # purge: no training label reads a price at or after the validation start
        assert end[fold.train_idx].max() < val_start
        assert fold.val_start == val_start and fold.train_end == ts[fold.train_idx].max()


def test_windows_expand_and_validation_walks_forward(frame):
    plan = purged_walk_forward(frame["ts"], frame["label_end_ts"], n_folds=3)
    for earlier, later in zip(plan.folds, plan.folds[1:]):
        assert set(earlier.train_idx) < set(later.train_idx)
        assert later.val_start > earlier.val_end
        # every row validated by an earlier fold is training data for a later one (minus embargo)
        assert set(earlier.val_idx) <= set(later.train_idx) | set(later.val_idx) | _embargoed(frame, later, plan)


def _embargoed(frame, fold, plan) -> set[int]:
    ts = frame["ts"]
    return set(np.flatnonzero((ts >= fold.val_start - plan.embargo) & (ts < fold.val_start)))


def test_test_period_is_untouched(frame):
    plan = purged_walk_forward(frame["ts"], frame["label_end_ts"], n_folds=4, test_fraction=0.25)
    ts, end = frame["ts"].to_numpy(), frame["label_end_ts"].to_numpy()
    test = set(plan.test_idx)
    used = set()
    for fold in plan.folds:
        used |= set(fold.train_idx) | set(fold.val_idx)
    assert not test & used
    assert ts[plan.test_idx].min() == plan.test_start
    # every row at or after the test start is a test row: the test block is contiguous
    assert test == set(np.flatnonzero(ts >= plan.test_start))
    used_idx = np.fromiter(used, dtype=np.int64)
    assert end[used_idx].max() < plan.test_start
    assert plan.test_start - ts[used_idx].max() > plan.embargo
    # about a quarter of the distinct timestamps are held out
    assert abs(len(np.unique(ts[plan.test_idx])) / len(np.unique(ts)) - 0.25) < 0.01


def test_irregular_label_windows_are_purged_beyond_the_embargo():
    ts = pd.Series(pd.date_range("2024-01-01", periods=200, freq="1min"))
    end = ts + pd.Timedelta(minutes=1)
    plan0 = purged_walk_forward(ts, end, n_folds=1, test_fraction=0.2)
    val_start = plan0.folds[0].val_start
    # one early row whose label (e.g. from a longer-lived position) runs into validation
    long_row = int(np.flatnonzero(ts == val_start - pd.Timedelta(minutes=30))[0])
    end_irregular = end.copy()
    end_irregular.iloc[long_row] = val_start + pd.Timedelta(minutes=2)
    plan = purged_walk_forward(ts, end_irregular, n_folds=1, test_fraction=0.2)
    fold = plan.folds[0]
    assert plan.embargo == pd.Timedelta(minutes=1)  # the typical window, not the outlier
    assert fold.val_start == val_start
    assert long_row not in set(fold.train_idx)
    assert fold.n_purged == 1
    assert len(fold.train_idx) == len(plan0.folds[0].train_idx) - 1
    assert end_irregular.to_numpy()[fold.train_idx].max() < fold.val_start


def test_embargo_shorter_than_horizon_is_rejected(frame):
    with pytest.raises(ValueError, match="shorter than the label horizon"):
        purged_walk_forward(frame["ts"], frame["label_end_ts"], embargo=pd.Timedelta(minutes=H - 1))


def test_bad_arguments_are_rejected(frame):
    ts, end = frame["ts"], frame["label_end_ts"]
    with pytest.raises(ValueError, match="n_folds"):
        purged_walk_forward(ts, end, n_folds=0)
    with pytest.raises(ValueError, match="test_fraction"):
        purged_walk_forward(ts, end, test_fraction=1.0)
    with pytest.raises(ValueError, match="empty"):
        purged_walk_forward(ts.iloc[:0], end.iloc[:0])
    with pytest.raises(ValueError, match="precedes"):
        purged_walk_forward(ts, ts - pd.Timedelta(minutes=1))
    with pytest.raises(ValueError, match="rows"):
        purged_walk_forward(ts, end.iloc[:-1])
    with pytest.raises(ValueError, match="datetimes"):
        purged_walk_forward(np.arange(len(ts)), end)
    small = frame.iloc[:30]
    with pytest.raises(ValueError, match="too few|empty"):
        purged_walk_forward(small["ts"], small["label_end_ts"], n_folds=10, embargo=pd.Timedelta(minutes=5))
