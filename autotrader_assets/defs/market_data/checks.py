"""Checks of ``market_bars``: one property each, with their metadata.

``market_bars_schema`` (blocking), ``market_bars_completeness`` and ``market_bars_outliers``
are check specs of the asset: they are evaluated inside ``market_bars`` on each chunk as it is
audited and published (the schema before publishing, the two warnings on what was published),
so they run in the same step as the data they judge and see every partition of a long backfill
without reading it back. ``market_bars_freshness`` is a separate check over the whole asset.
"""

import datetime as dt

import dagster as dg
import pandas as pd

from autotrader_assets.defs.market_data.validation import (
    CalendarSpec,
    find_gaps_many,
    missing_fractions,
    out_of_session_bars,
    return_outliers_many,
)
from autotrader_assets.settings import Settings

#: Failure rows kept for the metadata tables (the counts cover all of them).
MAX_CASES = 1000
#: Bars of yesterday are expected by 00:30 UTC.
FRESHNESS_DEADLINE_CRON = "30 0 * * *"

SCHEMA_CHECK = "market_bars_schema"
COMPLETENESS_CHECK = "market_bars_completeness"
OUTLIERS_CHECK = "market_bars_outliers"

market_bars_check_specs = [
    dg.AssetCheckSpec(
        SCHEMA_CHECK,
        asset="market_bars",
        blocking=True,
        description="pandera schema, judged before publishing: types, no NaN, positive prices, high/low "
        "consistent, volume >= 0, unique increasing timestamps inside the partition; an empty partition "
        "fails unless its session is closed. Failed partitions are quarantined (the published version "
        "stays); the check then fails and blocks the features.",
    ),
    dg.AssetCheckSpec(
        COMPLETENESS_CHECK,
        asset="market_bars",
        description="Completeness of the fetched partitions: WARN when more than the allowed fraction of "
        "the bars expected by the instrument's session calendar, at the data's interval, is missing, or "
        "when bars fall outside the session (a closed day expects none).",
    ),
    dg.AssetCheckSpec(
        OUTLIERS_CHECK,
        asset="market_bars",
        description="Outliers in the fetched partitions: WARN on a bar return beyond the robust z bound "
        "(scale from non-zero returns, floored) that the next bar takes back, or beyond 10x the bound; "
        "lists the bars.",
    ),
]


def md_table(df: pd.DataFrame, limit: int = 20) -> str:
    return "(none)" if df.empty else df.head(limit).to_markdown(index=False)


class SchemaAudit:
    """Accumulates the schema verdicts of a run's chunks into one check result."""

    def __init__(self):
        self.rows, self.parts, self.n_cases, self.kept = 0, 0, 0, []
        self.quarantined: dict[str, str] = {}

    def add(self, n_parts: int, n_rows: int, cases: pd.DataFrame, quarantined: dict[str, str]) -> None:
        self.rows += n_rows
        self.parts += n_parts
        self.n_cases += len(cases)
        self.quarantined.update(quarantined)
        if sum(map(len, self.kept)) < MAX_CASES and not cases.empty:
            self.kept.append(cases)

    def result(self, batch_id: str) -> dg.AssetCheckResult:
        cases = pd.concat(self.kept, ignore_index=True).head(MAX_CASES) if self.kept else pd.DataFrame()
        return dg.AssetCheckResult(
            check_name=SCHEMA_CHECK,
            passed=not self.quarantined,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={
                "rows_checked": self.rows,
                "partitions_checked": self.parts,
                "failed_partitions": dg.MetadataValue.json(sorted(self.quarantined)),
                "quarantined_partitions": dg.MetadataValue.json(dict(sorted(self.quarantined.items()))),
                "batch_id": batch_id,
                "failure_count": self.n_cases,
                "failure_cases": dg.MetadataValue.md(md_table(cases, 50)),
            },
        )


class CompletenessAudit:
    """Missing fractions (in-session bars at the data's interval), gaps and bars outside the
    session of the audited partitions, chunk by chunk; ``calendar`` is ``settings.calendar_for``."""

    def __init__(self, max_missing_fraction: float, calendar: CalendarSpec):
        self.limit = max_missing_fraction
        self.calendar = calendar
        self.fractions: dict[str, float] = {}
        self.gaps: list[pd.DataFrame] = []
        self.outside: list[pd.DataFrame] = []

    def add(self, parts: list[tuple[str, str]], frame: pd.DataFrame) -> None:
        self.fractions.update(missing_fractions(frame, parts, calendar=self.calendar))
        found = find_gaps_many(frame, calendar=self.calendar)
        if not found.empty:
            self.gaps.append(found.nlargest(50, "missing_bars"))
        outside = out_of_session_bars(frame, calendar=self.calendar)
        if not outside.empty:
            self.outside.append(outside)

    def result(self) -> dg.AssetCheckResult:
        gaps = pd.concat(self.gaps, ignore_index=True).sort_values("missing_bars", ascending=False) if self.gaps else pd.DataFrame()
        bad = {k: v for k, v in self.fractions.items() if v > self.limit}
        # Bars outside the session are kept (a calendar is a model of the market), but many of them
        # usually mean a wrong calendar mapping or time zone: the check warns and lists them.
        outside = pd.concat(self.outside, ignore_index=True) if self.outside else pd.DataFrame()
        return dg.AssetCheckResult(
            check_name=COMPLETENESS_CHECK,
            passed=not bad and outside.empty,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "max_missing_fraction_allowed": self.limit,
                "worst_missing_fraction": max(self.fractions.values(), default=0.0),
                "partitions_over_limit": dg.MetadataValue.json(bad),
                "gaps": dg.MetadataValue.md(md_table(gaps)),
                "out_of_session_bars": dg.MetadataValue.int(int(outside["bars"].sum()) if not outside.empty else 0),
                "out_of_session": dg.MetadataValue.md(md_table(outside)),
            },
        )


class OutlierAudit:
    """Robust-z return outliers of the published partitions, chunk by chunk."""

    def __init__(self, robust_z_bound: float):
        self.bound = robust_z_bound
        self.found: list[pd.DataFrame] = []

    def add(self, frame: pd.DataFrame) -> None:
        rows = return_outliers_many(frame, self.bound)
        if len(rows):
            self.found.append(rows[["ts", "instrument", "close", "log_return", "robust_z"]])

    def result(self) -> dg.AssetCheckResult:
        rows = pd.concat(self.found, ignore_index=True) if self.found else pd.DataFrame()
        if not rows.empty:
            rows["ts"] = rows["ts"].astype(str)
            rows = rows.reindex(rows["robust_z"].abs().sort_values(ascending=False).index)
        return dg.AssetCheckResult(
            check_name=OUTLIERS_CHECK,
            passed=rows.empty,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "robust_z_bound": self.bound,
                "outlier_count": len(rows),
                "outliers": dg.MetadataValue.md(md_table(rows, 30)),
            },
        )


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
