"""The slots' roles: the live slot (the ready slot serving production) and the ALB weights that
give a slot a share of requests. The names themselves are in :mod:`deploy_ops.slots.names`.
"""

from __future__ import annotations

from deploy_ops.models.registry import ModelVersion
from deploy_ops.slots.names import SLOTS, other_slot
from deploy_ops.state import DEFAULT_ROUTE, DeploymentStateStore


def weights_for(candidate: str, candidate_percent: int) -> dict[str, int]:
    """The ALB split giving ``candidate`` that share of requests."""
    return {candidate: int(candidate_percent), other_slot(candidate): 100 - int(candidate_percent)}


def find_live_slot(state: DeploymentStateStore, production: ModelVersion | None) -> str | None:
    """The ready slot serving the production version, preferring the one the default route names."""
    if production is None:
        return None
    slots = state.slots()
    serving = [s for s in SLOTS if s in slots and slots[s].version == str(production.version) and slots[s].is_ready]
    default = state.routing_table().get(DEFAULT_ROUTE)
    if default in serving:
        return default
    return serving[0] if serving else None
