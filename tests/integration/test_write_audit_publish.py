"""Write-audit-publish: only audited partitions reach what downstream reads (issue 8, items 1-3, 6, 15)."""

from __future__ import annotations

import dagster as dg
import duckdb
import pandas as pd
import pytest

from autotrader_assets.defs.market_data.jobs import data_rollback_job
from autotrader_assets.defs.market_data.partitions import range_tags
from autotrader_assets.defs.market_data.replay import ReplaySource
from autotrader_assets.defs.market_data.resources import MarketSourceResource
from autotrader_assets.defs.market_data.schema import BAR_COLUMNS, empty_bars
from tests.support.pipeline import (
    check_results,
    data_assets_and_checks,
    partition_results,
    run_data_pipeline,
    shared_file,
    temp_resources,
)

pytestmark = pytest.mark.slow


def _query(db, sql, params=None):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, params or []).df()
    finally:
        con.close()


def _error_text(result) -> str:
    return "\n".join(e.event_specific_data.error.to_string() for e in result.all_events if e.is_step_failure)


class _SpikeReplay:
    """Replay bars; on 2024-03-02 BTCUSDT one bar's close and high are 100x (pandera-consistent)."""

    def fetch_bars(self, instrument, start, end):
        df = ReplaySource(seed=11).fetch_bars(instrument, start, end)
        if instrument == "BTCUSDT" and str(start.date()) == "2024-03-02":
            df.loc[600, "close"] *= 100
            df.loc[600, "high"] = df.loc[600, "close"]
        return df


class SpikeSource(MarketSourceResource):
    def get_source(self):
        return _SpikeReplay()


def test_failed_dbt_test_keeps_the_partition_out_of_bar_features_and_training(tmp_path):
    """Item 1: the spike fails accepted_range(ret_1); its partition is quarantined, not published,
    the other partition of the run is published, the run fails, and training never sees |ret_1| > 1."""
    from autotrader_assets.defs.training.assets import training_dataset

    resources = temp_resources(tmp_path, market_source=SpikeSource(name="spike"))
    instance = dg.DagsterInstance.ephemeral()
    result = run_data_pipeline(resources, instance, "2024-03-01|BTCUSDT", "2024-03-02|BTCUSDT", raise_on_error=False)
    assert not result.success
    assert all(e.passed for e in check_results(result)["market_bars_schema"])  # the bars themselves are consistent
    assert not check_results(result)["accepted_range_bar_features_ret_1__1___1"][0].passed
    assert "2024-03-02|BTCUSDT" in _error_text(result) and "quarantined" in _error_text(result)

    db = tmp_path / "warehouse.duckdb"
    published = _query(
        db, "select cast(date as varchar) as date, count(*) as n, max(abs(ret_1)) as worst from bar_features group by 1"
    )
    assert list(published["date"]) == ["2024-03-01"]
    assert published["worst"].max() < 1
    quarantined = _query(db, "select layer, cast(date as varchar) as date, reasons from quarantined_partitions")
    assert quarantined.to_dict("records") == [
        {
            "layer": "bar_features",
            "date": "2024-03-02",
            "reasons": "dbt test accepted_range_bar_features_ret_1__1___1: fail",
        }
    ]
    assert (
        len(_query(db, "select * from bar_features_quarantine where abs(ret_1) > 1")) == 2
    )  # the spike and its return

    trained = dg.materialize(
        [training_dataset],
        resources=resources,
        instance=instance,
        run_config={"ops": {"training_dataset": {"config": {"horizon": 15}}}},
    )
    assert trained.success
    dataset = _query(db, "select * from training_dataset")
    assert len(dataset) > 0 and (dataset["ret_1"].abs() > 1).sum() == 0


class _HeaderOnly:
    """A source that answers with a header and no rows (a vendor outage)."""

    def fetch_bars(self, instrument, start, end):
        return empty_bars()


class HeaderOnlySource(MarketSourceResource):
    def get_source(self):
        return _HeaderOnly()


def test_empty_refetch_over_good_days_changes_nothing_published(tmp_path):
    """Item 3: a header-only re-fetch is audited before anything moves: rows, features and the
    archive's latest files stay; the empty fetch is quarantined and kept."""
    resources = temp_resources(tmp_path)
    instance = dg.DagsterInstance.ephemeral()
    assert run_data_pipeline(resources, instance, "2024-03-04|BTCUSDT", "2024-03-05|BTCUSDT").success
    db = tmp_path / "warehouse.duckdb"
    before_bars = _query(db, "select * exclude (ingested_at) from market_bars order by date, ts")
    before_feats = _query(db, "select * from bar_features order by date, ts")
    latest = {d: (tmp_path / "archive" / d / "BTCUSDT.parquet").read_bytes() for d in ("2024-03-04", "2024-03-05")}

    resources["market_source"] = HeaderOnlySource(name="header-only")
    result = run_data_pipeline(resources, instance, "2024-03-04|BTCUSDT", "2024-03-05|BTCUSDT", raise_on_error=False)
    assert not result.success
    schema = partition_results(result, "market_bars_schema")
    assert sorted(p for p, e in schema.items() if not e.passed) == ["2024-03-04|BTCUSDT", "2024-03-05|BTCUSDT"]
    assert "partition is empty" in schema["2024-03-04|BTCUSDT"].description

    pd.testing.assert_frame_equal(
        _query(db, "select * exclude (ingested_at) from market_bars order by date, ts"), before_bars
    )
    pd.testing.assert_frame_equal(_query(db, "select * from bar_features order by date, ts"), before_feats)
    for d, data in latest.items():
        assert (tmp_path / "archive" / d / "BTCUSDT.parquet").read_bytes() == data
        assert len(list((tmp_path / "archive" / d / ".quarantine" / "BTCUSDT").glob("*.parquet"))) == 1
    assert len(_query(db, "select * from quarantined_partitions where layer = 'market_bars'")) == 2


def test_failed_warehouse_commit_leaves_latest_and_restore_brings_back_published(tmp_path, monkeypatch):
    """Item 15: the archive's latest moves only after the warehouse commit; when the commit fails,
    a later restore loads what was last published, not the fetch that never was."""
    import contextlib

    from autotrader_assets.defs.market_data import assets as market_assets

    resources = temp_resources(tmp_path)
    instance = dg.DagsterInstance.ephemeral()
    assert run_data_pipeline(resources, instance, "2024-04-01|BTCUSDT", "2024-04-01|BTCUSDT").success
    db = tmp_path / "warehouse.duckdb"
    published = _query(db, "select ts, close from market_bars order by ts")
    latest_path = tmp_path / "archive" / "2024-04-01" / "BTCUSDT.parquet"
    latest = latest_path.read_bytes()

    class BrokenPublisher:
        def publish(self, batch):
            raise OSError("warehouse volume is full")

    monkeypatch.setattr(market_assets, "publisher_for", lambda warehouse: contextlib.nullcontext(BrokenPublisher()))
    resources["market_source"] = MarketSourceResource(name="replay", seed=99)
    result = run_data_pipeline(resources, instance, "2024-04-01|BTCUSDT", "2024-04-01|BTCUSDT", raise_on_error=False)
    assert not result.success and "warehouse volume is full" in _error_text(result)
    assert latest_path.read_bytes() == latest
    monkeypatch.undo()

    # someone damages the warehouse; the restore of "latest" must bring back what was published
    con = duckdb.connect(str(db))
    con.execute("update market_bars set close = close * 2")
    con.close()
    defs = dg.Definitions(
        assets=data_assets_and_checks()[:2],
        asset_checks=data_assets_and_checks()[2:],
        jobs=[data_rollback_job],
        resources=resources,
    )
    restored = defs.resolve_job_def("data_rollback").execute_in_process(
        instance=instance, tags=range_tags("2024-04-01", "2024-04-01", ["BTCUSDT"])
    )
    assert restored.success
    pd.testing.assert_frame_equal(_query(db, "select ts, close from market_bars order by ts"), published)


def test_restore_of_a_version_that_fails_the_audit_is_refused(tmp_path):
    """A data rollback goes through the same audit: a broken archived version is not published."""
    from autotrader_assets.defs.market_data.archive import LocalArchive

    resources = temp_resources(tmp_path)
    instance = dg.DagsterInstance.ephemeral()
    assert run_data_pipeline(resources, instance, "2024-04-01|BTCUSDT", "2024-04-01|BTCUSDT").success
    db = tmp_path / "warehouse.duckdb"
    published = _query(db, "select ts, close from market_bars order by ts")
    store = LocalArchive(tmp_path / "archive")
    broken = store.read("2024-04-01", "BTCUSDT")
    broken.loc[5, "low"] = broken.loc[5, "high"] * 3
    store.write("2024-04-01", "BTCUSDT", broken)  # the good file becomes a version, the broken one latest
    defs = dg.Definitions(
        assets=data_assets_and_checks()[:2],
        asset_checks=data_assets_and_checks()[2:],
        jobs=[data_rollback_job],
        resources=resources,
    )
    result = defs.resolve_job_def("data_rollback").execute_in_process(
        instance=instance, tags=range_tags("2024-04-01", "2024-04-01", ["BTCUSDT"]), raise_on_error=False
    )
    assert not result.success
    assert [(e.partition, e.passed) for e in check_results(result)["market_bars_schema"]] == [
        ("2024-04-01|BTCUSDT", False)
    ]
    pd.testing.assert_frame_equal(_query(db, "select ts, close from market_bars order by ts"), published)


#: GBPUSD's Monday 2012-02-06 moved by 626 whole weeks onto Monday 2024-02-05, inside the
#: partition range of the default settings (weekdays, hence the FX sessions, are unchanged).
SHIFT = pd.Timedelta(weeks=626)


class _GbpUsd:
    """The real GBPUSD 1-minute file, shifted into the partitioned range, served as BTCUSDT's
    partitions (the partition set is fixed at import). ``broken`` dates get a NaN close."""

    def __init__(self, broken=()):
        path = shared_file("fx_1m", "GBPUSD_m1_ask_2012.csv")
        df = pd.read_csv(path)
        df["ts"] = pd.to_datetime(df["timestamp"], utc=True) + SHIFT
        self.df, self.broken = df, set(broken)

    def fetch_bars(self, instrument, start, end):
        rows = self.df[(self.df["ts"] >= start) & (self.df["ts"] < end)]
        out = pd.DataFrame(
            {
                "ts": rows["ts"].astype("datetime64[ns, UTC]"),
                "instrument": instrument,
                "open": rows["open"],
                "high": rows["high"],
                "low": rows["low"],
                "close": rows["close"],
                "volume": 0.0,
                "source": "file",
            }
        )[BAR_COLUMNS].reset_index(drop=True)
        if str(start.date()) in self.broken:
            out.loc[100, "close"] = float("nan")
        return out


def test_feature_windows_never_reach_into_a_quarantined_day(tmp_path):
    """Item 2: Monday blocked, Tuesday clean: Tuesday's first hour is warm-up (NULL), and its
    volatility is the clean one, never the contaminated 0.85."""
    gbp = _GbpUsd(broken={"2024-02-05"})

    class Source(MarketSourceResource):
        def get_source(self):
            return gbp

    resources = temp_resources(tmp_path, market_source=Source(name="gbpusd"))
    instance = dg.DagsterInstance.ephemeral()
    blocked = run_data_pipeline(resources, instance, "2024-02-05|BTCUSDT", "2024-02-05|BTCUSDT", raise_on_error=False)
    assert not blocked.success
    assert run_data_pipeline(resources, instance, "2024-02-06|BTCUSDT", "2024-02-06|BTCUSDT").success

    db = tmp_path / "warehouse.duckdb"
    feats = _query(db, "select * from bar_features where date = '2024-02-06' order by ts")
    first_hour = feats[feats["ts"] < feats["ts"].min() + pd.Timedelta(minutes=60)]
    later = feats[feats["ts"] >= feats["ts"].min() + pd.Timedelta(minutes=60)]
    assert len(first_hour) > 50
    assert first_hour[["ret_1", "ret_60", "rv_60", "rsi_14"]].isna().all().all()
    assert later["rv_60"].notna().all() and later["rv_60"].max() < 1e-3
    assert later["ret_60"].abs().max() < 0.05


#: The feature definitions before they counted minutes: windows of N bars (lag / ROWS frames),
#: warm-up = the first 60 bars of the instrument's history.
BAR_COUNT_FEATURES_SQL = """
create or replace table bar_count_features as
with base as (
    select *,
        row_number() over w as n_hist,
        ln(close / lag(close, 1) over w) as ret_1,
        ln(close / lag(close, 5) over w) as ret_5,
        ln(close / lag(close, 15) over w) as ret_15,
        ln(close / lag(close, 60) over w) as ret_60,
        greatest(close - lag(close, 1) over w, 0) as gain,
        greatest(lag(close, 1) over w - close, 0) as loss
    from market_bars
    window w as (partition by instrument order by ts)
), rolling as (
    select *,
        stddev_samp(ret_1) over (partition by instrument order by ts rows between 14 preceding and current row) as rv_15,
        stddev_samp(ret_1) over (partition by instrument order by ts rows between 59 preceding and current row) as rv_60,
        avg(gain) over (partition by instrument order by ts rows between 13 preceding and current row) as ag,
        avg(loss) over (partition by instrument order by ts rows between 13 preceding and current row) as al,
        avg(close) over (partition by instrument order by ts rows between 11 preceding and current row) as s12,
        avg(close) over (partition by instrument order by ts rows between 25 preceding and current row) as s26,
        avg(close) over (partition by instrument order by ts rows between 19 preceding and current row) as s20,
        stddev_samp(close) over (partition by instrument order by ts rows between 19 preceding and current row) as sd20,
        avg(volume) over (partition by instrument order by ts rows between 59 preceding and current row) as vm,
        stddev_samp(volume) over (partition by instrument order by ts rows between 59 preceding and current row) as vs
    from base
), sig as (
    select *, (s12 - s26) / close as macd,
        avg((s12 - s26) / close) over (partition by instrument order by ts rows between 8 preceding and current row) as macd_signal
    from rolling
)
select instrument, ts, date, open, high, low, close, volume,
    case when n_hist > 60 then ret_1 end as ret_1, case when n_hist > 60 then ret_5 end as ret_5,
    case when n_hist > 60 then ret_15 end as ret_15, case when n_hist > 60 then ret_60 end as ret_60,
    case when n_hist > 60 then rv_15 end as rv_15, case when n_hist > 60 then rv_60 end as rv_60,
    case when n_hist > 60 then (case when ag + al = 0 then 50.0 else 100.0 * ag / (ag + al) end) end as rsi_14,
    case when n_hist > 60 then macd end as macd, case when n_hist > 60 then macd_signal end as macd_signal,
    case when n_hist > 60 then macd - macd_signal end as macd_hist,
    case when n_hist > 60 then (case when sd20 > 0 then (close - s20) / (2 * sd20) else 0.0 end) end as bb_pos_20,
    case when n_hist > 60 then (case when vs > 0 then (volume - vm) / vs else 0.0 end) end as volume_z_60,
    case when n_hist > 60 then (high - low) / close end as range_hl,
    case when n_hist > 60 then (close - open) / open end as range_co
from sig
"""
FEATURE_COLUMNS = [
    "ret_1",
    "ret_5",
    "ret_15",
    "ret_60",
    "rv_15",
    "rv_60",
    "rsi_14",
    "macd",
    "macd_signal",
    "macd_hist",
    "bb_pos_20",
    "volume_z_60",
    "range_hl",
    "range_co",
]


def test_features_match_the_bar_count_definitions_on_contiguous_minutes(tmp_path):
    """Item 6 on 1-minute data: minutes of time and bars are the same thing when no minute is
    missing, so the time-based SQL gives the benchmark's bar-count values."""
    path = shared_file("crypto_1m", "BTCUSDT-PERP_1m_2021-12-31_2022-02-01.csv")
    resources = temp_resources(tmp_path, market_source=MarketSourceResource(name="file", file_path=str(path)))
    assert run_data_pipeline(
        resources, dg.DagsterInstance.ephemeral(), "2022-01-10|BTCUSDT", "2022-01-11|BTCUSDT"
    ).success
    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    con.execute(BAR_COUNT_FEATURES_SQL)
    diff = con.execute(
        "select "
        + ", ".join(
            f"max(abs(a.{c} - b.{c})), sum(case when (a.{c} is null) <> (b.{c} is null) then 1 else 0 end)"
            for c in FEATURE_COLUMNS
        )
        + " from bar_features a join bar_count_features b using (instrument, ts)"
    ).fetchone()
    con.close()
    for c, worst, null_mismatch in zip(FEATURE_COLUMNS, diff[0::2], diff[1::2]):
        assert null_mismatch == 0, c
        assert worst is None or worst < 1e-9, (c, worst)


class _FiveMinute:
    """Replay bars thinned to one every 5 minutes."""

    def fetch_bars(self, instrument, start, end):
        df = ReplaySource(seed=11).fetch_bars(instrument, start, end)
        return df[df["ts"].dt.minute % 5 == 0].reset_index(drop=True)


class FiveMinuteSource(MarketSourceResource):
    def get_source(self):
        return _FiveMinute()


def test_features_refuse_partitions_that_are_not_one_minute_bars(tmp_path):
    """Item 6: 5-minute bars are published with their interval recorded, and the features refuse
    them by name instead of calling a 5-hour return ret_60."""
    resources = temp_resources(tmp_path, market_source=FiveMinuteSource(name="five"))
    result = run_data_pipeline(
        resources, dg.DagsterInstance.ephemeral(), "2024-03-01|BTCUSDT", "2024-03-01|BTCUSDT", raise_on_error=False
    )
    assert not result.success
    db = tmp_path / "warehouse.duckdb"
    assert _query(db, "select interval_s from published_partitions where layer = 'market_bars'")[
        "interval_s"
    ].tolist() == [300]
    err = _error_text(result)
    assert "2024-03-01|BTCUSDT" in err and "300 s apart" in err
    assert _query(db, "select count(*) as n from bar_features")["n"][0] == 0
