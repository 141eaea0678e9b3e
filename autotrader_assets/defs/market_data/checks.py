"""Checks of ``market_bars``: one property each, with their metadata, judged per partition.

``market_bars_schema`` (blocking), ``market_bars_completeness`` and ``market_bars_outliers``
are check specs of the asset, partitioned like it: they are evaluated inside ``market_bars`` on
each chunk as it is audited and published (the schema before publishing, the two warnings on
what was published), so they run in the same step as the data they judge and see every
partition of a long backfill without reading it back.

Each partition gets its own result. Dagster 1.13's ``AssetCheckResult`` is recorded against a
partition only when the step has exactly one partition key; a range run (single-run backfill)
would record one unpartitioned result and leave every partition "Skipped". So the asset yields
``AssetCheckEvaluation`` events with ``partition`` set, one per partition and check, after the
materializations they judge (the UI counts a result only if it targets the partition's latest
materialization). Until then they wait in a spool file (``EvaluationSpool``): memory stays at
one chunk whatever the length of the backfill.

Partitions that failed the schema are quarantined and not published: they get a failed
``market_bars_schema`` result and no completeness or outlier result (nothing new was published
to judge; the step fails, so the UI shows those two as not executed for them).

``market_bars_freshness`` is a separate check over the whole asset.
"""

import datetime as dt
import tempfile
import warnings
from collections.abc import Iterator

import dagster as dg
import pandas as pd
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)
from dagster._core.storage.event_log.base import AssetRecordsFilter
from dagster._serdes import deserialize_value, serialize_value
from dagster_shared.record import replace

from autotrader_assets.defs.market_data.partitions import market_partitions
from autotrader_assets.defs.market_data.validation import (
    CalendarSpec,
    calendar_lookup,
    find_gaps_many,
    missing_fractions,
    out_of_session_bars,
    return_outliers_many,
)
from autotrader_assets.settings import Settings

#: Failure rows kept per partition for the metadata tables (the counts cover all of them).
MAX_CASES = 20
#: Failed partitions named in a run's summary (the count covers all of them).
MAX_NAMED = 50
#: Bars of yesterday are expected by 00:30 UTC.
FRESHNESS_DEADLINE_CRON = "30 0 * * *"

MARKET_BARS = dg.AssetKey("market_bars")
SCHEMA_CHECK = "market_bars_schema"
COMPLETENESS_CHECK = "market_bars_completeness"
OUTLIERS_CHECK = "market_bars_outliers"


def _partitioned_spec(name: str, **kwargs) -> dg.AssetCheckSpec:
    """A check spec partitioned like ``market_bars``. ``partitions_def`` on a check spec is a
    preview feature in Dagster 1.13 (a warning at every import); it is what gives each partition
    its own result in the UI, and the pin keeps its behaviour fixed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.AssetCheckSpec(name, asset=MARKET_BARS, partitions_def=market_partitions(), **kwargs)


market_bars_check_specs = [
    _partitioned_spec(
        SCHEMA_CHECK,
        blocking=True,
        description="pandera schema, judged before publishing: types, no NaN, positive prices, high/low "
        "consistent, volume >= 0, unique increasing timestamps inside the partition; an empty partition "
        "fails unless its session is closed. Failed partitions are quarantined (the published version "
        "stays); the check then fails and blocks the features.",
    ),
    _partitioned_spec(
        COMPLETENESS_CHECK,
        description="Completeness of the published partition: WARN when more than the allowed fraction of "
        "the bars expected by the instrument's session calendar, at the data's interval, is missing, or "
        "when bars fall outside the session (a closed day expects none).",
    ),
    _partitioned_spec(
        OUTLIERS_CHECK,
        description="Outliers in the published partition: WARN on a bar return beyond the robust z bound "
        "(scale from non-zero returns, floored) that the next bar takes back, or beyond 10x the bound; "
        "lists the bars.",
    ),
]


def md_table(df: pd.DataFrame, limit: int = 20) -> str:
    return "(none)" if df.empty else df.head(limit).to_markdown(index=False)


def _evaluation(
    check: str, partition: str, passed: bool, severity: dg.AssetCheckSeverity, description: str, metadata: dict
) -> dg.AssetCheckEvaluation:
    return dg.AssetCheckEvaluation(
        asset_key=MARKET_BARS,
        check_name=check,
        passed=passed,
        severity=severity,
        description=description,
        metadata=metadata,
        blocking=check == SCHEMA_CHECK,
        partition=partition,
    )


def _by_partition(frame: pd.DataFrame, column: str = "partition") -> dict[str, pd.DataFrame]:
    return {str(k): g for k, g in frame.groupby(column, sort=False)} if len(frame) else {}


class SchemaAudit:
    """The schema verdict of each partition of a chunk (all of them: it runs before publishing)."""

    def evaluate(
        self,
        parts: list[tuple[str, str]],
        frame: pd.DataFrame,
        cases: pd.DataFrame,
        quarantined: dict[str, str],
        batch_id: str,
    ) -> list[dg.AssetCheckEvaluation]:
        rows = frame.groupby(["date", "instrument"]).size() if len(frame) else pd.Series(dtype=int)
        by_part = _by_partition(cases)
        out = []
        for date, instrument in parts:
            name = f"{date}|{instrument}"
            mine = by_part.get(name, pd.DataFrame())
            n_rows = int(rows.get((date, instrument), 0))
            reason = quarantined.get(name)
            out.append(
                _evaluation(
                    SCHEMA_CHECK,
                    name,
                    reason is None,
                    dg.AssetCheckSeverity.ERROR,
                    f"quarantined ({reason}); the published version is unchanged"
                    if reason
                    else f"{n_rows} bars passed the schema",
                    {
                        "rows_checked": n_rows,
                        "failure_count": len(mine),
                        "failure_cases": dg.MetadataValue.md(
                            md_table(mine.drop(columns="partition", errors="ignore"), MAX_CASES)
                        ),
                        "quarantined": reason is not None,
                        "batch_id": batch_id,
                    },
                )
            )
        return out


class CompletenessAudit:
    """Missing fraction (in-session bars at the data's interval), gaps and bars outside the
    session of each published partition; ``calendar`` is ``settings.calendar_for``."""

    def __init__(self, max_missing_fraction: float, calendar: CalendarSpec):
        self.limit = max_missing_fraction
        self.calendar = calendar
        self.calendar_of = calendar_lookup(calendar)

    def evaluate(
        self, parts: list[tuple[str, str]], frame: pd.DataFrame
    ) -> tuple[dict[str, float], list[dg.AssetCheckEvaluation]]:
        fractions = missing_fractions(frame, parts, calendar=self.calendar)
        gaps = _by_partition(find_gaps_many(frame, calendar=self.calendar))
        # Bars outside the session are kept (a calendar is a model of the market), but many of them
        # usually mean a wrong calendar mapping or time zone: the check warns and lists them.
        outside = _by_partition(out_of_session_bars(frame, calendar=self.calendar))
        out = []
        for date, instrument in parts:
            name = f"{date}|{instrument}"
            fraction = float(fractions.get(name, 0.0))
            mine_gaps = (
                gaps.get(name, pd.DataFrame()).sort_values("missing_bars", ascending=False)
                if name in gaps
                else pd.DataFrame()
            )
            mine_out = outside.get(name, pd.DataFrame())
            n_out = int(mine_out["bars"].sum()) if len(mine_out) else 0
            problems = []
            if fraction > self.limit:
                problems.append(f"{fraction:.2%} of the session's bars missing (limit {self.limit:.0%})")
            if n_out:
                problems.append(f"{n_out} bar(s) outside the {self.calendar_of(instrument)} session")
            out.append(
                _evaluation(
                    COMPLETENESS_CHECK,
                    name,
                    not problems,
                    dg.AssetCheckSeverity.WARN,
                    "; ".join(problems) or f"{fraction:.2%} of the session's bars missing (limit {self.limit:.0%})",
                    {
                        "missing_fraction": fraction,
                        "max_missing_fraction_allowed": self.limit,
                        "gaps": dg.MetadataValue.md(md_table(mine_gaps.drop(columns="partition", errors="ignore"))),
                        "out_of_session_bars": dg.MetadataValue.int(n_out),
                        "out_of_session": dg.MetadataValue.md(
                            md_table(mine_out.drop(columns="partition", errors="ignore"))
                        ),
                    },
                )
            )
        return fractions, out


class OutlierAudit:
    """Robust-z return outliers of each published partition."""

    def __init__(self, robust_z_bound: float):
        self.bound = robust_z_bound

    def evaluate(
        self, parts: list[tuple[str, str]], frame: pd.DataFrame
    ) -> tuple[pd.DataFrame, list[dg.AssetCheckEvaluation]]:
        rows = return_outliers_many(frame, self.bound)
        found = rows[["ts", "instrument", "date", "close", "log_return", "robust_z", "rule"]].copy()
        found["partition"] = found["date"].astype(str) + "|" + found["instrument"].astype(str)
        by_part = _by_partition(found)
        out = []
        for date, instrument in parts:
            name = f"{date}|{instrument}"
            mine = by_part.get(name, pd.DataFrame())
            if len(mine):
                mine = mine.reindex(mine["robust_z"].abs().sort_values(ascending=False).index)
                shown = mine.drop(columns=["partition", "date", "instrument"]).assign(ts=mine["ts"].astype(str))
            else:
                shown = pd.DataFrame()
            rules = ", ".join(sorted(set(mine["rule"]))) if len(mine) else ""
            out.append(
                _evaluation(
                    OUTLIERS_CHECK,
                    name,
                    mine.empty,
                    dg.AssetCheckSeverity.WARN,
                    f"{len(mine)} bar(s) look like bad prints ({rules})"
                    if len(mine)
                    else f"no bar beyond robust z {self.bound:g}",
                    {
                        "robust_z_bound": self.bound,
                        "outlier_count": len(mine),
                        "outliers": dg.MetadataValue.md(md_table(shown, 30)),
                    },
                )
            )
        return found.drop(columns="partition"), out


class EvaluationSpool:
    """A run's per-partition check evaluations, on disk until the materializations they judge
    have been logged (see the module docstring), with a per-check summary kept in memory.

    ``selected`` are the check names the run selected: the others are neither stored nor yielded.
    """

    def __init__(self, selected: set[str]):
        self.selected = selected
        self.summary: dict[str, dict] = {
            name: {"passed": 0, "failed": 0, "failed_partitions": []} for name in sorted(selected)
        }
        self._file = tempfile.TemporaryFile(mode="w+", encoding="utf-8")

    def add(self, evaluations: list[dg.AssetCheckEvaluation]) -> None:
        for ev in evaluations:
            if ev.check_name not in self.selected:
                continue
            s = self.summary[ev.check_name]
            if ev.passed:
                s["passed"] += 1
            else:
                s["failed"] += 1
                if len(s["failed_partitions"]) < MAX_NAMED:
                    s["failed_partitions"].append(ev.partition)
            self._file.write(serialize_value(ev) + "\n")

    def emit(self, instance: dg.DagsterInstance, run_id: str, chunk: int) -> Iterator[dg.AssetCheckEvaluation]:
        """The stored evaluations, each pointing at its partition's materialization of ``run_id``."""
        self._file.seek(0)
        batch: list[dg.AssetCheckEvaluation] = []

        def flush():
            keys = sorted({ev.partition for ev in batch})
            records = instance.fetch_materializations(
                AssetRecordsFilter(asset_key=MARKET_BARS, asset_partitions=keys), limit=len(keys)
            ).records
            target = {
                r.partition_key: AssetCheckEvaluationTargetMaterializationData(
                    storage_id=r.storage_id, run_id=r.run_id, timestamp=r.timestamp
                )
                for r in records
                if r.run_id == run_id
            }
            for ev in batch:
                yield replace(ev, target_materialization_data=target.get(ev.partition))

        for line in self._file:
            batch.append(deserialize_value(line, dg.AssetCheckEvaluation))
            if len(batch) >= chunk:
                yield from flush()
                batch = []
        if batch:
            yield from flush()

    def __enter__(self) -> "EvaluationSpool":
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()


def expected_latest_date(now: dt.datetime) -> str:
    """The newest date whose bars must exist at ``now``: yesterday once the deadline passed."""
    now = now.astimezone(dt.timezone.utc)
    deadline = now.replace(hour=0, minute=30, second=0, microsecond=0)
    days_back = 1 if now >= deadline else 2
    return (now.date() - dt.timedelta(days=days_back)).isoformat()


@dg.asset_check(
    asset="market_bars",
    description="Freshness: by 00:30 UTC, yesterday's partition exists for every instrument.",
)
def market_bars_freshness(
    context: dg.AssetCheckExecutionContext, settings: dg.ResourceParam[Settings]
) -> dg.AssetCheckResult:
    expected = expected_latest_date(dt.datetime.now(dt.timezone.utc))
    materialized = context.instance.get_materialized_partitions(dg.AssetKey("market_bars"))
    have = {}
    for key in materialized:
        date, _, instrument = str(key).partition("|")
        if date > have.get(instrument, ""):
            have[instrument] = date
    stale = {i: have.get(i, "never") for i in settings.instruments if have.get(i, "") < expected}
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


market_data_checks = [market_bars_freshness]
