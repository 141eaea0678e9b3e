"""dbt feature models as Dagster assets, partitioned like ``market_bars``; dbt tests = checks."""

import json
from typing import Any, Mapping

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DagsterDbtTranslatorSettings, DbtCliResource, dbt_assets

from autotrader_assets.defs.features.project import dbt_project
from autotrader_assets.defs.market_data.partitions import context_partitions, market_partitions


class FeatureTranslator(DagsterDbtTranslator):
    """Model names become asset keys (``bar_features``); everything sits in the features group."""

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        if dbt_resource_props["resource_type"] == "source":
            return "market_data"
        return "features"


def dbt_vars_for(parts: list[tuple[str, str]]) -> dict[str, list[str]]:
    """dbt vars that restrict a run to the selected dates and instruments."""
    return {
        "dates": sorted({d for d, _ in parts}),
        "instruments": sorted({i for _, i in parts}),
    }


@dbt_assets(
    manifest=dbt_project().manifest_path,
    project=dbt_project(),
    dagster_dbt_translator=FeatureTranslator(settings=DagsterDbtTranslatorSettings(enable_asset_checks=True)),
    partitions_def=market_partitions(),
    backfill_policy=dg.BackfillPolicy.single_run(),
    name="dbt_feature_models",
)
def dbt_feature_models(context: dg.AssetExecutionContext, dbt: DbtCliResource):
    """Staging and feature models built by dbt on DuckDB for the selected partitions."""
    parts = context_partitions(context)
    dbt_vars = dbt_vars_for(parts)
    context.log.info(
        f"dbt build for {len(dbt_vars['dates'])} date(s) x {len(dbt_vars['instruments'])} instrument(s)"
    )
    yield from dbt.cli(["build", "--vars", json.dumps(dbt_vars)], context=context).stream()
