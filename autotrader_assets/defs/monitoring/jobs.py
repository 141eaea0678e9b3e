"""The health check job: the day's drift (with its check) and the health findings."""
import dagster as dg

from autotrader_assets.defs.monitoring.assets import feature_drift, model_health
from autotrader_assets.defs.trading.partitions import trading_partitions

health_check_job = dg.define_asset_job(
    "health_check",
    selection=dg.AssetSelection.assets(feature_drift, model_health),
    partitions_def=trading_partitions(),
    description="Feature drift (PSI vs the serving model's reference, check feature_drift_psi) and the day's "
    "health findings (drift, data quality, confidence, win rate, serving).",
)
