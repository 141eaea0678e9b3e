"""Jobs of the data pipeline: the partitioned pipeline, its archive-restoring twin, the freshness check."""

from __future__ import annotations

import dagster as dg

from autotrader_assets.concurrency import WAREHOUSE_WRITE_TAGS
from autotrader_assets.defs.market_data.assets import RESTORE_TAG, market_bars
from autotrader_assets.defs.market_data.checks import market_bars_freshness
from autotrader_assets.defs.market_data.partitions import market_partitions

data_pipeline_job = dg.define_asset_job(
    name="data_pipeline",
    selection=dg.AssetSelection.assets(market_bars).downstream(depth=None)
    - dg.AssetSelection.groups("training", "deployment", "trading", "monitoring"),
    partitions_def=market_partitions(),
    # Writes the warehouse: one such run at a time in production (autotrader_assets/concurrency.py).
    tags=WAREHOUSE_WRITE_TAGS,
    description="market_bars -> dbt staging and feature models, for the selected date x instrument partitions.",
)

data_rollback_job = dg.define_asset_job(
    name="data_rollback",
    selection=dg.AssetSelection.assets(market_bars).downstream(depth=None)
    - dg.AssetSelection.groups("training", "deployment", "trading", "monitoring"),
    partitions_def=market_partitions(),
    # A job tag, not run config: single-run backfill jobs cannot carry a PartitionedConfig.
    tags={RESTORE_TAG: "true", **WAREHOUSE_WRITE_TAGS},
    description="Restore the selected date x instrument partitions from the archive over the warehouse, "
    "then rebuild the feature models downstream of them. Refuses (writing nothing) if any archive is missing.",
)

freshness_job = dg.define_asset_job(
    name="market_data_freshness",
    selection=dg.AssetSelection.checks(market_bars_freshness),
    description="Evaluate the market-data freshness check.",
)
