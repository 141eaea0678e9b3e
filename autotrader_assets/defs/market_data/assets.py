"""Market-data assets and checks: ``market_bars`` partitioned by date x instrument."""

import datetime as dt
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
import pandas as pd

from autotrader_assets.defs.market_data.partitions import context_partitions, market_partitions
from autotrader_assets.defs.market_data.resources import ArchiveResource, MarketSourceResource
from autotrader_assets.defs.market_data.validation import (
    find_gaps_many,
    missing_fraction,
    missing_fractions,
    partition_failures,
    return_outliers_many,
)
from autotrader_assets.defs.market_data.warehouse import read_partitions, replace_partitions
from autotrader_assets.resources import WarehouseResource
from autotrader_assets.settings import get_settings

#: Partitions written to the warehouse per transaction during large backfills.
WRITE_CHUNK = 256
#: Bars of yesterday are expected by 00:30 UTC.
FRESHNESS_DEADLINE_CRON = "30 0 * * *"


def _md_table(df: pd.DataFrame, limit: int = 20) -> str:
    return "(none)" if df.empty else df.head(limit).to_markdown(index=False)


class MarketBarsConfig(dg.Config):
    """``restore_from_archive``: reload the partitions from the archive instead of the source
    (the data rollback); the archive is then read, never rewritten."""

    restore_from_archive: bool = False
    archive_version: str = "latest"


#: Run tag that turns a market_bars run into a data rollback (set by the data_rollback job).
RESTORE_TAG = "autotrader/restore_from_archive"
#: Optional run tag of a data rollback: which archive version to restore ("latest", "previous"
#: or a stamp listed by `autotrader data archive-versions`).
ARCHIVE_VERSION_TAG = "autotrader/archive_version"


class ArchiveMissingError(RuntimeError):
    """A data rollback asked for partitions that have no archive; nothing was overwritten."""


@dg.asset(
    partitions_def=market_partitions(),
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="market_data",
    kinds={"duckdb", "parquet"},
    freshness_policy=dg.FreshnessPolicy.cron(
        deadline_cron=FRESHNESS_DEADLINE_CRON, lower_bound_delta=dt.timedelta(hours=24)
    ),
    owners=["team:quant-data"],
    tags={"domain": "market_data"},
)
def market_bars(
    context: dg.AssetExecutionContext,
    config: MarketBarsConfig,
    warehouse: WarehouseResource,
    archive: ArchiveResource,
    market_source: MarketSourceResource,
) -> dg.MaterializeResult:
    """One-minute OHLCV bars per day and instrument: archived raw, then loaded into the warehouse."""
    parts = context_partitions(context)
    store = archive.store()
    restoring = config.restore_from_archive or context.run.tags.get(RESTORE_TAG) == "true"
    version = context.run.tags.get(ARCHIVE_VERSION_TAG, config.archive_version)
    if restoring:
        if version == "latest":
            absent = [f"{d}|{i}" for d, i in parts if not store.exists(d, i)]
        elif version == "previous":
            absent = [f"{d}|{i}" for d, i in parts if not store.versions(d, i)]
        else:
            absent = [f"{d}|{i}" for d, i in parts if version not in store.versions(d, i)]
        if absent:
            # Checked for every partition before the first write: a rollback is all or nothing.
            raise ArchiveMissingError(
                f"no archive ({version}) for {len(absent)} partition(s), nothing restored: {', '.join(absent[:20])}"
            )
        source_name = f"archive ({store.uri}, version {version})"
    else:
        source = market_source.get_source()
        source_name = market_source.name
    total_rows, written_parts, pending = 0, 0, {}
    missing: dict[str, float] = {}
    context.log.info(f"{'restoring' if restoring else 'fetching'} {len(parts)} partition(s) from {source_name}")

    def flush() -> None:
        nonlocal total_rows, written_parts
        with warehouse.connect() as con:
            total_rows += replace_partitions(con, pending)
        written_parts += len(pending)
        context.log.info(f"loaded {written_parts}/{len(parts)} partitions ({total_rows:,} bars)")
        pending.clear()

    # Archive writes (Parquet encoding, S3 puts) release the GIL: overlap them with fetching.
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="archive") as pool:
        writes = []
        for date, instrument in parts:
            if restoring:
                bars = store.read(date, instrument, version=version)
                if version != "latest":
                    # The restored version becomes current again; the file it replaces is kept
                    # as a version, so this rollback can itself be undone.
                    writes.append(pool.submit(store.write, date, instrument, bars))
            else:
                start = pd.Timestamp(date, tz="UTC")
                bars = source.fetch_bars(instrument, start, start + pd.Timedelta(days=1))
                writes.append(pool.submit(store.write, date, instrument, bars))
            pending[(date, instrument)] = bars
            missing[f"{date}|{instrument}"] = round(missing_fraction(bars), 4)
            if len(pending) >= WRITE_CHUNK:
                # The archive of a chunk is complete before the warehouse sees it: it is what
                # a data rollback restores from.
                for w in writes:
                    w.result()
                writes.clear()
                flush()
        for w in writes:
            w.result()
        if pending:
            flush()

    worst = max(missing.items(), key=lambda kv: kv[1]) if missing else ("", 0.0)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": dg.MetadataValue.int(total_rows),
            "partitions": dg.MetadataValue.int(len(parts)),
            "source": source_name,
            "restored_from_archive": restoring,
            "archive": dg.MetadataValue.path(store.uri),
            "warehouse": dg.MetadataValue.path(warehouse.path),
            "worst_missing_fraction": dg.MetadataValue.float(float(worst[1])),
            "worst_missing_partition": worst[0],
        }
    )


#: Partitions read per chunk by the checks: memory stays bounded (~370k rows) on long backfills.
CHECK_CHUNK = 256
#: Failure rows kept for the metadata table (the counts cover all of them).
MAX_CASES = 1000


def _selected_chunks(context, warehouse: WarehouseResource):
    """(partitions, rows) of the run's selection, CHECK_CHUNK partitions at a time."""
    parts = context_partitions(context)
    with warehouse.connect(read_only=True) as con:
        for k in range(0, len(parts), CHECK_CHUNK):
            chunk = parts[k : k + CHECK_CHUNK]
            yield chunk, read_partitions(con, chunk)


@dg.asset_check(
    asset=market_bars,
    partitions_def=market_partitions(),
    blocking=True,
    description="pandera schema: types, no NaN, positive prices, high/low consistent, volume >= 0, "
    "unique increasing timestamps inside the partition. Blocks features on failure.",
)
def market_bars_schema(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource) -> dg.AssetCheckResult:
    rows, n_parts, n_cases, failed, kept = 0, 0, 0, set(), []
    for parts, df in _selected_chunks(context, warehouse):
        n, bad, cases = partition_failures(parts, df)
        rows, n_parts, n_cases = rows + n, n_parts + len(parts), n_cases + len(cases)
        failed |= bad
        if sum(map(len, kept)) < MAX_CASES and not cases.empty:
            kept.append(cases)
    cases = pd.concat(kept, ignore_index=True).head(MAX_CASES) if kept else pd.DataFrame()
    return dg.AssetCheckResult(
        passed=not failed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "rows_checked": rows,
            "partitions_checked": n_parts,
            "failed_partitions": dg.MetadataValue.json(sorted(failed)),
            "failure_count": n_cases,
            "failure_cases": dg.MetadataValue.md(_md_table(cases, 50)),
        },
    )


@dg.asset_check(
    asset=market_bars,
    partitions_def=market_partitions(),
    description="Completeness: WARN when more than the allowed fraction of the day's minutes is missing.",
)
def market_bars_completeness(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource) -> dg.AssetCheckResult:
    limit = get_settings().thresholds.max_missing_fraction
    fractions: dict[str, float] = {}
    gaps = []
    for parts, frame in _selected_chunks(context, warehouse):
        fractions.update(missing_fractions(frame, parts))
        found = find_gaps_many(frame)
        if not found.empty:
            gaps.append(found.nlargest(50, "missing_bars"))
    gaps_df = pd.concat(gaps, ignore_index=True).sort_values("missing_bars", ascending=False) if gaps else pd.DataFrame()
    bad = {k: v for k, v in fractions.items() if v > limit}
    return dg.AssetCheckResult(
        passed=not bad,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "max_missing_fraction_allowed": limit,
            "worst_missing_fraction": max(fractions.values(), default=0.0),
            "partitions_over_limit": dg.MetadataValue.json(bad),
            "gaps": dg.MetadataValue.md(_md_table(gaps_df)),
        },
    )


@dg.asset_check(
    asset=market_bars,
    partitions_def=market_partitions(),
    description="Outliers: WARN on 1-minute log returns beyond the robust z-score bound, listing the bars.",
)
def market_bars_outliers(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource) -> dg.AssetCheckResult:
    bound = get_settings().thresholds.outlier_robust_z
    found = [
        return_outliers_many(frame, bound)[["ts", "instrument", "close", "log_return", "robust_z"]]
        for _parts, frame in _selected_chunks(context, warehouse)
    ]
    rows = pd.concat(found, ignore_index=True) if found else pd.DataFrame()
    if not rows.empty:
        rows["ts"] = rows["ts"].astype(str)
        rows = rows.reindex(rows["robust_z"].abs().sort_values(ascending=False).index)
    return dg.AssetCheckResult(
        passed=rows.empty,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "robust_z_bound": bound,
            "outlier_count": len(rows),
            "outliers": dg.MetadataValue.md(_md_table(rows, 30)),
        },
    )


def expected_latest_date(now: dt.datetime) -> str:
    """The newest date whose bars must exist at ``now``: yesterday once the deadline passed."""
    now = now.astimezone(dt.timezone.utc)
    deadline = now.replace(hour=0, minute=30, second=0, microsecond=0)
    days_back = 1 if now >= deadline else 2
    return (now.date() - dt.timedelta(days=days_back)).isoformat()


@dg.asset_check(
    asset=market_bars,
    description="Freshness: by 00:30 UTC, yesterday's partition exists for every instrument.",
)
def market_bars_freshness(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    expected = expected_latest_date(dt.datetime.now(dt.timezone.utc))
    materialized = context.instance.get_materialized_partitions(market_bars.key)
    have = {}
    for key in materialized:
        date, _, instrument = str(key).partition("|")
        if date > have.get(instrument, ""):
            have[instrument] = date
    stale = {i: have.get(i, "never") for i in get_settings().instruments if have.get(i, "") < expected}
    return dg.AssetCheckResult(
        passed=not stale,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "expected_latest_date": expected,
            "latest_date_by_instrument": dg.MetadataValue.json(have),
            "stale_instruments": dg.MetadataValue.json(stale),
            "deadline_cron": FRESHNESS_DEADLINE_CRON,
        },
    )


market_data_checks = [market_bars_schema, market_bars_completeness, market_bars_outliers, market_bars_freshness]
