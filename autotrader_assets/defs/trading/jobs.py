"""Trading jobs: the daily paper-trading run and the performance report."""

import dagster as dg

from autotrader_assets.concurrency import WAREHOUSE_WRITE_TAGS
from autotrader_assets.defs.trading.assets import paper_trading, trading_performance
from autotrader_assets.defs.trading.partitions import trading_partitions

paper_trading_job = dg.define_asset_job(
    "paper_trading_job",
    selection=dg.AssetSelection.assets(paper_trading, trading_performance),
    partitions_def=trading_partitions(),
    # Both assets write the warehouse: one writer at a time in production (concurrency.py).
    tags=WAREHOUSE_WRITE_TAGS,
    description="Paper-trade the selected date(s) (and every later computed date), then refresh the metrics.",
)

performance_report_job = dg.define_asset_job(
    name="performance_report",
    selection=dg.AssetSelection.keys("trading_performance"),
    tags=WAREHOUSE_WRITE_TAGS,
    description="Recompute the paper account's metrics and charts from the warehouse.",
)
