"""``deployment_failure_sensor``: when a deployment run fails, say so loudly and make sure
traffic is on the slot serving the last known-good (production) version."""

import dagster as dg

from autotrader_assets.defs.deployment.jobs import deployment_pipeline
from autotrader_assets.defs.deployment.resources import DeploymentStackResource
from autotrader_assets.resources import RegistryResource
from deploy_ops import events
from deploy_ops.rollback import ensure_production_serving

DEPLOYMENT_ASSET = dg.AssetKey("production_deployment")


def _is_deployment_run(run: dg.DagsterRun) -> bool:
    # A UI "Materialize" of production_deployment runs as an ad-hoc asset job, not as
    # deployment_pipeline; both leave traffic to verify when they fail.
    return run.job_name == deployment_pipeline.name or DEPLOYMENT_ASSET in (run.asset_selection or set())


@dg.run_failure_sensor(
    name="deployment_failure_sensor",
    description="On a failed deployment run: critical event, then traffic back on the production slot.",
    monitor_all_code_locations=False,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def deployment_failure_sensor(
    context: dg.RunFailureSensorContext,
    registry: RegistryResource,
    deployment: DeploymentStackResource,
) -> None:
    run = context.dagster_run
    if not _is_deployment_run(run):
        return
    stack = deployment.open(registry.open())
    message = context.failure_event.message or "run failed"
    events.record(
        stack.state, "deployment_run_failed", "critical",
        f"deployment run {run.run_id} ({run.job_name}) failed: {message}",
        {"run_id": run.run_id, "job": run.job_name, "message": message[:2000]},
    )
    report = ensure_production_serving(
        stack.registry, stack.state, stack.backend, actor=f"sensor:{context.sensor_name}",
        reason=f"deployment run {run.run_id} failed",
    )
    context.log.info(f"traffic verified after failed run {run.run_id}: {'; '.join(report.actions)}")
