"""Runtime operations on the slots: start, stop, health, and the ALB's traffic weights."""

from __future__ import annotations

import logging
from typing import Any, Mapping

from deploy_ops.slots.ecs.config import check_slot, validate_model
from deploy_ops.slots.ecs.errors import DeploymentError
from deploy_ops.slots.ecs.provisioning import EcsProvisioner
from deploy_ops.slots.ecs.status import EcsSlotStatus, assess_service_stability
from deploy_ops.slots.names import SLOTS, other_slot

logger = logging.getLogger(__name__)

#: ALB weighted forwarding accepts integer weights in this range per target group.
MAX_TARGET_GROUP_WEIGHT = 999


class EcsDeployer(EcsProvisioner):
    """Blue/green serving slots on ECS behind an ALB (see the package docstring)."""

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
        check_slot(slot)
        if isinstance(desired_count, bool) or not isinstance(desired_count, int) or desired_count < 1:
            raise ValueError(
                f"desired_count must be an integer >= 1 (use stop_slot to scale to zero), got {desired_count!r}"
            )
        validate_model(version, artifact_uri, sha256)
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
        check_slot(slot)
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
        check_slot(slot)
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
        check_slot(slot)
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
        check_slot(to_slot)
        return self.set_traffic_weights(
            100 if to_slot == "blue" else 0,
            100 if to_slot == "green" else 0,
        )

    def finalize(self, new_slot: str) -> dict[str, EcsSlotStatus]:
        """Make ``new_slot`` the only live slot: all traffic to it, the other slot scaled to zero."""
        check_slot(new_slot)
        self.switch_all(new_slot)
        old = self.stop_slot(other_slot(new_slot))
        return {new_slot: self.slot_health(new_slot), old.slot: old}
