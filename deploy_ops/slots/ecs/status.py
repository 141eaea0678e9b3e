"""What ECS and the ALB report about a slot, and the verdict on a service deployment."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping


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
