"""Forward-return labels: exact horizon, per instrument and per day, dropped (never filled)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from autotrader_assets.defs.training.labels import LABEL_COLUMNS, add_forward_labels, class_balance


def _bars(instrument: str, start: str, closes: list[float], freq: str = "1min") -> pd.DataFrame:
    ts = pd.date_range(start, periods=len(closes), freq=freq)
    return pd.DataFrame({"instrument": instrument, "ts": ts, "date": ts.date, "close": closes})


def test_forward_log_return_and_sign_over_exact_horizon():
    closes = [100.0, 101.0, 99.0, 99.0, 102.0, 103.0]
    out = add_forward_labels(_bars("BTCUSDT", "2024-01-01 00:00", closes), horizon=2)
    assert list(out.columns[-3:]) == list(LABEL_COLUMNS)
    # rows 0..3 have a bar two minutes later; rows 4 and 5 would look past the data
    assert len(out) == 4
    expected = [np.log(99 / 100), np.log(99 / 101), np.log(102 / 99), np.log(103 / 99)]
    np.testing.assert_allclose(out["fwd_log_return"], expected)
    assert out["label"].tolist() == [0, 0, 1, 1]
    assert (out["label_end_ts"] - out["ts"] == pd.Timedelta(minutes=2)).all()


def test_flat_return_is_not_an_up_label():
    out = add_forward_labels(_bars("BTCUSDT", "2024-01-01", [100.0, 100.0, 100.5]), horizon=1)
    assert out["label"].tolist() == [0, 1]


def test_last_bars_of_each_day_are_dropped_and_labels_never_cross_midnight():
    h = 3
    day1 = _bars("BTCUSDT", "2024-01-01 23:50", list(np.linspace(100, 101, 10)))
    day2 = _bars("BTCUSDT", "2024-01-02 00:00", list(np.linspace(90, 91, 10)))
    out = add_forward_labels(pd.concat([day1, day2], ignore_index=True), horizon=h)
    assert len(out) == (10 - h) * 2
    # 23:57-23:59 have a bar 3 minutes later (the next day) but must not use it
    assert out.loc[out["ts"] < pd.Timestamp("2024-01-02"), "ts"].max() == pd.Timestamp("2024-01-01 23:56")
    assert out["ts"].max() == pd.Timestamp("2024-01-02 00:06")
    assert (out["label_end_ts"].dt.date == out["ts"].dt.date).all()
    # the price jump from ~101 to ~90 over midnight would make these labels 0 if it leaked
    assert out.loc[out["ts"] < pd.Timestamp("2024-01-02"), "label"].eq(1).all()


def test_a_gap_drops_the_row_instead_of_using_a_later_bar():
    bars = _bars("ETHUSDT", "2024-01-01 10:00", [10.0, 11.0, 12.0, 13.0, 14.0])
    bars = bars.drop(index=2)  # 10:02 is missing
    out = add_forward_labels(bars, horizon=2)
    # 10:00 needs 10:02 (missing) -> dropped; 10:01 -> 10:03 ok; 10:02 absent; 10:03 -> 10:05 absent
    assert out["ts"].tolist() == [pd.Timestamp("2024-01-01 10:01")]
    np.testing.assert_allclose(out["fwd_log_return"], [np.log(13 / 11)])


def test_instruments_are_labelled_independently():
    a = _bars("AAA", "2024-01-01", [1.0, 2.0, 3.0])
    b = _bars("BBB", "2024-01-01", [3.0, 2.0, 1.0])
    out = add_forward_labels(pd.concat([a, b], ignore_index=True), horizon=1)
    assert out.groupby("instrument")["label"].apply(list).to_dict() == {"AAA": [1, 1], "BBB": [0, 0]}
    # sorted by time first, so all instruments' bars at one instant are adjacent
    assert out["ts"].is_monotonic_increasing


def test_date_is_derived_when_absent_and_extra_columns_survive():
    bars = _bars("AAA", "2024-01-01", [1.0, 2.0, 4.0]).drop(columns="date")
    bars["ret_1"] = [np.nan, 0.69, 0.69]
    out = add_forward_labels(bars, horizon=1)
    assert "ret_1" in out.columns and "date" in out.columns
    assert len(out) == 2


def test_other_bar_intervals():
    bars = _bars("AAA", "2024-01-01", [1.0, 2.0, 4.0, 8.0], freq="5min")
    out = add_forward_labels(bars, horizon=2, bar_interval=pd.Timedelta(minutes=5))
    assert len(out) == 2
    np.testing.assert_allclose(out["fwd_log_return"], [np.log(4), np.log(4)])


@pytest.mark.parametrize("horizon", [0, -1, 1.5, True, "5"])
def test_bad_horizon_is_rejected(horizon):
    with pytest.raises(ValueError, match="horizon"):
        add_forward_labels(_bars("AAA", "2024-01-01", [1.0, 2.0]), horizon=horizon)


def test_bad_frames_are_rejected_clearly():
    good = _bars("AAA", "2024-01-01", [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="columns"):
        add_forward_labels(good.drop(columns="close"), horizon=1)
    with pytest.raises(ValueError, match="duplicate"):
        add_forward_labels(pd.concat([good, good.iloc[:1]]), horizon=1)
    with pytest.raises(ValueError, match="positive"):
        add_forward_labels(good.assign(close=[1.0, 0.0, 2.0]), horizon=1)
    with pytest.raises(ValueError, match="positive"):
        add_forward_labels(good.assign(close=[1.0, np.nan, 2.0]), horizon=1)
    with pytest.raises(ValueError, match="datetimes"):
        add_forward_labels(good.assign(ts=["a", "b", "c"]), horizon=1)
    with pytest.raises(ValueError, match="already has label"):
        add_forward_labels(good.assign(label=1), horizon=1)


def test_class_balance():
    assert class_balance(pd.Series([1, 0, 1, 1])) == {"up": 0.75, "down_or_flat": 0.25}
    with pytest.raises(ValueError):
        class_balance(pd.Series([], dtype=int))


# -- the labelled training dataset (dataset.py) ---------------------------------------------------

import datetime as dt  # noqa: E402

import duckdb  # noqa: E402

from autotrader_assets.defs.training.dataset import (  # noqa: E402
    DatasetError,
    available_range,
    build_training_frame,
    dataset_summary,
    frame_fingerprint,
    read_bar_features,
    read_training_table,
    resolve_date_window,
    write_training_table,
)

D = dt.date


def _feature_frame(days: int = 2, warmup: int = 3) -> pd.DataFrame:
    parts = []
    for instrument, base in (("AAA", 10.0), ("BBB", 20.0)):
        ts = pd.date_range("2024-02-01", periods=days * 1440, freq="1min")
        close = base + np.sin(np.arange(len(ts)) / 7.0)
        f1 = np.arange(len(ts), dtype=float)
        f1[:warmup] = np.nan  # warm-up: NULL features, like the dbt model
        parts.append(
            pd.DataFrame({"instrument": instrument, "ts": ts, "date": ts.date, "open": close, "close": close, "f1": f1})
        )
    return pd.concat(parts, ignore_index=True)


def test_build_training_frame_labels_first_then_drops_incomplete_rows():
    raw = _feature_frame(days=2, warmup=3)
    frame, dropped = build_training_frame(raw, horizon=4, feature_columns=["f1"])
    assert dropped == {"rows_read": len(raw), "dropped_no_label": 2 * 2 * 4, "dropped_missing_features": 2 * 3}
    assert len(frame) == len(raw) - 16 - 6
    assert frame["f1"].notna().all()
    with pytest.raises(DatasetError, match="no rows left"):
        build_training_frame(raw.assign(f1=np.nan), horizon=4, feature_columns=["f1"])


def test_resolve_date_window():
    lo, hi = D(2024, 1, 1), D(2024, 1, 31)
    assert resolve_date_window(lo, hi) == (lo, hi)
    assert resolve_date_window(lo, hi, last_n_days=7) == (D(2024, 1, 25), hi)
    assert resolve_date_window(lo, hi, last_n_days=90) == (lo, hi)
    assert resolve_date_window(lo, hi, start_date="2024-01-10") == (D(2024, 1, 10), hi)
    assert resolve_date_window(lo, hi, start_date="2023-12-01", end_date="2024-01-05") == (lo, D(2024, 1, 5))
    with pytest.raises(DatasetError, match="not both"):
        resolve_date_window(lo, hi, start_date="2024-01-10", last_n_days=3)
    with pytest.raises(DatasetError, match="after"):
        resolve_date_window(lo, hi, start_date="2024-01-10", end_date="2024-01-09")
    with pytest.raises(DatasetError, match="does not overlap"):
        resolve_date_window(lo, hi, start_date="2024-03-01")
    with pytest.raises(DatasetError, match="ISO date"):
        resolve_date_window(lo, hi, start_date="01/10/2024")
    with pytest.raises(DatasetError, match=">= 1"):
        resolve_date_window(lo, hi, last_n_days=0)


def test_warehouse_round_trip_and_fingerprint():
    con = duckdb.connect()
    with pytest.raises(DatasetError, match="no bar_features table"):
        available_range(con, None)
    raw = _feature_frame(days=2)
    con.register("_raw", raw)
    con.execute("create table bar_features as select * replace (date::date as date) from _raw")
    lo, hi, instruments = available_range(con, None)
    assert (lo, hi, instruments) == (D(2024, 2, 1), D(2024, 2, 2), ["AAA", "BBB"])
    with pytest.raises(DatasetError, match="ZZZ"):
        available_range(con, ["AAA", "ZZZ"])
    with pytest.raises(DatasetError, match="lacks columns"):
        read_bar_features(con, ["AAA"], lo, hi, ["f1", "f_missing"])

    features = read_bar_features(con, ["BBB"], D(2024, 2, 2), D(2024, 2, 2), ["f1"])
    assert set(features["instrument"]) == {"BBB"} and len(features) == 1440
    frame, _ = build_training_frame(features, horizon=2, feature_columns=["f1"])
    write_training_table(con, frame)
    stored = read_training_table(con)
    assert len(stored) == len(frame)
    assert frame_fingerprint(stored, ["f1"]) == frame_fingerprint(frame, ["f1"])
    changed = stored.copy()
    changed.loc[10, "label"] = 1 - changed.loc[10, "label"]
    assert frame_fingerprint(changed, ["f1"]) != frame_fingerprint(stored, ["f1"])
    types = dict(
        con.execute(
            "select column_name, data_type from information_schema.columns where table_name = 'training_dataset'"
        ).fetchall()
    )
    assert types["ts"] == "TIMESTAMP" and types["label"] == "TINYINT" and types["date"] == "DATE"

    summary = dataset_summary(stored)
    assert summary["partitions"] == ["2024-02-02|BBB"]
    assert summary["rows"] == len(frame) and summary["instruments"] == ["BBB"]
    assert summary["start_date"] == summary["end_date"] == "2024-02-02"
