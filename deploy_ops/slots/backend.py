"""What the rollout controller and the rollback procedures need from a slot backend (local
processes or ECS behind an ALB), and the HTTP readiness probe both backends use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol

from deploy_ops.models.registry import ModelVersion
from deploy_ops.serving.client import ServingClient, ServingError
from deploy_ops.serving.faults import FaultConfig
from deploy_ops.text import DETAIL, truncate


@dataclass(frozen=True)
class SlotCheck:
    """One health probe of a slot."""

    slot: str
    ok: bool
    detail: str


class SlotBackend(Protocol):
    """What the controller needs from a deployer (local processes or ECS behind an ALB).

    The per-instrument routing table in the state store is the traffic control every client
    follows; ``set_weights`` mirrors a stage's share onto infrastructure that splits traffic
    by request (the ALB), and is a no-op where the routing table is the only control."""

    kind: str
    #: The bearer token the slots require (None: they run without one); every client of the
    #: slots (smoke test, health, replay, shadow) sends it.
    token: str | None
    #: The instruments the slots answer for (None: any symbol).
    instruments: tuple[str, ...] | None

    def start(self, slot: str, mv: ModelVersion, *, faults: FaultConfig | None = None, force: bool = False) -> str:
        """Serve ``mv`` in ``slot``, wait until it is ready, record it in the state store; return its URL.

        ``faults`` (drills) makes the slot misbehave on purpose where the backend supports it.
        Replacing a slot that still receives traffic is refused unless ``force``."""

    def stop(self, slot: str, *, force: bool = False) -> None:
        """Stop ``slot`` (refused while traffic reaches it unless ``force``)."""

    def check(self, slot: str, expected_version: str | None) -> SlotCheck:
        """Process/service alive, ``/health`` and ``/ready`` answering, serving the expected version."""

    def set_weights(self, weights: Mapping[str, int]) -> Mapping[str, int] | None:
        """Apply a per-request traffic split ``{"blue": p, "green": 100 - p}``."""


def http_ready_check(slot: str, url: str | None, expected_version: str | None, token: str | None) -> SlotCheck:
    if not url:
        return SlotCheck(slot, False, "no url recorded")
    with ServingClient(url, token=token, connect_timeout=1.0, read_timeout=2.0) as client:
        try:
            client.health()
            ready = client.ready()
        except ServingError as exc:
            return SlotCheck(slot, False, truncate(exc, DETAIL))
    if expected_version is not None and str(ready.get("model_version")) != str(expected_version):
        return SlotCheck(
            slot, False, f"/ready reports version {ready.get('model_version')}, expected {expected_version}"
        )
    return SlotCheck(slot, True, "alive, /health and /ready ok")
