"""What the circuit-breaker sensor decides, without Dagster: which trips need a rollback now.

The sensor pages through the deployment-state event log (``circuit_breaker_tripped`` events,
cursor = last event id seen). A trip still in force gets one alert event and one request for
the emergency rollback job; a trip an operator already reset by the time the sensor sees it
needs neither (this also keeps a freshly enabled sensor from rolling back for old history).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deploy_ops import events as ops_events
from deploy_ops.trading.breaker import TRIP_EVENT, BreakerStatus, BreakerStore

ALERT_EVENT = "circuit_breaker_alert"
ROLLBACK_JOB = "emergency_rollback"


@dataclass(frozen=True)
class RollbackRequest:
    """One emergency rollback to launch; ``run_key`` makes a trip launch it at most once."""

    run_key: str
    trip_id: int
    event_id: int
    tags: dict[str, str]
    alert: dict[str, Any]


def trip_run_key(trip_id: int) -> str:
    """The run key of the rollback for one trip (Dagster skips a run key it has already launched)."""
    return f"circuit-breaker-trip-{trip_id}"


def pending_rollbacks(
    store: BreakerStore, cursor: int, job_name: str = ROLLBACK_JOB, limit: int = 100
) -> tuple[list[RollbackRequest], list[str], int]:
    """New trip events after ``cursor``: the rollbacks to request, notes on skipped ones, new cursor.

    Records one critical ``circuit_breaker_alert`` event per requested rollback."""
    events = store.events.events_since(cursor, kinds=[TRIP_EVENT], limit=limit)
    if not events:
        return [], [], cursor
    status: BreakerStatus = store.status()
    requests: list[RollbackRequest] = []
    skipped: list[str] = []
    for event in events:
        trip_id = event.details.get("trip_id")
        if not (status.tripped and trip_id is not None and status.trip_id == trip_id):
            skipped.append(f"trip {trip_id} (event {event.id}) is no longer in force: no rollback")
            continue
        run_key = trip_run_key(int(trip_id))
        alert = {
            "trip_id": int(trip_id),
            "tripped_at": status.tripped_at.isoformat() if status.tripped_at else None,
            "reason": status.reason,
            "job": job_name,
            "run_key": run_key,
            "trip_event_id": event.id,
        }
        # The common event shape (kind, severity, summary, details, runbook) that alerting routes on.
        ops_events.record(
            store.events, ALERT_EVENT, "critical",
            f"circuit breaker tripped ({status.reason}); requesting {job_name}", alert,
        )
        requests.append(
            RollbackRequest(
                run_key=run_key,
                trip_id=int(trip_id),
                event_id=event.id,
                tags={"autotrader/trigger": "circuit_breaker", "autotrader/trip_id": str(trip_id)},
                alert=alert,
            )
        )
    return requests, skipped, events[-1].id


__all__ = ["ALERT_EVENT", "ROLLBACK_JOB", "RollbackRequest", "pending_rollbacks", "trip_run_key"]
