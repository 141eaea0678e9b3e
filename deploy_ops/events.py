"""Operational events in one shape: kind, severity, summary, details, runbook.

Every event a sensor or a health check raises for people (drift, failed runs, breaker trips,
failed deployments) goes through :func:`record`, so whatever routes them later (Alertmanager:
``alertname`` = kind, ``severity``, ``summary``, ``description`` from the details, ``runbook_url``)
handles each one the same way. They live in the deployment-state event log
(``deploy_ops.state``): ``message`` holds the summary and the runbook is the reserved key
``runbook`` of the details, so older readers of the log keep working unchanged.

A runbook reference is ``docs/runbooks/<file>.md#<anchor>``: the section an operator follows.
``tests/unit/test_events.py`` checks that every reference in :data:`RUNBOOKS` names an existing
section.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from deploy_ops.state import SEVERITIES, DeploymentStateStore, Event, StateError

RUNBOOK_KEY = "runbook"
_RUNBOOK = re.compile(r"^docs/runbooks/[a-z0-9-]+\.md#[a-z0-9-]+$")

#: The runbook section of every kind of event raised for people.
RUNBOOKS: dict[str, str] = {
    "feature_drift_critical": "docs/runbooks/feature-drift.md#1-identify-the-drifted-features",
    "feature_drift_warning": "docs/runbooks/feature-drift.md#1-identify-the-drifted-features",
    "feature_drift_decision": "docs/runbooks/feature-drift.md#5-rollback-or-retrain",
    "model_health_finding": "docs/runbooks/feature-drift.md#model-health-findings",
    "data_pipeline_failing": "docs/runbooks/data-restore.md#1-validate",
    "run_failed": "docs/runbooks/feature-drift.md#a-failed-run",
    "circuit_breaker_alert": "docs/runbooks/circuit-breaker.md#2-investigate",
    "deployment_run_failed": "docs/runbooks/rollback.md#1-look-first",
    "run_launch_failed": "docs/runbooks/alerts.md#runlaunchfailed",
    # Notices and resolutions of the alerting domain (deploy_ops/alerting/catalog.py).
    "feature_drift_cleared": "docs/runbooks/alerts.md#featuredriftwarning",
    "data_pipeline_completed": "docs/runbooks/alerts.md#datapipelinecompleted",
    "training_completed": "docs/runbooks/alerts.md#trainingcompleted",
    "model_promoted": "docs/runbooks/alerts.md#modelpromoted",
    "weekly_performance_report": "docs/runbooks/alerts.md#weeklyperformancereport",
    "report_mail_failed": "docs/runbooks/alerts.md#reportmailfailed",
    "alert_test": "docs/runbooks/alerts.md#alerttest",
}


@dataclass(frozen=True)
class OpsEvent:
    """An event in the shape alerting routes on."""

    kind: str
    severity: str
    summary: str
    details: dict[str, Any]
    runbook: str
    id: int | None = None
    at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at,
            "kind": self.kind,
            "severity": self.severity,
            "summary": self.summary,
            "details": self.details,
            "runbook": self.runbook,
        }


def check_runbook(runbook: str) -> str:
    """``docs/runbooks/<file>.md#<anchor>``, or StateError naming what is wrong."""
    if not isinstance(runbook, str) or not _RUNBOOK.match(runbook):
        raise StateError(f"runbook must look like docs/runbooks/<file>.md#<section>, got {runbook!r}")
    return runbook


def record(
    state: DeploymentStateStore,
    kind: str,
    severity: str,
    summary: str,
    details: Mapping[str, Any] | None = None,
    runbook: str | None = None,
) -> OpsEvent:
    """Append one event in the common shape; the runbook defaults to the kind's in :data:`RUNBOOKS`."""
    if severity not in SEVERITIES:
        raise StateError(f"unknown severity {severity!r}; severities are {SEVERITIES}")
    runbook = check_runbook(runbook if runbook is not None else RUNBOOKS.get(kind, ""))
    body = dict(details or {})
    if RUNBOOK_KEY in body:
        raise StateError(f"details may not carry the reserved key {RUNBOOK_KEY!r}; pass runbook=")
    body[RUNBOOK_KEY] = runbook
    # The event log keeps messages to 2000 characters (what the CLI and UI show in one row).
    event = state.record_event(kind, summary[:2000], severity=severity, details=body)
    return shape(event)


def shape(event: Event) -> OpsEvent:
    """Any event of the log in the common shape (runbook empty for events recorded without one)."""
    details = dict(event.details)
    runbook = str(details.pop(RUNBOOK_KEY, "") or "")
    return OpsEvent(
        kind=event.kind,
        severity=event.severity,
        summary=event.message,
        details=details,
        runbook=runbook,
        id=event.id,
        at=event.at.isoformat() if event.at else None,
    )


__all__ = ["OpsEvent", "RUNBOOKS", "RUNBOOK_KEY", "check_runbook", "record", "shape"]
