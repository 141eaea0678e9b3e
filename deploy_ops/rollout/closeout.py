"""The close-out of a deployment that did not go as planned, one procedure for every path:
the rollout controller's rollback, the recovery of an interrupted rollout, and the failures of
the manual, emergency and restore rollbacks.

In this order, each step attempted even when an earlier one failed (traffic first: a stop that
fails must not leave routes on a dying slot): every route to ``route_to`` and the ALB weights
with it, ``stop`` stopped, ``mark_failed`` marked failed in the registry, ``check`` probed; then
the deployment closed with ``status`` and one critical event recorded, both saying what was done
and what failed. The caller decides what to raise from :attr:`CloseOut.problems`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from deploy_ops.models.registry import ModelRegistry
from deploy_ops.slots.backend import SlotBackend
from deploy_ops.slots.roles import weights_for
from deploy_ops.state import DeploymentStateStore, StateError
from deploy_ops.text import MESSAGE, escape_controls, truncate


@dataclass
class CloseOut:
    """What the close-out did (``actions``) and which of its steps failed (``problems``)."""

    actions: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def step(self, description: str, fn: Callable[[], Any]) -> None:
        try:
            fn()
            self.actions.append(description)
        except Exception as exc:  # every step is attempted; the caller raises the problems together
            self.problems.append(f"{description}: {type(exc).__name__}: {exc}")

    def summary(self) -> str:
        """The actions and problems in one line, for messages."""
        return "; ".join(self.actions + [f"FAILED {p}" for p in self.problems]) or "nothing to undo"


def close_out(
    state: DeploymentStateStore,
    backend: SlotBackend,
    deployment_id: int | None,
    *,
    status: str,
    reason: str,
    event: str,
    message: str,
    details: Mapping[str, Any],
    route_to: str | None = None,
    stop: str | None = None,
    force_stop: bool = False,
    registry: ModelRegistry | None = None,
    mark_failed: int | None = None,
    actor: str = "",
    check: tuple[str, str | None] | None = None,
) -> CloseOut:
    """Undo and record, as the module docstring says; returns what was done and what failed.

    ``reason`` closes the deployment (with the failed steps appended); ``message`` heads the
    event (with every step appended); ``details`` go into the event with ``actions`` and
    ``problems``. ``check`` is ``(slot, expected_version)``: the slot that must serve afterwards.
    """
    if mark_failed is not None and registry is None:
        raise ValueError("mark_failed needs the registry that holds the version")
    result = CloseOut()
    if route_to is not None:
        result.step(f"all routes -> {route_to}", lambda: state.switch_all(route_to))
        result.step(f"weights -> {route_to} 100%", lambda: backend.set_weights(weights_for(route_to, 100)))
    if stop is not None:
        result.step(f"slot {stop} stopped", lambda: backend.stop(stop, force=force_stop))
    if mark_failed is not None:
        result.step(
            f"version {mark_failed} marked failed",
            # The reason may quote an exception or a log tail: the registry refuses
            # control characters, and a failed rollout must still be marked failed.
            lambda: registry.mark_failed(mark_failed, actor=actor, reason=escape_controls(reason)),
        )
    if check is not None:
        slot, version = check
        probe = backend.check(slot, version)
        if probe.ok:
            result.actions.append(f"slot {slot} healthy")
        else:
            result.problems.append(f"slot {slot} unhealthy: {probe.detail}")
    if deployment_id is not None:
        closing = reason + (f"; close-out failed: {'; '.join(result.problems)}" if result.problems else "")
        try:
            state.finish_deployment(deployment_id, status, reason=truncate(closing, MESSAGE))
        except StateError as exc:
            result.problems.append(f"closing deployment {deployment_id}: {exc}")
    state.record_event(
        event,
        truncate(f"{message} [{result.summary()}]", MESSAGE),
        severity="critical",
        details={**details, "actions": result.actions, "problems": result.problems},
    )
    return result
