"""Deployment sensors: when a deployment run fails, or a rollout's owner dies mid-way, say so
loudly and make sure traffic is on the slot serving the last known-good (production) version.

``deployment_failure_sensor`` reacts to a failed run. ``interrupted_deployment_sensor`` covers
what no run failure reports: a rollout driven by ``autotrader deploy rollout`` (or a run worker
killed with ``kill -9``) leaves its deployment ``running`` with a dead owner and the canary
instruments on an unjudged candidate; every 30 s the sensor looks for such a deployment and
recovers it (traffic back on the live slot, the candidate stopped, a critical event). Both leave
a ``production_deployment`` record of what serves afterwards.
"""

import dagster as dg

from autotrader_assets.defs.deployment.jobs import deployment_pipeline
from autotrader_assets.defs.deployment.record import production_materialization, report_outside_a_run
from autotrader_assets.defs.deployment.resources import DeploymentStackResource
from autotrader_assets.resources import RegistryResource
from deploy_ops import events
from deploy_ops.rollback import RollbackReport, ensure_production_serving
from deploy_ops.rollout.recovery import WATCH_INTERVAL_SECONDS, find_orphaned
from deploy_ops.text import MESSAGE, truncate

DEPLOYMENT_ASSET = dg.AssetKey("production_deployment")

#: How often the interrupted-deployment watcher looks (plus the lease timeout when the owner
#: ran on another host): the bound on an orphaned canary's life.
INTERRUPTED_CHECK_SECONDS = WATCH_INTERVAL_SECONDS


def _is_deployment_run(run: dg.DagsterRun) -> bool:
    # A UI "Materialize" of production_deployment runs as an ad-hoc asset job, not as
    # deployment_pipeline; both leave traffic to verify when they fail.
    return run.job_name == deployment_pipeline.name or DEPLOYMENT_ASSET in (run.asset_selection or set())


def _record(instance: dg.DagsterInstance, stack, report: RollbackReport, change: str, why: str) -> None:
    """A production_deployment record after the sensor touched production (none if it left it alone)."""
    if report.to_version is None:
        return  # no production version, or a live controller owns traffic: nothing changed here
    report_outside_a_run(
        instance,
        production_materialization(
            stack.registry,
            stack.state,
            change=change,
            outcome="restored",
            summary=f"{why}; version {report.to_version} serves from slot {report.slot}",
            extra={"actions": dg.MetadataValue.md("\n".join(f"- {a}" for a in report.actions) or "-")},
        ),
    )


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
        stack.state,
        "deployment_run_failed",
        "critical",
        f"deployment run {run.run_id} ({run.job_name}) failed: {message}",
        {"run_id": run.run_id, "job": run.job_name, "message": truncate(message, MESSAGE)},
    )
    report = ensure_production_serving(
        stack.registry,
        stack.state,
        stack.backend,
        actor=f"sensor:{context.sensor_name}",
        reason=f"deployment run {run.run_id} failed",
        lease_timeout_seconds=stack.policy.lease_timeout_seconds,
    )
    _record(context.instance, stack, report, "restore_serving", f"deployment run {run.run_id} failed")
    context.log.info(f"traffic verified after failed run {run.run_id}: {'; '.join(report.actions)}")


@dg.sensor(
    name="interrupted_deployment_sensor",
    minimum_interval_seconds=INTERRUPTED_CHECK_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="A deployment left running by a dead owner (killed CLI rollout or run) -> recovered: "
    "traffic back on the live slot, candidate stopped, critical event.",
)
def interrupted_deployment_sensor(
    context: dg.SensorEvaluationContext,
    registry: RegistryResource,
    deployment: DeploymentStackResource,
) -> dg.SkipReason:
    stack = deployment.open(registry.open())
    orphan = find_orphaned(stack.state, lease_timeout_seconds=stack.policy.lease_timeout_seconds)
    if orphan is None:
        active = stack.state.active_deployment()
        return dg.SkipReason(
            f"deployment {active.id} is running and its owner is alive" if active else "no deployment is running"
        )
    why = (
        f"deployment {orphan.deployment_id} of version {orphan.version} was left at stage {orphan.stage} "
        f"by {orphan.owner or 'an unknown owner'} ({orphan.why})"
    )
    report = ensure_production_serving(
        stack.registry,
        stack.state,
        stack.backend,
        actor="sensor:interrupted_deployment_sensor",
        reason=why,
        lease_timeout_seconds=stack.policy.lease_timeout_seconds,
    )
    _record(context.instance, stack, report, "interrupted_rollout_recovered", why)
    context.log.warning(f"{why}: {'; '.join(report.actions)}")
    return dg.SkipReason(f"recovered: {why}")
