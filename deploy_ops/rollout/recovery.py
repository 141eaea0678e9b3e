"""Recovery of a rollout whose controller is gone (process died, host lost): traffic back to the
live slot, or the finalize completed when the new version was already promoted.
"""
from __future__ import annotations

import os
import socket
from typing import Any

from deploy_ops.models.registry import ModelRegistry
from deploy_ops.rollout.errors import RolloutError
from deploy_ops.rollout.leases import Lease, LeaseStore, lease_is_alive
from deploy_ops.rollout.reports import (
    RecoveryReport,
)
from deploy_ops.slots.backend import SlotBackend
from deploy_ops.slots.roles import find_live_slot, weights_for
from deploy_ops.state import (
    DeploymentInProgressError,
    DeploymentStateStore,
)


def recover_interrupted(
    registry: ModelRegistry,
    state: DeploymentStateStore,
    backend: SlotBackend,
    *,
    lease_timeout_seconds: float = 60.0,
    force: bool = False,
) -> RecoveryReport | None:
    """Recover a deployment left ``running`` by a controller that is gone; None if there is none.

    Raises DeploymentInProgressError while its owner is alive (unless ``force``)."""
    dep = state.active_deployment()
    if dep is None:
        return None
    lease = LeaseStore(state).get(dep.id)
    if not force and lease_is_alive(lease, dep.started_at, lease_timeout_seconds):
        owner = lease.owner if lease else "a starting controller"
        raise DeploymentInProgressError(
            f"deployment {dep.id} of version {dep.version} is running (stage {dep.stage}, owner {owner})"
        )
    return _recover(registry, state, backend, dep, lease)


def _recover(registry: ModelRegistry, state: DeploymentStateStore, backend: SlotBackend, dep: Any,
             lease: Lease | None) -> RecoveryReport:
    production = registry.get_production()
    candidate = lease.candidate_slot if lease else dep.slot
    live = lease.live_slot if lease else find_live_slot(state, production)
    owner = lease.owner if lease else None
    actions: list[str] = []
    finished_promotion = (
        production is not None and str(production.version) == dep.version and candidate is not None
        and backend.check(candidate, dep.version).ok
    )
    if finished_promotion:
        # The owner died inside finalize after moving the production alias: finish it.
        state.switch_all(candidate)
        backend.set_weights(weights_for(candidate, 100))
        actions.append(f"all routes -> {candidate} (serves promoted version {dep.version})")
        if live is not None and live != candidate:
            backend.stop(live)
            actions.append(f"slot {live} stopped")
        outcome, status, new_live = "completed", "succeeded", candidate
    else:
        if live is not None:
            state.switch_all(live)
            backend.set_weights(weights_for(live, 100))
            actions.append(f"all routes -> {live}")
            if candidate and candidate != live:
                backend.stop(candidate)
                actions.append(f"slot {candidate} stopped")
        elif candidate:
            backend.stop(candidate, force=True)
            actions.append(f"slot {candidate} stopped (interrupted bootstrap)")
        outcome, status, new_live = "rolled_back", "failed", live
    reason = (
        f"interrupted at stage {dep.stage}: controller {owner or 'unknown'} stopped before finishing; "
        f"recovered by {socket.gethostname()}:{os.getpid()} ({'; '.join(actions) or 'nothing to undo'})"
    )
    state.finish_deployment(dep.id, status, reason=reason)
    state.record_event(
        "rollout_interrupted", f"rollout {dep.id} of version {dep.version} was interrupted at {dep.stage}; {outcome}",
        severity="critical",
        details={"deployment_id": dep.id, "version": dep.version, "stage": dep.stage, "owner": owner,
                 "outcome": outcome, "actions": actions, "live_slot": new_live},
    )
    if new_live is not None:
        check = backend.check(new_live, str(production.version) if production else None)
        if not check.ok:
            raise RolloutError(
                f"recovered rollout {dep.id}, but slot {new_live} is unhealthy ({check.detail}); "
                "run an emergency rollback"
            )
    return RecoveryReport(dep.id, dep.version, dep.stage, owner, outcome, new_live, actions)
