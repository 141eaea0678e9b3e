"""Model rollbacks: to a named version (manual), to the last known-good version (emergency), and
"make sure production is what serves" (what the deployment-failure sensor runs).

Each procedure is one deployment in the state store (so it cannot overlap a rollout, and
``autotrader deploy status`` shows it), leaves an audit row in the registry when it moves the
production alias, and records an event:

* :func:`manual_rollback` -- registry ``rollback`` to ``to_version`` with the operator's reason,
  that version started in the idle slot, health-checked and smoke-tested (a known-answer
  prediction), then all routing switched to it and the other slot stopped. Naming the current
  production version re-serves it (no registry change): the way to restore serving after the
  slot processes were lost.
* :func:`emergency_rollback` -- everything to ``registry.last_known_good()`` now: a running
  rollout is preempted, the version is started (readiness only: the serving process verifies the
  sha256 at load), all traffic switched the moment it is ready, the other slot stopped, and the
  registry rolled back with the previous production version marked failed.
* :func:`ensure_production_serving` -- recover an interrupted rollout, then make sure every route
  points at a healthy slot serving the registry's production version (the last known-good slot),
  starting one if none is left.

No Dagster imports: the Dagster jobs, the sensor and the CLI call these functions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from deploy_ops import events
from deploy_ops.db import utcnow
from deploy_ops.models.registry import ARCHIVED, FAILED, PRODUCTION, STAGING, ModelRegistry, ModelVersion
from deploy_ops.rollout.closeout import close_out
from deploy_ops.rollout.leases import LeaseStore
from deploy_ops.rollout.recovery import recover_interrupted
from deploy_ops.serving.client import ServingClient, ServingError
from deploy_ops.slots.backend import SlotBackend
from deploy_ops.slots.names import SLOTS, other_slot
from deploy_ops.slots.roles import find_live_slot, weights_for
from deploy_ops.state import DEFAULT_ROUTE, DeploymentInProgressError, DeploymentStateStore
from deploy_ops.text import DETAIL, MESSAGE, required_text, truncate


class RollbackError(RuntimeError):
    """A rollback was refused or could not complete; the message says which and why."""


#: Where an operator goes when the emergency path itself failed.
EMERGENCY_RUNBOOK = "docs/runbooks/rollback.md#2b-emergency-rollback-now"

#: What an operator must do when there is no known-good version to fall back to.
NO_KNOWN_GOOD_ACTIONS = [
    "The circuit breaker stays tripped, so paper trading places no new orders: leave it tripped.",
    "List the versions (autotrader deploy list-versions) and pick one you trust that is archived or staging;",
    "serve it with autotrader deploy rollback --to VERSION --reason TEXT (health and known-answer checks),",
    "or roll out a newly trained staging version with autotrader deploy rollout VERSION.",
]

#: What an operator must do when the emergency rollback started but did not finish.
FAILED_EMERGENCY_ACTIONS = [
    "Run autotrader deploy status: the event's actions say what was done before the failure.",
    "If no healthy slot serves, retry autotrader deploy emergency-rollback --reason TEXT once;",
    "if it fails again, serve a trusted version with autotrader deploy rollback --to VERSION --reason TEXT.",
]


@dataclass
class RollbackReport:
    """What a rollback procedure did."""

    kind: str  # manual | emergency | restore
    to_version: int | None
    from_version: int | None
    slot: str | None
    retired_slot: str | None
    actor: str
    reason: str
    deployment_id: int | None = None
    actions: list[str] = field(default_factory=list)
    started_at: str = field(default_factory=lambda: utcnow().isoformat())
    finished_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _smoke(
    backend: SlotBackend, state: DeploymentStateStore, registry: ModelRegistry, slot: str, mv: ModelVersion
) -> str:
    """Health plus one known-answer prediction (the scaler's mean row, scored in-process too)."""
    check = backend.check(slot, str(mv.version))
    if not check.ok:
        raise RollbackError(f"slot {slot} with version {mv.version} is not healthy: {check.detail}")
    bundle = registry.load_bundle(mv.version)
    probe = np.asarray(bundle.scaler.mean, dtype=np.float64)[None, :]
    info = state.get_slot(slot)
    # An instrument the slot serves: a slot started with an instrument list refuses any other.
    instrument = backend.instruments[0] if backend.instruments else "SMOKE"
    with ServingClient(info.url, token=backend.token) as client:
        try:
            answer = client.predict(instrument, probe)
        except ServingError as exc:
            raise RollbackError(f"slot {slot} failed its smoke prediction: {exc}") from exc
    deviation = float(np.max(np.abs(np.asarray(answer.probabilities) - bundle.predict_proba(probe))))
    if answer.model_version != str(mv.version) or deviation > 1e-5:
        raise RollbackError(
            f"slot {slot} answered version {answer.model_version} with deviation {deviation:.2e} "
            f"from the registry bundle of version {mv.version}"
        )
    return f"slot {slot} healthy, known-answer prediction matches (deviation {deviation:.1e})"


def _open_deployment(
    state: DeploymentStateStore, mv: ModelVersion, slot: str, live: str | None, previous: ModelVersion | None, mode: str
) -> int:
    dep = state.start_deployment(str(mv.version), slot=slot, stage=mode)
    # A lease makes a crash half way through recoverable like an interrupted rollout.
    LeaseStore(state).create(
        dep.id,
        mode=mode,
        version=str(mv.version),
        live_slot=live,
        candidate_slot=slot,
        previous_version=str(previous.version) if previous else None,
    )
    return dep.id


def _pick_slot(state: DeploymentStateStore, live: str | None) -> str:
    if live is not None:
        return other_slot(live)
    default = state.routing_table().get(DEFAULT_ROUTE)
    return other_slot(default) if default in SLOTS else "blue"


def manual_rollback(
    registry: ModelRegistry,
    state: DeploymentStateStore,
    backend: SlotBackend,
    to_version: int,
    *,
    reason: str,
    actor: str,
    mark_current_failed: bool = False,
    lease_timeout_seconds: float = 60.0,
) -> RollbackReport:
    """Return production to ``to_version`` and serve it from a freshly started slot (see module doc)."""
    reason = required_text("reason", reason)
    actor = required_text("actor", actor)
    recover_interrupted(registry, state, backend, lease_timeout_seconds=lease_timeout_seconds)
    mv = registry.get(to_version)
    production = registry.get_production()
    if production is None:
        raise RollbackError("no version is in production, so there is nothing to roll back; deploy one with a rollout")
    reserve = mv.version == production.version
    if mv.stage == FAILED:
        raise RollbackError(f"refusing to roll back to version {mv.version}: it is marked failed")
    if not reserve and mv.stage not in (ARCHIVED, STAGING):
        raise RollbackError(
            f"cannot roll back to version {mv.version} in stage {mv.stage}; targets must be archived or staging"
        )
    registry.load_bundle(mv.version)  # the artifact must verify before any process is touched

    live = find_live_slot(state, production)
    slot = _pick_slot(state, live)
    report = RollbackReport("manual", mv.version, production.version, slot, None, actor, reason)
    report.deployment_id = _open_deployment(state, mv, slot, live, production, "manual_rollback")
    try:
        # force only when nothing healthy serves: then no live traffic can be on that slot.
        backend.start(slot, mv, force=live is None)
        report.actions.append(f"slot {slot} started with version {mv.version}")
        report.actions.append(_smoke(backend, state, registry, slot, mv))
    except Exception as exc:  # nothing was switched yet: undo the start and report why
        message = f"rollback to version {mv.version} failed before switching traffic: {exc}"
        undone = close_out(
            state,
            backend,
            report.deployment_id,
            status="failed",
            reason=message,
            event="model_rollback_failed",
            message=message,
            details={**report.to_dict(), "error": truncate(exc, MESSAGE)},
            stop=slot,
            force_stop=live is None,
        )
        raise RollbackError(f"{message} [{undone.summary()}]") from exc
    if not reserve:
        _registry_rollback(
            registry, report, production, mv, actor=actor, reason=reason, mark_failed=mark_current_failed
        )
    _switch_and_retire(state, backend, slot, report, force_stop=False)
    return _succeeded(
        state,
        report,
        f"manual rollback by {actor}: {reason}",
        event="model_rollback",
        message=f"{actor} rolled production back to version {mv.version}: {reason}",
        severity="warning",
    )


def emergency_rollback(
    registry: ModelRegistry,
    state: DeploymentStateStore,
    backend: SlotBackend,
    *,
    reason: str,
    actor: str,
    mark_current_failed: bool = True,
) -> RollbackReport:
    """Everything to the last known-good version now (see the module docstring)."""
    reason = required_text("reason", reason)
    actor = required_text("actor", actor)
    target = registry.last_known_good()
    production = registry.get_production()
    if target is None:
        message = "no known-good version: no other version ever held production without failing"
        # The emergency path failing is an emergency of its own: say so before raising.
        events.record(
            state,
            "emergency_rollback_failed",
            "critical",
            f"emergency rollback ({actor}: {truncate(reason, DETAIL)}) failed: {message}",
            {
                "actor": actor,
                "reason": reason,
                "error": message,
                "production_version": production.version if production else None,
                "operator_actions": NO_KNOWN_GOOD_ACTIONS,
            },
            runbook=EMERGENCY_RUNBOOK,
        )
        raise RollbackError(f"{message}. {' '.join(NO_KNOWN_GOOD_ACTIONS)}")
    running = state.active_deployment()
    preempted = None
    if running is not None:
        preempted = f"deployment {running.id} of version {running.version} (stage {running.stage})"
        state.finish_deployment(
            running.id, "failed", reason=truncate(f"preempted by emergency rollback ({actor}): {reason}", MESSAGE)
        )

    slots = state.slots()
    ready = [
        s
        for s in SLOTS
        if s in slots and slots[s].version == str(target.version) and backend.check(s, str(target.version)).ok
    ]
    default = state.routing_table().get(DEFAULT_ROUTE)
    slot = ready[0] if ready else (other_slot(default) if default in SLOTS else "blue")
    report = RollbackReport(
        "emergency", target.version, production.version if production else None, slot, None, actor, reason
    )
    if preempted:
        report.actions.append(f"preempted {preempted}")
    report.deployment_id = _open_deployment(
        state, target, slot, default if default in SLOTS else None, production, "emergency_rollback"
    )
    try:
        if ready:
            report.actions.append(f"slot {slot} already serves version {target.version}")
        else:
            # force: in an emergency the idle slot may still hold a preempted canary.
            backend.start(slot, target, force=True)
            report.actions.append(f"slot {slot} started with version {target.version}")
        _switch_and_retire(state, backend, slot, report, force_stop=True)
        if production is not None and production.version != target.version:
            _registry_rollback(
                registry,
                report,
                production,
                target,
                actor=actor,
                reason=f"emergency: {reason}",
                mark_failed=mark_current_failed,
            )
        elif production is None:
            registry.promote(target.version, PRODUCTION, actor=actor, reason=f"emergency: {reason}")
            report.actions.append(f"registry production -> {target.version}")
    except Exception as exc:  # emergency: say exactly what got done before the failure; undo nothing
        close_out(
            state,
            backend,
            report.deployment_id,
            status="failed",
            reason=f"{type(exc).__name__}: {exc}",
            event="emergency_rollback_failed",
            message=f"emergency rollback to {target.version} failed: {exc}",
            details={
                **report.to_dict(),
                "error": truncate(exc, MESSAGE),
                "operator_actions": FAILED_EMERGENCY_ACTIONS,
                events.RUNBOOK_KEY: EMERGENCY_RUNBOOK,
            },
        )
        raise RollbackError(
            f"emergency rollback to version {target.version} failed after {report.actions}: {exc}"
        ) from exc
    return _succeeded(
        state,
        report,
        f"emergency rollback by {actor}: {reason}",
        event="emergency_rollback",
        message=f"{actor}: all traffic to last known-good version {target.version}: {reason}",
        severity="critical",
    )


def ensure_production_serving(
    registry: ModelRegistry,
    state: DeploymentStateStore,
    backend: SlotBackend,
    *,
    actor: str,
    reason: str,
    lease_timeout_seconds: float = 60.0,
) -> RollbackReport:
    """Recover an interrupted rollout, then put every route on a healthy slot serving production."""
    actor = required_text("actor", actor)
    reason = required_text("reason", reason)
    report = RollbackReport("restore", None, None, None, None, actor, reason)
    changed = False
    try:
        recovery = recover_interrupted(registry, state, backend, lease_timeout_seconds=lease_timeout_seconds)
    except DeploymentInProgressError as exc:
        # A live controller owns traffic right now; it gates and rolls back on its own.
        report.actions.append(f"left alone: {exc}")
        report.finished_at = utcnow().isoformat()
        return report
    if recovery is not None:
        changed = True
        report.actions.append(f"recovered interrupted deployment {recovery.deployment_id}: {recovery.outcome}")
    production = registry.get_production()
    if production is None:
        report.actions.append("no production version: nothing to serve")
        report.finished_at = utcnow().isoformat()
        return report
    report.to_version = report.from_version = production.version
    live = find_live_slot(state, production)
    healthy = live is not None and backend.check(live, str(production.version)).ok
    if healthy:
        report.slot = live
        table = state.routing_table()
        if any(slot != live for slot in table.values()) or table.get(DEFAULT_ROUTE) != live:
            changed = True
            _switch_and_retire(state, backend, live, report, force_stop=False)
        else:
            report.actions.append(f"all routes already on slot {live} (version {production.version}), healthy")
    else:
        slot = live or _pick_slot(state, None)
        report.slot = slot
        changed = True
        report.deployment_id = _open_deployment(state, production, slot, None, production, "restore_serving")
        try:
            backend.start(slot, production, force=True)
            report.actions.append(f"slot {slot} restarted with production version {production.version}")
            report.actions.append(_smoke(backend, state, registry, slot, production))
            _switch_and_retire(state, backend, slot, report, force_stop=True)
        except Exception as exc:  # nothing healthy left: the event and the exception say so loudly
            close_out(
                state,
                backend,
                report.deployment_id,
                status="failed",
                reason=str(exc),
                event="restore_serving_failed",
                message=f"could not restore production version {production.version}: {exc}",
                details={**report.to_dict(), "error": truncate(exc, MESSAGE)},
            )
            raise RollbackError(f"could not restore serving of production version {production.version}: {exc}") from exc
        state.finish_deployment(report.deployment_id, "succeeded", reason=truncate(reason, MESSAGE))
    report.finished_at = utcnow().isoformat()
    state.record_event(
        "production_serving_ensured",
        truncate(f"traffic on slot {report.slot} (version {production.version}): {reason}", MESSAGE),
        severity="warning" if changed else "info",
        details=report.to_dict(),
    )
    return report


def switch_traffic(
    registry: ModelRegistry,
    state: DeploymentStateStore,
    backend: SlotBackend,
    to_slot: str,
    *,
    actor: str,
    reason: str,
    force: bool = False,
    lease_timeout_seconds: float = 60.0,
) -> dict[str, str]:
    """Send every instrument to ``to_slot`` now (an operator's manual switch).

    Refused while a rollout runs, when the slot is not healthy, and -- unless ``force`` -- when
    the slot does not serve the registry's production version (that would make what serves and
    what the registry says diverge; roll back instead)."""
    actor = required_text("actor", actor)
    reason = required_text("reason", reason)
    if to_slot not in SLOTS:
        raise ValueError(f"unknown slot {to_slot!r}; slots are {SLOTS}")
    recover_interrupted(registry, state, backend, lease_timeout_seconds=lease_timeout_seconds)
    info = state.get_slot(to_slot)
    if info is None or not info.is_ready:
        raise RollbackError(f"slot {to_slot} is {info.status if info else 'not recorded'}; nothing to switch to")
    check = backend.check(to_slot, info.version)
    if not check.ok:
        raise RollbackError(f"slot {to_slot} is not healthy: {check.detail}")
    production = registry.get_production()
    if not force and (production is None or info.version != str(production.version)):
        raise RollbackError(
            f"slot {to_slot} serves version {info.version}, but production is "
            f"{production.version if production else 'none'}; use `deploy rollback --to {info.version}` "
            "or pass --force"
        )
    table = state.switch_all(to_slot)
    backend.set_weights(weights_for(to_slot, 100))
    state.record_event(
        "traffic_switched",
        truncate(f"{actor} switched all traffic to slot {to_slot} ({info.version}): {reason}", MESSAGE),
        severity="warning",
        details={"slot": to_slot, "version": info.version, "actor": actor, "reason": reason, "forced": force},
    )
    return table


def _registry_rollback(
    registry: ModelRegistry,
    report: RollbackReport,
    production: ModelVersion,
    target: ModelVersion,
    *,
    actor: str,
    reason: str,
    mark_failed: bool,
) -> None:
    registry.rollback(target.version, actor=actor, reason=reason, mark_failed=mark_failed)
    report.actions.append(
        f"registry production {production.version} -> {target.version}"
        + (f" (version {production.version} marked failed)" if mark_failed else "")
    )


def _succeeded(
    state: DeploymentStateStore, report: RollbackReport, reason: str, *, event: str, message: str, severity: str
) -> RollbackReport:
    """Close a rollback's deployment as succeeded and record its event (failures go through close_out)."""
    report.finished_at = utcnow().isoformat()
    state.finish_deployment(report.deployment_id, "succeeded", reason=truncate(reason, MESSAGE))
    state.record_event(event, truncate(message, MESSAGE), severity=severity, details=report.to_dict())
    return report


def _switch_and_retire(
    state: DeploymentStateStore, backend: SlotBackend, slot: str, report: RollbackReport, *, force_stop: bool
) -> None:
    state.switch_all(slot)
    backend.set_weights(weights_for(slot, 100))
    report.actions.append(f"all routes -> {slot}")
    other = other_slot(slot)
    info = state.get_slot(other)
    if info is not None and info.status in ("ready", "starting", "failed"):
        backend.stop(other, force=force_stop)
        report.retired_slot = other
        report.actions.append(f"slot {other} (version {info.version}) stopped")
