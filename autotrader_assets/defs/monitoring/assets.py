"""Monitoring assets, partitioned by date like ``paper_trading``: ``feature_drift`` and ``model_health``."""

import datetime as dt
from typing import Any

import dagster as dg
import pandas as pd

from autotrader_assets.defs.monitoring import drift as dr
from autotrader_assets.defs.monitoring import health as hl
from autotrader_assets.defs.monitoring.checks import feature_drift_psi_spec, not_judged_result, psi_check_result
from autotrader_assets.defs.trading.partitions import trading_partitions
from autotrader_assets.defs.trading.performance import markdown_table
from autotrader_assets.pushing import push_from_step
from autotrader_assets.resources import RegistryResource, WarehouseResource
from autotrader_assets.settings import Settings
from deploy_ops import events, metrics_push
from deploy_ops.state import DeploymentStateStore

MONITORING_GROUP = "monitoring"
#: Who answers for the platform's health: the ML platform team.
MONITORING_OWNER = "team:ml-platform"
#: `health_check_every_15_minutes` recomputes the latest date: an hour without a health check
#: (warn after 30 minutes) means monitoring itself stopped, which an operator must hear about.
HEALTH_FRESHNESS = dg.FreshnessPolicy.time_window(
    fail_window=dt.timedelta(hours=1), warn_window=dt.timedelta(minutes=30)
)
_BY_DATE = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="date")


def reference_loader(registry: RegistryResource) -> dr.ReferenceLoader:
    """version -> (feature names, stored feature_reference or None), each bundle loaded once."""
    reg = registry.open()
    cache: dict[int, tuple[list[str], Any]] = {}

    def load(version: int):
        if version not in cache:
            bundle = reg.load_bundle(version)
            cache[version] = (list(bundle.feature_names), bundle.metadata.get("feature_reference"))
        return cache[version]

    return load


@dg.asset(
    partitions_def=trading_partitions(),
    deps=[dg.AssetDep("bar_features", partition_mapping=_BY_DATE), dg.AssetDep("paper_trading")],
    check_specs=[feature_drift_psi_spec],
    group_name=MONITORING_GROUP,
    kinds={"python", "duckdb"},
    owners=[MONITORING_OWNER],
    tags={"domain": "monitoring", "tier": "standard"},
    # Bump when the PSI convention or the reference used changes.
    code_version="1",
    freshness_policy=HEALTH_FRESHNESS,
)
def feature_drift(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    registry: RegistryResource,
    settings: dg.ResourceParam[Settings],
) -> dg.MaterializeResult:
    """How far the day's model inputs moved from the data the serving model was trained on (PSI per feature)."""
    date = dt.date.fromisoformat(context.partition_key)
    warn, critical = settings.thresholds.psi_warn, settings.thresholds.psi_critical
    try:
        with warehouse.connect(read_only=True) as con:
            day = dr.compute_day_drift(con, date, reference_loader(registry))
    except dr.NotInProductionError as exc:
        # Nothing to judge is not a broken pipeline: say so in the check, write nothing.
        context.log.warning(str(exc))
        return dg.MaterializeResult(
            metadata={"date": date.isoformat(), "judged": False, "why": str(exc), "rows_written": 0},
            check_results=[not_judged_result(date.isoformat(), str(exc), warn, critical)],
        )
    except dr.DriftError as exc:
        # A day without features or a column the model needs: the run fails with the cause, nothing written.
        raise dg.Failure(description=f"feature_drift {date}: {exc}") from exc
    with warehouse.connect() as con:
        rows = dr.write_day_drift(con, day, warn, critical, context.run_id)
    frame = day.frame(warn, critical)
    lineage = {
        str(v.version): {
            "instruments": v.instruments,
            "rows": v.n_rows,
            "reference": v.reference or v.problem,
            "partitions": [f"{date.isoformat()}|{i}" for i in v.instruments],
        }
        for v in day.versions
    }
    context.log.info(f"{date}: max PSI {day.max_psi()} over {len(frame)} feature(s), level {day.level(warn, critical)}")
    metadata: dict[str, Any] = {
        "date": date.isoformat(),
        "judged": True,
        "max_psi": day.max_psi() if day.max_psi() is not None else "-",
        "level": day.level(warn, critical),
        "lineage": dg.MetadataValue.json(lineage),
        "features": dg.MetadataValue.md(markdown_table(frame)),
        "rows_written": rows,
    }
    metadata.update(
        push_from_step(
            context,
            settings,
            metrics_push.DRIFT_JOB,
            metrics_push.psi_samples(zip(frame["feature"], frame["model_version"], frame["psi"])),
        )
    )
    return dg.MaterializeResult(metadata=metadata, check_results=[psi_check_result(day, warn, critical)])


def is_latest(date: dt.date, today: dt.date | None = None) -> bool:
    """The latest complete date (or later): the only one for which the slots' counters mean something."""
    today = today or dt.datetime.now(dt.timezone.utc).date()
    return date >= today - dt.timedelta(days=1)


@dg.asset(
    partitions_def=trading_partitions(),
    deps=[feature_drift, dg.AssetDep("paper_trading"), dg.AssetDep("market_bars", partition_mapping=_BY_DATE)],
    group_name=MONITORING_GROUP,
    kinds={"python", "duckdb"},
    owners=[MONITORING_OWNER],
    tags={"domain": "monitoring", "tier": "standard"},
    # Bump when a finding's rule or threshold source changes.
    code_version="1",
    freshness_policy=HEALTH_FRESHNESS,
)
def model_health(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    registry: RegistryResource,
    settings: dg.ResourceParam[Settings],
) -> dg.MaterializeResult:
    """The platform's health check for the day: drift, data quality, confidence, win rate and serving, each with a runbook."""
    date = dt.date.fromisoformat(context.partition_key)
    t = settings.thresholds
    with warehouse.connect(read_only=True) as con:
        drift = dr.read_day_drift(con, date)
        problem = None
        try:
            instruments = sorted(dr.served_versions(con, date))
        except dr.NotInProductionError as exc:
            problem, instruments = str(exc), list(settings.instruments)
        positions, trades = hl.read_paper_day(con, date)
        bars = hl.read_day_bars(con, date, instruments)
    findings = hl.drift_findings(drift, t.psi_warn, t.psi_critical, problem)
    findings += hl.data_quality_findings(
        bars,
        [(date.isoformat(), i) for i in instruments],
        t.max_missing_fraction,
        t.outlier_robust_z,
        settings.calendar_for,
    )
    if problem is None:
        findings += hl.confidence_findings(positions, t.min_confidence)
        findings += hl.win_rate_findings(trades, t.min_win_rate)
    state = DeploymentStateStore(registry.url)
    if is_latest(date):
        findings += hl.serving_findings(
            hl.scrape_slots(state, settings.serving_token), t.max_error_rate, t.max_p99_latency_ms
        )
    with warehouse.connect() as con:
        before = hl.write_findings(con, date, findings, context.run_id)
    # Drift raises its own events (feature_drift_sensor); the others are raised here, once per date.
    raised = []
    for f in findings:
        if f.check != "drift" and f.severity in ("warning", "critical") and (f.check, f.severity) not in before:
            events.record(
                state,
                "model_health_finding",
                f.severity,
                f"{date} {f.check}: {f.summary}",
                {"date": date.isoformat(), "check": f.check, **f.details},
                runbook=f.runbook,
            )
            raised.append(f.check)
    worst = hl.worst_severity(findings)
    for f in findings:
        log = context.log.warning if f.severity in ("warning", "critical") else context.log.info
        log(f"{f.severity}: {f.check}: {f.summary}")
    table = markdown_table(pd.DataFrame([f.row() for f in findings])) if findings else "no findings"
    # The last full 2-hour window's mean: what the ModelConfidenceLow rule compares with 0.6; the
    # last full 4-hour window's win rate: what WinRateLow compares with 50% (not the whole history).
    windows = hl.rolling_confidence(positions) if problem is None else pd.Series(dtype=float)
    win_windows = hl.rolling_win_rate(trades) if problem is None else pd.DataFrame(columns=["win_rate"])
    pushed = push_from_step(
        context,
        settings,
        metrics_push.HEALTH_JOB,
        metrics_push.health_samples(
            windows.iloc[-1] if len(windows) else None, win_windows["win_rate"].iloc[-1] if len(win_windows) else None
        ),
    )
    return dg.MaterializeResult(
        metadata={
            **pushed,
            "date": date.isoformat(),
            "worst_severity": worst,
            "n_findings": len(findings),
            "findings": dg.MetadataValue.md(table),
            "events_raised": dg.MetadataValue.json(raised),
            "instruments": dg.MetadataValue.json(instruments),
        }
    )
