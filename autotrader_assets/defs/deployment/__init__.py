"""Deployment: the gated blue/green rollout asset, rollback jobs and the deployment-failure sensor.
The procedures themselves live in ``deploy_ops.rollout`` and ``deploy_ops.rollback``."""

from autotrader_assets.defs.deployment.assets import production_deployment
from autotrader_assets.defs.deployment.jobs import deployment_pipeline, emergency_rollback_job, model_rollback
from autotrader_assets.defs.deployment.resources import DeploymentStackResource, deployment_resource
from autotrader_assets.defs.deployment.sensors import deployment_failure_sensor, interrupted_deployment_sensor

deployment_assets = [production_deployment]
deployment_jobs = [deployment_pipeline, model_rollback, emergency_rollback_job]
deployment_sensors = [deployment_failure_sensor, interrupted_deployment_sensor]

__all__ = [
    "DeploymentStackResource",
    "deployment_assets",
    "deployment_failure_sensor",
    "deployment_jobs",
    "deployment_pipeline",
    "deployment_resource",
    "deployment_sensors",
    "emergency_rollback_job",
    "interrupted_deployment_sensor",
    "model_rollback",
    "production_deployment",
]
