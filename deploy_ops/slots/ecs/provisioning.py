"""Provisioning: task definition revisions that carry a model, and the blue and green services."""

from __future__ import annotations

import logging
from typing import Any

from deploy_ops.slots.ecs.aws import EcsApi
from deploy_ops.slots.ecs.config import check_slot, validate_model
from deploy_ops.slots.ecs.errors import DeploymentError
from deploy_ops.slots.names import SLOTS

logger = logging.getLogger(__name__)


class EcsProvisioner(EcsApi):
    """Creates what a slot runs on: task definition revisions and the two ECS services."""

    def register_task_definition(self, version: str, artifact_uri: str, sha256: str, slot: str) -> str:
        """Register a task definition revision serving model ``version`` in ``slot``; return its ARN.

        The model's URI, sha256, version and the slot name go in as plain environment; the
        serving token (and any ``extra_secrets``) only as ``secrets`` references that ECS
        resolves at task start with the execution role.
        """
        check_slot(slot)
        validate_model(version, artifact_uri, sha256)
        cfg = self.config
        environment = [
            {"name": cfg.model_uri_env_var, "value": artifact_uri},
            {"name": cfg.model_sha256_env_var, "value": sha256},
            {"name": cfg.model_version_env_var, "value": version},
            {"name": cfg.slot_env_var, "value": slot},
        ] + [{"name": k, "value": v} for k, v in sorted(cfg.extra_environment.items())]
        secrets = [{"name": cfg.serving_token_env_var, "valueFrom": cfg.serving_token_secret_arn}] + [
            {"name": k, "valueFrom": v} for k, v in sorted(cfg.extra_secrets.items())
        ]
        container: dict[str, Any] = {
            "name": cfg.container_name,
            "image": cfg.image,
            "essential": True,
            # Container-level cpu/memory as well as task-level: moto's task placement and
            # EC2-capacity clusters both read the container values.
            "cpu": cfg.cpu,
            "memory": cfg.memory,
            "portMappings": [{"containerPort": cfg.container_port, "protocol": "tcp"}],
            "environment": environment,
            "secrets": secrets,
        }
        if cfg.log_group:
            container["logConfiguration"] = {
                "logDriver": "awslogs",
                "options": {
                    "awslogs-group": cfg.log_group,
                    "awslogs-region": cfg.region,
                    "awslogs-stream-prefix": f"{cfg.service_prefix}-{slot}",
                },
            }
        kwargs: dict[str, Any] = {
            "family": cfg.task_family,
            "networkMode": "awsvpc",
            "requiresCompatibilities": ["FARGATE"],
            "cpu": str(cfg.cpu),
            "memory": str(cfg.memory),
            "executionRoleArn": cfg.execution_role_arn,
            "containerDefinitions": [container],
            "tags": [
                {"key": "autotrader:model-version", "value": version[:256]},
                {"key": "autotrader:slot", "value": slot},
            ],
        }
        if cfg.task_role_arn:
            kwargs["taskRoleArn"] = cfg.task_role_arn
        response = self._call("register_task_definition", self.ecs, "RegisterTaskDefinition", **kwargs)
        arn = response["taskDefinition"]["taskDefinitionArn"]
        logger.info("registered %s for model version %s in slot %s", arn, version, slot)
        return arn

    # ------------------------------------------------------------------ services

    def ensure_services(self, task_definition_arn: str | None = None) -> dict[str, str]:
        """Create the blue and green services where missing; return ``{slot: service_arn}``.

        New services start at zero tasks on ``task_definition_arn`` (default: the latest
        ACTIVE revision of ``task_family``; ECS services cannot exist without one). Existing
        services are left running as they are, but one attached to the wrong target group is
        an error: it would send canary traffic to the wrong model.
        """
        cfg = self.config
        operation = "ensure_services"
        if task_definition_arn is None:
            try:
                response = self._call(operation, self.ecs, "DescribeTaskDefinition", taskDefinition=cfg.task_family)
            except DeploymentError as exc:
                raise DeploymentError(
                    operation,
                    exc.code,
                    f"no registered revision of task family {cfg.task_family!r} to create the services with "
                    f"({exc.detail}); call register_task_definition first or pass task_definition_arn",
                    api=exc.api,
                ) from exc
            task_definition_arn = response["taskDefinition"]["taskDefinitionArn"]

        names = [cfg.service_name(slot) for slot in SLOTS]
        response = self._call(operation, self.ecs, "DescribeServices", cluster=cfg.cluster, services=names)
        existing = {s["serviceName"]: s for s in response.get("services") or []}
        arns: dict[str, str] = {}
        for slot in SLOTS:
            name = cfg.service_name(slot)
            service = existing.get(name)
            status = service.get("status") if service else None
            if status == "ACTIVE":
                attached = [lb.get("targetGroupArn") for lb in service.get("loadBalancers") or []]
                if attached != [cfg.target_group_arn(slot)]:
                    raise DeploymentError(
                        operation,
                        "TargetGroupMismatch",
                        f"service {name} is attached to {attached}, expected [{cfg.target_group_arn(slot)}]",
                    )
                arns[slot] = service["serviceArn"]
                continue
            if status == "DRAINING":
                raise DeploymentError(
                    operation, "ServiceDraining", f"service {name} is being deleted; retry once it is INACTIVE"
                )
            created = self._call(
                operation,
                self.ecs,
                "CreateService",
                cluster=cfg.cluster,
                serviceName=name,
                taskDefinition=task_definition_arn,
                desiredCount=0,
                launchType="FARGATE",
                loadBalancers=[
                    {
                        "targetGroupArn": cfg.target_group_arn(slot),
                        "containerName": cfg.container_name,
                        "containerPort": cfg.container_port,
                    }
                ],
                networkConfiguration=self._network_configuration(),
                healthCheckGracePeriodSeconds=cfg.health_check_grace_period_seconds,
                deploymentController={"type": "ECS"},
                # The circuit breaker turns a crash-looping model into rolloutState FAILED, so
                # start_slot fails fast. No automatic rollback: the idle slot has nothing
                # worth rolling back to; the rollout controller decides.
                deploymentConfiguration={
                    "deploymentCircuitBreaker": {"enable": True, "rollback": False},
                    "maximumPercent": 200,
                    "minimumHealthyPercent": 100,
                },
                propagateTags="TASK_DEFINITION",
                tags=[{"key": "autotrader:slot", "value": slot}],
            )
            arns[slot] = created["service"]["serviceArn"]
            logger.info("created service %s on %s", name, task_definition_arn)
        return arns

    def _network_configuration(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "awsvpcConfiguration": {
                "subnets": list(cfg.subnets),
                "securityGroups": list(cfg.security_groups),
                "assignPublicIp": "ENABLED" if cfg.assign_public_ip else "DISABLED",
            }
        }
