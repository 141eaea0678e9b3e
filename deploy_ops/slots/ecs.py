"""Production blue/green serving on ECS (Fargate) behind an Application Load Balancer.

The operations mirror the local process deployer (``start_slot``, ``stop_slot``,
``slot_health``) plus the traffic controls of the ALB, so the rollout controller can drive
either backend:

* each slot (``blue``, ``green``) is one ECS service ``<service_prefix>-<slot>`` registered in
  its own target group;
* a model version is a task definition revision whose serving container carries the model's
  artifact URI, sha256 and version as environment, and the serving token as an ECS ``secrets``
  reference (SSM Parameter Store or Secrets Manager), so the token value never appears in the
  task definition, in the ECS console or in our logs;
* the traffic split is the listener's default ``forward`` action with weighted target groups,
  which is what lets a rollout walk 0 -> 25 -> 50 -> 100.

Every boto3 failure is re-raised as :class:`DeploymentError` naming the operation, the AWS API
and the AWS error code, so sensors and the CLI can report it without parsing botocore output.

No Dagster imports here: the CLI and the deployment assets call the same functions.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Sequence

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from deploy_ops.models.registry import ModelVersion
from deploy_ops.slots.backend import SlotCheck, http_ready_check
from deploy_ops.slots.names import SLOTS, other_slot
from deploy_ops.state import DeploymentStateStore

logger = logging.getLogger(__name__)

#: ALB weighted forwarding accepts integer weights in this range per target group.
MAX_TARGET_GROUP_WEIGHT = 999

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_SERVICE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,240}$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_URI_RE = re.compile(r"^[a-z][a-z0-9+.-]*://\S+$")
_SECRET_ARN_RE = re.compile(r"^arn:aws[a-z-]*:(ssm|secretsmanager):[a-z0-9-]+:\d{12}:\S+$")


class DeploymentError(RuntimeError):
    """A deployment operation failed; ``code`` is the AWS error code or our own failure code."""

    def __init__(self, operation: str, code: str, message: str, *, api: str | None = None):
        self.operation = operation
        self.code = code
        self.api = api
        self.detail = message
        where = f"{operation} ({api})" if api else operation
        super().__init__(f"{where} failed [{code}]: {message}")


def _require_text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    return value


def _require_arn(name: str, value: Any) -> str:
    _require_text(name, value)
    if not value.startswith("arn:"):
        raise ValueError(f"{name} must be an ARN (arn:...), got {value!r}")
    return value


def _validate_secret_arn(name: str, value: Any) -> str:
    # Only an ARN can be a reference: anything else would be the secret itself, which must
    # never reach a task definition. Deliberately no echo of the value in the message.
    if not isinstance(value, str) or not _SECRET_ARN_RE.match(value):
        raise ValueError(
            f"{name} must be an SSM parameter or Secrets Manager ARN "
            "(arn:aws:ssm:... or arn:aws:secretsmanager:...); the secret value itself is never accepted"
        )
    return value


@dataclass(frozen=True, kw_only=True)
class EcsDeployerConfig:
    """Where the serving slots live in AWS and how their containers are built.

    The network, load balancer and target groups are created by Terraform (``infra/``); this
    object only names them. ``serving_token_secret_arn`` is mandatory because production
    serving is never unauthenticated, and therefore so is ``execution_role_arn``: ECS resolves
    ``secrets`` with the task execution role, and a task without one fails at launch.
    """

    cluster: str
    service_prefix: str
    task_family: str
    container_name: str
    image: str
    cpu: int
    memory: int
    subnets: Sequence[str]
    security_groups: Sequence[str]
    listener_arn: str
    blue_target_group_arn: str
    green_target_group_arn: str
    region: str
    execution_role_arn: str
    serving_token_secret_arn: str
    container_port: int = 8080
    task_role_arn: str | None = None
    assign_public_ip: bool = False
    log_group: str | None = None
    health_check_grace_period_seconds: int = 60
    extra_environment: Mapping[str, str] = field(default_factory=dict)
    extra_secrets: Mapping[str, str] = field(default_factory=dict)
    model_uri_env_var: str = "AUTOTRADER_MODEL_URI"
    model_sha256_env_var: str = "AUTOTRADER_MODEL_SHA256"
    model_version_env_var: str = "AUTOTRADER_MODEL_VERSION"
    slot_env_var: str = "AUTOTRADER_SLOT"
    serving_token_env_var: str = "AUTOTRADER_SERVING_TOKEN"
    stable_timeout_seconds: float = 900.0
    poll_interval_seconds: float = 15.0
    wait_for_healthy_targets: bool = True

    def __post_init__(self) -> None:
        for name in ("cluster", "task_family", "container_name", "image", "region"):
            _require_text(name, getattr(self, name))
        if not isinstance(self.service_prefix, str) or not _SERVICE_NAME_RE.match(self.service_prefix):
            raise ValueError(
                "service_prefix must start with a letter or digit and hold only letters, digits, "
                f"'-' and '_' (ECS service name rules), got {self.service_prefix!r}"
            )
        for name in ("cpu", "memory", "container_port", "health_check_grace_period_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if self.cpu <= 0 or self.memory <= 0:
            raise ValueError(f"cpu and memory must be positive, got cpu={self.cpu} memory={self.memory}")
        if not 1 <= self.container_port <= 65535:
            raise ValueError(f"container_port must be in 1..65535, got {self.container_port}")
        if self.health_check_grace_period_seconds < 0:
            raise ValueError("health_check_grace_period_seconds must be >= 0")
        # Frozen dataclass: normalise lists to tuples so the config stays immutable and hashable.
        for name in ("subnets", "security_groups"):
            raw = getattr(self, name)
            if isinstance(raw, str):
                raise ValueError(f"{name} must be a list of ids, not a single string")
            values = tuple(raw)
            if not values or not all(isinstance(v, str) and v for v in values):
                raise ValueError(f"{name} must be a non-empty list of ids, got {raw!r}")
            object.__setattr__(self, name, values)
        for name in ("listener_arn", "blue_target_group_arn", "green_target_group_arn", "execution_role_arn"):
            _require_arn(name, getattr(self, name))
        if self.task_role_arn is not None:
            _require_arn("task_role_arn", self.task_role_arn)
        if self.blue_target_group_arn == self.green_target_group_arn:
            raise ValueError("blue and green slots need two distinct target groups")
        _validate_secret_arn("serving_token_secret_arn", self.serving_token_secret_arn)
        for name, arn in self.extra_secrets.items():
            _validate_secret_arn(f"extra_secrets[{name!r}]", arn)
        if self.stable_timeout_seconds <= 0 or self.poll_interval_seconds <= 0:
            raise ValueError("stable_timeout_seconds and poll_interval_seconds must be positive")

        reserved = [
            self.model_uri_env_var,
            self.model_sha256_env_var,
            self.model_version_env_var,
            self.slot_env_var,
            self.serving_token_env_var,
        ]
        names = reserved + list(self.extra_environment) + list(self.extra_secrets)
        bad = [n for n in names if not isinstance(n, str) or not _ENV_NAME_RE.match(n)]
        if bad:
            raise ValueError(f"invalid environment variable names: {bad!r}")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            # ECS rejects or silently shadows duplicates depending on the source; refuse up front.
            raise ValueError(f"environment/secret names used more than once: {duplicates}")
        object.__setattr__(self, "extra_environment", dict(self.extra_environment))
        object.__setattr__(self, "extra_secrets", dict(self.extra_secrets))

    def service_name(self, slot: str) -> str:
        """The ECS service name of ``slot``."""
        return f"{self.service_prefix}-{_check_slot(slot)}"

    def target_group_arn(self, slot: str) -> str:
        """The target group that ``slot``'s service registers its tasks in."""
        return self.blue_target_group_arn if _check_slot(slot) == "blue" else self.green_target_group_arn


def _check_slot(slot: Any) -> str:
    if slot not in SLOTS:
        raise ValueError(f"slot must be one of {SLOTS}, got {slot!r}")
    return slot


def _validate_model(version: Any, artifact_uri: Any, sha256: Any) -> None:
    _require_text("version", version)
    if not isinstance(artifact_uri, str) or not _URI_RE.match(artifact_uri):
        raise ValueError(
            f"artifact_uri must be a URI the container can fetch (e.g. s3://bucket/key), got {artifact_uri!r}; "
            "a path on this machine is not reachable from ECS"
        )
    if not isinstance(sha256, str) or not _SHA256_RE.match(sha256):
        raise ValueError(f"sha256 must be 64 lowercase hex characters, got {sha256!r}")


@dataclass(frozen=True)
class EcsSlotStatus:
    """What one serving slot is doing right now, as ECS and the ALB report it."""

    slot: str
    service_name: str
    status: str
    task_definition_arn: str | None
    version: str | None
    desired_count: int
    running_count: int
    pending_count: int
    rollout_state: str | None
    deployment_count: int
    target_group_arn: str
    target_states: dict[str, int]
    stability: str
    reason: str

    @property
    def healthy_targets(self) -> int:
        """Targets the load balancer currently considers healthy."""
        return self.target_states.get("healthy", 0)

    @property
    def stable(self) -> bool:
        """ECS reports the slot's deployment settled (counts match, no older deployment left)."""
        return self.stability == "stable"

    @property
    def serving(self) -> bool:
        """The slot can take traffic: scaled up, stable, and every task healthy in the target group."""
        return self.stable and self.desired_count > 0 and self.healthy_targets >= self.desired_count


@dataclass(frozen=True)
class Stability:
    """Verdict on an ECS service deployment: ``stable``, still ``waiting``, or ``failed`` for good."""

    state: Literal["stable", "waiting", "failed"]
    reason: str


def assess_service_stability(service: Mapping[str, Any], task_definition_arn: str, desired_count: int) -> Stability:
    """Decide whether ``service`` (one ``describe_services`` entry) runs ``task_definition_arn`` settled.

    Real ECS semantics (the same as boto3's ``services_stable`` waiter, plus our task
    definition): ``update_service`` creates a new PRIMARY deployment for the new task
    definition; the service is settled when that deployment is the only one left, its running
    count equals the desired count and, with the deployment circuit breaker, its
    ``rolloutState`` is ``COMPLETED``. ``FAILED`` means the circuit breaker gave up: waiting
    longer cannot help, so that is reported as ``failed``.
    """
    status = service.get("status")
    if status != "ACTIVE":
        return Stability("failed", f"service status is {status}")
    current_td = service.get("taskDefinition")
    if current_td != task_definition_arn:
        return Stability("failed", f"service now runs {current_td}, not {task_definition_arn} (superseded)")
    if service.get("desiredCount") != desired_count:
        return Stability(
            "failed",
            f"desiredCount changed to {service.get('desiredCount')} (expected {desired_count}) by another actor",
        )
    deployments = list(service.get("deployments") or [])
    ours = [d for d in deployments if d.get("taskDefinition") == task_definition_arn]
    if ours:
        primary = next((d for d in deployments if d.get("status") == "PRIMARY"), None)
        if primary is None or primary.get("taskDefinition") != task_definition_arn:
            return Stability("failed", "the primary deployment is not ours (superseded)")
        if primary.get("rolloutState") == "FAILED":
            return Stability("failed", f"rollout failed: {primary.get('rolloutStateReason', 'no reason given')}")
        if len(deployments) > 1:
            return Stability("waiting", f"{len(deployments) - 1} older deployment(s) still draining")
        if primary.get("runningCount") != desired_count:
            return Stability("waiting", f"primary deployment running {primary.get('runningCount')}/{desired_count}")
        rollout = primary.get("rolloutState")
        if rollout is not None and rollout != "COMPLETED":
            return Stability("waiting", f"rollout {rollout}: {primary.get('rolloutStateReason', '')}".rstrip(": "))
    elif len(deployments) > 1:
        return Stability("waiting", f"{len(deployments)} deployments, none for {task_definition_arn} yet")
    # No deployment names our task definition although the service does. Real ECS never
    # reports that (the PRIMARY deployment is what sets the service's task definition), but
    # moto does: its update_service changes the service's taskDefinition and counts without
    # creating a deployment, so the one deployment it lists still names the task definition
    # the service was created with. The service-level counts are then the only evidence.
    running = service.get("runningCount")
    if running != desired_count:
        return Stability("waiting", f"running {running}/{desired_count}")
    return Stability("stable", f"running {running}/{desired_count} on {task_definition_arn}")


class EcsDeployer:
    """Blue/green serving slots on ECS behind an ALB (see the module docstring)."""

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

    # ------------------------------------------------------------------ task definitions

    def register_task_definition(self, version: str, artifact_uri: str, sha256: str, slot: str) -> str:
        """Register a task definition revision serving model ``version`` in ``slot``; return its ARN.

        The model's URI, sha256, version and the slot name go in as plain environment; the
        serving token (and any ``extra_secrets``) only as ``secrets`` references that ECS
        resolves at task start with the execution role.
        """
        _check_slot(slot)
        _validate_model(version, artifact_uri, sha256)
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

    def _refuse_if_live(self, operation: str, slot: str, service: Mapping[str, Any]) -> None:
        weight = self.current_weights().get(slot, 0)
        if weight > 0 and int(service.get("runningCount", 0)) > 0:
            raise DeploymentError(
                operation,
                "SlotIsLive",
                f"slot {slot} carries traffic (weight {weight}) with {service.get('runningCount')} running task(s); "
                "move traffic away first (switch_all) or pass force=True",
            )

    def start_slot(
        self,
        slot: str,
        version: str,
        artifact_uri: str,
        sha256: str,
        desired_count: int = 1,
        *,
        force: bool = False,
    ) -> EcsSlotStatus:
        """Deploy model ``version`` to ``slot`` and wait until it is stable (and healthy in its target group).

        Refuses a slot that is serving traffic unless ``force``: replacing the live version
        in place is a rolling update, not blue/green. Raises :class:`DeploymentError` with
        code ``StabilityTimeout`` when the slot does not settle within
        ``config.stable_timeout_seconds`` and ``DeploymentFailed`` when ECS gives up on it.
        """
        _check_slot(slot)
        if isinstance(desired_count, bool) or not isinstance(desired_count, int) or desired_count < 1:
            raise ValueError(f"desired_count must be an integer >= 1 (use stop_slot to scale to zero), got {desired_count!r}")
        _validate_model(version, artifact_uri, sha256)
        operation = "start_slot"
        service = self._describe_service(operation, slot)
        if not force:
            self._refuse_if_live(operation, slot, service)
        task_definition_arn = self.register_task_definition(version, artifact_uri, sha256, slot)
        self._call(
            operation,
            self.ecs,
            "UpdateService",
            cluster=self.config.cluster,
            service=self.config.service_name(slot),
            taskDefinition=task_definition_arn,
            desiredCount=desired_count,
        )
        logger.info("slot %s: %s at %d task(s), waiting for stability", slot, task_definition_arn, desired_count)
        return self.wait_until_stable(slot, task_definition_arn, desired_count)

    def wait_until_stable(self, slot: str, task_definition_arn: str, desired_count: int) -> EcsSlotStatus:
        """Poll until ``slot`` runs ``desired_count`` tasks of ``task_definition_arn``; return its state.

        With ``config.wait_for_healthy_targets`` the slot must also have ``desired_count``
        healthy targets in its target group: ECS running a task does not mean the model
        loaded, the ALB health check does.
        """
        _check_slot(slot)
        operation = "start_slot"
        deadline = self._clock() + self.config.stable_timeout_seconds
        polls = 0
        while True:
            polls += 1
            service = self._describe_service(operation, slot)
            stability = assess_service_stability(service, task_definition_arn, desired_count)
            if stability.state == "failed":
                raise DeploymentError(operation, "DeploymentFailed", f"slot {slot}: {stability.reason}")
            reason = stability.reason
            if stability.state == "stable":
                if not self.config.wait_for_healthy_targets:
                    return self._slot_info(operation, slot, service, stability)
                states = self._target_states(operation, slot)
                healthy = states.get("healthy", 0)
                if healthy >= desired_count:
                    return self._slot_info(operation, slot, service, stability)
                reason = f"{healthy}/{desired_count} healthy targets in {self.config.target_group_arn(slot)} ({states or 'none registered'})"
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise DeploymentError(
                    operation,
                    "StabilityTimeout",
                    f"slot {slot} not stable after {self.config.stable_timeout_seconds:g}s ({polls} polls): {reason}",
                )
            logger.debug("slot %s not stable yet: %s", slot, reason)
            self._sleep(min(self.config.poll_interval_seconds, remaining))

    def stop_slot(self, slot: str, *, force: bool = False) -> EcsSlotStatus:
        """Scale ``slot``'s service to zero tasks; refuses a slot that carries traffic unless ``force``."""
        _check_slot(slot)
        operation = "stop_slot"
        service = self._describe_service(operation, slot)
        if not force:
            self._refuse_if_live(operation, slot, service)
        response = self._call(
            operation,
            self.ecs,
            "UpdateService",
            cluster=self.config.cluster,
            service=self.config.service_name(slot),
            desiredCount=0,
        )
        updated = response["service"]
        logger.info("slot %s scaled to zero", slot)
        return self._slot_info(
            operation, slot, updated, assess_service_stability(updated, updated.get("taskDefinition"), 0)
        )

    def slot_health(self, slot: str) -> EcsSlotStatus:
        """Running counts, rollout state and target health of ``slot``, against what it was asked to run."""
        _check_slot(slot)
        operation = "slot_health"
        service = self._describe_service(operation, slot)
        stability = assess_service_stability(
            service, service.get("taskDefinition"), int(service.get("desiredCount", 0))
        )
        return self._slot_info(operation, slot, service, stability)

    # ------------------------------------------------------------------ traffic

    def _listener_forward(self, operation: str) -> tuple[list[dict[str, Any]], int]:
        response = self._call(operation, self.elbv2, "DescribeListeners", ListenerArns=[self.config.listener_arn])
        listeners = response.get("Listeners") or []
        if not listeners:
            raise DeploymentError(operation, "ListenerNotFound", f"listener {self.config.listener_arn} not found")
        actions = listeners[0].get("DefaultActions") or []
        for index, action in enumerate(actions):
            if action.get("Type") == "forward":
                return actions, index
        raise DeploymentError(
            operation,
            "NoForwardAction",
            f"listener {self.config.listener_arn} has no forward default action (types: {[a.get('Type') for a in actions]})",
        )

    def _weights_from_action(self, operation: str, action: Mapping[str, Any]) -> dict[str, int]:
        by_arn = {self.config.target_group_arn(slot): slot for slot in SLOTS}
        weights = {slot: 0 for slot in SLOTS}
        groups = (action.get("ForwardConfig") or {}).get("TargetGroups")
        if groups:
            pairs = [(g.get("TargetGroupArn"), int(g.get("Weight", 1))) for g in groups]
        elif action.get("TargetGroupArn"):
            # A plain forward sends everything to one group.
            pairs = [(action["TargetGroupArn"], 100)]
        else:
            pairs = []
        for arn, weight in pairs:
            if arn not in by_arn:
                raise DeploymentError(
                    operation,
                    "UnknownTargetGroup",
                    f"listener forwards to {arn}, which is neither the blue nor the green target group",
                )
            weights[by_arn[arn]] += weight
        total = sum(weights.values())
        if total == 0:
            return weights
        # ALB weights are relative (a plain forward reads back as weight 1 on real AWS, and
        # 3/1 routes like 75/25), so report the share of traffic in percent.
        blue = round(weights["blue"] * 100 / total)
        return {"blue": blue, "green": 100 - blue}

    def current_weights(self) -> dict[str, int]:
        """The listener's traffic split in percent, ``{"blue": p, "green": 100 - p}``."""
        actions, index = self._listener_forward("current_weights")
        return self._weights_from_action("current_weights", actions[index])

    def set_traffic_weights(self, blue_weight: int, green_weight: int) -> dict[str, int]:
        """Point the listener's default action at both target groups with these weights.

        Weights are relative integers in 0..999 (use percentages: 75/25). A slot given
        weight must have running tasks, otherwise its share of requests would get 503s;
        that is checked before the listener is touched. Returns the split read back from the
        listener, in percent.
        """
        requested = {"blue": blue_weight, "green": green_weight}
        for slot, weight in requested.items():
            if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= MAX_TARGET_GROUP_WEIGHT:
                raise ValueError(f"{slot} weight must be an integer in 0..{MAX_TARGET_GROUP_WEIGHT}, got {weight!r}")
        if blue_weight + green_weight == 0:
            raise ValueError("at least one slot needs a positive weight; all-zero weights drop every request")
        operation = "set_traffic_weights"
        for slot, weight in requested.items():
            if weight > 0:
                service = self._describe_service(operation, slot)
                if int(service.get("runningCount", 0)) == 0 or int(service.get("desiredCount", 0)) == 0:
                    raise DeploymentError(
                        operation,
                        "SlotNotRunning",
                        f"refusing weight {weight} for slot {slot}: it has no running tasks (start_slot first)",
                    )
        actions, index = self._listener_forward(operation)
        stickiness = (actions[index].get("ForwardConfig") or {}).get("TargetGroupStickinessConfig")
        forward_config: dict[str, Any] = {
            "TargetGroups": [
                {"TargetGroupArn": self.config.target_group_arn(slot), "Weight": requested[slot]} for slot in SLOTS
            ]
        }
        if stickiness:
            # Keep whatever stickiness the operators configured; the split is our only concern.
            forward_config["TargetGroupStickinessConfig"] = stickiness
        new_actions = [dict(a) for a in actions]
        new_actions[index] = {"Type": "forward", "ForwardConfig": forward_config}
        if "Order" in actions[index]:
            new_actions[index]["Order"] = actions[index]["Order"]
        response = self._call(
            operation, self.elbv2, "ModifyListener", ListenerArn=self.config.listener_arn, DefaultActions=new_actions
        )
        listener = (response.get("Listeners") or [{}])[0]
        written = next((a for a in listener.get("DefaultActions") or [] if a.get("Type") == "forward"), None)
        weights = self._weights_from_action(operation, written) if written else self.current_weights()
        logger.info("traffic weights now %s", weights)
        return weights

    def switch_all(self, to_slot: str) -> dict[str, int]:
        """Send all traffic to ``to_slot`` (the other slot keeps its tasks, at weight 0)."""
        _check_slot(to_slot)
        return self.set_traffic_weights(
            100 if to_slot == "blue" else 0,
            100 if to_slot == "green" else 0,
        )

    def finalize(self, new_slot: str) -> dict[str, EcsSlotStatus]:
        """Make ``new_slot`` the only live slot: all traffic to it, the other slot scaled to zero."""
        _check_slot(new_slot)
        self.switch_all(new_slot)
        old = self.stop_slot(other_slot(new_slot))
        return {new_slot: self.slot_health(new_slot), old.slot: old}


def _snake(api: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", api).lower()


class EcsBackend:
    """Slots as ECS services behind an ALB through :class:`~deploy_ops.slots.ecs.EcsDeployer`.

    ``endpoints`` are the per-slot URLs the controller uses to reach each slot directly (shadow
    requests, smoke test, health): in AWS a listener rule per target group; the state store
    records them so the routing table and the RoutedClient work exactly as locally. The ALB
    weights carry the stage's share for traffic that arrives through the load balancer."""

    kind = "ecs"

    def __init__(self, deployer: Any, state: DeploymentStateStore, endpoints: Mapping[str, str],
                 *, token: str | None = None, desired_count: int = 1):
        missing = [s for s in SLOTS if not endpoints.get(s)]
        if missing:
            raise ValueError(f"ECS backend needs an endpoint URL for every slot; missing {missing}")
        self.deployer = deployer
        self.state = state
        self.endpoints = {s: endpoints[s].rstrip("/") for s in SLOTS}
        self.token = token
        self.instruments = None  # the task definition decides what an ECS slot serves
        self.desired_count = desired_count

    def start(self, slot: str, mv: ModelVersion, *, env: Mapping[str, str] | None = None, force: bool = False) -> str:
        if env:
            raise ValueError("ECS slots take their environment from the task definition; extra env is local-only")
        try:
            self.deployer.ensure_services()
        except DeploymentError:
            # A fresh account has no task definition revision to create the services from yet.
            td = self.deployer.register_task_definition(str(mv.version), mv.artifact_uri, mv.sha256, slot)
            self.deployer.ensure_services(td)
        self.state.set_slot(slot, status="starting", version=str(mv.version), url=self.endpoints[slot])
        try:
            self.deployer.start_slot(slot, str(mv.version), mv.artifact_uri, mv.sha256, self.desired_count, force=force)
        except Exception:
            self.state.set_slot(slot, status="failed", version=str(mv.version), url=self.endpoints[slot])
            raise
        self.state.set_slot(slot, status="ready", version=str(mv.version), url=self.endpoints[slot])
        self.state.record_event("slot_started", f"ECS slot {slot} serves {mv.version}",
                                details={"slot": slot, "version": str(mv.version), "url": self.endpoints[slot]})
        return self.endpoints[slot]

    def stop(self, slot: str, *, force: bool = False) -> None:
        info = self.state.get_slot(slot)
        self.deployer.stop_slot(slot, force=force)
        if info is not None:
            self.state.set_slot_status(slot, "stopped")
        self.state.record_event("slot_stopped", f"ECS slot {slot} scaled to zero",
                                details={"slot": slot, "version": info.version if info else None})

    def check(self, slot: str, expected_version: str | None) -> SlotCheck:
        info = self.deployer.slot_health(slot)
        if not info.serving:
            return SlotCheck(slot, False, f"service not serving: {info.reason}; targets {info.target_states}")
        if expected_version is not None and info.version != str(expected_version):
            return SlotCheck(slot, False, f"service runs version {info.version}, expected {expected_version}")
        return http_ready_check(slot, self.endpoints[slot], expected_version, self.token)

    def set_weights(self, weights: Mapping[str, int]) -> Mapping[str, int]:
        return self.deployer.set_traffic_weights(int(weights["blue"]), int(weights["green"]))
