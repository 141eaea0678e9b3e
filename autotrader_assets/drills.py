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

import contextlib
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
KINDS = ("breaker", "drift", "slot-crash", "error-rate")
#: Steps of a drill's timeline, in the order the platform takes them.
STEPS = ("fault", "event", "sensor tick", "alert delivered", "rollback run", "traffic on known-good", "alert resolved")
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

    @classmethod
    def of(cls, kind: str, names: tuple[str, ...]) -> Timeline:
        """A timeline with its own steps (each drill has its answer's steps)."""
        return cls(kind, {name: Step(name) for name in names})

    def finish(self, timeout: float) -> None:
        """Every step still waiting at the deadline was not observed."""
        for step in self.steps.values():
            if step.status == "waiting":
                step.status = "not observed"
                step.detail = (step.detail + "; " if step.detail else "") + f"not within {timeout:.0f} s"

    @property
    def pending(self) -> bool:
        return any(s.status == "waiting" for s in self.steps.values())

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


def require_daemon(settings: Settings, instance: Any) -> None:
    """DrillError unless a dagster-daemon beats on this instance: without one nothing answers a fault."""
    age = daemon_heartbeat_age(instance)
    if age is None or age > HEARTBEAT_MAX_AGE_S:
        seen = "never" if age is None else f"{age:.0f} s ago"
        raise DrillError(
            f"no dagster-daemon is running on {settings.dagster_home} (last heartbeat: {seen}); "
            "nothing would answer the fault. Start one: `make ui`"
        )


def open_instance(settings: Settings) -> Any:
    """The Dagster instance of ``DAGSTER_HOME`` (the one the daemon and the UI use)."""
    import dagster as dg

    yaml_file = settings.dagster_home / "dagster.yaml"
    if not yaml_file.is_file():
        raise DrillError(
            f"no Dagster instance at {settings.dagster_home} (no dagster.yaml): start the daemon with `make ui` first"
        )
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
        require_daemon(self.settings, self.instance)
        if self.breaker.status().tripped:
            raise DrillError(
                "the circuit breaker is already tripped: reset it first "
                "(autotrader breaker reset --approved-by NAME --reason TEXT)"
            )
        production = self.registry.get_production()
        known_good = self.registry.last_known_good()
        if production is None or known_good is None:
            raise DrillError(
                "an emergency rollback needs a production version and a known-good one before it: "
                "deploy two versions first (make run deploys one; autotrader deploy rollout another)"
            )
        if not self.state.routing_table():
            raise DrillError("nothing is routed: no slot serves production (autotrader deploy status)")
        return known_good

    def run(
        self, timeout: float = DEFAULT_TIMEOUT_S, poll: float = 0.2, echo: Callable[[str], None] = lambda line: None
    ) -> Timeline:
        known_good = self.preflight()
        timeline = Timeline("breaker")
        since = self.state.last_event_id()
        self.breaker.trip("fire drill: injected daily loss above the limit", {"drill": True, "by": self.approved_by})
        t0 = self.clock()
        trip_id = self.breaker.status().trip_id
        timeline.done(
            "fault",
            0.0,
            f"breaker tripped (trip {trip_id}) by the drill; production "
            f"v{self.registry.get_production().version}, known-good v{known_good.version}",
        )
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
                        timeline.done(
                            "sensor tick",
                            now,
                            f"circuit_breaker_sensor acted: {_SENSOR_EVENT} event "
                            f"{event.id}, emergency_rollback requested",
                        )
                self._delivery(timeline, trip_event_id, "fire", "alert delivered", now)
            run = _run_for_trip(self.instance, trip_id) if trip_id is not None else None
            if run is not None and run.is_finished:
                if run.status.value == "SUCCESS":
                    # Where the time went: the sensor's request, the queue, the run worker's start.
                    stats = self.instance.get_run_stats(run.run_id)
                    parts = [
                        f"{label} +{value - t0:.1f} s"
                        for label, value in (("launched", stats.launch_time), ("started", stats.start_time))
                        if value
                    ]
                    timeline.done(
                        "rollback run",
                        now,
                        f"emergency_rollback run {run.run_id[:8]} succeeded"
                        + (f" ({', '.join(parts)})" if parts else ""),
                    )
                elif timeline.steps["rollback run"].status == "waiting":
                    timeline.steps[
                        "rollback run"
                    ].detail = f"run {run.run_id[:8]} {run.status.value} (retried by the sensor)"
            serving = self._serving_version()
            if serving == str(known_good.version):
                timeline.done(
                    "traffic on known-good", now, f"every route on a ready slot serving v{known_good.version}"
                )
            if (
                not reset_done
                and timeline.steps["traffic on known-good"].status == "done"
                and timeline.steps["rollback run"].status == "done"
            ):
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
            timeline.notes.append(
                "the breaker is still TRIPPED: reset it when done "
                "(autotrader breaker reset --approved-by NAME --reason TEXT)"
            )
        production = self.registry.get_production()
        if production is not None and production.version == known_good.version:
            timeline.notes.append(
                f"production is now v{known_good.version} (the known-good version); roll a newer "
                "one out again with `autotrader deploy rollout` when ready"
            )
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
            timeline.skip(
                step,
                "not configured",
                f"{row.alertname} {action} queued in the outbox; "
                "AUTOTRADER_ALERTMANAGER_URL is unset (autotrader alerts list)",
            )

    def _serving_version(self) -> str | None:
        """The version every route is on, when all routes point at ready slots serving one version."""
        slots = self.state.slots()
        routes = set(self.state.routing_table().values())
        versions = {slots[r].version for r in routes if r in slots and slots[r].is_ready}
        if routes and all(r in slots and slots[r].is_ready for r in routes) and len(versions) == 1:
            return versions.pop()
        return None


DRIFT_STEPS = (
    "fault",
    "feature_drift result",
    "event",
    "sensor tick",
    "alert delivered",
    "rollback/retrain run",
    "traffic on known-good",
    "alert resolved",
)
SLOT_CRASH_STEPS = ("fault", "slot seen down", "event", "alert delivered", "traffic on known-good", "alert resolved")
ERROR_RATE_STEPS = (
    "fault",
    "error rate visible",
    "alert delivered",
    "automatic rollback",
    "fault removed",
    "alert resolved",
)
DRIFT_FEATURES_TABLE = "bar_features"


def _age(t0: float, clock: Callable[[], float]) -> float:
    return clock() - t0


def _alertmanager_active(url: str, alertname: str, labels: dict[str, str]) -> bool:
    """Whether Alertmanager lists ``alertname`` with ``labels`` as active (Prometheus-fired alerts
    reach the drill only there)."""
    import requests

    answer = requests.get(
        f"{url.rstrip('/')}/api/v2/alerts",
        params={"active": "true", "silenced": "false", "inhibited": "false"},
        timeout=5,
    )
    answer.raise_for_status()
    return any(
        a.get("labels", {}).get("alertname") == alertname
        and all(a.get("labels", {}).get(k) == v for k, v in labels.items())
        for a in answer.json()
    )


def _require_local(settings: Settings, kind: str) -> None:
    if settings.is_production:
        raise DrillError(
            f"the {kind} drill acts on local serving processes (the local profile); on ECS, stop the "
            "slot's task or deploy a faulty task definition by hand (docs/runbooks/fire-drill.md)"
        )


class _StackDrill:
    """What the serving drills share: the deployment stack of the settings and the live slot."""

    kind = ""

    def __init__(self, settings: Settings, instance: Any, *, clock: Callable[[], float] = time.time):
        from autotrader_assets.defs.deployment.stack import stack_from_settings

        self.settings = settings
        self.instance = instance
        self.clock = clock
        self.stack = stack_from_settings(settings)
        self.state = self.stack.state
        self.registry = self.stack.registry

    def live_slot(self) -> tuple[str, Any]:
        """The slot every route is on, and the production version; DrillError otherwise."""
        require_daemon(self.settings, self.instance)
        _require_local(self.settings, self.kind)
        production = self.registry.get_production()
        if production is None:
            raise DrillError("no production version: deploy one first (make run)")
        routes = set(self.state.routing_table().values())
        if len(routes) != 1:
            raise DrillError(
                f"the drill needs every route on one slot; routes are on {sorted(routes) or 'nothing'} "
                "(autotrader deploy status)"
            )
        slot = routes.pop()
        if not self.stack.backend.check(slot, str(production.version)).ok:
            raise DrillError(
                f"slot {slot} is not serving production v{production.version} healthily now: "
                "restore it first (autotrader deploy recover)"
            )
        return slot, production

    def _healthy_on(self, version: str) -> str | None:
        """The slot every route is on when it is healthy (its process probed) and serves ``version``."""
        routes = set(self.state.routing_table().values())
        if len(routes) != 1:
            return None
        slot = routes.pop()
        return slot if self.stack.backend.check(slot, version).ok else None


class SlotCrashDrill(_StackDrill):
    """SIGKILL the live slot's serving process; watch who notices and what brings traffic back."""

    kind = "slot-crash"

    def run(
        self, timeout: float = DEFAULT_TIMEOUT_S, poll: float = 0.5, echo: Callable[[str], None] = lambda line: None
    ) -> Timeline:
        import os
        import signal

        slot, production = self.live_slot()
        info = self.state.get_slot(slot)
        if info is None or not info.pid:
            raise DrillError(f"slot {slot} has no recorded process id: nothing to kill")
        timeline = Timeline.of(self.kind, SLOT_CRASH_STEPS)
        since = self.state.last_event_id()
        os.kill(info.pid, signal.SIGKILL)
        t0 = self.clock()
        timeline.done("fault", 0.0, f"SIGKILL to slot {slot}'s process {info.pid} (production v{production.version})")
        echo(f"injected: killed pid {info.pid} of slot {slot}")
        am = self.settings.alertmanager_url
        if not am:
            for step in ("alert delivered", "alert resolved"):
                timeline.skip(
                    step,
                    "not configured",
                    "ServingSlotDown comes from Prometheus through Alertmanager; "
                    "AUTOTRADER_ALERTMANAGER_URL is unset (make monitor)",
                )
        fired = False
        deadline = t0 + timeout
        while self.clock() < deadline and timeline.pending:
            now = _age(t0, self.clock)
            if not self.stack.backend.check(slot, str(production.version)).ok:
                timeline.done(
                    "slot seen down",
                    now,
                    f"slot {slot}: health probe fails (state still says {self.state.get_slot(slot).status})",
                )
            for event in self.state.events_since(since, kinds=["slot_down"]):
                if (event.details or {}).get("slot") == slot:
                    timeline.done("event", now, f"slot_down event {event.id} (critical)")
            healthy = (
                self._healthy_on(str(production.version)) if timeline.steps["slot seen down"].status == "done" else None
            )
            if healthy is not None:
                timeline.done(
                    "traffic on known-good", now, f"every route on healthy slot {healthy} serving v{production.version}"
                )
            if am:
                active = _alertmanager_active(am, "ServingSlotDown", {"slot": slot})
                if active and not fired:
                    fired = True
                    timeline.done("alert delivered", now, "ServingSlotDown active in Alertmanager")
                if fired and not active and healthy is not None:
                    timeline.done("alert resolved", now, "ServingSlotDown no longer active in Alertmanager")
            time.sleep(poll)
        timeline.finish(timeout)
        if timeline.steps["event"].status == "not observed":
            timeline.steps[
                "event"
            ].detail += (
                "; nothing in the platform probes slots on its own: only Prometheus' ServingSlotDown sees a dead slot"
            )
        if timeline.steps["traffic on known-good"].status == "not observed":
            timeline.notes.append(
                f"traffic is still routed to dead slot {slot}: no sensor restarts a crashed slot. "
                "Restore serving now: autotrader deploy recover"
            )
        return timeline


class ErrorRateDrill(_StackDrill):
    """Restart the live slot with injected 5xx, send it traffic, then take the fault out again."""

    kind = "error-rate"

    def __init__(
        self,
        settings: Settings,
        instance: Any,
        *,
        error_rate: float,
        fault_seconds: float,
        rate: float = 10.0,
        clock: Callable[[], float] = time.time,
    ):
        super().__init__(settings, instance, clock=clock)
        from deploy_ops.serving.faults import FaultConfig

        self.faults = FaultConfig(error_rate=error_rate)
        if not self.faults.active:
            raise DrillError("--error-rate must be above 0: a drill without a fault measures nothing")
        self.fault_seconds = fault_seconds
        self.rate = rate

    def _metrics(self, slot: str) -> tuple[float, float]:
        """(5xx, all) /predict requests the slot's /metrics counted."""
        import requests

        from deploy_ops.rollout.measurement import parse_serving_metrics

        info = self.state.get_slot(slot)
        text = requests.get(f"{info.url}/metrics", timeout=5).text
        by_status = parse_serving_metrics(text)["by_status"]
        return (sum(v for k, v in by_status.items() if k.startswith("5")), sum(by_status.values()))

    def run(
        self, timeout: float = DEFAULT_TIMEOUT_S, poll: float = 0.1, echo: Callable[[str], None] = lambda line: None
    ) -> Timeline:
        from deploy_ops.serving.client import ServingClient, ServingError

        slot, production = self.live_slot()
        features = self.registry.load_bundle(production.version).feature_names
        instrument = self.settings.instruments[0]
        timeline = Timeline.of(self.kind, ERROR_RATE_STEPS)
        am = self.settings.alertmanager_url
        if not am:
            for step in ("alert delivered", "alert resolved"):
                timeline.skip(
                    step,
                    "not configured",
                    "ServingErrorRateHigh comes from Prometheus through "
                    "Alertmanager; AUTOTRADER_ALERTMANAGER_URL is unset",
                )
        # In place, same version: only the fault differs, so whatever reacts reacts to the 5xx alone.
        self.stack.backend.start(slot, production, faults=self.faults, force=True)
        t0 = self.clock()
        timeline.done(
            "fault",
            0.0,
            f"slot {slot} restarted with v{production.version} answering "
            f"{self.faults.error_rate:.0%} of /predict with 500",
        )
        echo(f"injected: slot {slot} at error rate {self.faults.error_rate}")
        fired = removed = False
        try:
            deadline = t0 + timeout
            while self.clock() < deadline and timeline.pending:
                now = _age(t0, self.clock)
                if not removed:
                    # The drill is the traffic: paper trading calls the slots only on its schedule.
                    with ServingClient(self.state.get_slot(slot).url, token=self.settings.serving_token) as client:
                        for _ in range(max(1, int(self.rate * poll * 10))):
                            # the injected 500s are what the drill measures, from /metrics
                            with contextlib.suppress(ServingError):
                                client.predict(instrument, [[0.0] * len(features)])
                    errors, total = self._metrics(slot)
                    if total and errors / total > 0.01:
                        timeline.done(
                            "error rate visible",
                            now,
                            f"slot {slot} /metrics: {errors:.0f} of {total:.0f} "
                            f"/predict answered 5xx ({errors / total:.1%} > 1%)",
                        )
                if am:
                    active = _alertmanager_active(am, "ServingErrorRateHigh", {"slot": slot})
                    if active and not fired:
                        fired = True
                        timeline.done("alert delivered", now, "ServingErrorRateHigh active in Alertmanager")
                    if fired and removed and not active:
                        timeline.done("alert resolved", now, "ServingErrorRateHigh no longer active in Alertmanager")
                routes = set(self.state.routing_table().values())
                if routes and slot not in routes:
                    timeline.done("automatic rollback", now, f"traffic moved off slot {slot} to {sorted(routes)}")
                visible = timeline.steps["error rate visible"].status == "done"
                # The fault stays until the alert fired (or, without Alertmanager, the rate is seen),
                # at most --fault-seconds: a drill must not leave 5xx in production.
                if not removed and (now >= self.fault_seconds or (visible and (fired or not am))):
                    timeline.skip(
                        "automatic rollback",
                        "not observed",
                        "nothing moved traffic off the faulty slot (outside a rollout nothing rolls back "
                        "on 5xx); operator action: autotrader deploy emergency-rollback",
                    )
                    self.stack.backend.start(slot, production, force=True)
                    removed = True
                    timeline.done("fault removed", _age(t0, self.clock), f"slot {slot} restarted without the fault")
                time.sleep(poll)
        finally:
            if not removed:
                self.stack.backend.start(slot, production, force=True)
                timeline.notes.append(f"fault removed at the end: slot {slot} restarted without it")
        timeline.finish(timeout)
        return timeline


class DriftDrill:
    """Shift one served date's features far from the production model's reference, materialize
    ``feature_drift`` for it, watch ``feature_drift_sensor`` act; then put the rows back and
    materialize again, so the drift clears and its alert resolves."""

    kind = "drift"

    def __init__(
        self, settings: Settings, instance: Any, *, date: dt.date, shift: float, clock: Callable[[], float] = time.time
    ):
        self.settings = settings
        self.instance = instance
        self.date = date
        self.shift = shift
        self.clock = clock
        self.state = DeploymentStateStore(settings.registry_url)
        self.registry = open_registry(settings.registry_url, settings.artifacts_uri)
        self.backup = settings.home / "drills" / f"drift-{date.isoformat()}.parquet"

    def _connect(self, read_only: bool = False) -> Any:
        import duckdb

        return duckdb.connect(str(self.settings.warehouse_path), read_only=read_only)

    def preflight(self) -> tuple[int, list[str]]:
        """The version that served the date and its features; DrillError when the drill cannot run."""
        import dagster as dg

        from autotrader_assets.defs.monitoring import drift as dr

        require_daemon(self.settings, self.instance)
        if self.backup.exists():
            raise DrillError(
                f"a previous drift drill left its backup {self.backup}: put the rows back first "
                f"(autotrader drill drift --date {self.date} --restore)"
            )
        if not self.settings.warehouse_path.is_file():
            raise DrillError(f"no warehouse at {self.settings.warehouse_path}: run the data pipeline first (make run)")
        with self._connect(read_only=True) as con:
            try:
                served = dr.served_versions(con, self.date)
            except dr.DriftError as exc:
                raise DrillError(f"cannot drill drift on {self.date}: {exc}") from exc
            version = max(served.values())
            features = list(self.registry.load_bundle(version).feature_names)
            dr.read_features(con, self.date, sorted(served), features)
        key = f"feature-drift-{self.date.isoformat()}-v{version}"
        if self.instance.get_runs(filters=dg.RunsFilter(tags={"dagster/run_key": key}), limit=1):
            raise DrillError(
                f"the sensor already acted on drift of v{version} on {self.date} (run key {key}) and acts "
                "once per date and version: pick another --date"
            )
        return version, features

    def inject(self, features: list[str]) -> None:
        """Save the date's rows, then move every feature ``shift`` standard deviations."""
        self.backup.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.execute(
                f"copy (select * from {DRIFT_FEATURES_TABLE} where date = ?) to '{self.backup}' (format parquet)",
                [self.date],
            )
            sets = ", ".join(
                f'"{f}" = "{f}" + ? * coalesce((select stddev_samp("{f}") from {DRIFT_FEATURES_TABLE} '
                f"where date = ?), 1.0)"
                for f in features
            )
            params: list[Any] = []
            for _ in features:
                params += [self.shift, self.date]
            con.execute(f"update {DRIFT_FEATURES_TABLE} set {sets} where date = ?", [*params, self.date])

    def restore(self) -> int:
        """Put the saved rows back and remove the backup; the number of rows restored."""
        if not self.backup.exists():
            raise DrillError(f"no drift drill backup at {self.backup}: nothing to restore")
        with self._connect() as con:
            con.execute("begin")
            con.execute(f"delete from {DRIFT_FEATURES_TABLE} where date = ?", [self.date])
            con.execute(f"insert into {DRIFT_FEATURES_TABLE} by name select * from read_parquet('{self.backup}')")
            n = con.execute(f"select count(*) from {DRIFT_FEATURES_TABLE} where date = ?", [self.date]).fetchone()[0]
            con.execute("commit")
        self.backup.unlink()
        return int(n)

    def materialize(self) -> None:
        """``feature_drift`` for the date as a run in this instance (the Dagster CLI, in-process)."""
        import subprocess
        import sys
        from pathlib import Path

        dagster = Path(sys.executable).parent / "dagster"
        done = subprocess.run(
            [
                str(dagster),
                "asset",
                "materialize",
                "-m",
                "autotrader_assets.definitions",
                "--select",
                "feature_drift",
                "--partition",
                self.date.isoformat(),
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            raise DrillError(f"materializing feature_drift for {self.date} failed:\n{done.stderr[-2000:]}")

    def _check_result(self, after: float) -> Any:
        from autotrader_assets.defs.monitoring.sensors import CHECK_KEY

        records = self.instance.event_log_storage.get_asset_check_execution_history(CHECK_KEY, limit=10)
        for record in records:
            if record.event is not None and record.event.timestamp >= after and record.status.value != "PLANNED":
                return record
        return None

    def run(
        self, timeout: float = DEFAULT_TIMEOUT_S, poll: float = 0.5, echo: Callable[[str], None] = lambda line: None
    ) -> Timeline:
        import dagster as dg

        version, features = self.preflight()
        known_good = self.registry.last_known_good()
        timeline = Timeline.of(self.kind, DRIFT_STEPS)
        day = self.date.isoformat()
        since = self.state.last_event_id()
        self.inject(features)
        t0 = self.clock()
        timeline.done(
            "fault",
            0.0,
            f"{DRIFT_FEATURES_TABLE} on {day}: {len(features)} feature(s) of v{version} "
            f"moved {self.shift:+g} standard deviations (backup {self.backup.name})",
        )
        echo(f"injected: drift on {day} against v{version}; materializing feature_drift")
        restored = False
        try:
            self.materialize()
            record = self._check_result(t0)
            if record is not None:
                evaluation = record.event.dagster_event.event_specific_data
                level = (
                    "critical"
                    if evaluation.severity == dg.AssetCheckSeverity.ERROR and not evaluation.passed
                    else ("passed" if evaluation.passed else "warning")
                )
                timeline.done(
                    "feature_drift result", _age(t0, self.clock), f"feature_drift_psi {level} (run {record.run_id[:8]})"
                )
            critical_id = decision = None
            deadline = t0 + timeout
            while self.clock() < deadline and timeline.pending:
                now = _age(t0, self.clock)
                for event in self.state.events_since(since, kinds=["feature_drift_critical", "feature_drift_decision"]):
                    details = event.details or {}
                    if event.kind == "feature_drift_critical" and details.get("date") == day and critical_id is None:
                        critical_id = event.id
                        timeline.done("event", now, f"feature_drift_critical event {event.id} (critical)")
                    if (
                        event.kind == "feature_drift_decision"
                        and details.get("run_key", "").startswith(f"feature-drift-{day}-")
                        and decision is None
                    ):
                        decision = details
                        timeline.done(
                            "sensor tick",
                            now,
                            f"feature_drift_sensor decided {details.get('action')} ({details.get('job')})",
                        )
                if critical_id is not None:
                    self._delivery(timeline, critical_id, "fire", "alert delivered", now)
                if decision is not None:
                    runs = self.instance.get_runs(
                        filters=dg.RunsFilter(tags={"dagster/run_key": decision["run_key"]}), limit=1
                    )
                    if runs and runs[0].is_finished:
                        timeline.done(
                            "rollback/retrain run",
                            now,
                            f"{runs[0].job_name} run {runs[0].run_id[:8]} {runs[0].status.value}",
                        )
                    if decision.get("action") != "rollback":
                        timeline.skip(
                            "traffic on known-good",
                            "not configured",
                            f"the sensor retrains ({decision.get('job')}); no rollback to time",
                        )
                    elif known_good is not None and self._serving(str(known_good.version)):
                        timeline.done(
                            "traffic on known-good", now, f"every route on a ready slot serving v{known_good.version}"
                        )
                run_done = timeline.steps["rollback/retrain run"].status == "done"
                if not restored and run_done and timeline.steps["traffic on known-good"].status != "waiting":
                    self.restore()
                    restored = True
                    self.materialize()  # the day judged again on its own rows: the drift clears
                    timeline.notes.append(
                        f"rows put back and feature_drift materialized again at +{_age(t0, self.clock):.1f} s"
                    )
                if restored and critical_id is not None:
                    self._delivery(timeline, critical_id, "resolve", "alert resolved", now)
                time.sleep(poll)
        finally:
            if not restored and self.backup.exists():
                self.restore()
                timeline.notes.append(
                    f"rows of {day} put back (the drift was not re-judged: materialize "
                    "feature_drift for it to clear the alert)"
                )
        timeline.finish(timeout)
        return timeline

    _delivery = BreakerDrill._delivery

    def _serving(self, version: str) -> bool:
        slots = self.state.slots()
        routes = set(self.state.routing_table().values())
        return bool(routes) and all(r in slots and slots[r].is_ready and slots[r].version == version for r in routes)


def _outbox_row_query(o: Any, action: str, event_id: int) -> Any:
    """The outbox row of ``action`` for the trip event ``event_id`` (fire) or for a resolution of
    that trip's alert (resolve rows carry the resolver's event id, so they are matched by the fire
    row's dedup key)."""
    import sqlalchemy as sa

    if action == "fire":
        return sa.select(o).where(o.c.action == "fire", o.c.event_id == event_id).order_by(o.c.id)
    fire_keys = sa.select(o.c.dedup_key).where(o.c.action == "fire", o.c.event_id == event_id)
    return (
        sa.select(o)
        .where(o.c.action == "resolve", o.c.dedup_key.in_(fire_keys), o.c.event_id > event_id)
        .order_by(o.c.id.desc())
    )


__all__ = [
    "BreakerDrill",
    "DriftDrill",
    "ErrorRateDrill",
    "SlotCrashDrill",
    "DEFAULT_TIMEOUT_S",
    "DrillError",
    "KINDS",
    "STEPS",
    "Step",
    "Timeline",
    "daemon_heartbeat_age",
    "open_instance",
    "require_daemon",
]
