"""The one Definitions object of the autotrader code location."""
from __future__ import annotations

import warnings

import dagster as dg

# Preview/beta notices on APIs we pin exactly (partitioned checks, backfill policies) are noise
# for users of the CLI and UI; upgrades are checked by the tests that list the definitions.
warnings.filterwarnings("ignore", category=dg.PreviewWarning)
warnings.filterwarnings("ignore", category=dg.BetaWarning)

from autotrader_assets.defs.features import feature_assets
from autotrader_assets.defs.features.project import dbt_resource
from autotrader_assets.defs.market_data import (
    market_data_assets,
    market_data_checks,
    market_data_jobs,
    market_data_schedules,
)
from autotrader_assets.defs.market_data.resources import ArchiveResource, MarketSourceResource
from autotrader_assets.defs.deployment import (
    deployment_assets,
    deployment_jobs,
    deployment_resource,
    deployment_sensors,
)
from autotrader_assets.defs.trading import (
    trading_assets,
    trading_checks,
    trading_jobs,
    trading_schedules,
    trading_sensors,
)
from autotrader_assets.defs.training import training_assets, training_checks, training_jobs, training_schedules
from autotrader_assets.resources import default_resources
from autotrader_assets.settings import Settings, get_settings


def build_resources(settings: Settings | None = None) -> dict:
    """Every resource the code location needs, for the given settings."""
    s = settings or get_settings()
    resources = default_resources(s)
    resources.update(
        archive=ArchiveResource(uri=s.archive_uri, region_name=s.aws_region),
        market_source=MarketSourceResource(name=s.market_source, seed=s.replay_seed),
        dbt=dbt_resource(s.warehouse_path, s.home / "dbt_profiles"),
        deployment=deployment_resource(s),
    )
    return resources


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    s = settings or get_settings()
    return dg.Definitions(
        assets=[*market_data_assets, *feature_assets, *training_assets, *deployment_assets, *trading_assets],
        asset_checks=[*market_data_checks, *training_checks, *trading_checks],
        jobs=[*market_data_jobs, *training_jobs, *deployment_jobs, *trading_jobs],
        schedules=[*market_data_schedules, *training_schedules, *trading_schedules],
        sensors=[*deployment_sensors, *trading_sensors],
        resources=build_resources(s),
        executor=dg.in_process_executor,
    )


defs = build_definitions()
