"""The ECS slot backend the rollout controller drives (services behind an ALB)."""

from __future__ import annotations

from typing import Any, Mapping

from deploy_ops.models.registry import ModelVersion
from deploy_ops.serving.faults import FaultConfig
from deploy_ops.slots.backend import SlotCheck, http_ready_check
from deploy_ops.slots.ecs.errors import DeploymentError
from deploy_ops.slots.names import SLOTS
from deploy_ops.state import DeploymentStateStore


class EcsBackend:
    """Slots as ECS services behind an ALB through :class:`~deploy_ops.slots.ecs.deployer.EcsDeployer`.

    ``endpoints`` are the per-slot URLs the controller uses to reach each slot directly (shadow
    requests, smoke test, health): in AWS a listener rule per target group; the state store
    records them so the routing table and the RoutedClient work exactly as locally. The ALB
    weights carry the stage's share for traffic that arrives through the load balancer."""

    kind = "ecs"

    def __init__(
        self,
        deployer: Any,
        state: DeploymentStateStore,
        endpoints: Mapping[str, str],
        *,
        token: str | None = None,
        desired_count: int = 1,
    ):
        missing = [s for s in SLOTS if not endpoints.get(s)]
        if missing:
            raise ValueError(f"ECS backend needs an endpoint URL for every slot; missing {missing}")
        self.deployer = deployer
        self.state = state
        self.endpoints = {s: endpoints[s].rstrip("/") for s in SLOTS}
        self.token = token
        self.instruments = None  # the task definition decides what an ECS slot serves
        self.desired_count = desired_count

    def start(self, slot: str, mv: ModelVersion, *, faults: FaultConfig | None = None, force: bool = False) -> str:
        if faults is not None and faults.active:
            raise ValueError("fault injection is local-only: an ECS slot runs what its task definition says")
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
        self.state.record_event(
            "slot_started",
            f"ECS slot {slot} serves {mv.version}",
            details={"slot": slot, "version": str(mv.version), "url": self.endpoints[slot]},
        )
        return self.endpoints[slot]

    def stop(self, slot: str, *, force: bool = False) -> None:
        info = self.state.get_slot(slot)
        self.deployer.stop_slot(slot, force=force)
        if info is not None:
            self.state.set_slot_status(slot, "stopped")
        self.state.record_event(
            "slot_stopped",
            f"ECS slot {slot} scaled to zero",
            details={"slot": slot, "version": info.version if info else None},
        )

    def check(self, slot: str, expected_version: str | None) -> SlotCheck:
        info = self.deployer.slot_health(slot)
        if not info.serving:
            return SlotCheck(slot, False, f"service not serving: {info.reason}; targets {info.target_states}")
        if expected_version is not None and info.version != str(expected_version):
            return SlotCheck(slot, False, f"service runs version {info.version}, expected {expected_version}")
        return http_ready_check(slot, self.endpoints[slot], expected_version, self.token)

    def set_weights(self, weights: Mapping[str, int]) -> Mapping[str, int]:
        return self.deployer.set_traffic_weights(int(weights["blue"]), int(weights["green"]))
