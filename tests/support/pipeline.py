"""Helpers for tests that run the data pipeline through Dagster on temporary stores."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

SHARED_DATA = Path(os.environ.get("AUTOTRADER_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))


def shared_file(*parts: str) -> Path:
    """A file of ../shared/data, or skip the test with the reason."""
    import pytest

    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real market data not available at {path} (../shared/data is absent in this clone)")
    return path


def temp_resources(tmp_path: Path, **overrides) -> dict:
    """The code location's resources, pointed at a temporary warehouse/archive/registry."""
    from autotrader_assets.defs.features.project import dbt_resource
    from autotrader_assets.defs.market_data.resources import ArchiveResource, MarketSourceResource
    from autotrader_assets.resources import RegistryResource, WarehouseResource
    from autotrader_assets.settings import get_settings

    resources = {
        "warehouse": WarehouseResource(path=str(tmp_path / "warehouse.duckdb")),
        "archive": ArchiveResource(uri=str(tmp_path / "archive")),
        "market_source": MarketSourceResource(name="replay", seed=11),
        "registry": RegistryResource(
            url=f"sqlite:///{tmp_path / 'registry.db'}", artifacts_uri=str(tmp_path / "artifacts")
        ),
        "dbt": dbt_resource(tmp_path / "warehouse.duckdb", tmp_path / "dbt_profiles"),
        # Thresholds and instruments for the bodies (the stores above are the temporary ones).
        "settings": get_settings(),
    }
    resources.update(overrides)
    return resources


def data_assets_and_checks():
    from autotrader_assets.defs.features import feature_assets
    from autotrader_assets.defs.market_data import market_data_assets, market_data_checks

    return [*market_data_assets, *feature_assets, *market_data_checks]


def run_data_pipeline(
    resources: dict, instance: dg.DagsterInstance, first: str, last: str, raise_on_error: bool = True
):
    """Materialize market_bars + dbt features over a date|instrument rectangle in one run."""
    return dg.materialize(
        data_assets_and_checks(),
        resources=resources,
        instance=instance,
        tags={ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last},
        raise_on_error=raise_on_error,
    )


def partition_results(result, check: str) -> dict[str, object]:
    """partition -> the evaluation of ``check`` for it in a run result (partitioned checks)."""
    return {e.partition: e for e in check_results(result).get(check, [])}


def check_results(result) -> dict[str, list]:
    """check name -> list of evaluations in a run result."""
    out: dict[str, list] = {}
    for ev in result.all_events:
        if ev.event_type_value == "ASSET_CHECK_EVALUATION":
            data = ev.event_specific_data
            out.setdefault(data.check_name, []).append(data)
    return out
