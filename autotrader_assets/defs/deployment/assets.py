"""``production_deployment``: a registered model rolled out to the serving slots, gated stage by
stage on live traffic, rolled back automatically when a gate trips."""

import json
from typing import Any

import dagster as dg
from pydantic import Field

from autotrader_assets.defs.deployment.record import production_materialization
from autotrader_assets.defs.deployment.report import rollout_markdown
from autotrader_assets.defs.deployment.resources import DeploymentStackResource
from autotrader_assets.defs.deployment.stack import WarehouseTrafficSource, resolve_version
from autotrader_assets.resources import RegistryResource, WarehouseResource
from deploy_ops.rollout.reports import RolloutReport, StageReport

DEPLOYMENT_GROUP = "deployment"


class ProductionDeploymentConfig(dg.Config):
    """Which version to roll out and how long each stage watches live traffic."""

    version: int | None = Field(default=None, description="Registry version; default: the newest staging version.")
    stage_seconds: float | None = Field(default=None, description="Seconds per traffic stage; default: settings.")
    traffic_rows: int = Field(default=240, description="Newest bar_features rows per instrument replayed as traffic.")


def rollout_metadata(report: RolloutReport) -> dict[str, Any]:
    """Materialization metadata: the outcome, the gate readings table and the full JSON report."""
    return {
        "version": report.version,
        "outcome": report.outcome,
        "change": "rollout",
        "mode": report.mode,
        "live_slot": report.live_slot or "-",
        "candidate_slot": report.candidate_slot or "-",
        "previous_version": report.previous_version if report.previous_version is not None else "-",
        "failed_stage": report.failed_stage or "-",
        "reason": report.reason or "-",
        "gate_readings": dg.MetadataValue.md(rollout_markdown(report)),
        "report": dg.MetadataValue.json(json.loads(report.to_json())),
    }


@dg.asset(
    group_name=DEPLOYMENT_GROUP,
    deps=[dg.AssetKey("registered_model")],
    kinds={"python"},
    owners=["team:ml-platform"],
    tags={"domain": "deployment", "tier": "critical"},
    # Bump when the rollout's stages, gates or what a materialization records change.
    code_version="1",
)
def production_deployment(
    context: dg.AssetExecutionContext,
    config: ProductionDeploymentConfig,
    registry: RegistryResource,
    deployment: DeploymentStackResource,
    warehouse: WarehouseResource,
) -> dg.MaterializeResult:
    """The model version serving live trading traffic, promoted only after canary and staged gates pass."""
    reg = registry.open()
    stack = deployment.open(reg, stage_seconds=config.stage_seconds)
    try:
        version = resolve_version(reg, config.version)
    except LookupError as exc:
        raise dg.Failure(description=str(exc)) from exc
    traffic = WarehouseTrafficSource(warehouse.path, stack.policy.instruments, rows=config.traffic_rows)

    def progress(stage: str, report: StageReport | None) -> None:
        if report is None:
            context.log.info(f"rollout of version {version}: stage {stage} started")
        elif report.passed:
            context.log.info(f"stage {stage} passed in {report.seconds}s")
        else:
            context.log.error(f"stage {stage} FAILED: {report.reason}")

    report = stack.controller(actor=f"dagster:{context.run_id}", progress=progress).run(version, traffic)
    metadata = rollout_metadata(report)
    if not report.succeeded:
        if report.outcome != "refused":
            # Production did not change, but the candidate served canary traffic: the latest
            # record must say the previous version serves again, not the last rollout's success.
            context.log_event(
                production_materialization(
                    stack.registry,
                    stack.state,
                    change="automatic_rollback",
                    outcome=report.outcome,
                    summary=f"rollout of version {version} {report.outcome} at {report.failed_stage or '-'}: "
                    f"{report.reason}",
                    extra={
                        "candidate_version": report.version,
                        "failed_stage": report.failed_stage or "-",
                        "reason": report.reason or "-",
                        "gate_readings": metadata["gate_readings"],
                    },
                )
            )
        # After the rollback finished: the run fails loudly so the failure sensor and alerts react.
        raise dg.Failure(
            description=f"rollout of version {version} {report.outcome}: {report.reason}",
            metadata=metadata,
        )
    return dg.MaterializeResult(metadata=metadata)
