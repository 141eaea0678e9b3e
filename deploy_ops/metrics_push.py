"""Batch metrics for Prometheus, pushed to a Pushgateway (the convention for work that does not
live long enough to be scraped). No Dagster: the asset bodies, the run-status sensors and the
breaker CLI build :class:`Sample` lists with the functions below and call :func:`push`.

Rules the names follow (Prometheus conventions): one prefix ``autotrader_``, base units
(seconds, ratios 0..1, account currency for money), ``_total`` for counters, ``_ratio`` for
fractions. :data:`CATALOGUE` is every metric a batch job pushes; ``monitoring/README.md`` lists
the same names (a test compares them) and the alert rules and dashboards use only these and the
serving slots' own ``autotrader_serving_*`` series.

A Pushgateway that is down, slow or refusing never fails the caller: :func:`push` returns a
:class:`PushOutcome` carrying the error, which the caller logs as a warning and stores in its
metadata. Each push is one group (``job`` plus the grouping labels) replaced as a whole (HTTP PUT),
so a metric that disappeared from the batch (an instrument no longer traded) disappears from the
Pushgateway too; :func:`push` with ``replace=False`` (HTTP POST) replaces only the pushed names,
which the run-status sensors need to keep the other's series in their shared group.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, push_to_gateway, pushadd_to_gateway
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

PREFIX = "autotrader_"
#: Seconds a push may take; a batch run never waits longer than this for monitoring.
DEFAULT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class MetricSpec:
    """One pushed metric: its exposed name, type, help text and labels (grouping labels aside)."""

    name: str
    kind: str  # "gauge" or "counter"
    help: str
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name.startswith(PREFIX):
            raise ValueError(f"metric {self.name!r} must start with {PREFIX!r}")
        if self.kind not in ("gauge", "counter"):
            raise ValueError(f"metric {self.name!r}: kind must be gauge or counter, got {self.kind!r}")
        if (self.kind == "counter") != self.name.endswith("_total"):
            raise ValueError(f"metric {self.name!r}: counters, and only counters, end in _total")


def _specs(*specs: MetricSpec) -> dict[str, MetricSpec]:
    return {s.name: s for s in specs}


CATALOGUE: dict[str, MetricSpec] = _specs(
    # trading_performance (paper_trading_job, performance_report): the whole paper account.
    MetricSpec(
        "autotrader_trading_equity", "gauge", "Paper account equity at the last computed bar (account currency)"
    ),
    MetricSpec("autotrader_trading_pnl", "gauge", "Paper account PnL since inception (account currency)"),
    MetricSpec("autotrader_trading_daily_pnl", "gauge", "PnL of the last computed date (account currency)"),
    MetricSpec(
        "autotrader_trading_sharpe_ratio", "gauge", "Annualised Sharpe ratio of daily returns (sqrt(365), rf 0, ddof 1)"
    ),
    MetricSpec("autotrader_trading_win_rate_ratio", "gauge", "Fraction of closed round trips with a positive PnL"),
    MetricSpec(
        "autotrader_trading_max_drawdown_ratio", "gauge", "Largest fall from the equity peak, as a fraction of the peak"
    ),
    MetricSpec(
        "autotrader_trading_profit_factor",
        "gauge",
        "Gross profit / gross loss of closed round trips (+Inf without losses)",
    ),
    MetricSpec(
        "autotrader_trading_trades_per_minute", "gauge", "Fills per minute of market time over the account's history"
    ),
    MetricSpec("autotrader_trading_fills_total", "counter", "Fills since the account started"),
    MetricSpec("autotrader_trading_trades_total", "counter", "Closed round trips since the account started"),
    MetricSpec(
        "autotrader_trading_position_units",
        "gauge",
        "Open position per instrument (units; negative is short)",
        ("instrument",),
    ),
    MetricSpec(
        "autotrader_trading_position_notional",
        "gauge",
        "Open position per instrument at the last close (account currency)",
        ("instrument",),
    ),
    MetricSpec(
        "autotrader_trading_instrument_pnl",
        "gauge",
        "PnL of each instrument's sleeve since inception (account currency)",
        ("instrument",),
    ),
    # paper_trading and `autotrader breaker reset`, in the one group BREAKER_JOB.
    MetricSpec("autotrader_circuit_breaker_tripped", "gauge", "1 while the circuit breaker's trip is in force, else 0"),
    # feature_drift (health_check).
    MetricSpec(
        "autotrader_feature_psi",
        "gauge",
        "PSI of a model input feature on the last judged date vs the training reference",
        ("feature", "model_version"),
    ),
    # model_health (health_check).
    MetricSpec(
        "autotrader_model_confidence_ratio",
        "gauge",
        "Mean max(p, 1-p) of the last full 2-hour window of paper-trading predictions",
    ),
    MetricSpec(
        "autotrader_trading_rolling_win_rate_ratio",
        "gauge",
        "Win rate of the closed trades of the last full 4-hour window with 10+ trades (what WinRateLow judges)",
    ),
    # market_bars (data_pipeline), one group per instrument.
    MetricSpec(
        "autotrader_market_data_missing_ratio",
        "gauge",
        "Fraction of the session's expected bars missing on the instrument's last published date",
        ("instrument",),
    ),
    MetricSpec(
        "autotrader_market_data_outlier_bars",
        "gauge",
        "Bad prints (robust-z outliers) on the instrument's last published date",
        ("instrument",),
    ),
    # the run-status sensors, one group per job.
    MetricSpec("autotrader_job_last_success_timestamp_seconds", "gauge", "Unix time the job's last run succeeded"),
    MetricSpec(
        "autotrader_job_consecutive_failures",
        "gauge",
        "Failed runs in a row of the job for the same partition(s); 0 after a success",
    ),
)


@dataclass(frozen=True)
class Sample:
    """One value of a catalogued metric."""

    name: str
    value: float
    labels: Mapping[str, str] = field(default_factory=dict)


class UnknownMetricError(ValueError):
    """A sample names a metric that is not in :data:`CATALOGUE` or has the wrong labels."""


def validate(samples: Iterable[Sample]) -> list[Sample]:
    """The samples, checked against the catalogue: known names, exactly the declared labels, numbers."""
    out = []
    for s in samples:
        spec = CATALOGUE.get(s.name)
        if spec is None:
            raise UnknownMetricError(f"{s.name!r} is not a catalogued metric (deploy_ops/metrics_push.py CATALOGUE)")
        if set(s.labels) != set(spec.labels):
            raise UnknownMetricError(f"{s.name}: labels {sorted(s.labels)} != declared {sorted(spec.labels)}")
        value = float(s.value)
        if math.isnan(value):
            raise UnknownMetricError(f"{s.name}{dict(s.labels)}: NaN is not a measurement; leave the sample out")
        out.append(Sample(s.name, value, {k: str(v) for k, v in s.labels.items()}))
    return out


class _Samples(Collector):
    """The samples as metric families (no ``_created`` series, which a batch value has no use for)."""

    def __init__(self, samples: Sequence[Sample]):
        self.samples = samples

    def collect(self) -> Iterator[Any]:
        by_name: dict[str, list[Sample]] = {}
        for s in self.samples:
            by_name.setdefault(s.name, []).append(s)
        for name, group in sorted(by_name.items()):
            spec = CATALOGUE[name]
            cls = CounterMetricFamily if spec.kind == "counter" else GaugeMetricFamily
            family = cls(name, spec.help, labels=list(spec.labels))
            for s in group:
                family.add_metric([s.labels[k] for k in spec.labels], s.value)
            yield family


def registry_for(samples: Iterable[Sample]) -> CollectorRegistry:
    """A registry of its own per push, so two jobs in one process never mix their series."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Samples(validate(samples)))
    return registry


@dataclass(frozen=True)
class PushOutcome:
    """What became of one push: pushed, skipped (no Pushgateway configured) or failed (why)."""

    status: str  # "pushed", "skipped", "failed"
    url: str
    job: str
    grouping: Mapping[str, str]
    n_samples: int
    seconds: float = 0.0
    error: str | None = None

    @property
    def warning(self) -> str | None:
        """The log line for a failed push (None otherwise)."""
        if self.status != "failed":
            return None
        return (
            f"metrics not pushed to the Pushgateway {self.url} (job {self.job}, group {dict(self.grouping)}): "
            f"{self.error}; the run goes on without them"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "url": self.url or "-",
            "job": self.job,
            "grouping": dict(self.grouping),
            "samples": self.n_samples,
            "seconds": round(self.seconds, 4),
            "error": self.error or "-",
        }


def push(
    url: str,
    job: str,
    samples: Iterable[Sample],
    grouping: Mapping[str, str] | None = None,
    *,
    replace: bool = True,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> PushOutcome:
    """Push ``samples`` as the group ``job`` + ``grouping``; never raises for the Pushgateway's sake.

    Bad samples (unknown names, wrong labels, NaN) are programming errors and raise
    :class:`UnknownMetricError` whether or not a Pushgateway is configured, so they are caught by
    tests run without one. ``url`` empty: nothing is sent (status ``skipped``)."""
    registry = registry_for(samples)
    grouping = {k: str(v) for k, v in (grouping or {}).items()}
    n = sum(len(m.samples) for m in registry.collect())
    if not url:
        return PushOutcome("skipped", "", job, grouping, n)
    started = time.perf_counter()
    send = push_to_gateway if replace else pushadd_to_gateway
    try:
        send(url, job=job, registry=registry, grouping_key=grouping, timeout=timeout)
    except (OSError, ValueError) as exc:
        # OSError covers refused connections, timeouts and the client's own error for a non-2xx
        # answer; ValueError a URL the HTTP library cannot use. Either way the batch result stands.
        return PushOutcome(
            "failed", url, job, grouping, n, time.perf_counter() - started, f"{type(exc).__name__}: {exc}"[:300]
        )
    return PushOutcome("pushed", url, job, grouping, n, time.perf_counter() - started)


# -- the samples of each batch -------------------------------------------------------------------


def _finite(value: Any) -> float | None:
    """A number worth pushing: None, text ("no closed trades") and NaN are left out."""
    if value is None or isinstance(value, (str, bytes)):
        return None
    value = float(value)
    return None if math.isnan(value) else value


def trading_samples(summary: Mapping[str, Any], positions: Iterable[Mapping[str, Any]]) -> list[Sample]:
    """The paper account: ``summary`` is ``trading_performance``'s overall dict (``deploy_ops.trading.
    metrics.summarize`` plus current equity and daily PnL), ``positions`` its per-instrument rows."""
    out: list[Sample] = []

    def add(name: str, value: Any, **labels: str) -> None:
        number = _finite(value)
        if number is not None:
            out.append(Sample(name, number, labels))

    pf = summary.get("profit_factor") or {}
    pf_value = math.inf if pf.get("value") == "inf" else pf.get("value")
    add("autotrader_trading_equity", summary.get("current_equity"))
    add("autotrader_trading_pnl", summary.get("total_pnl"))
    add("autotrader_trading_daily_pnl", summary.get("daily_pnl"))
    add("autotrader_trading_sharpe_ratio", (summary.get("sharpe") or {}).get("value"))
    add("autotrader_trading_win_rate_ratio", summary.get("win_rate"))
    add("autotrader_trading_max_drawdown_ratio", (summary.get("max_drawdown") or {}).get("value"))
    add("autotrader_trading_profit_factor", pf_value)
    add("autotrader_trading_trades_per_minute", summary.get("trades_per_minute"))
    add("autotrader_trading_fills_total", summary.get("n_fills"))
    add("autotrader_trading_trades_total", summary.get("n_trades"))
    for row in positions:
        instrument = str(row["instrument"])
        add("autotrader_trading_position_units", row.get("units"), instrument=instrument)
        add("autotrader_trading_position_notional", row.get("notional"), instrument=instrument)
        add("autotrader_trading_instrument_pnl", row.get("pnl"), instrument=instrument)
    return out


#: Pushgateway groups (the ``job`` label) by source. Fixed names, not the Dagster job: an asset
#: runs in several jobs, and one group per source keeps one current series per metric. The
#: breaker's group has two writers: paper_trading trips it, ``autotrader breaker reset`` clears it.
TRADING_JOB = "paper_account"
BREAKER_JOB = "circuit_breaker"
DRIFT_JOB = "feature_drift"
HEALTH_JOB = "model_health"
MARKET_DATA_JOB = "market_data"  # grouped by instrument too
GROUPS = (TRADING_JOB, BREAKER_JOB, DRIFT_JOB, HEALTH_JOB, MARKET_DATA_JOB)


def breaker_samples(tripped: bool) -> list[Sample]:
    return [Sample("autotrader_circuit_breaker_tripped", 1.0 if tripped else 0.0)]


def push_breaker(url: str, tripped: bool, timeout: float = DEFAULT_TIMEOUT_S) -> PushOutcome:
    return push(url, BREAKER_JOB, breaker_samples(tripped), timeout=timeout)


def psi_samples(psi_by_feature: Iterable[tuple[str, Any, Any]]) -> list[Sample]:
    """``(feature, model_version, psi)`` triples; features without a PSI (all NaN) are left out."""
    out = []
    for feature, version, psi in psi_by_feature:
        number = _finite(psi)
        if number is not None:
            out.append(
                Sample("autotrader_feature_psi", number, {"feature": str(feature), "model_version": str(version)})
            )
    return out


def confidence_samples(confidence: Any) -> list[Sample]:
    number = _finite(confidence)
    return [] if number is None else [Sample("autotrader_model_confidence_ratio", number)]


def health_samples(confidence: Any, win_rate_4h: Any) -> list[Sample]:
    """model_health's group: the last full 2-hour window's confidence and the last full 4-hour
    window's win rate (each left out when its window was not judged: the group is replaced, so an
    old value never outlives the day that had it)."""
    number = _finite(win_rate_4h)
    window = [] if number is None else [Sample("autotrader_trading_rolling_win_rate_ratio", number)]
    return confidence_samples(confidence) + window


def market_data_samples(instrument: str, missing_ratio: Any, outlier_bars: int) -> list[Sample]:
    out = [Sample("autotrader_market_data_outlier_bars", float(outlier_bars), {"instrument": instrument})]
    number = _finite(missing_ratio)
    if number is not None:
        out.append(Sample("autotrader_market_data_missing_ratio", number, {"instrument": instrument}))
    return out


def job_success_samples(finished_at: float) -> list[Sample]:
    return [
        Sample("autotrader_job_last_success_timestamp_seconds", float(finished_at)),
        Sample("autotrader_job_consecutive_failures", 0.0),
    ]


def job_failure_samples(consecutive_failures: int) -> list[Sample]:
    return [Sample("autotrader_job_consecutive_failures", float(consecutive_failures))]


__all__ = [
    "CATALOGUE",
    "DEFAULT_TIMEOUT_S",
    "MetricSpec",
    "PREFIX",
    "PushOutcome",
    "Sample",
    "UnknownMetricError",
    "BREAKER_JOB",
    "DRIFT_JOB",
    "GROUPS",
    "HEALTH_JOB",
    "MARKET_DATA_JOB",
    "TRADING_JOB",
    "breaker_samples",
    "push_breaker",
    "confidence_samples",
    "health_samples",
    "job_failure_samples",
    "job_success_samples",
    "market_data_samples",
    "psi_samples",
    "push",
    "registry_for",
    "trading_samples",
    "validate",
]
