"""Recovery of a rollout whose controller is gone (process died, host lost): traffic back to the
live slot, or the finalize completed when the new version was already promoted.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

from deploy_ops.models.registry import ModelRegistry
from deploy_ops.rollout.closeout import close_out
from deploy_ops.rollout.errors import RolloutError
from deploy_ops.rollout.leases import Lease, LeaseStore, lease_is_alive, owner_liveness
from deploy_ops.rollout.reports import (
    RecoveryReport,
)
from deploy_ops.slots.backend import SlotBackend
from deploy_ops.slots.roles import find_live_slot
from deploy_ops.state import (
    DeploymentInProgressError,
    DeploymentStateStore,
)

#: How often a watcher (the Dagster ``interrupted_deployment_sensor``) looks for a deployment
#: whose owner died: with the owner on this host, the bound on an orphaned canary's life.
WATCH_INTERVAL_SECONDS = 30


@dataclass(frozen=True)
class Orphan:
    """A deployment left ``running`` whose owner is gone, and why it counts as gone."""

    deployment_id: int
    version: str
    stage: str
    owner: str | None
    why: str


def find_orphaned(state: DeploymentStateStore, *, lease_timeout_seconds: float = 60.0) -> Orphan | None:
    """The running deployment if its owner is dead (what a watcher recovers), else None."""
    dep = state.active_deployment()
    if dep is None:
        return None
    lease = LeaseStore(state).get(dep.id)
    alive, why = owner_liveness(lease, dep.started_at, lease_timeout_seconds)
    if alive:
        return None
    return Orphan(dep.id, dep.version, dep.stage, lease.owner if lease else None, why)


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


def _recover(
    registry: ModelRegistry, state: DeploymentStateStore, backend: SlotBackend, dep: Any, lease: Lease | None
) -> RecoveryReport:
    production = registry.get_production()
    candidate = lease.candidate_slot if lease else dep.slot
    live = lease.live_slot if lease else find_live_slot(state, production)
    owner = lease.owner if lease else None
    finished_promotion = (
        production is not None
        and str(production.version) == dep.version
        and candidate is not None
        and backend.check(candidate, dep.version).ok
    )
    if finished_promotion:
        # The owner died inside finalize after moving the production alias: finish it.
        outcome, status, new_live = "completed", "succeeded", candidate
        stop = live if live is not None and live != candidate else None
    else:
        outcome, status, new_live = "rolled_back", "failed", live
        stop = candidate if candidate and candidate != live else None
    reason = (
        f"interrupted at stage {dep.stage}: controller {owner or 'unknown'} stopped before finishing; "
        f"recovered by {socket.gethostname()}:{os.getpid()}"
    )
    result = close_out(
        state,
        backend,
        dep.id,
        status=status,
        reason=reason,
        event="rollout_interrupted",
        message=f"rollout {dep.id} of version {dep.version} was interrupted at {dep.stage}; {outcome}",
        details={
            "deployment_id": dep.id,
            "version": dep.version,
            "stage": dep.stage,
            "owner": owner,
            "outcome": outcome,
            "live_slot": new_live,
        },
        # an interrupted bootstrap has no live slot: its candidate may hold the routes
        route_to=new_live,
        stop=stop,
        force_stop=new_live is None,
        check=(new_live, str(production.version) if production else None) if new_live is not None else None,
    )
    if result.problems:
        raise RolloutError(
            f"recovered rollout {dep.id} incompletely ({'; '.join(result.problems)}); run an emergency rollback"
        )
    return RecoveryReport(dep.id, dep.version, dep.stage, owner, outcome, new_live, result.actions)
