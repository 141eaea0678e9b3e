"""dbt feature models as Dagster assets, partitioned like ``market_bars``; dbt tests = checks.

Write-audit-publish for features: dbt builds ``bar_features`` into the audit relation
``bar_features_audit`` (only this run's partitions) and runs its tests on it; this asset then
publishes the partitions that passed into ``bar_features`` (what training, paper trading and the
rollout replay read) in one transaction and quarantines the ones that failed, then fails the run
if anything failed, so sensors see it.
"""

import json
from typing import Any, Mapping, Sequence

import dagster as dg
import pandas as pd
from dagster_dbt import DagsterDbtTranslator, DagsterDbtTranslatorSettings, DbtCliResource, dbt_assets

from autotrader_assets.defs.features.project import dbt_project
from autotrader_assets.defs.market_data.partitions import context_partitions, market_partitions
from autotrader_assets.defs.market_data.publish import (
    FEATURE_INTERVAL_S,
    DuckDBPublisher,
    PublishBatch,
    new_batch_id,
    partition_status,
)
from autotrader_assets.resources import WarehouseResource

#: The relation dbt builds for the audit, and the published table downstream reads.
AUDIT_RELATION = "bar_features_audit"
FEATURES_LAYER = "bar_features"


class FeatureTranslator(DagsterDbtTranslator):
    """Model names become asset keys (``bar_features``); everything sits in the features group,
    owned by the data team. Code versions stay dagster-dbt's: the checksum of each model's SQL."""

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        if dbt_resource_props["resource_type"] == "source":
            return "market_data"
        return "features"

    def get_owners(self, dbt_resource_props: Mapping[str, Any]) -> Sequence[str] | None:
        return ["team:quant-data"]

    def get_tags(self, dbt_resource_props: Mapping[str, Any]) -> Mapping[str, str]:
        return {**super().get_tags(dbt_resource_props), "domain": "features", "tier": "standard"}


class FeaturesNotPublishedError(RuntimeError):
    """Some requested feature partitions failed their audit (or were refused) and were not published."""


def dbt_vars_for(parts: list[tuple[str, str]]) -> dict[str, list[str]]:
    """dbt vars that restrict a run to the selected dates and instruments."""
    return {
        "dates": sorted({d for d, _ in parts}),
        "instruments": sorted({i for _, i in parts}),
    }


def classify_inputs(status, parts: list[tuple[str, str]]) -> tuple[list, dict, list]:
    """Requested partitions -> (usable, refused {key: reason}, without published bars).

    Features are defined on 1-minute bars: a partition published at another interval is
    refused by name rather than given a ``ret_1`` that is not a 1-minute return.
    """
    usable, refused, absent = [], {}, []
    by_key = {(r.date, r.instrument): r for r in status.itertuples()}
    for key in parts:
        row = by_key.get(key)
        if row is None or row.state in ("missing", "quarantined"):
            absent.append(key)
        elif not pd.isna(row.interval_s) and int(row.interval_s) != FEATURE_INTERVAL_S:
            refused[key] = (
                f"bars are {int(row.interval_s)} s apart: the features are defined on {FEATURE_INTERVAL_S} s bars "
                "(ret_1, rv_60 ... count minutes), so this partition is refused"
            )
        else:
            usable.append(key)
    return usable, refused, absent


def failed_test_partitions(con, run_results: dict, manifest: dict, parts: list[tuple[str, str]]) -> dict:
    """{(date, instrument): reason} for the partitions named by failing dbt tests.

    A failing test whose stored failures carry ``date`` and ``instrument`` names its partitions;
    one that cannot (an error, or no such columns) condemns every partition of the run.
    """
    wanted = set(parts)
    out: dict[tuple[str, str], list[str]] = {}
    nodes = manifest.get("nodes", {})
    for res in run_results.get("results", []):
        uid = res.get("unique_id", "")
        if not uid.startswith("test.") or res.get("status") in ("pass", "success", "skipped", "warn"):
            continue
        name = uid.split(".")[2] if uid.count(".") >= 2 else uid
        relation = res.get("relation_name") or nodes.get(uid, {}).get("relation_name")
        named: set[tuple[str, str]] | None = None
        if res.get("status") == "fail" and relation:
            cols = {r[0] for r in con.execute(f"describe {relation}").fetchall()}
            if {"date", "instrument"} <= cols:
                named = {
                    (str(d), i)
                    for d, i in con.execute(
                        f"select distinct cast(date as varchar), instrument from {relation} where date is not null"
                    ).fetchall()
                } & wanted
        for key in named if named is not None else wanted:
            out.setdefault(key, []).append(f"dbt test {name}: {res.get('status')}")
    return {k: "; ".join(v) for k, v in out.items()}


@dbt_assets(
    manifest=dbt_project().manifest_path,
    project=dbt_project(),
    dagster_dbt_translator=FeatureTranslator(settings=DagsterDbtTranslatorSettings(enable_asset_checks=True)),
    partitions_def=market_partitions(),
    backfill_policy=dg.BackfillPolicy.single_run(),
    name="dbt_feature_models",
)
def dbt_feature_models(context: dg.AssetExecutionContext, dbt: DbtCliResource, warehouse: WarehouseResource):
    """Staging and feature models built by dbt on DuckDB for the selected partitions, audited, then published."""
    parts = context_partitions(context)
    with warehouse.connect(read_only=True) as con:
        status = partition_status(con, "market_bars", parts)
    usable, refused, absent = classify_inputs(status, parts)
    if refused:
        context.log.error(
            f"{len(refused)} partition(s) refused by the features (not 1-minute bars): "
            + ", ".join(f"{d}|{i}" for d, i in sorted(refused)[:20])
        )
    if absent:
        context.log.warning(
            f"{len(absent)} partition(s) have no published bars, so no features: "
            + ", ".join(f"{d}|{i}" for d, i in sorted(absent)[:20])
        )
    dbt_vars = dbt_vars_for(parts)
    context.log.info(f"dbt build for {len(dbt_vars['dates'])} date(s) x {len(dbt_vars['instruments'])} instrument(s)")
    # The warehouse connection above is closed: dbt opens the same DuckDB file for writing.
    invocation = dbt.cli(["build", "--vars", json.dumps(dbt_vars)], context=context, raise_on_error=False)
    events = list(invocation.stream())
    run_results = invocation.get_artifact("run_results.json")
    manifest = invocation.get_artifact("manifest.json")
    model_ok = any(
        r.get("unique_id", "").startswith("model.")
        and r["unique_id"].endswith(".bar_features")
        and r.get("status") == "success"
        for r in run_results.get("results", [])
    )

    batch_id = new_batch_id()
    if model_ok:
        with warehouse.connect() as con:
            failed = failed_test_partitions(con, run_results, manifest, usable)
            batch = PublishBatch(layer=FEATURES_LAYER, batch_id=batch_id, audit_relation=AUDIT_RELATION)
            batch.passed_keys = [k for k in usable if k not in failed]
            batch.reasons = {**failed, **refused}
            result = DuckDBPublisher(con).publish(batch)
        published, quarantined = result.published, {f"{d}|{i}": batch.reasons[(d, i)] for d, i in result.quarantined}
    else:
        # The audit relation was not rebuilt by this run: nothing of it may be published.
        published, quarantined = [], {}
    context.log.info(f"features: published {len(published)} partition(s), quarantined {len(quarantined)}")
    for event in events:
        if isinstance(event, dg.Output) and event.output_name == FEATURES_LAYER:
            event = event.with_metadata(
                {
                    **event.metadata,
                    "audit_relation": AUDIT_RELATION,
                    "published_table": FEATURES_LAYER,
                    "partitions_published": len(published),
                    "quarantined_partitions": dg.MetadataValue.json(dict(sorted(quarantined.items()))),
                    "partitions_without_published_bars": dg.MetadataValue.json(sorted(f"{d}|{i}" for d, i in absent)),
                    "batch_id": batch_id,
                }
            )
        yield event
    if not model_ok:
        raise FeaturesNotPublishedError("dbt did not build bar_features; nothing was published (see the dbt log above)")
    if quarantined:
        raise FeaturesNotPublishedError(
            f"{len(quarantined)} feature partition(s) failed their audit and were quarantined; the published "
            f"version is unchanged: " + "; ".join(f"{k}: {v}" for k, v in sorted(quarantined.items())[:10])
        )
