"""Partitioned checks record one result per partition, as the UI reads them.

What the UI's Partitions tab of a check shows is ``AssetCheckState`` (the event log's
per-partition check records resolved against the latest materializations and the run's status):
that is what these tests read, after a range run (single-run backfill) of ``market_bars`` and
after daily ``feature_drift`` runs.
"""

from __future__ import annotations

import dagster as dg
import numpy as np
import pytest
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionResolvedStatus as Status
from dagster._core.storage.event_log.base import AssetRecordsFilter

from autotrader_assets.defs.market_data import market_data_assets
from autotrader_assets.defs.market_data.checks import (
    COMPLETENESS_CHECK,
    MARKET_BARS,
    MAX_NAMED,
    OUTLIERS_CHECK,
    SCHEMA_CHECK,
    EvaluationSpool,
)
from autotrader_assets.defs.market_data.partitions import market_partitions
from autotrader_assets.defs.market_data.replay import ReplaySource
from autotrader_assets.defs.market_data.resources import MarketSourceResource
from autotrader_assets.defs.monitoring import feature_drift
from autotrader_assets.defs.trading.partitions import trading_partitions
from autotrader_assets.resources import RegistryResource, WarehouseResource
from autotrader_assets.settings import get_settings
from tests.support.monitoring import DAY, make_world, write_day
from tests.support.pipeline import temp_resources

pytestmark = pytest.mark.slow

DATES = ("2024-03-01", "2024-03-02", "2024-03-03")
INSTRUMENTS = ("BTCUSDT", "ETHUSDT")
BAD = "2024-03-02|BTCUSDT"


class _OneBadPartition:
    """The replay source with a NaN close in one partition (BAD) and a bad print in another."""

    def fetch_bars(self, instrument, start, end):
        df = ReplaySource(seed=11).fetch_bars(instrument, start, end)
        key = f"{start.date()}|{instrument}"
        if key == BAD:
            df.loc[10, "close"] = np.nan
        if key == "2024-03-03|ETHUSDT":
            # One isolated print 100x the price, back the next bar: the outlier rule's case.
            df.loc[500, ["close", "high"]] = df.loc[500, "close"] * 100
        return df


class OneBadPartitionResource(MarketSourceResource):
    def get_source(self):
        return _OneBadPartition()


def _statuses(instance, check: str, partitions_def) -> dict[str, set[str]]:
    key = dg.AssetCheckKey(MARKET_BARS if check != "feature_drift_psi" else dg.AssetKey("feature_drift"), check)
    state = instance.event_log_storage.get_asset_check_state([(key, partitions_def)])[key]
    return {
        status.value: set(subset.subset_value.get_partition_keys())
        for status, subset in state.subsets.items()
        if not subset.is_empty
    }


def test_a_range_run_records_every_partition_it_checked(tmp_path):
    from autotrader_assets.defs.market_data import assets as market_assets

    resources = temp_resources(tmp_path, market_source=OneBadPartitionResource(name="one-bad"))
    parts = {f"{d}|{i}" for d in DATES for i in INSTRUMENTS}
    with dg.instance_for_test() as instance, pytest.MonkeyPatch.context() as mp:
        # Two partitions per chunk: the evaluations wait on disk and are emitted chunk by chunk.
        mp.setattr(market_assets, "WRITE_CHUNK", 2)
        result = dg.materialize(
            market_data_assets,
            selection=["market_bars"],
            resources=resources,
            instance=instance,
            tags={
                "dagster/asset_partition_range_start": f"{DATES[0]}|{INSTRUMENTS[0]}",
                "dagster/asset_partition_range_end": f"{DATES[-1]}|{INSTRUMENTS[-1]}",
            },
            raise_on_error=False,
        )
        assert not result.success  # the blocking schema check failed for BAD

        # Nothing is left planned or skipped; the schema judged all 6, the warnings the 5 published.
        schema = _statuses(instance, SCHEMA_CHECK, market_partitions())
        assert schema == {"SUCCEEDED": parts - {BAD}, "FAILED": {BAD}}
        outliers = _statuses(instance, OUTLIERS_CHECK, market_partitions())
        # BAD was quarantined and nothing new was published to judge: its warnings did not run and
        # the step failed, which is what the UI says ("execution failed"), not "skipped".
        assert outliers == {
            "SUCCEEDED": parts - {BAD, "2024-03-03|ETHUSDT"},
            "FAILED": {"2024-03-03|ETHUSDT"},
            "EXECUTION_FAILED": {BAD},
        }
        completeness = _statuses(instance, COMPLETENESS_CHECK, market_partitions())
        assert completeness == {"SUCCEEDED": parts - {BAD}, "EXECUTION_FAILED": {BAD}}
        assert Status.SKIPPED.value not in outliers and Status.IN_PROGRESS.value not in outliers

        # Each partition's record is its own result and targets that partition's materialization.
        key = dg.AssetCheckKey(MARKET_BARS, OUTLIERS_CHECK)
        for part in parts - {BAD}:
            (record,) = instance.event_log_storage.get_asset_check_execution_history(
                key, limit=5, partition_filter=_partition_filter(part)
            )
            ev = record.event.dagster_event.event_specific_data
            mat = instance.fetch_materializations(
                AssetRecordsFilter(asset_key=MARKET_BARS, asset_partitions=[part]), limit=1
            ).records[0]
            assert ev.partition == part and ev.target_materialization_data.storage_id == mat.storage_id
        bad_print = instance.event_log_storage.get_asset_check_execution_history(
            key, limit=5, partition_filter=_partition_filter("2024-03-03|ETHUSDT")
        )[0]
        ev = bad_print.event.dagster_event.event_specific_data
        assert ev.metadata["outlier_count"].value == 1 and "spike-and-return" in ev.description

        # The run's summary on the materialization counts every partition.
        summary = result.asset_materializations_for_node("market_bars")[0].metadata["checks"].value
        assert summary[SCHEMA_CHECK] == {"passed": 5, "failed": 1, "failed_partitions": [BAD]}
        assert summary[OUTLIERS_CHECK]["failed_partitions"] == ["2024-03-03|ETHUSDT"]


def _partition_filter(key: str):
    from dagster._core.storage.event_log.base import PartitionKeyFilter

    return PartitionKeyFilter(key=key)


def test_the_spool_keeps_a_bounded_summary_and_emits_every_result(tmp_path):
    parts = [f"2024-01-{d:02d}|BTCUSDT" for d in range(1, 29)] * 12  # 336 results
    with dg.instance_for_test() as instance, EvaluationSpool({OUTLIERS_CHECK}) as spool:
        spool.add(
            [
                dg.AssetCheckEvaluation(asset_key=MARKET_BARS, check_name=OUTLIERS_CHECK, passed=False, partition=p)
                for p in parts
            ]
        )
        # A check the run did not select is neither counted nor emitted.
        spool.add(
            [dg.AssetCheckEvaluation(asset_key=MARKET_BARS, check_name=SCHEMA_CHECK, passed=True, partition=parts[0])]
        )
        assert spool.summary == {OUTLIERS_CHECK: {"passed": 0, "failed": 336, "failed_partitions": parts[:MAX_NAMED]}}
        emitted = list(spool.emit(instance, "no-such-run", chunk=50))
    assert [e.partition for e in emitted] == parts
    # No materialization of that run: nothing to point at, rather than another run's.
    assert all(e.target_materialization_data is None for e in emitted)


def test_feature_drift_psi_is_recorded_against_the_date_it_judged(tmp_path):
    world = make_world(tmp_path)
    other = "2024-03-06"
    write_day(world.warehouse, DAY, center=0.0)  # far from v2's reference: critical drift
    write_day(world.warehouse, other, center=3.0)  # like v2's reference: no drift
    resources = {
        "warehouse": WarehouseResource(path=str(world.warehouse)),
        "registry": RegistryResource(url=world.url, artifacts_uri=world.artifacts),
        "settings": get_settings(),
    }
    with dg.instance_for_test() as instance:
        for day in (DAY, other):
            dg.materialize([feature_drift], partition_key=day, instance=instance, resources=resources)
        # The later run (a passing day) does not hide the earlier day's failure.
        assert _statuses(instance, "feature_drift_psi", trading_partitions()) == {"SUCCEEDED": {other}, "FAILED": {DAY}}
