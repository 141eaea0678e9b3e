"""The one Definitions object of the autotrader code location.

``build_definitions(settings)`` is the whole code location for one ``Settings`` object: the
resources point at its stores, and asset, check and schedule bodies read thresholds, instruments
and costs from the ``settings`` resource (``settings: dg.ResourceParam[Settings]``), never from
``get_settings()``. The domains' lists are collected by hand, one line per kind of definition,
so this file shows the whole code location at a glance.
"""

from __future__ import annotations

import warnings

import dagster as dg

# Preview/beta notices on APIs we pin exactly (partitioned checks, backfill policies) are noise
# for users of the CLI and UI; upgrades are checked by the tests that list the definitions.
warnings.filterwarnings("ignore", category=dg.PreviewWarning)
warnings.filterwarnings("ignore", category=dg.BetaWarning)

from autotrader_assets.defs.alerting import alerting_sensors
from autotrader_assets.defs.deployment import (
    deployment_assets,
    deployment_jobs,
    deployment_resource,
    deployment_sensors,
)
from autotrader_assets.defs.features import feature_assets
from autotrader_assets.defs.features.project import dbt_resource
from autotrader_assets.defs.market_data import (
    market_bars,
    market_data_assets,
    market_data_checks,
    market_data_jobs,
    market_data_schedules,
)
from autotrader_assets.defs.market_data.resources import ArchiveResource, MarketSourceResource
from autotrader_assets.defs.monitoring import (
    monitoring_assets,
    monitoring_jobs,
    monitoring_schedules,
    monitoring_sensors,
)
from autotrader_assets.defs.operations import operations_jobs, operations_schedules, operations_sensors
from autotrader_assets.defs.trading import (
    paper_trading,
    trading_assets,
    trading_checks,
    trading_jobs,
    trading_schedules,
    trading_sensors,
)
from autotrader_assets.defs.training import training_assets, training_checks, training_jobs, training_schedules
from autotrader_assets.resources import default_resources
from autotrader_assets.settings import Settings, SettingsError, get_settings

#: The resource key under which every body receives the ``Settings`` object.
SETTINGS_RESOURCE = "settings"


def build_resources(settings: Settings | None = None) -> dict:
    """Every resource the code location needs, for the given settings."""
    s = settings or get_settings()
    resources = default_resources(s)
    resources.update(
        archive=ArchiveResource(uri=s.archive_uri, region_name=s.aws_region, endpoint_url=s.s3_endpoint_url or None),
        market_source=MarketSourceResource.from_settings(s),
        dbt=dbt_resource(s.warehouse_path, s.home / "dbt_profiles"),
        deployment=deployment_resource(s),
    )
    # A plain object is a valid Dagster resource; bodies annotate it ``dg.ResourceParam[Settings]``.
    resources[SETTINGS_RESOURCE] = s
    return resources


def check_partitions_match(settings: Settings) -> None:
    """Refuse settings whose partitioning differs from the one the assets were built with.

    Partitions are the asset graph's shape, fixed when the asset modules are imported (from the
    process settings): the instance records materializations by partition key, so one code
    location keeps one partitioning. Settings with another start date or instrument list would
    give bodies instruments the partitions do not have."""
    bars = market_bars.partitions_def
    instruments = tuple(bars.get_partitions_def_for_dimension("instrument").get_partition_keys())
    bar_start = bars.get_partitions_def_for_dimension("date").start.date().isoformat()
    paper_start = paper_trading.partitions_def.start.date().isoformat()
    problems = []
    if tuple(settings.instruments) != instruments:
        problems.append(
            f"instruments {list(settings.instruments)} != partitions {list(instruments)} (AUTOTRADER_INSTRUMENTS)"
        )
    for name, start in (("market_bars", bar_start), ("paper_trading", paper_start)):
        if settings.start_date != start:
            problems.append(
                f"start date {settings.start_date} != {name} partitions from {start} (AUTOTRADER_START_DATE)"
            )
    if problems:
        raise SettingsError(
            "settings do not match the partitions the assets were imported with: "
            + "; ".join(problems)
            + ". Partitions come from the environment of the process that imports the code location."
        )


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    """The code location for ``settings`` (default: the environment's)."""
    s = settings or get_settings()
    check_partitions_match(s)
    return dg.Definitions(
        assets=[
            *market_data_assets,
            *feature_assets,
            *training_assets,
            *deployment_assets,
            *trading_assets,
            *monitoring_assets,
        ],
        asset_checks=[*market_data_checks, *training_checks, *trading_checks],
        jobs=[*market_data_jobs, *training_jobs, *deployment_jobs, *trading_jobs, *monitoring_jobs, *operations_jobs],
        schedules=[
            *market_data_schedules,
            *training_schedules,
            *trading_schedules,
            *monitoring_schedules,
            *operations_schedules,
        ],
        sensors=[*deployment_sensors, *trading_sensors, *monitoring_sensors, *alerting_sensors, *operations_sensors],
        resources=build_resources(s),
        executor=dg.in_process_executor,
    )


defs = build_definitions()
