"""The slots' roles: the other slot, the live slot (the ready slot serving production), and the
ALB weights that give a slot a share of requests.
"""
from __future__ import annotations

from deploy_ops.models.registry import ModelVersion
from deploy_ops.state import (
    DEFAULT_ROUTE,
    SLOTS,
    DeploymentStateStore,
    StateError,
)


def other_slot(slot: str) -> str:
    """The other physical slot."""
    if slot not in SLOTS:
        raise StateError(f"unknown slot {slot!r}; slots are {SLOTS}")
    return "green" if slot == "blue" else "blue"


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
