"""The boto3 plumbing every ECS/ALB operation goes through: clients, error translation, describe calls."""

from __future__ import annotations

import re
import time
from typing import Any, Callable, Mapping

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from deploy_ops.slots.ecs.config import EcsDeployerConfig
from deploy_ops.slots.ecs.errors import DeploymentError
from deploy_ops.slots.ecs.status import EcsSlotStatus, Stability


def _snake(api: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", api).lower()


class EcsApi:
    """The AWS clients for one :class:`EcsDeployerConfig` and the calls shared by provisioning and runtime."""

    def __init__(
        self,
        config: EcsDeployerConfig,
        *,
        ecs_client: Any = None,
        elbv2_client: Any = None,
        session: boto3.session.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        """Build the AWS clients (or take injected ones) for ``config.region``.

        ``sleep`` and ``clock`` are injectable so stability waits can be tested without
        waiting in real time.
        """
        self.config = config
        if ecs_client is None or elbv2_client is None:
            session = session or boto3.session.Session(region_name=config.region)
        self.ecs = ecs_client if ecs_client is not None else session.client("ecs", region_name=config.region)
        self.elbv2 = elbv2_client if elbv2_client is not None else session.client("elbv2", region_name=config.region)
        self._sleep = sleep
        self._clock = clock

    # ------------------------------------------------------------------ AWS plumbing

    def _call(self, operation: str, client: Any, api: str, **kwargs: Any) -> dict[str, Any]:
        method = getattr(client, _snake(api))
        try:
            return method(**kwargs)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise DeploymentError(
                operation, error.get("Code", "Unknown"), error.get("Message", str(exc)), api=api
            ) from exc
        except BotoCoreError as exc:
            # No AWS error code exists for client-side failures (no credentials, no endpoint);
            # the exception class is the most specific code there is.
            raise DeploymentError(operation, type(exc).__name__, str(exc), api=api) from exc

    def _describe_service(self, operation: str, slot: str) -> dict[str, Any]:
        name = self.config.service_name(slot)
        response = self._call(operation, self.ecs, "DescribeServices", cluster=self.config.cluster, services=[name])
        services = response.get("services") or []
        if not services:
            reasons = ", ".join(f.get("reason", "?") for f in response.get("failures") or []) or "MISSING"
            raise DeploymentError(
                operation,
                "ServiceNotFoundException",
                f"service {name} not found in cluster {self.config.cluster} ({reasons}); run ensure_services first",
                api="DescribeServices",
            )
        return services[0]

    def _target_states(self, operation: str, slot: str) -> dict[str, int]:
        response = self._call(
            operation, self.elbv2, "DescribeTargetHealth", TargetGroupArn=self.config.target_group_arn(slot)
        )
        states: dict[str, int] = {}
        for description in response.get("TargetHealthDescriptions") or []:
            state = (description.get("TargetHealth") or {}).get("State", "unknown")
            states[state] = states.get(state, 0) + 1
        return states

    def _task_definition_version(self, operation: str, task_definition_arn: str | None) -> str | None:
        if not task_definition_arn:
            return None
        response = self._call(operation, self.ecs, "DescribeTaskDefinition", taskDefinition=task_definition_arn)
        for container in response["taskDefinition"].get("containerDefinitions", []):
            if container.get("name") == self.config.container_name:
                for pair in container.get("environment") or []:
                    if pair.get("name") == self.config.model_version_env_var:
                        return pair.get("value")
        return None

    def _slot_info(self, operation: str, slot: str, service: Mapping[str, Any], stability: Stability) -> EcsSlotStatus:
        deployments = service.get("deployments") or []
        primary = next((d for d in deployments if d.get("status") == "PRIMARY"), {})
        task_definition_arn = service.get("taskDefinition")
        return EcsSlotStatus(
            slot=slot,
            service_name=self.config.service_name(slot),
            status=service.get("status", "UNKNOWN"),
            task_definition_arn=task_definition_arn,
            version=self._task_definition_version(operation, task_definition_arn),
            desired_count=int(service.get("desiredCount", 0)),
            running_count=int(service.get("runningCount", 0)),
            pending_count=int(service.get("pendingCount", 0)),
            rollout_state=primary.get("rolloutState"),
            deployment_count=len(deployments),
            target_group_arn=self.config.target_group_arn(slot),
            target_states=self._target_states(operation, slot),
            stability=stability.state,
            reason=stability.reason,
        )
