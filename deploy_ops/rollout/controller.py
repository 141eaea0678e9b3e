"""The rollout controller: a registered model version from staging to 100% of production traffic,
gated on live measurements at every stage and rolled back automatically when a gate trips.

Stages (:func:`plan_stages`)::

    pre_deploy_checks  version exists and is staging, artifact verifies (sha256), system healthy
                       (the production version is served by a ready, healthy slot that holds
                       the default route), a deployment is not already running, traffic replay data
                       is usable for every instrument
    deploy             the version starts in the candidate slot (waits for /ready)
    smoke_test         /health, /ready (right version and sha256) and a known-answer /predict:
                       the slot's probabilities must equal the registry bundle's in-process ones
    canary             the canary instruments (BTCUSDT, ETHUSDT) are routed to the candidate
    pct_25, pct_50     25% / 50% of the instruments (canaries first, then the configured order)
    pct_100            every instrument, the default route included
    finalize           registry production alias moves (with a reason), the old live slot stops

**Slot roles.** ``blue`` and ``green`` are two physical slots; the *roles* live and candidate
alternate between them. The live slot is the ready slot serving the registry's production
version (the one the default route ``*`` points at); the candidate is the other one. A rollout
deploys into the candidate, and after finalize the candidate *is* the live slot: nothing is
restarted or renamed, so the next rollout goes to the slot that was just retired. In the gate
vocabulary of the issue, "blue" is the live role and "green" the candidate role.

**Bootstrap.** With no production version there is nothing to compare against and nothing to
roll back to. The first version is deployed to ``blue``, smoke-tested, then one ``bootstrap``
stage routes every instrument to it and gates on health, error rate and p99 latency (the Sharpe
gate is recorded as not applicable); if the gates pass it is promoted, otherwise the slot is
stopped and the version marked failed.

**Traffic and gates.** During every traffic stage the controller replays recent feature rows
from a caller-supplied *traffic source* (``instrument -> (features, bars)``) through the routing
table (the same :class:`~deploy_ops.serving.client.RoutedClient` paper trading uses) to whichever slot
serves each instrument, paced at ``requests_per_second``. Canary instruments routed to the
candidate are also sent to the live slot in *shadow*, so both prediction series cover the same
bars; each goes through the backtest engine with fees and slippage and the Sharpe ratios are
compared. A stage fails on any failed health check of the candidate (process dead, ``/health`` or
``/ready`` failing), a client-side error rate above ``max_error_rate``, a client-side p99 above
``max_p99_latency_ms``, or a candidate Sharpe more than ``max_sharpe_drop`` below the live one
(floor ``live - drop * |live|``). Server-side numbers from each slot's ``/metrics`` are recorded
beside the client-side ones.

**Automatic rollback.** Routing back to the live slot (weights too, on ECS), candidate stopped,
the version marked ``failed`` in the registry with the reason, a ``critical`` event in the state
store, the deployment row closed as ``rolled_back``; the report keeps every stage's readings.

**Interrupted rollouts.** Each running deployment has a lease row (owner host and pid, a
heartbeat written by a background thread, the live and candidate slots). A controller that
starts while a deployment row is still ``running`` and its owner is gone (pid dead on this host,
or no heartbeat for ``lease_timeout_seconds``) recovers it: routing back to the live slot, the
half-deployed slot stopped, the row closed ``failed``, a critical ``rollout_interrupted`` event.
If the owner died after promoting in the registry during finalize, recovery completes the
finalize instead. The interrupted version stays in staging: it was never judged.

No Dagster imports: the Dagster asset, the CLI and the tests drive the same controller.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Mapping

import numpy as np
import requests

from deploy_ops.db import utcnow
from deploy_ops.models.bundle import ModelBundle
from deploy_ops.models.registry import PRODUCTION, STAGING, ModelRegistry, ModelVersion, RegistryError
from deploy_ops.rollout.closeout import close_out
from deploy_ops.rollout.errors import RetireError, RolloutError, RolloutPreempted
from deploy_ops.rollout.leases import Heartbeat, LeaseStore
from deploy_ops.rollout.measurement import (
    backtest_sharpe,
    bar_label,
    parse_serving_metrics,
    server_delta,
    sharpe_gate,
)
from deploy_ops.rollout.policy import RolloutPolicy, StagePlan, plan_stages
from deploy_ops.rollout.recovery import recover_interrupted
from deploy_ops.rollout.replay import Replay, TrafficSource, load_replay
from deploy_ops.rollout.reports import (
    REFUSED,
    ROLLED_BACK,
    SUCCEEDED,
    GateReading,
    RecoveryReport,
    RolloutReport,
    SlotTraffic,
    StageReport,
)
from deploy_ops.serving.client import RoutedClient, ServingClient, ServingError
from deploy_ops.serving.faults import FaultConfig
from deploy_ops.slots.backend import SlotBackend
from deploy_ops.slots.names import SLOTS, other_slot
from deploy_ops.slots.roles import find_live_slot, weights_for
from deploy_ops.state import DEFAULT_ROUTE, DeploymentStateStore
from deploy_ops.text import DETAIL, LOG_TAIL, MESSAGE, truncate

#: Progress callback: (stage name, None) when a stage starts, (stage name, report) when it ends.
ProgressCallback = Callable[[str, "StageReport | None"], None]


logger = logging.getLogger(__name__)


class _GateTripped(Exception):
    def __init__(self, stage: str, reason: str):
        super().__init__(reason)
        self.stage = stage
        self.reason = reason


class RolloutController:
    """Drives a :class:`SlotBackend` through the staged rollout (see the module docstring)."""

    def __init__(
        self,
        registry: ModelRegistry,
        state: DeploymentStateStore,
        backend: SlotBackend,
        policy: RolloutPolicy,
        *,
        actor: str = "rollout-controller",
        progress: ProgressCallback | None = None,
    ):
        self.registry = registry
        self.state = state
        self.backend = backend
        self.policy = policy
        self.actor = actor
        self.token = backend.token
        self.progress = progress
        self.leases = LeaseStore(state)
        self._bundles: dict[int, ModelBundle] = {}

    # -- public -------------------------------------------------------------------------------
    def live_slot(self) -> str | None:
        """The slot currently serving the production version, if any."""
        return find_live_slot(self.state, self.registry.get_production())

    def recover_interrupted(self, *, force: bool = False) -> RecoveryReport | None:
        """Recover a deployment left ``running`` by a controller that is gone (see :func:`recover_interrupted`)."""
        return recover_interrupted(
            self.registry,
            self.state,
            self.backend,
            lease_timeout_seconds=self.policy.lease_timeout_seconds,
            force=force,
        )

    def run(
        self, version: int, traffic: TrafficSource, *, candidate_faults: FaultConfig | None = None
    ) -> RolloutReport:
        """Roll ``version`` out; returns the report (outcome succeeded, rolled_back or refused).

        ``candidate_faults`` makes the candidate misbehave on purpose (drills: fault injection).
        Unexpected errors roll traffic back to the live slot, close the deployment as failed,
        record a critical event and are re-raised."""
        self.recover_interrupted()
        production = self.registry.get_production()
        live = find_live_slot(self.state, production)
        bootstrap = production is None
        candidate = "blue" if bootstrap else other_slot(live) if live else "green"
        report = RolloutReport(
            version=int(version),
            outcome=REFUSED,
            mode="bootstrap" if bootstrap else "blue_green",
            deployment_id=None,
            live_slot=live,
            candidate_slot=candidate,
            previous_version=production.version if production else None,
            started_at=utcnow().isoformat(),
        )
        dep = self.state.start_deployment(str(version), slot=candidate, stage="pre_deploy_checks")
        report.deployment_id = dep.id
        self.leases.create(
            dep.id,
            mode=report.mode,
            version=str(version),
            live_slot=live,
            candidate_slot=candidate,
            previous_version=str(production.version) if production else None,
        )
        self.state.record_event(
            "rollout_started",
            f"rollout {dep.id} of version {version} to slot {candidate} ({report.mode})",
            details={
                "deployment_id": dep.id,
                "version": int(version),
                "candidate_slot": candidate,
                "live_slot": live,
                "actor": self.actor,
            },
        )
        with Heartbeat(
            self.leases, self.state, dep.id, interval=min(2.0, self.policy.lease_timeout_seconds / 4)
        ) as beat:
            self._beat = beat
            try:
                replays = self._pre_deploy(report, int(version), production, live, traffic)
                if replays is None:
                    return self._refuse(report)
                mv = self.registry.get(int(version))
                self._deploy(report, mv, candidate, candidate_faults)
                self._smoke(report, mv, candidate, replays)
                for plan in plan_stages(self.policy, bootstrap=bootstrap):
                    self._traffic_stage(report, plan, mv, production, live, candidate, traffic)
                self._finalize(report, mv, live, candidate)
                return report
            except _GateTripped as trip:
                self._rollback(report, trip.stage, trip.reason, mark_failed=True)
                return report
            except (RolloutPreempted, RetireError):
                raise  # nothing to roll back: someone else owns traffic, or the new version already does
            except BaseException as exc:  # KeyboardInterrupt / run cancel included: traffic first
                reason = f"rollout aborted by {type(exc).__name__}: {exc}"
                if report.stages and not report.stages[-1].reason:
                    report.stages[-1].reason = reason
                self._rollback(report, self._stage_name(dep.id), reason, mark_failed=False, status="failed")
                raise

    # -- stages -------------------------------------------------------------------------------
    def _begin(self, report: RolloutReport, name: str) -> StageReport:
        self._check_preempted()
        stage = StageReport(stage=name, started_at=utcnow().isoformat())
        report.stages.append(stage)
        if report.deployment_id is not None:
            self.state.update_deployment(report.deployment_id, stage=name)
        if self.progress:
            self.progress(name, None)
        return stage

    def _end(self, stage: StageReport, started: float) -> None:
        stage.finished_at = utcnow().isoformat()
        stage.seconds = round(time.monotonic() - started, 3)
        stage.passed = all(g.passed for g in stage.gates)
        failing = [g for g in stage.gates if not g.passed]
        if failing and not stage.reason:
            stage.reason = "; ".join(f"{g.gate}: {g.detail}" for g in failing)
        if self.progress:
            self.progress(stage.stage, stage)
        if not stage.passed:
            raise _GateTripped(stage.stage, f"stage {stage.stage} failed: {stage.reason}")
        self.state.record_event(
            "rollout_stage_passed",
            f"stage {stage.stage} passed",
            details={"stage": stage.stage, "gates": [g.to_dict() for g in stage.gates]},
        )

    def _pre_deploy(
        self,
        report: RolloutReport,
        version: int,
        production: ModelVersion | None,
        live: str | None,
        traffic: TrafficSource,
    ) -> dict[str, Replay] | None:
        started = time.monotonic()
        stage = self._begin(report, "pre_deploy_checks")
        gates = stage.gates
        mv = None
        artifact_ok = False
        try:
            mv = self.registry.get(version)
            gates.append(GateReading("version_exists", True, None, None, f"version {version} ({mv.name})"))
        except RegistryError as exc:
            gates.append(GateReading("version_exists", False, None, None, str(exc)))
        if mv is not None:
            gates.append(
                GateReading(
                    "stage_is_staging",
                    mv.stage == STAGING,
                    None,
                    None,
                    f"version {version} is {mv.stage}"
                    + ("" if mv.stage == STAGING else "; only staging versions are rolled out"),
                )
            )
            try:
                bundle = self._bundle(version)
                artifact_ok = True
                gates.append(
                    GateReading(
                        "artifact_verifies",
                        True,
                        None,
                        None,
                        f"sha256 {mv.sha256[:12]}... matches; {bundle.n_features} features",
                    )
                )
            except Exception as exc:  # a missing, damaged or unloadable artifact all refuse the rollout
                gates.append(GateReading("artifact_verifies", False, None, None, f"{type(exc).__name__}: {exc}"))
        gates.append(self._system_health(production, live))
        replays: dict[str, Replay] = {}
        try:
            for instrument in self.policy.instruments:
                replays[instrument] = load_replay(traffic, instrument, self.policy.min_replay_rows)
            if artifact_ok:
                names = self._bundle(version).feature_names
                for replay in replays.values():
                    replay.rows_for(names)
            gates.append(
                GateReading(
                    "traffic_available",
                    True,
                    float(sum(map(len, replays.values()))),
                    None,
                    f"{len(replays)} instruments, {sum(map(len, replays.values()))} replay rows",
                )
            )
        except Exception as exc:  # the source is caller code: any failure refuses, with its message
            gates.append(GateReading("traffic_available", False, None, None, f"{type(exc).__name__}: {exc}"))
        stage.finished_at = utcnow().isoformat()
        stage.seconds = round(time.monotonic() - started, 3)
        stage.passed = all(g.passed for g in gates)
        if not stage.passed:
            stage.reason = "; ".join(f"{g.gate}: {g.detail}" for g in gates if not g.passed)
        if self.progress:
            self.progress(stage.stage, stage)
        return replays if stage.passed else None

    def _system_health(self, production: ModelVersion | None, live: str | None) -> GateReading:
        try:
            return self._system_health_reading(production, live)
        except Exception as exc:  # an unreachable deployer or store refuses the rollout, it does not crash it
            return GateReading("system_healthy", False, None, None, f"health probe failed: {type(exc).__name__}: {exc}")

    def _system_health_reading(self, production: ModelVersion | None, live: str | None) -> GateReading:
        if production is None:
            slots = self.state.slots()
            busy = [s for s in SLOTS if s in slots and slots[s].is_ready and self.backend.check(s, None).ok]
            if busy:
                return GateReading(
                    "system_healthy",
                    False,
                    None,
                    None,
                    f"no production version, yet slot(s) {busy} are serving; stop them or promote first",
                )
            return GateReading("system_healthy", True, None, None, "no production version: bootstrap into blue")
        if live is None:
            return GateReading(
                "system_healthy",
                False,
                None,
                None,
                f"production version {production.version} is not served by any ready slot; restore it first "
                f"(autotrader deploy rollback --to {production.version} --reason ...)",
            )
        check = self.backend.check(live, str(production.version))
        if not check.ok:
            return GateReading("system_healthy", False, None, None, f"live slot {live} is unhealthy: {check.detail}")
        default = self.state.routing_table().get(DEFAULT_ROUTE)
        if default != live:
            return GateReading(
                "system_healthy",
                False,
                None,
                None,
                f"the default route points at {default}, not at the live slot {live}",
            )
        return GateReading(
            "system_healthy", True, None, None, f"live slot {live} serves production version {production.version}"
        )

    def _deploy(self, report: RolloutReport, mv: ModelVersion, candidate: str, faults: FaultConfig | None) -> None:
        started = time.monotonic()
        stage = self._begin(report, "deploy")
        try:
            url = self.backend.start(candidate, mv, faults=faults)
        except Exception as exc:  # a slot that cannot load the model is the model's failure
            from deploy_ops.slots.ecs.errors import DeploymentError
            from deploy_ops.slots.local import SlotInUseError, SlotStartError

            if not isinstance(exc, (SlotStartError, DeploymentError)) or isinstance(exc, SlotInUseError):
                raise
            stage.gates.append(
                GateReading("slot_started", False, None, None, truncate(f"{type(exc).__name__}: {exc}", LOG_TAIL))
            )
            self._end(stage, started)
            return
        stage.gates.append(GateReading("slot_started", True, None, None, f"slot {candidate} ready at {url}"))
        self._end(stage, started)

    def _smoke(self, report: RolloutReport, mv: ModelVersion, candidate: str, replays: Mapping[str, Replay]) -> None:
        started = time.monotonic()
        stage = self._begin(report, "smoke_test")
        check = self.backend.check(candidate, str(mv.version))
        stage.gates.append(GateReading("health", check.ok, None, None, check.detail))
        info = self.state.get_slot(candidate)
        bundle = self._bundle(mv.version)
        probe = replays[self.policy.canary_instruments[0]].rows_for(bundle.feature_names)[: self.policy.batch_rows]
        expected = bundle.predict_proba(probe)
        attempts, answer, last_error = 0, None, None
        with ServingClient(info.url, token=self.token) as client:
            try:
                ready = client.ready()
                sha_ok = ready.get("sha256") == mv.sha256
                stage.gates.append(
                    GateReading(
                        "checksum",
                        sha_ok,
                        None,
                        None,
                        f"/ready sha256 {str(ready.get('sha256'))[:12]}... "
                        + ("matches" if sha_ok else f"!= registry {mv.sha256[:12]}..."),
                    )
                )
            except ServingError as exc:
                stage.gates.append(GateReading("checksum", False, None, None, truncate(exc, DETAIL)))
            # A few attempts: a transient 5xx is the error-rate gate's business, not a broken model.
            while attempts < 8 and answer is None:
                attempts += 1
                try:
                    answer = client.predict(self.policy.canary_instruments[0], probe)
                except ServingError as exc:
                    last_error = truncate(exc, DETAIL)
        if answer is None:
            stage.gates.append(
                GateReading(
                    "known_answer", False, None, None, f"no successful /predict in {attempts} attempts: {last_error}"
                )
            )
        else:
            deviation = float(np.max(np.abs(np.asarray(answer.probabilities) - expected)))
            right_version = answer.model_version == str(mv.version)
            stage.gates.append(
                GateReading(
                    "known_answer",
                    deviation <= 1e-5 and right_version,
                    deviation,
                    1e-5,
                    f"max |served - registry bundle| = {deviation:.2e} over {len(probe)} rows; "
                    f"answered by version {answer.model_version}"
                    + (f" after {attempts} attempts" if attempts > 1 else ""),
                )
            )
        self._end(stage, started)

    def _traffic_stage(
        self,
        report: RolloutReport,
        plan: StagePlan,
        mv: ModelVersion,
        production: ModelVersion | None,
        live: str | None,
        candidate: str,
        traffic: TrafficSource,
    ) -> None:
        started = time.monotonic()
        stage = self._begin(report, plan.name)
        stage.candidate_instruments = list(plan.candidate_instruments)
        stage.weight_percent = plan.weight_percent
        replays = {i: load_replay(traffic, i, self.policy.min_replay_rows) for i in self.policy.instruments}
        cand_bundle = self._bundle(mv.version)
        live_bundle = self._bundle(production.version) if production is not None else None
        cand_rows = {i: r.rows_for(cand_bundle.feature_names) for i, r in replays.items()}
        live_rows = {i: r.rows_for(live_bundle.feature_names) for i, r in replays.items()} if live_bundle else {}

        if plan.all_traffic:
            self.state.switch_all(candidate)
        else:
            routes = {DEFAULT_ROUTE: live}
            routes.update({i: candidate if i in plan.candidate_instruments else live for i in self.policy.instruments})
            self.state.set_routes(routes, replace=True)
        applied = self.backend.set_weights(weights_for(candidate, plan.weight_percent))
        if applied is not None:
            stage.server["alb_weights"] = dict(applied)

        slots = {"candidate": candidate, **({"live": live} if live else {})}
        scrape_before = {role: self._scrape(slot) for role, slot in slots.items()}
        stats = {role: SlotTraffic() for role in slots}
        health = {role: {"checks": 0, "ok": 0, "failures": []} for role in slots}
        compare = plan.compare_sharpe and live is not None
        canary = [i for i in self.policy.canary_instruments if i in plan.candidate_instruments]
        cand_p = {i: np.full(len(replays[i]), np.nan) for i in canary}
        live_p = {i: np.full(len(replays[i]), np.nan) for i in canary} if compare else {}
        cursors = {i: 0 for i in self.policy.instruments}
        versions = {"candidate": str(mv.version), "live": str(production.version) if production else None}

        router = RoutedClient(self.state, token=self.token, cache_seconds=0.5)
        router.refresh()
        clients: dict[str, ServingClient] = {}
        session = requests.Session()

        def client_for(url: str) -> ServingClient:
            if url not in clients:
                clients[url] = ServingClient(url, token=self.token, session=session, read_timeout=5.0)
            return clients[url]

        slot_url = {
            role: (self.state.get_slot(slot).url if self.state.get_slot(slot) else None) for role, slot in slots.items()
        }
        role_of = {slot: role for role, slot in slots.items()}
        deadline = started + self.policy.stage_seconds
        hard_deadline = started + self.policy.stage_timeout
        interval = 1.0 / self.policy.requests_per_second
        next_health = 0.0
        failure: str | None = None
        turn = 0
        instruments = list(self.policy.instruments)
        try:
            while True:
                now = time.monotonic()
                if now >= next_health:
                    next_health = now + self.policy.health_interval_seconds
                    self._check_preempted()
                    for role, slot in slots.items():
                        check = self.backend.check(slot, versions[role])
                        health[role]["checks"] += 1
                        health[role]["ok"] += int(check.ok)
                        if not check.ok and len(health[role]["failures"]) < 5:
                            health[role]["failures"].append(truncate(check.detail, DETAIL))
                    if health["candidate"]["ok"] < health["candidate"]["checks"]:
                        failure = "health"
                        break
                candidate_traffic = stats["candidate"]
                if candidate_traffic.requests >= self.policy.min_requests:
                    # Stop early once the verdict cannot change: more errors than even 100
                    # requests would allow, or a p99 already over the limit.
                    if candidate_traffic.errors > self.policy.max_error_rate * max(candidate_traffic.requests, 100):
                        failure = "error rate"
                        break
                    p99 = candidate_traffic.percentile(99)
                    if p99 is not None and p99 > self.policy.max_p99_latency_ms:
                        failure = "p99 latency"
                        break
                covered = all(not np.isnan(cand_p[i]).any() for i in canary) and all(
                    not np.isnan(live_p[i]).any() for i in live_p
                )
                if now >= deadline and candidate_traffic.requests >= self.policy.min_requests and covered:
                    break
                if now >= hard_deadline:
                    break

                instrument = instruments[turn % len(instruments)]
                turn += 1
                n = len(replays[instrument])
                start = cursors[instrument]
                end = min(start + self.policy.batch_rows, n)
                cursors[instrument] = 0 if end >= n else end
                try:
                    info = router.slot_for(instrument)
                except ServingError as exc:
                    role = "candidate" if instrument in plan.candidate_instruments else "live"
                    stats.setdefault(role, SlotTraffic()).record_error(f"routing: {exc}")
                    continue
                role = role_of.get(info.slot)
                if role is None:
                    raise RolloutError(f"{instrument} is routed to slot {info.slot}, which is not part of this rollout")
                rows = (cand_rows if role == "candidate" else live_rows)[instrument][start:end]
                self._send(
                    client_for(info.url),
                    instrument,
                    rows,
                    stats[role],
                    cand_p.get(instrument) if role == "candidate" else None,
                    start,
                )
                if compare and role == "candidate" and instrument in live_p:
                    # Shadow: the live slot answers the same bars; callers never see its answer.
                    self._send(
                        client_for(slot_url["live"]),
                        instrument,
                        live_rows[instrument][start:end],
                        stats["live"],
                        live_p[instrument],
                        start,
                    )
                spare = interval - (time.monotonic() - now)
                if spare > 0:
                    time.sleep(spare)
        finally:
            router.close()
            session.close()

        stage.traffic = {role: s.summary() for role, s in stats.items()}
        stage.health_checks = health
        for role, slot in slots.items():
            stage.server[role] = server_delta(scrape_before[role], self._scrape(slot))
        self._gates(stage, stats["candidate"], health["candidate"], failure, plan, compare, cand_p, live_p, replays)
        if failure is not None:
            stage.reason = f"stage stopped early on {failure}: " + "; ".join(
                f"{g.gate}: {g.detail}" for g in stage.gates if not g.passed
            )
        self._end(stage, started)

    def _send(
        self,
        client: ServingClient,
        instrument: str,
        rows: np.ndarray,
        stats: SlotTraffic,
        sink: np.ndarray | None,
        offset: int,
    ) -> None:
        try:
            result = client.predict(instrument, rows)
        except ServingError as exc:
            stats.record_error(str(exc))
            return
        stats.record_ok(result.latency_ms, len(rows))
        if sink is not None:
            sink[offset : offset + len(rows)] = result.probabilities

    def _gates(
        self,
        stage: StageReport,
        candidate_traffic: SlotTraffic,
        health: Mapping[str, Any],
        failure: str | None,
        plan: StagePlan,
        compare: bool,
        cand_p: Mapping[str, np.ndarray],
        live_p: Mapping[str, np.ndarray],
        replays: Mapping[str, Replay],
    ) -> None:
        policy = self.policy
        failed_checks = health["checks"] - health["ok"]
        stage.gates.append(
            GateReading(
                "health",
                failed_checks == 0,
                float(failed_checks),
                0.0,
                f"{health['ok']}/{health['checks']} health checks of the candidate passed"
                + (f"; last failure: {health['failures'][-1]}" if health["failures"] else ""),
            )
        )
        if failure == "health":
            return  # traffic to a dead slot measures nothing more; the health gate says it all
        enough = candidate_traffic.requests >= policy.min_requests
        if not enough:
            stage.gates.append(
                GateReading(
                    "traffic",
                    False,
                    float(candidate_traffic.requests),
                    float(policy.min_requests),
                    f"only {candidate_traffic.requests} requests reached the candidate in {policy.stage_timeout:.0f}s; need {policy.min_requests}",
                )
            )
        rate = candidate_traffic.error_rate
        stage.gates.append(
            GateReading(
                "error_rate",
                rate is not None and rate <= policy.max_error_rate,
                rate,
                policy.max_error_rate,
                f"{candidate_traffic.errors}/{candidate_traffic.requests} candidate requests failed"
                + (f" (e.g. {candidate_traffic.error_samples[0]})" if candidate_traffic.error_samples else ""),
            )
        )
        p99 = candidate_traffic.percentile(99)
        stage.gates.append(
            GateReading(
                "p99_latency_ms",
                p99 is not None and p99 <= policy.max_p99_latency_ms,
                p99,
                policy.max_p99_latency_ms,
                f"client-side p99 {p99:.1f} ms over {len(candidate_traffic.latencies_ms)} answered requests"
                if p99 is not None
                else "no answered request to measure",
            )
        )
        if failure is not None:
            stage.sharpe = {"evaluated": False, "reason": f"stage stopped early on {failure}"}
            return
        if not plan.compare_sharpe:
            stage.sharpe = {"applicable": False, "reason": "no production model to compare against (bootstrap)"}
            stage.gates.append(GateReading("sharpe", True, None, None, stage.sharpe["reason"]))
            return
        if not compare:
            stage.gates.append(GateReading("sharpe", False, None, None, "no live slot answered in shadow"))
            return
        both = {i: ~np.isnan(cand_p[i]) & ~np.isnan(live_p[i]) for i in cand_p}
        coverage = sum(int(m.sum()) for m in both.values()) / max(1, sum(len(m) for m in both.values()))
        if coverage < 0.5:
            stage.sharpe = {"coverage": coverage}
            stage.gates.append(
                GateReading(
                    "sharpe", False, None, None, f"only {coverage:.0%} of the canary bars were answered by both slots"
                )
            )
            return
        bars = {i: replays[i].bars.loc[both[i]].reset_index(drop=True) for i in both}
        cand_sharpe, cand_detail = backtest_sharpe(
            {i: cand_p[i][both[i]] for i in both}, bars, fee_bps=policy.fee_bps, slippage_bps=policy.slippage_bps
        )
        live_sharpe, live_detail = backtest_sharpe(
            {i: live_p[i][both[i]] for i in both}, bars, fee_bps=policy.fee_bps, slippage_bps=policy.slippage_bps
        )
        n_returns = min(int(cand_detail["n_bars"]), int(live_detail["n_bars"]))
        gate = sharpe_gate(
            live_sharpe,
            cand_sharpe,
            policy.max_sharpe_drop,
            n_returns=n_returns,
            min_returns=policy.min_sharpe_returns,
            periods_per_year=cand_detail["periods_per_year"],
        )
        stage.sharpe = {
            "n_returns": n_returns,
            "min_returns": policy.min_sharpe_returns,
            "meaningful": n_returns >= policy.min_sharpe_returns,
            "returns": f"{bar_label(cand_detail['periods_per_year'])} bars",
            "instruments": sorted(both),
            "coverage": coverage,
            "live": live_sharpe,
            "candidate": cand_sharpe,
            "relative_drop": (live_sharpe - (cand_sharpe or 0.0)) / abs(live_sharpe) if live_sharpe else None,
            "floor": gate.threshold,
            "live_backtest": live_detail,
            "candidate_backtest": cand_detail,
        }
        stage.gates.append(gate)

    def _finalize(self, report: RolloutReport, mv: ModelVersion, live: str | None, candidate: str) -> None:
        started = time.monotonic()
        stage = self._begin(report, "finalize")
        passed = [s.stage for s in report.stages if s.passed and s.stage not in ("pre_deploy_checks", "finalize")]
        reason = f"rollout {report.deployment_id}: gates passed at {', '.join(passed)}"
        self.registry.promote(mv.version, PRODUCTION, actor=self.actor, reason=reason)
        stage.gates.append(
            GateReading(
                "promoted",
                True,
                None,
                None,
                f"production alias moved to version {mv.version}"
                + (f" from {report.previous_version}" if report.previous_version else ""),
            )
        )
        retire_error = None
        if live is not None:
            try:
                self.backend.stop(live)
                stage.gates.append(
                    GateReading("retired", True, None, None, f"slot {live} (version {report.previous_version}) stopped")
                )
            except Exception as exc:  # promoted and serving: surfaced below, never rolled back for this
                retire_error = f"{type(exc).__name__}: {exc}"
                stage.reason = f"slot {live} could not be stopped: {retire_error}"
        stage.finished_at = utcnow().isoformat()
        stage.seconds = round(time.monotonic() - started, 3)
        stage.passed = True
        report.outcome = SUCCEEDED
        report.finished_at = utcnow().isoformat()
        report.reason = reason
        self.state.finish_deployment(report.deployment_id, "succeeded", reason=reason)
        self.state.record_event(
            "rollout_succeeded",
            f"version {mv.version} serves 100% from slot {candidate}",
            details={
                "deployment_id": report.deployment_id,
                "version": mv.version,
                "slot": candidate,
                "previous_version": report.previous_version,
                "stages": [s.stage for s in report.stages],
            },
        )
        if self.progress:
            self.progress(stage.stage, stage)
        if retire_error is not None:
            self.state.record_event(
                "slot_retire_failed",
                truncate(f"slot {live} still runs version {report.previous_version}: {retire_error}", MESSAGE),
                severity="critical",
                details={"slot": live, "deployment_id": report.deployment_id},
            )
            raise RetireError(f"version {mv.version} is live, but slot {live} could not be stopped: {retire_error}")

    # -- failure paths ------------------------------------------------------------------------
    def _refuse(self, report: RolloutReport) -> RolloutReport:
        stage = report.stages[-1]
        report.outcome = REFUSED
        report.reason = f"pre-deploy checks failed: {stage.reason}"
        report.finished_at = utcnow().isoformat()
        self.state.finish_deployment(report.deployment_id, "failed", reason=report.reason)
        self.state.record_event(
            "rollout_refused",
            f"rollout of version {report.version} refused: {stage.reason}",
            severity="warning",
            details={
                "deployment_id": report.deployment_id,
                "version": report.version,
                "gates": [g.to_dict() for g in stage.gates],
            },
        )
        return report

    def _rollback(
        self, report: RolloutReport, stage: str, reason: str, *, mark_failed: bool, status: str = "rolled_back"
    ) -> None:
        live, candidate = report.live_slot, report.candidate_slot
        report.outcome = ROLLED_BACK if status == "rolled_back" else "failed"
        report.reason = reason
        report.finished_at = utcnow().isoformat()
        result = close_out(
            self.state,
            self.backend,
            report.deployment_id,
            status=status,
            reason=reason,
            event="rollout_rolled_back",
            message=f"rollout of version {report.version} rolled back at {stage}: {reason}",
            details={
                "deployment_id": report.deployment_id,
                "version": report.version,
                "stage": stage,
                "reason": reason,
                "live_slot": live,
                "candidate_slot": candidate,
                "stages": [s.to_dict() for s in report.stages],
            },
            # bootstrap: nothing to fall back to, and the candidate may hold the only routes
            route_to=live,
            stop=candidate,
            force_stop=live is None,
            registry=self.registry,
            mark_failed=report.version if mark_failed else None,
            actor=self.actor,
            check=(live, str(report.previous_version)) if live is not None else None,
        )
        report.rollback_actions.extend(result.actions)
        if result.problems:
            raise RolloutError(f"rollback of version {report.version} incomplete: " + "; ".join(result.problems))

    # -- helpers ------------------------------------------------------------------------------
    def _bundle(self, version: int) -> ModelBundle:
        if version not in self._bundles:
            self._bundles[version] = self.registry.load_bundle(version)
        return self._bundles[version]

    def _scrape(self, slot: str) -> dict[str, Any] | None:
        info = self.state.get_slot(slot)
        if info is None or not info.url:
            return None
        try:
            with ServingClient(info.url, token=self.token, read_timeout=2.0) as client:
                return parse_serving_metrics(client.metrics_text())
        except ServingError:
            return None

    def _check_preempted(self) -> None:
        beat = getattr(self, "_beat", None)
        if beat is not None and beat.preempted:
            raise RolloutPreempted(beat.preempted)

    def _stage_name(self, deployment_id: int) -> str:
        try:
            return self.state.get_deployment(deployment_id).stage
        except Exception:  # reporting only: the rollback must proceed whatever the store says
            return "unknown"
