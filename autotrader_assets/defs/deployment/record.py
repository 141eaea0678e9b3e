"""What the ``production_deployment`` asset's latest record says: the version serving now.

Production changes in more places than the asset's own materialization: a rolled-back rollout,
the manual and emergency rollback jobs, the deployment-failure and interrupted-deployment
sensors, and the ``autotrader deploy`` commands. Each of them ends by recording one
``AssetMaterialization`` of ``production_deployment`` built here from the registry and the
routing table *after* the change, so the asset page always tells what serves now (``version``)
and how it got there (``change``, ``outcome``), never a rollout that has since been undone.

Runs log it with ``context.log_event``; sensors and the CLI, which have no run, report it to
the instance (``DAGSTER_HOME``) with ``report_runless_asset_event``.
"""

from __future__ import annotations

from typing import Any, Mapping

import dagster as dg

from deploy_ops.models.registry import ModelRegistry
from deploy_ops.state import DEFAULT_ROUTE, DeploymentStateStore

PRODUCTION_DEPLOYMENT = dg.AssetKey("production_deployment")

#: What changed production (the ``change`` metadata value).
CHANGES = (
    "rollout",
    "automatic_rollback",
    "manual_rollback",
    "emergency_rollback",
    "restore_serving",
    "interrupted_rollout_recovered",
    "traffic_switch",
)


def serving_now(registry: ModelRegistry, state: DeploymentStateStore) -> dict[str, Any]:
    """The registry's production version and the slot(s) the routing table sends traffic to."""
    production = registry.get_production()
    routes = state.routing_table()
    slots = state.slots()
    default = routes.get(DEFAULT_ROUTE)
    routed = sorted(set(routes.values()))
    return {
        "version": production.version if production is not None else None,
        "default_slot": default,
        "routed_slots": routed,
        "slot_versions": {s: slots[s].version for s in routed if s in slots},
    }


def production_materialization(
    registry: ModelRegistry,
    state: DeploymentStateStore,
    *,
    change: str,
    outcome: str,
    summary: str,
    extra: Mapping[str, Any] | None = None,
) -> dg.AssetMaterialization:
    """The record of a production change, read back from the stores after it happened."""
    if change not in CHANGES:
        raise ValueError(f"change must be one of {CHANGES}, got {change!r}")
    now = serving_now(registry, state)
    metadata: dict[str, Any] = {
        # ``version`` is what serves now: the first thing an operator reads on the asset page.
        "version": now["version"] if now["version"] is not None else "-",
        "outcome": outcome,
        "change": change,
        "serving_slot": now["default_slot"] or "-",
        "slot_versions": dg.MetadataValue.json(now["slot_versions"]),
        "summary": summary,
    }
    for key, value in (extra or {}).items():
        metadata.setdefault(key, value)
    return dg.AssetMaterialization(asset_key=PRODUCTION_DEPLOYMENT, description=summary, metadata=metadata)


def report_outside_a_run(instance: dg.DagsterInstance, materialization: dg.AssetMaterialization) -> None:
    """Record a change made by a sensor or the CLI (no run) on the instance's asset history."""
    instance.report_runless_asset_event(materialization)


def latest_record(instance: dg.DagsterInstance) -> dg.AssetMaterialization | None:
    """The asset's latest materialization (what its page shows), or None."""
    event = instance.get_latest_materialization_event(PRODUCTION_DEPLOYMENT)
    return event.asset_materialization if event is not None else None
