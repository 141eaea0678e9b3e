"""The data pipeline through Dagster: replay/file source -> market_bars (+archive, checks) -> dbt features."""

from __future__ import annotations

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pytest

from autotrader_assets.defs.market_data.replay import ReplaySource
from autotrader_assets.defs.market_data.resources import MarketSourceResource
from tests.support.pipeline import check_results, partition_results, run_data_pipeline, shared_file, temp_resources

pytestmark = pytest.mark.slow


def _counts(db: str, table: str) -> dict[tuple[str, str], int]:
    con = duckdb.connect(db, read_only=True)
    try:
        rows = con.execute(f"select cast(date as varchar), instrument, count(*) from {table} group by all").fetchall()
    finally:
        con.close()
    return {(d, i): n for d, i, n in rows}


def test_two_instruments_two_dates_rows_archive_and_checks(tmp_path):
    resources = temp_resources(tmp_path)
    instance = dg.DagsterInstance.ephemeral()
    result = run_data_pipeline(resources, instance, "2024-03-01|BTCUSDT", "2024-03-02|ETHUSDT")
    assert result.success

    replay = ReplaySource(seed=11)
    expected = {
        (d, i): len(replay.day_bars(i, d)) for d in ("2024-03-01", "2024-03-02") for i in ("BTCUSDT", "ETHUSDT")
    }
    db = str(tmp_path / "warehouse.duckdb")
    assert _counts(db, "market_bars") == expected
    assert _counts(db, "bar_features") == expected

    # every partition is archived and the archive holds exactly what the warehouse holds
    for (date, inst), n in expected.items():
        archived = pd.read_parquet(tmp_path / "archive" / date / f"{inst}.parquet")
        assert len(archived) == n
        pd.testing.assert_frame_equal(
            archived.reset_index(drop=True), replay.day_bars(inst, date).reset_index(drop=True), check_dtype=False
        )

    checks = check_results(result)
    # One schema result per partition, each with its own row count.
    schema = partition_results(result, "market_bars_schema")
    assert {p: (e.passed, e.metadata["rows_checked"].value) for p, e in schema.items()} == {
        f"{d}|{i}": (True, n) for (d, i), n in expected.items()
    }
    assert all(c.passed for c in checks["unique_combination_bar_features_instrument__ts"])
    assert all(c.passed for c in checks["accepted_range_bar_features_rsi_14__100__0"])

    # features use the previous day as warm-up: the second date has no NULL features
    con = duckdb.connect(db, read_only=True)
    nulls_day2 = con.execute(
        "select count(*) from bar_features where date = '2024-03-02' and ret_60 is null"
    ).fetchone()[0]
    nulls_day1 = con.execute(
        "select count(*) from bar_features where date = '2024-03-01' and ret_60 is null"
    ).fetchone()[0]
    first_hour = con.execute(
        "select count(*) from market_bars m where date = '2024-03-01' and ts < "
        "(select min(ts) from market_bars f where f.instrument = m.instrument) + interval 60 minute"
    ).fetchone()[0]
    con.close()
    assert nulls_day2 == 0
    # warm-up: only the bars of the first 60 minutes of each instrument's history (the replay
    # drops the odd minute, so that is not always 60 bars: windows count minutes, not bars)
    assert nulls_day1 == first_hour and 2 * 55 <= first_hour <= 2 * 60


def test_rerunning_a_partition_replaces_it(tmp_path):
    resources = temp_resources(tmp_path)
    instance = dg.DagsterInstance.ephemeral()
    run_data_pipeline(resources, instance, "2024-03-05|BTCUSDT", "2024-03-05|BTCUSDT")
    first = _counts(str(tmp_path / "warehouse.duckdb"), "bar_features")
    run_data_pipeline(resources, instance, "2024-03-05|BTCUSDT", "2024-03-05|BTCUSDT")
    assert _counts(str(tmp_path / "warehouse.duckdb"), "market_bars") == first
    assert _counts(str(tmp_path / "warehouse.duckdb"), "bar_features") == first


class _CorruptReplay:
    """The replay source with one NaN close and one high below the open."""

    def fetch_bars(self, instrument, start, end):
        df = ReplaySource(seed=11).fetch_bars(instrument, start, end)
        df.loc[10, "close"] = np.nan
        df.loc[20, "high"] = df.loc[20, "open"] * 0.5
        return df


class CorruptSourceResource(MarketSourceResource):
    def get_source(self):
        return _CorruptReplay()


def test_corrupt_partition_is_blocked_before_features(tmp_path):
    resources = temp_resources(tmp_path, market_source=CorruptSourceResource(name="corrupt"))
    instance = dg.DagsterInstance.ephemeral()
    result = run_data_pipeline(resources, instance, "2024-03-01|BTCUSDT", "2024-03-01|BTCUSDT", raise_on_error=False)
    assert not result.success

    (schema,) = check_results(result)["market_bars_schema"]
    assert not schema.passed and schema.partition == "2024-03-01|BTCUSDT"
    assert schema.severity == dg.AssetCheckSeverity.ERROR
    assert schema.metadata["quarantined"].value is True
    cases = schema.metadata["failure_cases"].value
    assert "close" in cases and "high below max(open, close)" in cases

    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True)
    has_features = con.execute(
        "select count(*) from information_schema.tables where table_name = 'bar_features'"
    ).fetchone()[0]
    con.close()
    assert has_features == 0, "bad bars must never reach the feature models"
    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True)
    published = con.execute("select count(*) from market_bars").fetchone()[0]
    quarantined = con.execute(
        "select count(*), min(reasons) from market_bars_quarantine where date = '2024-03-01' and instrument = 'BTCUSDT'"
    ).fetchone()
    con.close()
    assert published == 0, "a partition that failed its audit is never published"
    assert quarantined[0] == len(ReplaySource(seed=11).day_bars("BTCUSDT", "2024-03-01"))
    assert "high below max(open, close)" in quarantined[1]
    # the raw data is not lost: what the source returned is kept in the archive's quarantine,
    # and "latest" never pointed at it
    assert not (tmp_path / "archive" / "2024-03-01" / "BTCUSDT.parquet").exists()
    assert len(list((tmp_path / "archive" / "2024-03-01" / ".quarantine" / "BTCUSDT").glob("*.parquet"))) == 1


def test_pipeline_on_real_btc_minutes(tmp_path):
    path = shared_file("crypto_1m", "BTCUSDT-PERP_1m_2021-12-31_2022-02-01.csv")
    resources = temp_resources(tmp_path, market_source=MarketSourceResource(name="file", file_path=str(path)))
    instance = dg.DagsterInstance.ephemeral()
    result = run_data_pipeline(resources, instance, "2022-01-10|BTCUSDT", "2022-01-11|BTCUSDT")
    assert result.success
    counts = _counts(str(tmp_path / "warehouse.duckdb"), "bar_features")
    assert counts == {("2022-01-10", "BTCUSDT"): 1440, ("2022-01-11", "BTCUSDT"): 1440}
    checks = check_results(result)
    assert [c.passed for c in checks["market_bars_schema"]] == [True, True]
    assert [c.passed for c in checks["market_bars_completeness"]] == [True, True]  # the file is contiguous
    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True)
    rsi = con.execute(
        "select min(rsi_14), max(rsi_14), avg(rv_60) from bar_features where date = '2022-01-11'"
    ).fetchone()
    con.close()
    assert 0 <= rsi[0] < rsi[1] <= 100
    assert 0 < rsi[2] < 0.01  # 1-minute BTC volatility is a fraction of a percent


def test_features_use_no_future_bars(tmp_path):
    """Rewriting the afternoon's bars must not change a single morning feature value."""
    import json
    import subprocess

    from autotrader_assets.defs.features.project import DBT_PROJECT_DIR, dbt_executable

    resources = temp_resources(tmp_path)
    instance = dg.DagsterInstance.ephemeral()
    assert run_data_pipeline(resources, instance, "2024-03-01|BTCUSDT", "2024-03-02|BTCUSDT").success
    db = str(tmp_path / "warehouse.duckdb")
    # dbt alone builds the audit relation (publishing is the asset's step)
    query = "select * from bar_features_audit where date = '2024-03-02' and hour(ts) < 12 order by ts"
    afternoon = "select * from bar_features_audit where date = '2024-03-02' and hour(ts) >= 12 order by ts"
    con = duckdb.connect(db, read_only=True)
    before = con.execute(query).df()
    afternoon_before = con.execute(afternoon).df()
    con.close()

    con = duckdb.connect(db)
    con.execute(
        "update market_bars set close = close * 1.3, high = high * 1.3, volume = volume * 5 "
        "where date = '2024-03-02' and hour(ts) >= 12"
    )
    con.close()
    subprocess.run(
        [
            dbt_executable(),
            "run",
            "--quiet",
            "--profiles-dir",
            str(tmp_path / "dbt_profiles"),
            "--target-path",
            str(tmp_path / "dbt_target"),
            "--vars",
            json.dumps({"dates": ["2024-03-02"], "instruments": ["BTCUSDT"]}),
        ],
        cwd=DBT_PROJECT_DIR,
        check=True,
    )
    con = duckdb.connect(db, read_only=True)
    after = con.execute(query).df()
    afternoon_after = con.execute(afternoon).df()
    con.close()
    assert len(before) > 600 and len(afternoon_before) > 600
    # the rewrite reached the features: the afternoon's closes, returns and volume z-scores moved
    assert len(afternoon_after) == len(afternoon_before)
    for col in ("close", "ret_60", "rv_60", "volume_z_60"):
        moved = ~np.isclose(afternoon_after[col], afternoon_before[col], equal_nan=True)
        assert moved.any(), f"the afternoon rewrite did not change {col}"
    pd.testing.assert_frame_equal(before, after)


def test_synthetic_features_match_dbt(tmp_path):
    """The test-only feature frame (tests/support/synthetic.py) is the dbt model's definition on
    contiguous 1-minute bars: every feature column equal to 1e-9 after the warm-up."""
    from autotrader_assets.settings import FEATURE_COLUMNS
    from tests.support.synthetic import bar_features_frame, random_walk_bars

    bars = random_walk_bars(instruments=("BTCUSDT",), start="2024-03-01", days=2, seed=5, ar1=0.1)
    csv = tmp_path / "btc.csv"
    bars[["ts", "open", "high", "low", "close", "volume"]].to_csv(csv, index=False)
    resources = temp_resources(
        tmp_path, market_source=MarketSourceResource(name="file", file_paths={"BTCUSDT": [str(csv)]})
    )
    assert run_data_pipeline(
        resources, dg.DagsterInstance.ephemeral(), "2024-03-01|BTCUSDT", "2024-03-02|BTCUSDT"
    ).success
    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True)
    dbt = con.execute("select * from bar_features where instrument = 'BTCUSDT' order by ts").df()
    con.close()
    ours = bar_features_frame(bars)
    assert len(dbt) == len(ours) == 2 * 1440
    assert dbt["ret_60"].isna().sum() == ours["ret_60"].isna().sum() == 60  # the same warm-up
    for col in FEATURE_COLUMNS:
        np.testing.assert_allclose(
            dbt[col].to_numpy(float), ours[col].to_numpy(float), rtol=0, atol=1e-9, equal_nan=True, err_msg=col
        )


class _CorruptBtcOnly:
    """Replay bars, with a NaN close in BTCUSDT only."""

    def fetch_bars(self, instrument, start, end):
        df = ReplaySource(seed=11).fetch_bars(instrument, start, end)
        if instrument == "BTCUSDT":
            df.loc[10, "close"] = np.nan
        return df


class CorruptBtcSourceResource(MarketSourceResource):
    def get_source(self):
        return _CorruptBtcOnly()


def test_checks_read_large_selections_in_chunks(tmp_path, monkeypatch):
    """With one partition per chunk, the checks still see every partition and name the bad one."""
    from autotrader_assets.defs.market_data import assets as market_assets

    monkeypatch.setattr(market_assets, "WRITE_CHUNK", 1)
    resources = temp_resources(tmp_path, market_source=CorruptBtcSourceResource(name="corrupt"))
    result = run_data_pipeline(
        resources, dg.DagsterInstance.ephemeral(), "2024-03-01|BTCUSDT", "2024-03-02|ETHUSDT", raise_on_error=False
    )
    assert not result.success
    schema = partition_results(result, "market_bars_schema")
    assert sorted(p for p, e in schema.items() if not e.passed) == ["2024-03-01|BTCUSDT", "2024-03-02|BTCUSDT"]
    replay = ReplaySource(seed=11)
    assert {p: e.metadata["rows_checked"].value for p, e in schema.items()} == {
        f"{d}|{i}": len(replay.day_bars(i, d)) for d in ("2024-03-01", "2024-03-02") for i in ("BTCUSDT", "ETHUSDT")
    }
    # The warnings judge what was published: only ETHUSDT's partitions.
    completeness = partition_results(result, "market_bars_completeness")
    assert sorted(completeness) == ["2024-03-01|ETHUSDT", "2024-03-02|ETHUSDT"]
    assert all(e.metadata["missing_fraction"].value < 0.05 for e in completeness.values())
