"""What the circuit-breaker sensor decides, without Dagster: which trips need a rollback now.

The sensor pages through the deployment-state event log (``circuit_breaker_tripped`` events,
cursor = last event id seen). A trip still in force gets one alert event and one request for
the emergency rollback job; a trip an operator already reset by the time the sensor sees it
needs neither (this also keeps a freshly enabled sensor from rolling back for old history).

A requested rollback is followed until it succeeds (:func:`follow_up`): a run that failed, was
canceled or never got launched is a critical ``emergency_rollback_run_failed`` event each time,
and is requested again with a new run key (``...-attempt-<n>``, because Dagster never launches a
run key twice) after a back-off that doubles per attempt, up to :attr:`RetryPolicy.max_attempts`;
the last failure's event says no more attempts follow and what the operator must do. A trip that
is reset meanwhile stops the retries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from deploy_ops import events as ops_events
from deploy_ops.text import DETAIL, MESSAGE, truncate
from deploy_ops.trading.breaker import TRIP_EVENT, BreakerStatus, BreakerStore

ALERT_EVENT = "circuit_breaker_alert"
RETRY_FAILED_EVENT = "emergency_rollback_run_failed"
ROLLBACK_JOB = "emergency_rollback"
#: Run tags that tie a rollback run to its trip and attempt (how the sensor finds it again).
TRIP_TAG, ATTEMPT_TAG = "autotrader/trip_id", "autotrader/attempt"
#: Where the operator goes when the automatic emergency rollback keeps failing.
RETRY_RUNBOOK = "docs/runbooks/rollback.md#2b-emergency-rollback-now"


@dataclass(frozen=True)
class RollbackRequest:
    """One emergency rollback to launch; ``run_key`` makes a trip launch it at most once."""

    run_key: str
    trip_id: int
    event_id: int
    tags: dict[str, str]
    alert: dict[str, Any]


def trip_run_key(trip_id: int, attempt: int = 1) -> str:
    """The run key of one attempt at the rollback for one trip (Dagster skips a run key it has
    already launched, so each retry needs its own)."""
    base = f"circuit-breaker-trip-{trip_id}"
    return base if attempt == 1 else f"{base}-attempt-{attempt}"


def _tags(trip_id: int, attempt: int) -> dict[str, str]:
    return {"autotrader/trigger": "circuit_breaker", TRIP_TAG: str(trip_id), ATTEMPT_TAG: str(attempt)}


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
            store.events,
            ALERT_EVENT,
            "critical",
            f"circuit breaker tripped ({status.reason}); requesting {job_name}",
            alert,
        )
        requests.append(
            RollbackRequest(
                run_key=run_key,
                trip_id=int(trip_id),
                event_id=event.id,
                tags=_tags(int(trip_id), 1),
                alert=alert,
            )
        )
    return requests, skipped, events[-1].id


@dataclass(frozen=True)
class RetryPolicy:
    """How long the sensor keeps trying: ``max_attempts`` runs per trip; after attempt n fails the
    next one waits ``backoff_seconds * 2**(n-1)``; a requested run not seen in the instance after
    ``launch_grace_seconds`` counts as one that could not be launched."""

    max_attempts: int = 3
    backoff_seconds: float = 30.0
    launch_grace_seconds: float = 180.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.backoff_seconds < 0 or self.launch_grace_seconds <= 0:
            raise ValueError("backoff_seconds must be >= 0 and launch_grace_seconds > 0")


@dataclass(frozen=True)
class AttemptRun:
    """What the instance knows of one attempt's run: ``missing`` (not created yet or never
    launched), ``running`` (queued or in progress), ``succeeded`` or ``failed`` (failed or canceled)."""

    state: str
    run_id: str | None = None
    error: str = ""


#: Looks up the run of (trip id, attempt); the sensor implements it with the Dagster instance.
RunLookup = Callable[[int, int], AttemptRun]

OPERATOR_ACTIONS = [
    "Traffic may still be on the model that tripped the breaker; the breaker keeps new orders blocked.",
    "Run autotrader deploy status to see what serves and the failure's actions.",
    "Roll back by hand: autotrader deploy emergency-rollback --reason TEXT, or "
    "autotrader deploy rollback --to VERSION --reason TEXT for a version you trust.",
]


def follow_up(
    store: BreakerStore,
    tracked: Mapping[str, Mapping[str, Any]],
    lookup: RunLookup,
    now: float,
    policy: RetryPolicy,
    job_name: str = ROLLBACK_JOB,
) -> tuple[list[RollbackRequest], list[str], dict[str, dict[str, Any]]]:
    """The requested rollbacks after their runs: retries to request, notes, the trips still followed.

    ``tracked`` maps a trip id to ``{"attempt", "requested_at", "reported", "retry_at"}`` (epoch
    seconds); records one critical :data:`RETRY_FAILED_EVENT` per failed attempt."""
    status: BreakerStatus = store.status()
    requests: list[RollbackRequest] = []
    notes: list[str] = []
    keep: dict[str, dict[str, Any]] = {}
    for key, entry in tracked.items():
        trip_id, item = int(key), dict(entry)
        attempt = int(item["attempt"])
        if not (status.tripped and status.trip_id == trip_id):
            notes.append(f"trip {trip_id} was reset: its rollback is no longer followed")
            continue
        run = lookup(trip_id, attempt)
        if run.state == "succeeded":
            notes.append(f"trip {trip_id}: emergency rollback succeeded (attempt {attempt}, run {run.run_id})")
            continue
        if run.state == "running" or (
            run.state == "missing" and now - float(item["requested_at"]) < policy.launch_grace_seconds
        ):
            keep[key] = item
            continue
        if not item.get("reported"):
            error = run.error or (
                f"run {run.run_id} failed"
                if run.run_id
                else f"no run was launched within {policy.launch_grace_seconds:.0f} s of the request"
            )
            final = attempt >= policy.max_attempts
            wait = policy.backoff_seconds * 2 ** (attempt - 1)
            item.update(reported=True, retry_at=None if final else now + wait)
            then = (
                f"no more automatic attempts ({policy.max_attempts} made): roll back by hand"
                if final
                else f"attempt {attempt + 1} of {policy.max_attempts} in {wait:.0f} s"
            )
            ops_events.record(
                store.events,
                RETRY_FAILED_EVENT,
                "critical",
                f"emergency rollback for breaker trip {trip_id} failed (attempt {attempt} of "
                f"{policy.max_attempts}): {truncate(error, DETAIL)}; {then}",
                {
                    "trip_id": trip_id,
                    "attempt": attempt,
                    "max_attempts": policy.max_attempts,
                    "run_id": run.run_id,
                    "error": truncate(error, MESSAGE),
                    "final": final,
                    "retry_in_seconds": None if final else wait,
                    "job": job_name,
                    "operator_actions": OPERATOR_ACTIONS,
                },
                runbook=RETRY_RUNBOOK,
            )
            if final:
                notes.append(f"trip {trip_id}: emergency rollback failed {attempt} times; given up")
                continue
        if item.get("retry_at") is not None and now >= float(item["retry_at"]):
            attempt += 1
            requests.append(
                RollbackRequest(
                    run_key=trip_run_key(trip_id, attempt),
                    trip_id=trip_id,
                    event_id=0,
                    tags=_tags(trip_id, attempt),
                    alert={"trip_id": trip_id, "attempt": attempt},
                )
            )
            item = {"attempt": attempt, "requested_at": now, "reported": False, "retry_at": None}
            notes.append(f"trip {trip_id}: emergency rollback requested again (attempt {attempt})")
        keep[key] = item
    return requests, notes, keep


__all__ = [
    "ALERT_EVENT",
    "ATTEMPT_TAG",
    "AttemptRun",
    "RETRY_FAILED_EVENT",
    "ROLLBACK_JOB",
    "RetryPolicy",
    "RollbackRequest",
    "TRIP_TAG",
    "follow_up",
    "pending_rollbacks",
    "trip_run_key",
]
