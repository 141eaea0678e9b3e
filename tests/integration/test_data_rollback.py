"""Data rollback: archived partitions restored byte-identically, features rebuilt, refusals."""

from __future__ import annotations

import dagster as dg
import duckdb
import pandas as pd
import pytest

from autotrader_assets.defs.market_data.archive import frame_to_parquet_bytes
from autotrader_assets.defs.market_data.jobs import data_rollback_job
from autotrader_assets.defs.market_data.partitions import range_tags
from autotrader_assets.defs.market_data.warehouse import read_partition
from tests.support.pipeline import data_assets_and_checks, run_data_pipeline, temp_resources

pytestmark = pytest.mark.slow


def _rollback(resources, instance, first, last, instruments, raise_on_error=True):
    defs = dg.Definitions(
        assets=data_assets_and_checks()[:2],
        asset_checks=data_assets_and_checks()[2:],
        jobs=[data_rollback_job],
        resources=resources,
    )
    return defs.resolve_job_def("data_rollback").execute_in_process(
        instance=instance, tags=range_tags(first, last, instruments), raise_on_error=raise_on_error
    )


def _features(db, date, inst):
    con = duckdb.connect(db, read_only=True)
    try:
        return con.execute(
            "select * exclude (date) from bar_features where date = ? and instrument = ? order by ts", [date, inst]
        ).df()
    finally:
        con.close()


def test_restore_is_byte_identical_and_rebuilds_features(tmp_path):
    resources = temp_resources(tmp_path)
    instance = dg.DagsterInstance.ephemeral()
    assert run_data_pipeline(resources, instance, "2024-04-01|BTCUSDT", "2024-04-02|ETHUSDT").success
    db = str(tmp_path / "warehouse.duckdb")
    original_features = _features(db, "2024-04-02", "BTCUSDT")

    # corrupt the warehouse the way a bad upstream fix would: shifted prices, lost rows
    con = duckdb.connect(db)
    con.execute("update market_bars set close = close * 1.5 where date = '2024-04-02' and instrument = 'BTCUSDT'")
    con.execute("delete from market_bars where date = '2024-04-02' and instrument = 'BTCUSDT' and minute(ts) = 7")
    con.close()

    # a source that would give different bars proves the rollback reads the archive, not the source
    from autotrader_assets.defs.market_data.resources import MarketSourceResource

    resources["market_source"] = MarketSourceResource(name="replay", seed=99)
    result = _rollback(resources, instance, "2024-04-02", "2024-04-02", ["BTCUSDT"])
    assert result.success
    archived = pd.read_parquet(tmp_path / "archive" / "2024-04-02" / "BTCUSDT.parquet")
    con = duckdb.connect(db, read_only=True)
    restored = read_partition(con, "2024-04-02", "BTCUSDT")
    untouched = con.execute("select count(*) from market_bars where date = '2024-04-01'").fetchone()[0]
    con.close()
    # the source's frame attributes (interval, duplicates dropped) ride in the archive's Parquet
    # metadata, not in the warehouse: compare the bars
    archived.attrs = {}
    assert frame_to_parquet_bytes(restored) == frame_to_parquet_bytes(archived)
    assert untouched > 0
    pd.testing.assert_frame_equal(_features(db, "2024-04-02", "BTCUSDT"), original_features)


def test_restore_refuses_without_archive_and_overwrites_nothing(tmp_path):
    resources = temp_resources(tmp_path)
    instance = dg.DagsterInstance.ephemeral()
    assert run_data_pipeline(resources, instance, "2024-04-01|BTCUSDT", "2024-04-01|ETHUSDT").success
    (tmp_path / "archive" / "2024-04-01" / "ETHUSDT.parquet").unlink()
    db = str(tmp_path / "warehouse.duckdb")
    con = duckdb.connect(db)
    con.execute("update market_bars set volume = 0 where instrument = 'BTCUSDT'")
    con.close()
    result = _rollback(resources, instance, "2024-04-01", "2024-04-01", ["BTCUSDT", "ETHUSDT"], raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_failure)
    err = failure.event_specific_data.error.to_string()
    assert "ArchiveMissingError" in err and "2024-04-01|ETHUSDT" in err
    con = duckdb.connect(db, read_only=True)
    # BTCUSDT had an archive, but the rollback is all-or-nothing: still the corrupted values
    assert con.execute("select max(volume) from market_bars where instrument = 'BTCUSDT'").fetchone()[0] == 0
    con.close()


@pytest.mark.parametrize("bad", [["../../etc"], ["NOPE"]])
def test_restore_rejects_unknown_or_tricky_instruments(bad):
    with pytest.raises(ValueError):
        range_tags("2024-04-01", "2024-04-01", bad)


def test_successful_rollback_requests_paper_trading_recompute(tmp_path):
    """The reprocess sensor asks paper trading to redo the first already-traded restored date."""
    from autotrader_assets.defs.trading.sensors import data_rollback_reprocess_sensor
    from autotrader_assets.resources import WarehouseResource

    resources = temp_resources(tmp_path)
    instance = dg.DagsterInstance.ephemeral()
    assert run_data_pipeline(resources, instance, "2024-04-01|BTCUSDT", "2024-04-03|BTCUSDT").success
    result = _rollback(resources, instance, "2024-04-02", "2024-04-03", ["BTCUSDT"])
    assert result.success

    warehouse = WarehouseResource(path=str(tmp_path / "warehouse.duckdb"))

    def evaluate():
        ctx = dg.build_run_status_sensor_context(
            sensor_name="data_rollback_reprocess_sensor",
            dagster_instance=instance,
            dagster_run=result.dagster_run,
            dagster_event=result.get_run_success_event(),
            resources={"warehouse": warehouse},
        )
        return data_rollback_reprocess_sensor(ctx)

    assert isinstance(evaluate(), dg.SkipReason)  # nothing paper-traded yet

    with warehouse.connect() as con:
        con.execute("create table paper_account_state (date date, end_equity double)")
        con.execute("insert into paper_account_state values ('2024-04-01', 1), ('2024-04-03', 1), ('2024-04-04', 1)")
    request = evaluate()
    assert isinstance(request, dg.RunRequest)
    assert request.partition_key == "2024-04-03"  # first traded date on/after the first restored date
    assert request.run_key == f"reprocess-after-{result.run_id}"


def test_restore_previous_version_after_a_bad_refetch(tmp_path):
    """A re-fetch that brought bad data replaced the archive; the previous version restores it."""
    from autotrader_assets.defs.market_data.resources import MarketSourceResource

    resources = temp_resources(tmp_path)
    instance = dg.DagsterInstance.ephemeral()
    assert run_data_pipeline(resources, instance, "2024-04-01|BTCUSDT", "2024-04-01|BTCUSDT").success
    db = str(tmp_path / "warehouse.duckdb")
    good = _features(db, "2024-04-01", "BTCUSDT")

    resources["market_source"] = MarketSourceResource(name="replay", seed=99)  # the "vendor fix"
    assert run_data_pipeline(resources, instance, "2024-04-01|BTCUSDT", "2024-04-01|BTCUSDT").success
    assert not _features(db, "2024-04-01", "BTCUSDT")["close"].equals(good["close"])

    defs = dg.Definitions(
        assets=data_assets_and_checks()[:2],
        asset_checks=data_assets_and_checks()[2:],
        jobs=[data_rollback_job],
        resources=resources,
    )
    tags = {**range_tags("2024-04-01", "2024-04-01", ["BTCUSDT"]), "autotrader/archive_version": "previous"}
    assert defs.resolve_job_def("data_rollback").execute_in_process(instance=instance, tags=tags).success
    pd.testing.assert_frame_equal(_features(db, "2024-04-01", "BTCUSDT"), good)
    # the bad file is not lost either: it is now the previous version
    from autotrader_assets.defs.market_data.archive import LocalArchive

    assert len(LocalArchive(tmp_path / "archive").versions("2024-04-01", "BTCUSDT")) == 2
