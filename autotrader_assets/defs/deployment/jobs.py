"""Deployment jobs: the rollout pipeline, a manual model rollback and the emergency rollback."""

from typing import Any

import dagster as dg
from pydantic import Field

from autotrader_assets.defs.deployment.assets import production_deployment
from autotrader_assets.defs.deployment.record import production_materialization
from autotrader_assets.defs.deployment.resources import DeploymentStackResource
from autotrader_assets.resources import RegistryResource
from deploy_ops.rollback import RollbackReport, emergency_rollback, manual_rollback

deployment_pipeline = dg.define_asset_job(
    "deployment_pipeline",
    selection=[production_deployment],
    description="Roll the newest staging model out through canary, 25%, 50% and 100%, gated on live traffic.",
)


class ModelRollbackConfig(dg.Config):
    """Which version to return production to, and why."""

    to_version: int = Field(description="An archived or staging version (or production, to re-serve it).")
    reason: str = Field(description="Why: written to the registry audit trail and the event log.")
    actor: str = Field(default="", description="Who asked; default: dagster:<run id>.")
    mark_current_failed: bool = Field(default=False, description="Mark the version leaving production as failed.")


class EmergencyRollbackConfig(dg.Config):
    """Why everything goes back to the last known-good version now."""

    reason: str = "emergency rollback to the last known-good version"
    actor: str = Field(default="", description="Who asked; default: dagster:<run id>.")
    mark_current_failed: bool = True


#: The emergency rollback jumps every queued run (Dagster's queue dequeues higher priority first;
#: ordinary runs have 0): the emergency path must not wait behind ordinary work.
EMERGENCY_PRIORITY = 100


def _record(context: dg.OpExecutionContext, stack, report: RollbackReport, change: str) -> None:
    """Tell the production_deployment asset what serves now (the rollback changed it)."""
    context.log_event(
        production_materialization(
            stack.registry,
            stack.state,
            change=change,
            outcome="rolled_back",
            summary=f"{change.replace('_', ' ')} by {report.actor}: version {report.to_version} serves from slot "
            f"{report.slot} (was {report.from_version}): {report.reason}",
            extra={
                "from_version": report.from_version if report.from_version is not None else "-",
                "run_id": context.run_id,
            },
        )
    )


def _output(report: RollbackReport) -> dg.Output:
    return dg.Output(
        report.to_dict(),
        metadata={
            "to_version": report.to_version if report.to_version is not None else "-",
            "from_version": report.from_version if report.from_version is not None else "-",
            "slot": report.slot or "-",
            "actions": dg.MetadataValue.md("\n".join(f"- {a}" for a in report.actions) or "-"),
            "report": dg.MetadataValue.json(report.to_dict()),
        },
    )


@dg.op
def rollback_model(
    context: dg.OpExecutionContext,
    config: ModelRollbackConfig,
    registry: RegistryResource,
    deployment: DeploymentStackResource,
) -> dg.Output[dict[str, Any]]:
    """Return production to a named version and serve it from a freshly started slot."""
    stack = deployment.open(registry.open())
    report = manual_rollback(
        stack.registry,
        stack.state,
        stack.backend,
        config.to_version,
        reason=config.reason,
        actor=config.actor or f"dagster:{context.run_id}",
        mark_current_failed=config.mark_current_failed,
    )
    context.log.warning(f"production rolled back to version {report.to_version}: {'; '.join(report.actions)}")
    _record(context, stack, report, "manual_rollback")
    return _output(report)


@dg.op
def rollback_to_last_known_good(
    context: dg.OpExecutionContext,
    config: EmergencyRollbackConfig,
    registry: RegistryResource,
    deployment: DeploymentStackResource,
) -> dg.Output[dict[str, Any]]:
    """Send all traffic to the last known-good version immediately."""
    stack = deployment.open(registry.open())
    report = emergency_rollback(
        stack.registry,
        stack.state,
        stack.backend,
        reason=config.reason,
        actor=config.actor or f"dagster:{context.run_id}",
        mark_current_failed=config.mark_current_failed,
    )
    context.log.warning(f"emergency rollback to version {report.to_version}: {'; '.join(report.actions)}")
    _record(context, stack, report, "emergency_rollback")
    return _output(report)


@dg.job(description="Manual rollback: production back to a named version, with a reason.")
def model_rollback():
    rollback_model()


@dg.job(
    name="emergency_rollback",
    description="Emergency rollback: every instrument to the last known-good model, now.",
    tags={"dagster/priority": str(EMERGENCY_PRIORITY)},
)
def emergency_rollback_job():
    rollback_to_last_known_good()
