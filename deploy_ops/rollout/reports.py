"""What a rollout reports: gate readings, per-slot traffic, stage and rollout reports (data only;
the markdown view is ``autotrader_assets/defs/deployment/report.py``, beside what shows it).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from deploy_ops.text import DETAIL, truncate

SUCCEEDED, ROLLED_BACK, REFUSED = "succeeded", "rolled_back", "refused"


@dataclass
class GateReading:
    """One gate's measured value against its threshold."""

    gate: str
    passed: bool
    value: float | None
    threshold: float | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SlotTraffic:
    """Client-side measurements of one slot over one stage (routed plus shadow requests)."""

    requests: int = 0
    errors: int = 0
    rows: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)

    def record_ok(self, latency_ms: float, rows: int) -> None:
        self.requests += 1
        self.rows += rows
        self.latencies_ms.append(latency_ms)

    def record_error(self, message: str) -> None:
        self.requests += 1
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(truncate(message, DETAIL))

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    def percentile(self, q: float) -> float | None:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else None

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "rows": self.rows,
            "error_rate": self.error_rate,
            "p50_ms": self.percentile(50),
            "p99_ms": self.percentile(99),
            "max_ms": max(self.latencies_ms) if self.latencies_ms else None,
            "error_samples": list(self.error_samples),
        }


@dataclass
class StageReport:
    """What happened in one stage: routing, traffic per slot, health, Sharpe and the gates."""

    stage: str
    started_at: str
    finished_at: str | None = None
    passed: bool = False
    reason: str | None = None
    candidate_instruments: list[str] = field(default_factory=list)
    weight_percent: int | None = None
    seconds: float | None = None
    traffic: dict[str, dict[str, Any]] = field(default_factory=dict)
    server: dict[str, dict[str, Any]] = field(default_factory=dict)
    health_checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    sharpe: dict[str, Any] = field(default_factory=dict)
    gates: list[GateReading] = field(default_factory=list)

    def gate(self, name: str) -> GateReading | None:
        return next((g for g in self.gates if g.gate == name), None)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["gates"] = [g.to_dict() for g in self.gates]
        return out


@dataclass
class RolloutReport:
    """The structured outcome of one rollout, stage by stage."""

    version: int
    outcome: str
    mode: str
    deployment_id: int | None
    live_slot: str | None
    candidate_slot: str | None
    previous_version: int | None
    started_at: str
    finished_at: str | None = None
    reason: str | None = None
    stages: list[StageReport] = field(default_factory=list)
    rollback_actions: list[str] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return self.outcome == SUCCEEDED

    @property
    def failed_stage(self) -> str | None:
        return next((s.stage for s in self.stages if not s.passed), None)

    def stage(self, name: str) -> StageReport | None:
        return next((s for s in self.stages if s.stage == name), None)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["stages"] = [s.to_dict() for s in self.stages]
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, default=str)


@dataclass
class RecoveryReport:
    """What recovering an interrupted rollout did."""

    deployment_id: int
    version: str
    stage: str
    owner: str | None
    outcome: str  # "rolled_back" (traffic returned to the live slot) or "completed" (finalize finished)
    live_slot: str | None
    actions: list[str]
