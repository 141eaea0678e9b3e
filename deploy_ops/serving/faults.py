"""Fault injection for drills and tests: what makes a healthy serving slot misbehave on purpose
(see :mod:`deploy_ops.serving.app`). Kept apart from the app so the deployers and the CLI can
build one without importing the HTTP stack."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

ENV_FAULT_ERROR_RATE = "AUTOTRADER_FAULT_ERROR_RATE"
ENV_FAULT_LATENCY_MS = "AUTOTRADER_FAULT_LATENCY_MS"


@dataclass(frozen=True)
class FaultConfig:
    """Deliberate misbehaviour for drills and tests; both zero in normal operation."""

    error_rate: float = 0.0
    latency_ms: float = 0.0

    def __post_init__(self) -> None:
        if not (0.0 <= self.error_rate <= 1.0) or math.isnan(self.error_rate):
            raise ValueError(f"{ENV_FAULT_ERROR_RATE} must be within [0, 1], got {self.error_rate!r}")
        if not (0.0 <= self.latency_ms <= 600_000.0) or math.isnan(self.latency_ms):
            raise ValueError(f"{ENV_FAULT_LATENCY_MS} must be within [0, 600000], got {self.latency_ms!r}")

    @property
    def active(self) -> bool:
        return self.error_rate > 0 or self.latency_ms > 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> FaultConfig:
        """Read the fault-injection settings from ``environ`` (variable name -> text, as the
        deployer hands them over); a malformed value is an error, not a silent zero."""

        def number(name: str) -> float:
            raw = (environ.get(name) or "").strip()
            if not raw:
                return 0.0
            try:
                return float(raw)
            except ValueError as exc:
                raise ValueError(f"{name}={raw!r} is not a number") from exc

        return cls(error_rate=number(ENV_FAULT_ERROR_RATE), latency_ms=number(ENV_FAULT_LATENCY_MS))
