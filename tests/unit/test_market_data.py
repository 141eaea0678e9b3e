"""Replay source, validation rules, archive and warehouse writes."""

from __future__ import annotations

import boto3
import duckdb
import numpy as np
import pandas as pd
import pytest
from moto import mock_aws

from autotrader_assets.defs.market_data.archive import (
    ArchiveError,
    LocalArchive,
    S3Archive,
    archive_key,
)
from autotrader_assets.defs.market_data.replay import ReplaySource
from autotrader_assets.defs.market_data.schema import (
    BAR_COLUMNS,
    MalformedPayloadError,
    detect_interval_seconds,
    normalize_bars,
)
from autotrader_assets.defs.market_data.validation import (
    find_gaps,
    missing_fraction,
    return_outliers,
    validate_bars,
)
from autotrader_assets.defs.market_data.warehouse import read_partition, replace_partitions


@pytest.fixture(scope="module")
def day() -> pd.DataFrame:
    return ReplaySource(seed=3).day_bars("BTCUSDT", "2024-02-01")


# -- replay -------------------------------------------------------------------------------------
def test_replay_is_deterministic_and_seeded():
    a = ReplaySource(seed=3).day_bars("ETHUSDT", "2024-02-01")
    b = ReplaySource(seed=3).day_bars("ETHUSDT", "2024-02-01")
    c = ReplaySource(seed=4).day_bars("ETHUSDT", "2024-02-01")
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["close"].to_numpy()[:100], c["close"].to_numpy()[:100])


def test_replay_days_stitch_and_pass_the_schema(day):
    nxt = ReplaySource(seed=3).day_bars("BTCUSDT", "2024-02-02")
    assert day["close"].iloc[-1] == pytest.approx(nxt["open"].iloc[0], rel=1e-9)
    assert list(day.columns) == BAR_COLUMNS
    assert validate_bars(day, date="2024-02-01").passed


def test_replay_has_volatility_clustering_and_gaps():
    src = ReplaySource(seed=3)
    days = [src.day_bars("SOLUSDT", f"2024-02-{d:02d}") for d in range(1, 11)]
    r = pd.concat([np.log(d["close"]).diff().dropna() for d in days])
    # |r| autocorrelation is the signature of volatility clustering; i.i.d. returns give ~0
    assert r.abs().autocorr(lag=1) > 0.05
    assert any(len(d) < 1440 for d in days)
    rw = ReplaySource(seed=3, mode="random_walk").day_bars("SOLUSDT", "2024-02-01")
    assert len(rw) == 1440
    assert abs(np.log(rw["close"]).diff().dropna().autocorr()) < 0.08


def test_replay_window_and_errors():
    src = ReplaySource(seed=1)
    start = pd.Timestamp("2024-02-01 23:00", tz="UTC")
    out = src.fetch_bars("BTCUSDT", start, start + pd.Timedelta(hours=2))
    assert out["ts"].min() >= start and out["ts"].max() < start + pd.Timedelta(hours=2)
    assert out["ts"].dt.date.nunique() == 2
    with pytest.raises(ValueError, match="replay mode"):
        ReplaySource(mode="chaos")


# -- normalization and validation ------------------------------------------------------------------
def test_normalize_sorts_drops_identical_duplicates_and_rejects_garbage():
    raw = pd.DataFrame(
        {
            "ts": pd.to_datetime(["2024-01-01 00:01", "2024-01-01 00:00", "2024-01-01 00:01", "2024-01-01 00:00"]),
            "open": [3, 2, 3, 2],
            "high": [3, 2, 3, 2],
            "low": [3, 2, 3, 2],
            "close": [3, 2, 3, 2],
            "volume": [1, 1, 1, 1],
        }
    )
    out = normalize_bars(raw, "X", "test")
    assert list(out["close"]) == [2.0, 3.0]  # sorted; the two identical repeats dropped...
    assert out.attrs["duplicates_dropped"] == 2  # ...and counted for the asset's metadata
    assert out.attrs["interval_seconds"] == 60
    assert str(out["ts"].dtype) == "datetime64[ns, UTC]"
    with pytest.raises(MalformedPayloadError, match="missing columns"):
        normalize_bars(raw.drop(columns=["volume"]), "X", "test")
    bad = raw.assign(close=["a", "b", "c", "d"])
    with pytest.raises(MalformedPayloadError, match="not numeric"):
        normalize_bars(bad, "X", "test")


def test_normalize_keeps_conflicting_duplicates_and_the_schema_shows_both():
    raw = pd.DataFrame(
        {
            "ts": pd.to_datetime(["2024-01-01 00:00", "2024-01-01 00:01", "2024-01-01 00:01"]),
            "open": [1, 2, 5],
            "high": [1, 2, 5],
            "low": [1, 2, 5],
            "close": [1, 2, 5],
            "volume": [1, 1, 1],
        }
    )
    out = normalize_bars(raw, "X", "test")
    assert list(out["close"]) == [1.0, 2.0, 5.0] and out.attrs["duplicates_dropped"] == 0
    report = validate_bars(out, date="2024-01-01")
    assert not report.passed
    unique = report.failure_cases[report.failure_cases["check"].astype(str) == "timestamps are not unique"]
    assert sorted(unique["index"].astype(int).unique()) == [1, 2]
    assert sorted(unique.loc[unique["column"] == "close", "failure_case"].astype(float)) == [2.0, 5.0]


def test_a_volume_less_partition_passes_but_partly_missing_volume_fails(day):
    no_volume = day.assign(volume=np.nan)
    assert validate_bars(no_volume, date="2024-02-01").passed
    holed = day.assign(volume=day["volume"].where(day.index != 5, np.nan))
    report = validate_bars(holed, date="2024-02-01")
    assert not report.passed
    assert (
        report.failure_cases["check"].astype(str) == "volume missing on some bars of a partition (all or none)"
    ).any()


@pytest.mark.parametrize(
    "minutes, expected",
    [
        ([], None),
        ([0], None),
        ([0, 0], None),
        ([0, 1, 2, 3, 50, 51, 52], 60),  # a long gap does not move the median
        ([0, 5, 10, 15, 20, 25, 30, 2880, 2885, 2890], 300),  # a weekend between two 5-minute sessions
        ([0, 0, 1, 2, 2, 3], 60),  # repeated timestamps are not zero-length bars
    ],
)
def test_detect_interval_seconds(minutes, expected):
    frame = pd.DataFrame({"ts": pd.Timestamp("2024-01-05", tz="UTC") + pd.to_timedelta(minutes, unit="min")})
    assert detect_interval_seconds(frame) == expected


@pytest.mark.parametrize(
    "corrupt, expected",
    [
        (lambda d: d.assign(close=d["close"].where(d.index != 5, np.nan)), "close"),
        (lambda d: d.assign(open=d["open"].where(d.index != 5, -1.0)), "greater_than(0)"),
        (lambda d: d.assign(high=d["high"].where(d.index != 5, d["open"] * 0.5)), "high below max(open, close)"),
        (lambda d: d.assign(low=d["low"].where(d.index != 5, d["close"] * 2)), "low above min(open, close)"),
        (lambda d: d.assign(volume=d["volume"].where(d.index != 5, -3.0)), "greater_than_or_equal_to(0)"),
        (lambda d: pd.concat([d, d.iloc[[7]]], ignore_index=True), "timestamps are not unique"),
        (lambda d: d.iloc[::-1].reset_index(drop=True), "timestamps are not increasing"),
        (lambda d: d.assign(ts=d["ts"] + pd.Timedelta(days=1)), "outside partition date"),
    ],
)
def test_schema_catches_each_rule(day, corrupt, expected):
    report = validate_bars(corrupt(day.copy()), date="2024-02-01")
    assert not report.passed
    assert (
        report.failure_cases["check"].astype(str).str.contains(expected, regex=False).any()
        or report.failure_cases["column"].astype(str).eq(expected).any()
    )


def test_completeness_and_gaps(day):
    full = ReplaySource(seed=3, mode="random_walk").day_bars("BTCUSDT", "2024-02-01")
    assert missing_fraction(full) == 0.0
    holed = full.drop(index=range(100, 200))
    assert missing_fraction(holed) == pytest.approx(100 / 1440)
    gaps = find_gaps(holed)
    assert list(gaps["missing_bars"]) == [100]


def test_outliers_are_listed(day):
    spiked = day.copy()
    spiked.loc[500, "close"] = spiked.loc[500, "close"] * 1.2
    out = return_outliers(spiked, z_bound=12)
    assert 500 in out.index
    assert (out["robust_z"].abs() > 12).all()


# -- archive ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "date, inst", [("2024-13-01", "BTC"), ("../etc", "BTC"), ("2024-01-01", "../x"), ("2024-01-01", "a/b")]
)
def test_archive_keys_refuse_path_tricks(date, inst):
    with pytest.raises(ValueError):
        archive_key(date, inst)


def test_local_archive_roundtrip(tmp_path, day):
    store = LocalArchive(tmp_path)
    loc = store.write("2024-02-01", "BTCUSDT", day)
    assert loc.endswith("2024-02-01/BTCUSDT.parquet")
    pd.testing.assert_frame_equal(store.read("2024-02-01", "BTCUSDT"), day)
    assert not list(tmp_path.rglob(".tmp-*"))
    with pytest.raises(ArchiveError, match="no archive"):
        store.read("2024-02-02", "BTCUSDT")


def test_s3_archive_roundtrip(day, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="bars")
        store = S3Archive("s3://bars/archive", client)
        assert not store.exists("2024-02-01", "BTCUSDT")
        assert store.write("2024-02-01", "BTCUSDT", day) == "s3://bars/archive/2024-02-01/BTCUSDT.parquet"
        assert store.exists("2024-02-01", "BTCUSDT")
        pd.testing.assert_frame_equal(store.read("2024-02-01", "BTCUSDT"), day)
        with pytest.raises(ArchiveError):
            store.read("2024-02-03", "BTCUSDT")


# -- warehouse ----------------------------------------------------------------------------------
def test_replace_partitions_is_idempotent_and_atomic(tmp_path, day):
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    replace_partitions(con, {("2024-02-01", "BTCUSDT"): day})
    replace_partitions(con, {("2024-02-01", "BTCUSDT"): day})
    assert con.execute("select count(*) from market_bars").fetchone()[0] == len(day)
    pd.testing.assert_frame_equal(read_partition(con, "2024-02-01", "BTCUSDT"), day)

    # a NULL instrument violates the table's constraint inside the transaction, after the delete
    broken = day.assign(instrument=None)
    with pytest.raises(duckdb.ConstraintException):
        replace_partitions(con, {("2024-02-01", "BTCUSDT"): day.iloc[:10], ("2024-02-02", "BTCUSDT"): broken})
    # the failed transaction left the first partition as it was
    assert con.execute("select count(*) from market_bars").fetchone()[0] == len(day)
    con.close()


def test_archive_keeps_superseded_versions(tmp_path, day):
    store = LocalArchive(tmp_path)
    store.write("2024-02-01", "BTCUSDT", day)
    store.write("2024-02-01", "BTCUSDT", day)  # same bytes: nothing to keep
    assert store.versions("2024-02-01", "BTCUSDT") == []
    revised = day.assign(close=day["close"] * 1.01)
    store.write("2024-02-01", "BTCUSDT", revised)
    (stamp,) = store.versions("2024-02-01", "BTCUSDT")
    pd.testing.assert_frame_equal(store.read("2024-02-01", "BTCUSDT"), revised)
    pd.testing.assert_frame_equal(store.read("2024-02-01", "BTCUSDT", version="previous"), day)
    pd.testing.assert_frame_equal(store.read("2024-02-01", "BTCUSDT", version=stamp), day)
    with pytest.raises(ValueError, match="invalid archive version"):
        store.read("2024-02-01", "BTCUSDT", version="../../etc/passwd")
    with pytest.raises(ArchiveError, match="no earlier archive version"):
        store.read("2024-02-02", "BTCUSDT", version="previous")


def test_s3_archive_keeps_superseded_versions(day, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="bars")
        store = S3Archive("s3://bars/archive", client)
        store.write("2024-02-01", "BTCUSDT", day)
        store.write("2024-02-01", "BTCUSDT", day.iloc[:100])
        assert len(store.versions("2024-02-01", "BTCUSDT")) == 1
        pd.testing.assert_frame_equal(store.read("2024-02-01", "BTCUSDT", version="previous"), day)


def test_replay_frames_carry_the_source_attrs():
    src = ReplaySource(seed=1)
    start = pd.Timestamp("2024-02-01", tz="UTC")
    for end in (start + pd.Timedelta(days=1), start + pd.Timedelta(hours=30), start):
        assert src.fetch_bars("BTCUSDT", start, end).attrs == {"interval_seconds": 60, "duplicates_dropped": 0}
