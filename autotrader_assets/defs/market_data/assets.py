"""The ``market_bars`` asset (date x instrument): fetched, audited, then published.

Write-audit-publish: each chunk of partitions is fetched (or restored from the archive) and
staged in the archive's ``.incoming`` area, audited in memory by the pandera schema (the
``market_bars_schema`` check, blocking, evaluated here before anything is published), and only
the partitions that passed are published to the ``market_bars`` table in one transaction
(``publish.Publisher``); the archive's latest file moves to them after that commit. Failed
partitions keep their last published version and are quarantined (rows, reasons, archive copy).
"""

import datetime as dt
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
import pandas as pd

from autotrader_assets.defs.market_data.checks import (
    FRESHNESS_DEADLINE_CRON,
    CompletenessAudit,
    EvaluationSpool,
    OutlierAudit,
    SchemaAudit,
    market_bars_check_specs,
)
from autotrader_assets.defs.market_data.partitions import context_partitions, market_partitions
from autotrader_assets.defs.market_data.publish import (
    DuckDBPublisher,
    PublishBatch,
    detect_interval_seconds,
    new_batch_id,
)
from autotrader_assets.defs.market_data.resources import ArchiveResource, MarketSourceResource
from autotrader_assets.defs.market_data.schema import BAR_COLUMNS
from autotrader_assets.defs.market_data.validation import missing_fraction, partition_failures
from autotrader_assets.pushing import market_data_groups, push_from_step
from autotrader_assets.resources import WarehouseResource
from autotrader_assets.settings import Settings
from deploy_ops import metrics_push
from deploy_ops.text import MESSAGE, truncate

#: Partitions audited and published per transaction during large backfills (bounded memory).
WRITE_CHUNK = 256


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


def publisher_for(warehouse: WarehouseResource):
    """The publish step of ``market_bars`` (a context manager yielding a ``Publisher``).

    One seam: tests replace it to make the warehouse commit fail; a shared-storage publisher
    for production plugs in here.
    """
    import contextlib

    @contextlib.contextmanager
    def _open():
        with warehouse.connect() as con:
            yield DuckDBPublisher(con)

    return _open()


def _audit_frame(frames: dict[tuple[str, str], pd.DataFrame]) -> pd.DataFrame:
    """The chunk's bars as one frame with a ``date`` column (what the pandera schema validates)."""
    if not frames:
        return pd.DataFrame(columns=[*BAR_COLUMNS, "date"])
    return pd.concat([df.assign(date=d) for (d, _), df in frames.items()], ignore_index=True)


def _reasons(cases: pd.DataFrame) -> dict[str, str]:
    """``date|instrument`` -> a short text of the failed checks (what the quarantine records)."""
    if cases.empty:
        return {}
    labels = cases.assign(
        what=cases.get("column", pd.Series(index=cases.index, dtype=object))
        .fillna("")
        .astype(str)
        .str.cat(cases["check"].astype(str), sep=": ")
        .str.lstrip(": ")
    )
    return labels.groupby("partition")["what"].agg(lambda s: truncate("; ".join(sorted(set(s))), MESSAGE)).to_dict()


@dg.asset(
    partitions_def=market_partitions(),
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="market_data",
    kinds={"duckdb", "parquet"},
    freshness_policy=dg.FreshnessPolicy.cron(
        deadline_cron=FRESHNESS_DEADLINE_CRON, lower_bound_delta=dt.timedelta(hours=24)
    ),
    owners=["team:quant-data"],
    tags={"domain": "market_data", "tier": "critical"},
    # Bump when the same source data would be published differently (audit rules, columns).
    code_version="1",
    check_specs=market_bars_check_specs,
)
def market_bars(
    context: dg.AssetExecutionContext,
    config: MarketBarsConfig,
    warehouse: WarehouseResource,
    archive: ArchiveResource,
    market_source: MarketSourceResource,
    settings: dg.ResourceParam[Settings],
) -> Iterator[dg.MaterializeResult | dg.AssetCheckEvaluation | dg.Output]:
    """One-minute OHLCV bars per day and instrument: archived raw, audited, and only published if they pass."""
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
    batch_id = new_batch_id()
    context.log.info(
        f"{'restoring' if restoring else 'fetching'} {len(parts)} partition(s) from {source_name} (batch {batch_id})"
    )
    rows_published = 0
    published = 0
    quarantined: dict[str, str] = {}
    limits = settings.thresholds
    schema = SchemaAudit()
    completeness = CompletenessAudit(limits.max_missing_fraction, settings.calendar_for)
    outliers = OutlierAudit(limits.outlier_robust_z)
    selected = {key.name for key in context.selected_asset_check_keys}
    spool = EvaluationSpool(selected)
    worst = ("", 0.0)
    # instrument -> (date, missing fraction, outlier bars) of its latest published date: the metrics pushed.
    latest: dict[str, tuple[str, float, pd.DataFrame]] = {}

    with spool:
        # Archive writes (Parquet encoding, S3 puts) release the GIL: overlap them with fetching.
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="archive") as pool:
            for k in range(0, len(parts), WRITE_CHUNK):
                chunk = parts[k : k + WRITE_CHUNK]
                frames: dict[tuple[str, str], pd.DataFrame] = {}
                staged = {}
                for date, instrument in chunk:
                    if restoring:
                        bars = store.read(date, instrument, version=version)
                    else:
                        start = pd.Timestamp(date, tz="UTC")
                        bars = source.fetch_bars(instrument, start, start + pd.Timedelta(days=1))
                        # What the source returned is kept whatever the audit says.
                        staged[(date, instrument)] = pool.submit(store.stage, date, instrument, bars, batch_id)
                    frames[(date, instrument)] = bars
                    fraction = round(
                        missing_fraction(bars, date=date, instrument=instrument, calendar=settings.calendar_for), 4
                    )
                    if fraction > worst[1] or not worst[0]:
                        worst = (f"{date}|{instrument}", fraction)
                staged_bytes = {key: f.result() for key, f in staged.items()}

                # Audit: the pandera schema over the whole chunk at once.
                audit_frame = _audit_frame(frames)
                _, failed, cases = partition_failures(chunk, audit_frame, calendar=settings.calendar_for)
                reasons = _reasons(cases)
                batch = PublishBatch(layer="market_bars", batch_id=batch_id)
                for key, bars in frames.items():
                    name = f"{key[0]}|{key[1]}"
                    if name in failed:
                        batch.failed[key] = bars
                        batch.reasons[key] = reasons.get(name, "failed the schema")
                    else:
                        batch.passed[key] = bars
                        batch.intervals[key] = detect_interval_seconds(bars)

                # Publish: one transaction for the chunk (passing partitions + quarantine records).
                with publisher_for(warehouse) as publisher:
                    result = publisher.publish(batch)
                rows_published += result.rows_published
                published += len(result.published)
                chunk_quarantined = {f"{d}|{i}": batch.reasons[(d, i)] for d, i in result.quarantined}
                quarantined.update(chunk_quarantined)
                spool.add(schema.evaluate(chunk, audit_frame, cases, chunk_quarantined, batch_id))
                # The warnings judge what was published: the chunk's bars minus the quarantined ones.
                published_rows = audit_frame[
                    ~(audit_frame["date"] + "|" + audit_frame["instrument"]).isin(chunk_quarantined)
                ]
                fractions, judged = completeness.evaluate(list(result.published), published_rows)
                spool.add(judged)
                found, judged = outliers.evaluate(list(result.published), published_rows)
                spool.add(judged)
                for date, instrument in result.published:
                    if instrument not in latest or date > latest[instrument][0]:
                        latest[instrument] = (
                            date,
                            fractions.get(f"{date}|{instrument}", 0.0),
                            found[(found["date"] == date) & (found["instrument"] == instrument)],
                        )

                # Only after the commit: the archive's latest moves to what was published.
                moves = []
                for date, instrument in result.published:
                    if restoring:
                        if version != "latest":
                            # The restored version becomes current again; the file it replaces is kept
                            # as a version, so this rollback can itself be undone.
                            moves.append(pool.submit(store.write, date, instrument, frames[(date, instrument)]))
                    else:
                        moves.append(
                            pool.submit(store.promote, date, instrument, batch_id, staged_bytes[(date, instrument)])
                        )
                if not restoring:
                    moves += [pool.submit(store.quarantine, d, i, batch_id) for d, i in result.quarantined]
                for m in moves:
                    m.result()
                context.log.info(
                    f"audited {k + len(chunk)}/{len(parts)} partitions: published {published} "
                    f"({rows_published:,} bars), quarantined {len(quarantined)}"
                )

        yield from _results(
            context,
            settings,
            spool,
            latest,
            {
                "dagster/row_count": dg.MetadataValue.int(rows_published),
                "partitions": dg.MetadataValue.int(len(parts)),
                "partitions_published": dg.MetadataValue.int(published),
                "quarantined_partitions": dg.MetadataValue.json(dict(sorted(quarantined.items()))),
                "batch_id": batch_id,
                "source": source_name,
                "restored_from_archive": restoring,
                "archive": dg.MetadataValue.path(store.uri),
                "warehouse": dg.MetadataValue.path(warehouse.path),
                "worst_missing_fraction": dg.MetadataValue.float(float(worst[1])),
                "worst_missing_partition": worst[0],
            },
        )


def _results(
    context: dg.AssetExecutionContext,
    settings: Settings,
    spool: EvaluationSpool,
    latest: dict[str, tuple[str, float, pd.DataFrame]],
    metadata: dict,
) -> Iterator[dg.MaterializeResult | dg.AssetCheckEvaluation | dg.Output]:
    """The materialization, then each partition's check results (which must point at it), then
    the check outputs that blocking checks' downstream waits for."""
    quarantined = metadata["quarantined_partitions"].value
    if quarantined:
        context.log.error(
            f"{len(quarantined)} partition(s) failed the schema and were quarantined (their published "
            f"version is unchanged): {', '.join(sorted(quarantined)[:20])}"
        )
    pushed = {}
    for instrument, samples in market_data_groups(
        {f"{d}|{i}": f for i, (d, f, _) in latest.items()}, [rows for _, _, rows in latest.values()]
    ).items():
        pushed[instrument] = push_from_step(
            context, settings, metrics_push.MARKET_DATA_JOB, samples, instrument=instrument
        )
    yield dg.MaterializeResult(
        metadata={
            "pushgateway": dg.MetadataValue.json({i: p["pushgateway"].value for i, p in pushed.items()}),
            **metadata,
            "checks": dg.MetadataValue.json(spool.summary),
        }
    )
    yield from spool.emit(context.instance, context.run_id, WRITE_CHUNK)
    for key in sorted(context.selected_asset_check_keys, key=lambda k: k.name):
        yield dg.Output(None, output_name=context.assets_def.get_output_name_for_asset_check_key(key))
