"""Which events become Alertmanager alerts, under which name, and which events resolve them.

An event of the deployment-state log (``deploy_ops.events``) is one of three things here:

* an **alert**: it has an :class:`AlertSpec` in :data:`ALERTS` and is sent to Alertmanager with
  labels ``alertname``, ``severity``, ``dedup_key`` (the condition it reports) and ``service``,
  annotations ``summary``, ``description``, ``runbook_url``. A *conditional* alert stays firing
  until an event that clears its condition arrives; a *one-shot* alert (a failed run, an info
  notice) is sent once and expires after :data:`ONE_SHOT_TTL`.
* a **resolver**: it has a :class:`Resolver` in :data:`RESOLVERS` and ends the open conditional
  alerts it clears (a breaker reset ends the breaker's page). A kind may be both (a successful
  rollout is a notice and ends earlier deployment failures).
* **quiet**: log lines nobody is paged for (:data:`QUIET`). A warning or critical kind that is in
  none of the three is still sent, named after its kind, so a new critical event is never silent
  (``tests/unit/test_alerting.py`` checks that every kind the code records is classified).

Where an event reports what a Prometheus rule of ``monitoring/prometheus/rules/`` also watches
(a breaker trip, a slot down, low win rate), it carries the rule's alert name, so one routing
tree (``monitoring/alertmanager/alertmanager.yml``, by ``severity``) and one inhibition rule serve
both. Such a condition must page once, not once per source: every alert also carries the label
``incident`` (:func:`incident_of`), which the rule of the same name sets to the same value, and the
critical route groups by ``alertname`` and ``incident``. Both sources' alerts then sit in one
Alertmanager group, which is one PagerDuty incident (Alertmanager keys PagerDuty by the group),
opened by whichever arrives first and resolved when both have cleared. The incident is coarser
than the ``dedup_key`` where the rule cannot see the event's detail (a pushed gauge knows the breaker
is tripped, not which trip): :data:`INCIDENTS`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from deploy_ops.events import OpsEvent
from deploy_ops.text import truncate

#: How long Alertmanager keeps a one-shot alert (a notice, a failed run) before it expires.
ONE_SHOT_TTL = dt.timedelta(hours=1)
#: How long a conditional alert lives in Alertmanager without being re-sent: every flush re-sends
#: open alerts well before this, so only a platform that stopped flushing for a day lets it lapse.
CONDITION_TTL = dt.timedelta(hours=24)
#: Label every alert raised from the platform's events carries (Prometheus rules set their own).
SERVICE = "autotrader"
#: The runbook of every alert: its section in this file (anchors are the alert names, lower-cased).
ALERTS_RUNBOOK = "docs/runbooks/alerts.md"
#: Where an unlisted warning/critical kind points.
UNLISTED_RUNBOOK = f"{ALERTS_RUNBOOK}#unlisted-events"
DESCRIPTION_LIMIT = 1500


#: The ``incident`` label of the alert names a Prometheus rule raises too, where it is coarser than
#: the event's ``dedup_key``: the rules in ``monitoring/prometheus/rules/`` set exactly these
#: (``tests/unit/test_alert_incidents.py``). ``ServingSlotDown`` is absent: both sources see the slot,
#: so its incident is its dedup key ``slot-down-<slot>`` (the rule: ``slot-down-{{ $labels.slot_name }}``).
INCIDENTS: dict[str, str] = {
    # One breaker, and one trip in force at a time: a reset comes before the next trip.
    "CircuitBreakerTripped": "circuit-breaker",
    # Every open DeploymentFailed clears on the next good rollout or rollback: one condition.
    "DeploymentFailed": "deployment-failed",
    # The pushed failure streak is per job, not per partition.
    "DataPipelineFailing": "data-pipeline-failing",
    # The rule fires per feature, the event per model version: one drift incident.
    "FeatureDriftCritical": "feature-drift-critical",
    # The rule fires per slot, the health check's event per date.
    "ServingErrorRateHigh": "serving-error-rate",
}


def incident_of(alertname: str, dedup_key: str) -> str:
    """The ``incident`` label: what the critical route groups by (one PagerDuty incident each)."""
    return INCIDENTS.get(alertname, dedup_key)


def alert_section(alertname: str) -> str:
    """The runbook section of an alert name: ``docs/runbooks/alerts.md#<name lower-cased>``."""
    return f"{ALERTS_RUNBOOK}#{alertname.lower()}"


def _detail(event: OpsEvent, key: str, default: Any = "") -> Any:
    value = event.details.get(key)
    return default if value is None else value


def _per_event(event: OpsEvent) -> str:
    return f"{event.kind}-{event.id}"


@dataclass(frozen=True)
class AlertSpec:
    """How one kind of event is sent.

    ``alertname`` is a name or a function of the event (one kind may carry several findings);
    ``key`` names the condition (the ``dedup_key`` label: Alertmanager and PagerDuty see one alert
    per key); ``conditional`` alerts stay open until a :class:`Resolver` ends them; ``severity``
    overrides the event's (None keeps it); ``severities`` limits which events of the kind alert."""

    alertname: str | Callable[[OpsEvent], str]
    key: Callable[[OpsEvent], str] = _per_event
    conditional: bool = False
    severity: str | None = None
    severities: tuple[str, ...] = ("info", "warning", "critical")

    def name_of(self, event: OpsEvent) -> str:
        return self.alertname(event) if callable(self.alertname) else self.alertname


@dataclass(frozen=True)
class Resolver:
    """An event that ends open conditional alerts: those named in ``alertnames`` for which
    ``clears(resolver_event, alert_event)`` holds (default: all of them)."""

    alertnames: tuple[str, ...]
    clears: Callable[[OpsEvent, Mapping[str, Any]], bool] = field(default=lambda resolver, alert: True)


_HEALTH_NAMES = {
    ("confidence", "warning"): "ModelConfidenceLow",
    ("win_rate", "warning"): "WinRateLow",
    ("data_quality", "warning"): "MarketDataMissing",
    ("serving", "warning"): "ServingLatencyHigh",
    ("serving", "critical"): "ServingErrorRateHigh",
}


def _health_name(event: OpsEvent) -> str:
    check = str(_detail(event, "check", "finding"))
    if check == "data_quality" and "outliers_by_instrument" in event.details:
        return "MarketDataOutliers"
    return _HEALTH_NAMES.get((check, event.severity)) or "ModelHealth" + "".join(
        p.capitalize() for p in check.split("_")
    )


def _drift_cleared(resolver: OpsEvent, alert: Mapping[str, Any]) -> bool:
    # A day under the warning threshold clears drift seen on that day or before it.
    return str(alert.get("date", "")) <= str(_detail(resolver, "date", ""))


def _same_slot(resolver: OpsEvent, alert: Mapping[str, Any]) -> bool:
    return resolver.kind == "production_serving_ensured" or alert.get("slot") == resolver.details.get("slot")


def _same_partitions(resolver: OpsEvent, alert: Mapping[str, Any]) -> bool:
    return alert.get("partitions") == resolver.details.get("partitions")


_DEPLOYMENT_FAILURES = (
    "rollout_rolled_back",
    "rollout_interrupted",
    "deployment_run_failed",
    "model_rollback_failed",
    "emergency_rollback_failed",
    "restore_serving_failed",
    "slot_start_failed",
    "slot_retire_failed",
    # circuit_breaker_sensor: one per failed attempt at the emergency rollback it requested
    "emergency_rollback_run_failed",
)


def _deployment_key(event: OpsEvent) -> str:
    dep = event.details.get("deployment_id")
    return f"deployment-{dep}" if dep is not None else _per_event(event)


#: Every kind of event sent to Alertmanager.
ALERTS: dict[str, AlertSpec] = {
    # critical: PagerDuty
    "circuit_breaker_tripped": AlertSpec(
        "CircuitBreakerTripped", key=lambda e: f"circuit-breaker-trip-{_detail(e, 'trip_id')}", conditional=True
    ),
    # The sensor's answer to the same trip: identical labels, so Alertmanager holds one alert.
    "circuit_breaker_alert": AlertSpec(
        "CircuitBreakerTripped", key=lambda e: f"circuit-breaker-trip-{_detail(e, 'trip_id')}", conditional=True
    ),
    "feature_drift_critical": AlertSpec(
        "FeatureDriftCritical", key=lambda e: f"feature-drift-critical-v{_detail(e, 'model_version')}", conditional=True
    ),
    "data_pipeline_failing": AlertSpec(
        "DataPipelineFailing", key=lambda e: f"data-pipeline-{_detail(e, 'partitions')}", conditional=True
    ),
    "slot_down": AlertSpec("ServingSlotDown", key=lambda e: f"slot-down-{_detail(e, 'slot')}", conditional=True),
    # run_launch_failure_sensor: one alert per run that would not launch, updated by each relaunch
    # that fails too (the last says it gave up); one-shot: no event says the relaunch worked.
    "run_launch_failed": AlertSpec(
        "RunLaunchFailed", key=lambda e: f"run-launch-failed-{_detail(e, 'first_run_id', e.id)}"
    ),
    **{kind: AlertSpec("DeploymentFailed", key=_deployment_key, conditional=True) for kind in _DEPLOYMENT_FAILURES},
    # warning: Slack
    "feature_drift_warning": AlertSpec("FeatureDriftWarning", key=lambda e: "feature-drift-warning", conditional=True),
    "model_health_finding": AlertSpec(
        _health_name,
        key=lambda e: f"model-health-{_detail(e, 'check')}-{_detail(e, 'date')}",
        severities=("warning", "critical"),
    ),
    "run_failed": AlertSpec("RunFailed", key=lambda e: f"run-failed-{_detail(e, 'run_id', e.id)}"),
    "rollout_refused": AlertSpec("RolloutRefused", key=_deployment_key),
    "traffic_switched": AlertSpec("TrafficSwitched"),
    "slot_stopped": AlertSpec("SlotStopped", severities=("warning", "critical")),
    "model_rollback": AlertSpec("ModelRolledBack", key=_deployment_key),
    # The breaker's trip already paged: the rollback that answered it is news for the channel.
    "emergency_rollback": AlertSpec("EmergencyRollback", key=_deployment_key, severity="warning"),
    "report_mail_failed": AlertSpec("ReportMailFailed"),
    # info: email
    "rollout_succeeded": AlertSpec("DeploymentCompleted", key=_deployment_key),
    "model_promoted": AlertSpec(
        "ModelPromoted", key=lambda e: f"model-promoted-v{_detail(e, 'version')}-{_detail(e, 'stage')}"
    ),
    "data_pipeline_completed": AlertSpec("DataPipelineCompleted", key=lambda e: f"run-{_detail(e, 'run_id', e.id)}"),
    "training_completed": AlertSpec("TrainingCompleted", key=lambda e: f"run-{_detail(e, 'run_id', e.id)}"),
    "weekly_performance_report": AlertSpec(
        "WeeklyPerformanceReport", key=lambda e: f"report-{_detail(e, 'run_id', e.id)}"
    ),
    # `autotrader alerts test`: any severity, through the route of that severity.
    "alert_test": AlertSpec("AlertTest"),
}

#: Every kind of event that ends open conditional alerts.
RESOLVERS: dict[str, Resolver] = {
    "circuit_breaker_reset": Resolver(("CircuitBreakerTripped",)),
    "feature_drift_cleared": Resolver(("FeatureDriftCritical", "FeatureDriftWarning"), _drift_cleared),
    "data_pipeline_completed": Resolver(("DataPipelineFailing",), _same_partitions),
    "slot_started": Resolver(("ServingSlotDown",), _same_slot),
    "production_serving_ensured": Resolver(("ServingSlotDown",), _same_slot),
    # The rollout recovered: a later deployment or rollback put a good version in service.
    "rollout_succeeded": Resolver(("DeploymentFailed",)),
    "model_rollback": Resolver(("DeploymentFailed",)),
    "emergency_rollback": Resolver(("DeploymentFailed",)),
}

#: Log lines nobody is alerted for (progress of a rollout, slot bookkeeping, decisions already
#: described by the alert that caused them).
QUIET: frozenset[str] = frozenset(
    {
        "rollout_started",
        "rollout_stage_passed",
        "slot_started",
        "slot_stopped",
        "feature_drift_decision",
        "circuit_breaker_reset",
        "production_serving_ensured",
        "feature_drift_cleared",
    }
)


def camel(kind: str) -> str:
    return "".join(part.capitalize() for part in kind.split("_") if part)


@dataclass(frozen=True)
class Alert:
    """One alert as Alertmanager's v2 API takes it (without its times)."""

    alertname: str
    severity: str
    dedup_key: str
    conditional: bool
    summary: str
    description: str
    runbook_url: str
    event_id: int | None

    @property
    def labels(self) -> dict[str, str]:
        return {
            "alertname": self.alertname,
            "severity": self.severity,
            "dedup_key": self.dedup_key,
            "incident": incident_of(self.alertname, self.dedup_key),
            "service": SERVICE,
        }

    def annotations(self, runbook_base_url: str = "") -> dict[str, str]:
        return {
            "summary": self.summary,
            "description": self.description,
            "runbook_url": runbook_base_url + self.runbook_url,
            "event_id": "" if self.event_id is None else str(self.event_id),
        }


def _description(event: OpsEvent) -> str:
    lines = [f"{event.kind} (event {event.id}) at {event.at}"]
    for key, value in sorted(event.details.items()):
        lines.append(f"{key}: {truncate(value, 300)}")
    return truncate("\n".join(lines), DESCRIPTION_LIMIT)


def alert_for(event: OpsEvent) -> Alert | None:
    """The alert an event raises, or None (quiet kinds, info events of unlisted kinds)."""
    spec = ALERTS.get(event.kind)
    if spec is None:
        if event.kind in QUIET or event.kind in RESOLVERS or event.severity == "info":
            return None
        name = camel(event.kind)
        return Alert(
            name,
            event.severity,
            _per_event(event),
            False,
            event.summary,
            _description(event),
            event.runbook or UNLISTED_RUNBOOK,
            event.id,
        )
    if event.severity not in spec.severities:
        return None
    name = spec.name_of(event)
    return Alert(
        name,
        spec.severity or event.severity,
        spec.key(event),
        spec.conditional,
        event.summary,
        _description(event),
        event.runbook or alert_section(name),
        event.id,
    )


def all_alertnames() -> dict[str, set[str]]:
    """Every alert name the platform's events can raise, with the severities it is sent with (the
    routing tests route each pair; docs/runbooks/alerts.md has a section for each name). The
    Prometheus rules' names are read from monitoring/prometheus/rules/ by the tests."""
    out: dict[str, set[str]] = {"MarketDataOutliers": {"warning"}}
    for (_check, severity), name in _HEALTH_NAMES.items():
        out.setdefault(name, set()).add(severity)
    out.setdefault("AlertTest", set()).update(("info", "warning", "critical"))
    for kind, spec in ALERTS.items():
        if callable(spec.alertname) or kind == "alert_test":
            continue
        out.setdefault(spec.alertname, set()).update({spec.severity} if spec.severity else _RECORDED_SEVERITY[kind])
    return out


#: The severity each alerting kind is recorded with (``test_alerting`` checks the code agrees).
_RECORDED_SEVERITY: dict[str, set[str]] = {
    "circuit_breaker_tripped": {"critical"},
    "circuit_breaker_alert": {"critical"},
    "feature_drift_critical": {"critical"},
    "data_pipeline_failing": {"critical"},
    "slot_down": {"critical"},
    "run_launch_failed": {"critical"},
    **{kind: {"critical"} for kind in _DEPLOYMENT_FAILURES},
    "feature_drift_warning": {"warning"},
    "run_failed": {"warning"},
    "rollout_refused": {"warning"},
    "traffic_switched": {"warning"},
    "slot_stopped": {"warning"},
    "model_rollback": {"warning"},
    "emergency_rollback": {"warning"},
    "report_mail_failed": {"warning"},
    "rollout_succeeded": {"info"},
    "model_promoted": {"info"},
    "data_pipeline_completed": {"info"},
    "training_completed": {"info"},
    "weekly_performance_report": {"info"},
}


__all__ = [
    "ALERTS",
    "ALERTS_RUNBOOK",
    "Alert",
    "AlertSpec",
    "CONDITION_TTL",
    "INCIDENTS",
    "ONE_SHOT_TTL",
    "QUIET",
    "RESOLVERS",
    "Resolver",
    "SERVICE",
    "alert_for",
    "alert_section",
    "incident_of",
    "all_alertnames",
    "camel",
]
