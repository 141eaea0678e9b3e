"""Where the serving slots live in AWS, and the checks on what the deployer is asked to deploy."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from deploy_ops.slots.names import SLOTS
from deploy_ops.text import required_text

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_SERVICE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,240}$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_URI_RE = re.compile(r"^[a-z][a-z0-9+.-]*://\S+$")
_SECRET_ARN_RE = re.compile(r"^arn:aws[a-z-]*:(ssm|secretsmanager):[a-z0-9-]+:\d{12}:\S+$")


def _require_arn(name: str, value: Any) -> str:
    required_text(name, value)
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
            required_text(name, getattr(self, name))
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
        return f"{self.service_prefix}-{check_slot(slot)}"

    def target_group_arn(self, slot: str) -> str:
        """The target group that ``slot``'s service registers its tasks in."""
        return self.blue_target_group_arn if check_slot(slot) == "blue" else self.green_target_group_arn


def check_slot(slot: Any) -> str:
    if slot not in SLOTS:
        raise ValueError(f"slot must be one of {SLOTS}, got {slot!r}")
    return slot


def validate_model(version: Any, artifact_uri: Any, sha256: Any) -> None:
    required_text("version", version)
    if not isinstance(artifact_uri, str) or not _URI_RE.match(artifact_uri):
        raise ValueError(
            f"artifact_uri must be a URI the container can fetch (e.g. s3://bucket/key), got {artifact_uri!r}; "
            "a path on this machine is not reachable from ECS"
        )
    if not isinstance(sha256, str) or not _SHA256_RE.match(sha256):
        raise ValueError(f"sha256 must be 64 lowercase hex characters, got {sha256!r}")
