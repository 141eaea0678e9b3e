"""The ``feature_drift_psi`` check: a check spec of ``feature_drift``, partitioned by date like it
(judged on the rows the asset just computed, so each result is recorded against that date), and
the result it yields.

WARN when a feature's PSI is above ``psi_warn`` (0.2), ERROR above ``psi_critical`` (0.3), never
blocking: drift is a reason to act (``feature_drift_sensor``), not to stop the data. A day that
cannot be judged (no model served it, or the model's bundle has no reference) is a WARN that
says why.
"""

import warnings
from typing import Any

import dagster as dg

from autotrader_assets.defs.monitoring.drift import DayDrift
from autotrader_assets.defs.monitoring.plots import histogram_png, psi_bars_png
from autotrader_assets.defs.trading.partitions import trading_partitions
from autotrader_assets.defs.trading.performance import markdown_table, png_markdown

FEATURE_DRIFT_PSI = "feature_drift_psi"
FEATURE_DRIFT_ASSET = dg.AssetKey("feature_drift")


def _partitioned_like_feature_drift(name: str, **kwargs) -> dg.AssetCheckSpec:
    """Partitioned by date like ``feature_drift``, so each day's verdict is recorded against its
    date and the check's Partitions tab shows every judged day (unpartitioned, only the latest
    run's result would show, whatever date it judged). ``partitions_def`` on a check spec is a
    preview feature in Dagster 1.13: its warning is silenced here, the pin fixes its behaviour."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.AssetCheckSpec(name, asset=FEATURE_DRIFT_ASSET, partitions_def=trading_partitions(), **kwargs)


feature_drift_psi_spec = _partitioned_like_feature_drift(
    FEATURE_DRIFT_PSI,
    blocking=False,
    description="PSI of every model input feature vs the serving model's training reference: WARN above "
    "psi_warn (0.2), ERROR above psi_critical (0.3). Metadata: the per-feature table, PSI per feature "
    "against both thresholds, reference vs current histogram of the worst feature.",
)


def psi_check_result(day: DayDrift, warn: float, critical: float) -> dg.AssetCheckResult:
    """The check's verdict on one computed day (see the module docstring)."""
    frame = day.frame(warn, critical)
    level = day.level(warn, critical)
    problems = day.problems()
    critical_versions: dict[str, dict[str, float]] = {}
    for v in day.versions:
        if v.result is None:
            continue
        over = {f.feature: round(f.psi, 6) for f in v.result.features if f.psi is not None and f.psi > critical}
        if over:
            critical_versions[str(v.version)] = over
    metadata: dict[str, Any] = {
        "date": day.date.isoformat(),
        "level": level,
        "max_psi": day.max_psi() if day.max_psi() is not None else "-",
        "psi_warn": warn,
        "psi_critical": critical,
        "model_versions": dg.MetadataValue.json({str(v.version): v.instruments for v in day.versions}),
        "critical_versions": dg.MetadataValue.json(critical_versions),
        "features": dg.MetadataValue.md(markdown_table(frame)),
        "problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none"),
    }
    worst = day.worst()
    if worst is not None and len(frame.dropna(subset=["psi"])):
        version, feature = worst
        metadata["psi_per_feature"] = dg.MetadataValue.md(
            png_markdown(psi_bars_png(frame, warn, critical, f"PSI per feature, {day.date}"), "PSI per feature")
        )
        metadata["worst_feature"] = f"{feature.feature} (v{version.version}, PSI {feature.psi:.4f})"
        metadata["worst_feature_histogram"] = dg.MetadataValue.md(
            png_markdown(
                histogram_png(
                    feature.feature,
                    feature.cuts,
                    feature.expected,
                    feature.actual,
                    f"{feature.feature}: training reference of v{version.version} vs {day.date}",
                ),
                "reference vs current",
            )
        )
    if level == "critical":
        description = f"critical drift: max PSI {day.max_psi():.3f} > {critical:g} ({metadata['worst_feature']})"
        return dg.AssetCheckResult(
            check_name=FEATURE_DRIFT_PSI,
            passed=False,
            severity=dg.AssetCheckSeverity.ERROR,
            description=description,
            metadata=metadata,
        )
    if level == "warning" or problems:
        parts = ([f"drift: max PSI {day.max_psi():.3f} > {warn:g}"] if level == "warning" else []) + problems
        return dg.AssetCheckResult(
            check_name=FEATURE_DRIFT_PSI,
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            description="; ".join(parts),
            metadata=metadata,
        )
    return dg.AssetCheckResult(
        check_name=FEATURE_DRIFT_PSI,
        passed=True,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"no drift: max PSI {day.max_psi():.3f} <= {warn:g}",
        metadata=metadata,
    )


def not_judged_result(date: str, why: str, warn: float, critical: float) -> dg.AssetCheckResult:
    """WARN for a date that cannot be judged (no model served it), saying why."""
    return dg.AssetCheckResult(
        check_name=FEATURE_DRIFT_PSI,
        passed=False,
        severity=dg.AssetCheckSeverity.WARN,
        description=why,
        metadata={
            "date": date,
            "level": "not_judged",
            "problems": dg.MetadataValue.md(f"- {why}"),
            "psi_warn": warn,
            "psi_critical": critical,
        },
    )
