"""Fire drills: inject a real fault into the running platform and time every step of the answer.

``autotrader drill breaker`` (``commands/drill.py``) trips the circuit breaker of the embedded
default while a Dagster daemon runs (``make ui`` starts one), then watches, all at once and from
the stores themselves, each step the platform is meant to take:

    fault -> event -> sensor tick -> alert delivered -> rollback run -> traffic on the known-good
    slot -> alert resolved

and prints when each happened, in seconds after the fault. Nothing is simulated: the trip is the
breaker's own (``BreakerStore.trip``), the sensor, the rollback run and the alert delivery are the
daemon's, and the drill reads their traces: the deployment-state event log, the Dagster instance
(``DAGSTER_HOME``), the alert outbox (delivery to ``AUTOTRADER_ALERTMANAGER_URL``), the routing table
and the slots. A step that cannot happen here is printed as such ("not configured"), never as done.
Once traffic is on the known-good slot the drill resets the breaker (an approved reset, audited like
any other) so that its alert can resolve; production stays on the known-good version.
"""
from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from autotrader_assets.settings import Settings
from deploy_ops import metrics_push
from deploy_ops.alerting.outbox import Outbox, outbox_table
from deploy_ops.models.registry import open_registry
from deploy_ops.state import DeploymentStateStore
from deploy_ops.trading.breaker import TRIP_EVENT, BreakerStore

#: The drills there are (one per fault); ``autotrader drill --help`` lists them.
KINDS = ("breaker",)
#: Steps of a drill's timeline, in the order the platform takes them.
STEPS = ("fault", "event", "sensor tick", "alert delivered", "rollback run", "traffic on known-good",
         "alert resolved")
#: A daemon whose last heartbeat is older than this is not running.
HEARTBEAT_MAX_AGE_S = 90.0
DEFAULT_TIMEOUT_S = 180.0
_SENSOR_EVENT = "circuit_breaker_alert"  # what circuit_breaker_sensor records when it acts on a trip


class DrillError(RuntimeError):
    """The drill cannot start (no daemon, no known-good version, the breaker already tripped):
    nothing was injected."""


@dataclass
class Step:
    name: str
    at: float | None = None  #: seconds after the fault
    detail: str = ""
    status: str = "waiting"  #: waiting | done | not configured | not observed | failed


@dataclass
class Timeline:
    """The drill's steps with their times; :meth:`lines` is what the CLI prints."""

    kind: str
    steps: dict[str, Step] = field(default_factory=lambda: {name: Step(name) for name in STEPS})
    notes: list[str] = field(default_factory=list)

    def done(self, name: str, at: float, detail: str) -> None:
        step = self.steps[name]
        if step.status == "waiting":
            step.at, step.detail, step.status = at, detail, "done"

    def skip(self, name: str, status: str, detail: str) -> None:
        step = self.steps[name]
        if step.status == "waiting":
            step.status, step.detail = status, detail

    def seconds(self, name: str) -> float | None:
        return self.steps[name].at

    def lines(self) -> list[str]:
        out = [f"fire drill: {self.kind}"]
        for step in self.steps.values():
            when = f"+{step.at:6.1f} s" if step.at is not None else f"{'-':>9}"
            text = step.detail if step.status == "done" else f"{step.status.upper()}: {step.detail}"
            out.append(f"  {when}  {step.name:<22} {text}")
        out += [f"  {note}" for note in self.notes]
        return out

    @property
    def succeeded(self) -> bool:
        return all(s.status in ("done", "not configured") for s in self.steps.values())


def daemon_heartbeat_age(instance: Any) -> float | None:
    """Seconds since the newest heartbeat of the instance's dagster-daemon, None if it never beat."""
    beats = instance.get_daemon_heartbeats()
    if not beats:
        return None
    return time.time() - max(beat.timestamp for beat in beats.values())


def open_instance(settings: Settings) -> Any:
    """The Dagster instance of ``DAGSTER_HOME`` (the one the daemon and the UI use)."""
    import dagster as dg

    yaml_file = settings.dagster_home / "dagster.yaml"
    if not yaml_file.is_file():
        raise DrillError(f"no Dagster instance at {settings.dagster_home} (no dagster.yaml): start the daemon "
                         "with `make ui` first")
    return dg.DagsterInstance.from_config(str(settings.dagster_home))


def _run_for_trip(instance: Any, trip_id: int) -> Any:
    import dagster as dg

    from autotrader_assets.defs.trading.rollback_decision import ROLLBACK_JOB, TRIP_TAG

    runs = instance.get_runs(filters=dg.RunsFilter(job_name=ROLLBACK_JOB, tags={TRIP_TAG: str(trip_id)}), limit=10)
    return runs[0] if runs else None  # newest attempt first


class BreakerDrill:
    """The breaker drill against one settings' stores and Dagster instance."""

    def __init__(self, settings: Settings, instance: Any, *, approved_by: str, clock: Callable[[], float] = time.time):
        self.settings = settings
        self.instance = instance
        self.approved_by = approved_by
        self.clock = clock
        self.state = DeploymentStateStore(settings.registry_url)
        self.breaker = BreakerStore(settings.registry_url)
        self.registry = open_registry(settings.registry_url, settings.artifacts_uri)

    def preflight(self) -> Any:
        """The known-good version traffic must end on; DrillError when the drill cannot run."""
        age = daemon_heartbeat_age(self.instance)
        if age is None or age > HEARTBEAT_MAX_AGE_S:
            seen = "never" if age is None else f"{age:.0f} s ago"
            raise DrillError(f"no dagster-daemon is running on {self.settings.dagster_home} (last heartbeat: {seen}); "
                             "nothing would answer the fault. Start one: `make ui`")
        if self.breaker.status().tripped:
            raise DrillError("the circuit breaker is already tripped: reset it first "
                             "(autotrader breaker reset --approved-by NAME --reason TEXT)")
        production = self.registry.get_production()
        known_good = self.registry.last_known_good()
        if production is None or known_good is None:
            raise DrillError("an emergency rollback needs a production version and a known-good one before it: "
                             "deploy two versions first (make run deploys one; autotrader deploy rollout another)")
        if not self.state.routing_table():
            raise DrillError("nothing is routed: no slot serves production (autotrader deploy status)")
        return known_good

    def run(self, timeout: float = DEFAULT_TIMEOUT_S, poll: float = 0.2,
            echo: Callable[[str], None] = lambda line: None) -> Timeline:
        known_good = self.preflight()
        timeline = Timeline("breaker")
        since = self.state.last_event_id()
        self.breaker.trip("fire drill: injected daily loss above the limit", {"drill": True, "by": self.approved_by})
        t0 = self.clock()
        trip_id = self.breaker.status().trip_id
        timeline.done("fault", 0.0, f"breaker tripped (trip {trip_id}) by the drill; production "
                                    f"v{self.registry.get_production().version}, known-good v{known_good.version}")
        echo(f"injected: trip {trip_id} at {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}")
        pushed = metrics_push.push_breaker(self.settings.pushgateway_url, True)
        if pushed.warning:
            timeline.notes.append(f"warning: {pushed.warning}")
        trip_event_id: int | None = None
        reset_done = False
        deadline = t0 + timeout
        while self.clock() < deadline:
            now = self.clock() - t0
            if trip_event_id is None:
                for event in self.state.events_since(since, kinds=[TRIP_EVENT]):
                    if (event.details or {}).get("trip_id") == trip_id:
                        trip_event_id = event.id
                        timeline.done("event", now, f"{TRIP_EVENT} event {event.id} (critical)")
            if trip_event_id is not None:
                for event in self.state.events_since(trip_event_id, kinds=[_SENSOR_EVENT]):
                    if (event.details or {}).get("trip_id") == trip_id:
                        timeline.done("sensor tick", now, f"circuit_breaker_sensor acted: {_SENSOR_EVENT} event "
                                                          f"{event.id}, emergency_rollback requested")
                self._delivery(timeline, trip_event_id, "fire", "alert delivered", now)
            run = _run_for_trip(self.instance, trip_id) if trip_id is not None else None
            if run is not None and run.is_finished:
                if run.status.value == "SUCCESS":
                    # Where the time went: the sensor's request, the queue, the run worker's start.
                    stats = self.instance.get_run_stats(run.run_id)
                    parts = [f"{label} +{value - t0:.1f} s" for label, value in
                             (("launched", stats.launch_time), ("started", stats.start_time)) if value]
                    timeline.done("rollback run", now, f"emergency_rollback run {run.run_id[:8]} succeeded"
                                                       + (f" ({', '.join(parts)})" if parts else ""))
                elif timeline.steps["rollback run"].status == "waiting":
                    timeline.steps["rollback run"].detail = f"run {run.run_id[:8]} {run.status.value} (retried by the sensor)"
            serving = self._serving_version()
            if serving == str(known_good.version):
                timeline.done("traffic on known-good", now, f"every route on a ready slot serving v{known_good.version}")
            if not reset_done and timeline.steps["traffic on known-good"].status == "done" \
                    and timeline.steps["rollback run"].status == "done":
                self.breaker.reset(approved_by=self.approved_by, reason="fire drill over: traffic on known-good")
                metrics_push.push_breaker(self.settings.pushgateway_url, False)
                reset_done = True
                timeline.notes.append(f"breaker reset by the drill at +{now:.1f} s (approved by {self.approved_by})")
            if reset_done and trip_event_id is not None:
                self._delivery(timeline, trip_event_id, "resolve", "alert resolved", now)
            if all(s.status != "waiting" for s in timeline.steps.values()):
                break
            time.sleep(poll)
        for step in timeline.steps.values():
            if step.status == "waiting":
                step.status = "not observed"
                step.detail = (step.detail + "; " if step.detail else "") + f"not within {timeout:.0f} s"
        if not reset_done and self.breaker.status().tripped:
            timeline.notes.append("the breaker is still TRIPPED: reset it when done "
                                  "(autotrader breaker reset --approved-by NAME --reason TEXT)")
        production = self.registry.get_production()
        if production is not None and production.version == known_good.version:
            timeline.notes.append(f"production is now v{known_good.version} (the known-good version); roll a newer "
                                  "one out again with `autotrader deploy rollout` when ready")
        return timeline

    def _delivery(self, timeline: Timeline, event_id: int, action: str, step: str, now: float) -> None:
        """The outbox row of the trip's alert (``fire``) or of its resolution (``resolve``, keyed by
        the reset event): delivered to Alertmanager, or why not."""
        o = outbox_table
        Outbox(self.state)  # creates the outbox tables on a database that never flushed
        with self.state.engine.connect() as conn:
            row = conn.execute(_outbox_row_query(o, action, event_id)).first()
        if row is not None and row.status == "delivered":
            timeline.done(step, now, f"{row.alertname} {action} delivered to Alertmanager (outbox row {row.id})")
        elif not self.settings.alertmanager_url and row is not None:
            timeline.skip(step, "not configured", f"{row.alertname} {action} queued in the outbox; "
                                                  "AUTOTRADER_ALERTMANAGER_URL is unset (autotrader alerts list)")

    def _serving_version(self) -> str | None:
        """The version every route is on, when all routes point at ready slots serving one version."""
        slots = self.state.slots()
        routes = set(self.state.routing_table().values())
        versions = {slots[r].version for r in routes if r in slots and slots[r].is_ready}
        if routes and all(r in slots and slots[r].is_ready for r in routes) and len(versions) == 1:
            return versions.pop()
        return None


def _outbox_row_query(o: Any, action: str, event_id: int) -> Any:
    """The outbox row of ``action`` for the trip event ``event_id`` (fire) or for a resolution of
    that trip's alert (resolve rows carry the resolver's event id, so they are matched by the fire
    row's dedup key)."""
    import sqlalchemy as sa

    if action == "fire":
        return sa.select(o).where(o.c.action == "fire", o.c.event_id == event_id).order_by(o.c.id)
    fire_keys = sa.select(o.c.dedup_key).where(o.c.action == "fire", o.c.event_id == event_id)
    return (sa.select(o).where(o.c.action == "resolve", o.c.dedup_key.in_(fire_keys), o.c.event_id > event_id)
            .order_by(o.c.id.desc()))


__all__ = ["BreakerDrill", "DEFAULT_TIMEOUT_S", "DrillError", "KINDS", "STEPS", "Timeline", "daemon_heartbeat_age",
           "open_instance"]
