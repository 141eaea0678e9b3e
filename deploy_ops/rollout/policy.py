"""The rollout policy (instruments, gate thresholds, traffic shape) and the stage plan it gives."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class RolloutPolicy:
    """Instruments, stage lengths, gate thresholds and traffic shape of a rollout.

    The gate thresholds, costs and stage length have no defaults here: their one default is in
    ``autotrader_assets.settings`` (``Thresholds``), and
    ``autotrader_assets.defs.deployment.stack.rollout_policy_from(settings)`` builds the policy."""

    instruments: tuple[str, ...]
    canary_instruments: tuple[str, ...]
    stage_seconds: float
    max_error_rate: float
    max_p99_latency_ms: float
    max_sharpe_drop: float
    fee_bps: float
    slippage_bps: float
    #: Fewer paired bar returns than this and the stage's Sharpe comparison means nothing: the
    #: Sharpe gate fails the stage ("insufficient data"), see ``measurement.sharpe_gate``.
    min_sharpe_returns: int
    percentages: tuple[int, ...] = (25, 50, 100)
    #: Candidate requests a stage needs before its error rate and p99 mean anything; a stage
    #: runs past ``stage_seconds`` (up to ``stage_timeout_seconds``) to collect them.
    min_requests: int = 10
    requests_per_second: float = 100.0
    batch_rows: int = 32
    #: ALB share of the candidate during the canary (ECS weights are per request, not per instrument).
    canary_weight_percent: int = 10
    health_interval_seconds: float = 0.25
    stage_timeout_seconds: float | None = None
    lease_timeout_seconds: float = 60.0
    min_replay_rows: int = 20

    def __post_init__(self) -> None:
        instruments = tuple(self.instruments)
        canary = tuple(self.canary_instruments)
        if not instruments:
            raise ValueError("a rollout needs at least one instrument")
        if len(set(instruments)) != len(instruments):
            raise ValueError(
                f"instruments are listed twice: {sorted(i for i in set(instruments) if instruments.count(i) > 1)}"
            )
        if not canary:
            raise ValueError("a rollout needs at least one canary instrument")
        missing = [c for c in canary if c not in instruments]
        if missing:
            raise ValueError(f"canary instruments {missing} are not among the instruments {list(instruments)}")
        object.__setattr__(self, "instruments", instruments)
        object.__setattr__(self, "canary_instruments", canary)
        pct = tuple(int(p) for p in self.percentages)
        if not pct or pct[-1] != 100 or any(not 0 < p <= 100 for p in pct) or list(pct) != sorted(set(pct)):
            raise ValueError(f"percentages must rise strictly within (0, 100] and end at 100, got {self.percentages}")
        object.__setattr__(self, "percentages", pct)
        for name in ("stage_seconds", "requests_per_second", "health_interval_seconds", "lease_timeout_seconds"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number, got {getattr(self, name)!r}")
        for name in ("max_error_rate", "max_sharpe_drop"):
            value = float(getattr(self, name))
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be within [0, 1], got {value}")
        if not self.max_p99_latency_ms > 0:
            raise ValueError(f"max_p99_latency_ms must be positive, got {self.max_p99_latency_ms}")
        if self.fee_bps < 0 or self.slippage_bps < 0:
            raise ValueError("fee_bps and slippage_bps must be >= 0")
        if (
            isinstance(self.min_sharpe_returns, bool)
            or not isinstance(self.min_sharpe_returns, int)
            or self.min_sharpe_returns < 2
        ):
            raise ValueError(f"min_sharpe_returns must be an integer >= 2, got {self.min_sharpe_returns!r}")
        if self.min_requests < 1 or self.batch_rows < 1 or self.min_replay_rows < 2:
            raise ValueError("min_requests and batch_rows must be >= 1, min_replay_rows >= 2")
        if not 0 < self.canary_weight_percent < 100:
            raise ValueError(f"canary_weight_percent must be within (0, 100), got {self.canary_weight_percent}")

    @property
    def stage_timeout(self) -> float:
        """The longest a stage may run while it waits for enough samples."""
        if self.stage_timeout_seconds is not None:
            return max(float(self.stage_timeout_seconds), self.stage_seconds)
        return max(3 * self.stage_seconds, self.stage_seconds + 20.0)


@dataclass(frozen=True)
class StagePlan:
    """Which instruments the candidate serves during a traffic stage, and its ALB weight."""

    name: str
    candidate_instruments: tuple[str, ...]
    weight_percent: int
    all_traffic: bool
    compare_sharpe: bool = True


def plan_stages(policy: RolloutPolicy, *, bootstrap: bool = False) -> list[StagePlan]:
    """The traffic stages of a rollout: canary, then each percentage of the instruments.

    A percentage stage serves ``ceil(p% * n)`` instruments from the candidate, never fewer than
    the canaries, taking the canaries first and then the instruments in their configured order,
    so each stage's set contains the previous one. Bootstrap is one stage with all traffic and
    no Sharpe comparison (there is no live model)."""
    if bootstrap:
        return [StagePlan("bootstrap", policy.instruments, 100, True, compare_sharpe=False)]
    ordered = list(policy.canary_instruments) + [i for i in policy.instruments if i not in policy.canary_instruments]
    stages = [StagePlan("canary", policy.canary_instruments, policy.canary_weight_percent, False)]
    for p in policy.percentages:
        count = max(len(policy.canary_instruments), math.ceil(p * len(ordered) / 100))
        stages.append(StagePlan(f"pct_{p}", tuple(ordered[:count]), p, p == 100))
    return stages
