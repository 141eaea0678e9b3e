"""The health check job: the day's drift (with its check) and the health findings."""

import dagster as dg

from autotrader_assets.concurrency import WAREHOUSE_WRITE_TAGS
from autotrader_assets.defs.monitoring.assets import feature_drift, model_health
from autotrader_assets.defs.trading.partitions import trading_partitions

health_check_job = dg.define_asset_job(
    "health_check",
    selection=dg.AssetSelection.assets(feature_drift, model_health),
    partitions_def=trading_partitions(),
    # Both assets write the warehouse: one writer at a time in production (concurrency.py).
    tags=WAREHOUSE_WRITE_TAGS,
    description="Feature drift (PSI vs the serving model's reference, check feature_drift_psi) and the day's "
    "health findings (drift, data quality, confidence, win rate, serving).",
)
