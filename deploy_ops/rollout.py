"""The rollout controller: a registered model version from staging to 100% of production traffic,
gated on live measurements at every stage and rolled back automatically when a gate trips.

Stages (:func:`plan_stages`)::

    pre_deploy_checks  version exists and is staging, artifact verifies (sha256), system healthy
                       (the production version is served by a ready, healthy slot that holds
                       the default route), a deployment is not already running, traffic replay data
                       is usable for every instrument
    deploy             the version starts in the candidate slot (waits for /ready)
    smoke_test         /health, /ready (right version and sha256) and a known-answer /predict:
                       the slot's probabilities must equal the registry bundle's in-process ones
    canary             the canary instruments (BTCUSDT, ETHUSDT) are routed to the candidate
    pct_25, pct_50     25% / 50% of the instruments (canaries first, then the configured order)
    pct_100            every instrument, the default route included
    finalize           registry production alias moves (with a reason), the old live slot stops

**Slot roles.** ``blue`` and ``green`` are two physical slots; the *roles* live and candidate
alternate between them. The live slot is the ready slot serving the registry's production
version (the one the default route ``*`` points at); the candidate is the other one. A rollout
deploys into the candidate, and after finalize the candidate *is* the live slot: nothing is
restarted or renamed, so the next rollout goes to the slot that was just retired. In the gate
vocabulary of the issue, "blue" is the live role and "green" the candidate role.

**Bootstrap.** With no production version there is nothing to compare against and nothing to
roll back to. The first version is deployed to ``blue``, smoke-tested, then one ``bootstrap``
stage routes every instrument to it and gates on health, error rate and p99 latency (the Sharpe
gate is recorded as not applicable); if the gates pass it is promoted, otherwise the slot is
stopped and the version marked failed.

**Traffic and gates.** During every traffic stage the controller replays recent feature rows
from a caller-supplied *traffic source* (``instrument -> (features, bars)``) through the routing
table (the same :class:`~deploy_ops.client.RoutedClient` paper trading uses) to whichever slot
serves each instrument, paced at ``requests_per_second``. Canary instruments routed to the
candidate are also sent to the live slot in *shadow*, so both prediction series cover the same
bars; each goes through the backtest engine with fees and slippage and the Sharpe ratios are
compared. A stage fails on any failed health check of the candidate (process dead, ``/health`` or
``/ready`` failing), a client-side error rate above ``max_error_rate``, a client-side p99 above
``max_p99_latency_ms``, or a candidate Sharpe more than ``max_sharpe_drop`` below the live one
(floor ``live - drop * |live|``). Server-side numbers from each slot's ``/metrics`` are recorded
beside the client-side ones.

**Automatic rollback.** Routing back to the live slot (weights too, on ECS), candidate stopped,
the version marked ``failed`` in the registry with the reason, a ``critical`` event in the state
store, the deployment row closed as ``rolled_back``; the report keeps every stage's readings.

**Interrupted rollouts.** Each running deployment has a lease row (owner host and pid, a
heartbeat written by a background thread, the live and candidate slots). A controller that
starts while a deployment row is still ``running`` and its owner is gone (pid dead on this host,
or no heartbeat for ``lease_timeout_seconds``) recovers it: routing back to the live slot, the
half-deployed slot stopped, the row closed ``failed``, a critical ``rollout_interrupted`` event.
If the owner died after promoting in the registry during finalize, recovery completes the
finalize instead. The interrupted version stays in staging: it was never judged.

No Dagster imports: the Dagster asset, the CLI and the tests drive the same controller.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np
import pandas as pd
import requests
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from deploy_ops.backtest import run_portfolio, signals_to_positions
from deploy_ops.client import RoutedClient, ServingClient, ServingError
from deploy_ops.metrics import sharpe_ratio
from deploy_ops.modeling import ModelBundle
from deploy_ops.procs import pid_running
from deploy_ops.registry import PRODUCTION, STAGING, ModelRegistry, ModelVersion, RegistryError
from deploy_ops.state import (
    DEFAULT_ROUTE,
    SLOTS,
    DeploymentInProgressError,
    DeploymentStateStore,
    StateError,
    utcnow,
)

#: A traffic source: instrument -> (feature rows, bars). Features are a DataFrame with named
#: columns (selected per model version) or a 2-D array already in the models' feature order;
#: bars need ts, open and close, one row per feature row.
TrafficSource = Callable[[str], "tuple[pd.DataFrame | np.ndarray, pd.DataFrame]"]
#: Progress callback: (stage name, None) when a stage starts, (stage name, report) when it ends.
ProgressCallback = Callable[[str, "StageReport | None"], None]

SUCCEEDED, ROLLED_BACK, REFUSED = "succeeded", "rolled_back", "refused"
logger = logging.getLogger(__name__)
MINUTES_PER_YEAR = 365 * 24 * 60


def other_slot(slot: str) -> str:
    """The other physical slot."""
    if slot not in SLOTS:
        raise StateError(f"unknown slot {slot!r}; slots are {SLOTS}")
    return "green" if slot == "blue" else "blue"


class RolloutError(RuntimeError):
    """A rollout could not run or could not be cleaned up; the message says what is left to do."""


class RolloutPreempted(RolloutError):
    """Another actor (an emergency rollback) closed this rollout's deployment row while it ran."""


class RetireError(RolloutError):
    """The new version was promoted and serves all traffic, but the old slot could not be stopped."""


# --------------------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class RolloutPolicy:
    """Instruments, stage lengths, gate thresholds and traffic shape of a rollout."""

    instruments: tuple[str, ...]
    canary_instruments: tuple[str, ...]
    stage_seconds: float = 2.0
    percentages: tuple[int, ...] = (25, 50, 100)
    max_error_rate: float = 0.01
    max_p99_latency_ms: float = 200.0
    max_sharpe_drop: float = 0.20
    fee_bps: float = 4.0
    slippage_bps: float = 2.0
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
            raise ValueError(f"instruments are listed twice: {sorted(i for i in set(instruments) if instruments.count(i) > 1)}")
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


# -------------------------------------------------------------------------------------- reports


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
            self.error_samples.append(message[:300])

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

    def markdown(self) -> str:
        """One row per stage with the gate readings: for Dagster metadata and the CLI."""
        header = (
            "| stage | result | candidate instruments | weight % | requests (cand/live) | errors (cand/live) "
            "| error rate | p99 ms | health | Sharpe live | Sharpe cand | drop | note |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
        )
        lines = []
        for s in self.stages:
            cand = s.traffic.get("candidate", {})
            live = s.traffic.get("live", {})
            health = s.health_checks.get("candidate", {})
            health_text = f"{health.get('ok', 0)}/{health.get('checks', 0)} ok" if health else "-"
            lines.append(
                "| {stage} | {result} | {instr} | {weight} | {rc}/{rl} | {ec}/{el} | {er} | {p99} | {health} "
                "| {sl} | {sc} | {drop} | {note} |".format(
                    stage=s.stage,
                    result="pass" if s.passed else "**FAIL**",
                    instr=", ".join(s.candidate_instruments) or "-",
                    weight="-" if s.weight_percent is None else s.weight_percent,
                    rc=cand.get("requests", "-"), rl=live.get("requests", "-"),
                    ec=cand.get("errors", "-"), el=live.get("errors", "-"),
                    er=_fmt(cand.get("error_rate"), "{:.2%}"),
                    p99=_fmt(cand.get("p99_ms"), "{:.1f}"),
                    health=health_text,
                    sl=_fmt(s.sharpe.get("live"), "{:.3f}"),
                    sc=_fmt(s.sharpe.get("candidate"), "{:.3f}"),
                    drop=_fmt(s.sharpe.get("relative_drop"), "{:.1%}"),
                    note=(s.reason or "").replace("|", "/").replace("\n", " ")[:160],
                )
            )
        title = (
            f"**Rollout of version {self.version}: {self.outcome}** ({self.mode}; "
            f"live slot {self.live_slot or '-'}, candidate slot {self.candidate_slot or '-'})\n\n"
        )
        tail = f"\n\nReason: {self.reason}" if self.reason else ""
        return title + header + "\n".join(lines) + tail


def _fmt(value: Any, pattern: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return pattern.format(value)


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


# ----------------------------------------------------------------------------------- backends


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

    def start(self, slot: str, mv: ModelVersion, *, env: Mapping[str, str] | None = None, force: bool = False) -> str:
        """Serve ``mv`` in ``slot``, wait until it is ready, record it in the state store; return its URL.

        Replacing a slot that still receives traffic is refused unless ``force``."""

    def stop(self, slot: str, *, force: bool = False) -> None:
        """Stop ``slot`` (refused while traffic reaches it unless ``force``)."""

    def check(self, slot: str, expected_version: str | None) -> SlotCheck:
        """Process/service alive, ``/health`` and ``/ready`` answering, serving the expected version."""

    def set_weights(self, weights: Mapping[str, int]) -> Mapping[str, int] | None:
        """Apply a per-request traffic split ``{"blue": p, "green": 100 - p}``."""


def _http_ready_check(slot: str, url: str | None, expected_version: str | None, token: str | None) -> SlotCheck:
    if not url:
        return SlotCheck(slot, False, "no url recorded")
    with ServingClient(url, token=token, connect_timeout=1.0, read_timeout=2.0) as client:
        try:
            client.health()
            ready = client.ready()
        except ServingError as exc:
            return SlotCheck(slot, False, str(exc)[:300])
    if expected_version is not None and str(ready.get("model_version")) != str(expected_version):
        return SlotCheck(slot, False, f"/ready reports version {ready.get('model_version')}, expected {expected_version}")
    return SlotCheck(slot, True, "alive, /health and /ready ok")


class LocalBackend:
    """Slots as local processes through :class:`~deploy_ops.local_deployer.LocalDeployer`."""

    kind = "local"

    def __init__(self, deployer: Any, registry: ModelRegistry):
        self.deployer = deployer
        self.registry = registry
        # The deployer hands its slots their token and instruments; the backend's clients follow it.
        self.token = deployer.token
        self.instruments = deployer.instruments
        self.model_dir = Path(deployer.workdir) / "models"

    def model_path(self, mv: ModelVersion) -> Path:
        """A local file holding the version's artifact (the registry's own file when it is local)."""
        local = Path(mv.artifact_uri)
        if "://" not in mv.artifact_uri and local.is_file():
            return local
        # Remote artifacts (S3) are fetched once and cached by checksum; the serving process
        # verifies the sha256 again at load.
        path = self.model_dir / f"{mv.sha256}.pt"
        if not path.is_file():
            data = self.registry.artifacts.get(mv.artifact_uri, mv.sha256)
            self.model_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return path

    def start(self, slot: str, mv: ModelVersion, *, env: Mapping[str, str] | None = None, force: bool = False) -> str:
        info = self.deployer.start_slot(slot, self.model_path(mv), mv.sha256, str(mv.version), env=env, force=force)
        return info.url

    def stop(self, slot: str, *, force: bool = False) -> None:
        self.deployer.stop_slot(slot, force=force)

    def check(self, slot: str, expected_version: str | None) -> SlotCheck:
        health = self.deployer.slot_health(slot)
        if not health.healthy:
            return SlotCheck(slot, False, health.detail)
        info = self.deployer.state.get_slot(slot)
        return _http_ready_check(slot, info.url if info else None, expected_version, self.token)

    def set_weights(self, weights: Mapping[str, int]) -> None:
        return None


class EcsBackend:
    """Slots as ECS services behind an ALB through :class:`~deploy_ops.ecs_deployer.EcsDeployer`.

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
        from deploy_ops.ecs_deployer import DeploymentError

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
        return _http_ready_check(slot, self.endpoints[slot], expected_version, self.token)

    def set_weights(self, weights: Mapping[str, int]) -> Mapping[str, int]:
        return self.deployer.set_traffic_weights(int(weights["blue"]), int(weights["green"]))


def weights_for(candidate: str, candidate_percent: int) -> dict[str, int]:
    """The ALB split giving ``candidate`` that share of requests."""
    return {candidate: int(candidate_percent), other_slot(candidate): 100 - int(candidate_percent)}


# ------------------------------------------------------------------------------------- metrics


def parse_serving_metrics(text: str, endpoint: str = "/predict") -> dict[str, Any]:
    """Request counts by status and the latency histogram of one endpoint from ``/metrics``."""
    by_status: dict[str, float] = {}
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("endpoint") != endpoint:
                continue
            if sample.name == "autotrader_serving_requests_total":
                status = sample.labels.get("status", "?")
                by_status[status] = by_status.get(status, 0.0) + float(sample.value)
            elif sample.name == "autotrader_serving_request_duration_seconds_bucket":
                le = float(sample.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + float(sample.value)
    return {"by_status": by_status, "buckets": buckets}


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus' ``histogram_quantile`` on cumulative ``{le: count}`` buckets (seconds)."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return prev_bound  # the highest finite bound is the best answer there is
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


def server_delta(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> dict[str, Any]:
    """Requests, 5xx answers and p99 a slot served between two scrapes of its ``/metrics``."""
    if after is None:
        return {"available": False}
    before = before or {"by_status": {}, "buckets": {}}

    def diff(a: Mapping, b: Mapping) -> dict:
        out = {k: a.get(k, 0.0) - b.get(k, 0.0) for k in a}
        # A restarted process resets its counters: then everything after is new.
        return dict(a) if any(v < 0 for v in out.values()) else out

    statuses = diff(after["by_status"], before["by_status"])
    buckets = diff(after["buckets"], before["buckets"])
    requests_ = sum(statuses.values())
    errors = sum(v for k, v in statuses.items() if k.startswith("5"))
    p99 = histogram_quantile(0.99, buckets)
    return {
        "available": True,
        "requests": int(requests_),
        "errors_5xx": int(errors),
        "error_rate": errors / requests_ if requests_ else None,
        "p99_ms": p99 * 1000.0 if p99 is not None else None,
        "by_status": {k: int(v) for k, v in sorted(statuses.items()) if v},
    }


# ------------------------------------------------------------------------------------- Sharpe


def periods_per_year(ts: pd.Series | pd.DatetimeIndex) -> int:
    """Bars per year implied by the median bar spacing (24/7 markets)."""
    index = pd.DatetimeIndex(ts)
    if len(index) < 2:
        return MINUTES_PER_YEAR
    step = float(np.median(np.diff(index.asi8))) / 1e9
    if step <= 0:
        return MINUTES_PER_YEAR
    return max(1, int(round(365 * 24 * 3600 / step)))


def backtest_sharpe(
    probabilities: Mapping[str, np.ndarray], bars: Mapping[str, pd.DataFrame], *, fee_bps: float, slippage_bps: float
) -> tuple[float | None, dict[str, Any]]:
    """Annualised per-bar Sharpe of trading ``probabilities`` on ``bars`` through the backtest engine.

    Per-bar rather than daily returns: a rollout stage replays minutes or hours of bars, far
    too few days for a daily Sharpe."""
    targets = {i: signals_to_positions(np.asarray(p, dtype=np.float64)) for i, p in probabilities.items()}
    result = run_portfolio({i: bars[i] for i in targets}, targets, fee_bps=fee_bps, slippage_bps=slippage_bps)
    equity = result.equity
    previous = equity.shift(1)
    previous.iloc[0] = result.initial_equity
    returns = equity / previous - 1.0
    ppy = periods_per_year(equity.index)
    ratio = sharpe_ratio(returns, periods_per_year=ppy)
    detail = {
        "total_return": float(equity.iloc[-1] / result.initial_equity - 1.0),
        "n_bars": int(len(equity)),
        "n_fills": int(len(result.fills)),
        "periods_per_year": ppy,
        "reason": ratio.reason,
    }
    return ratio.value, detail


def sharpe_gate(live: float | None, candidate: float | None, max_drop: float) -> GateReading:
    """Fail when the candidate's Sharpe is more than ``max_drop`` below the live one.

    The floor is ``live - max_drop * |live|`` so the rule keeps its meaning when the live Sharpe
    is negative. A Sharpe of None (no trades or no dispersion: the model earned nothing) counts
    as 0 for the comparison; two Nones compare equal."""
    if live is None and candidate is None:
        return GateReading("sharpe", True, None, None, "neither model's returns vary over these bars (no trades)")
    live_v = 0.0 if live is None else float(live)
    cand_v = 0.0 if candidate is None else float(candidate)
    floor = live_v - max_drop * abs(live_v)
    drop = (live_v - cand_v) / abs(live_v) if live_v != 0 else None
    passed = cand_v >= floor
    detail = (
        f"candidate Sharpe {cand_v:.3f} vs live {live_v:.3f} (floor {floor:.3f}"
        + (f", drop {drop:.1%}" if drop is not None else "")
        + f", max drop {max_drop:.0%})"
    )
    return GateReading("sharpe", passed, cand_v, floor, detail)


# --------------------------------------------------------------------------------- replay data


@dataclass
class Replay:
    """One instrument's recent feature rows and bars, warm-up rows (NaN features) dropped."""

    instrument: str
    features: pd.DataFrame | np.ndarray
    bars: pd.DataFrame

    def __len__(self) -> int:
        return len(self.bars)

    def rows_for(self, feature_names: Sequence[str]) -> np.ndarray:
        """The feature matrix in this model's feature order."""
        if isinstance(self.features, pd.DataFrame):
            missing = [n for n in feature_names if n not in self.features.columns]
            if missing:
                raise ValueError(f"traffic for {self.instrument} lacks the model's features {missing}")
            return self.features[list(feature_names)].to_numpy(dtype=np.float64)
        if self.features.shape[1] != len(feature_names):
            raise ValueError(
                f"traffic for {self.instrument} has {self.features.shape[1]} feature columns; "
                f"the model expects {len(feature_names)} ({list(feature_names)})"
            )
        return np.asarray(self.features, dtype=np.float64)


def load_replay(source: TrafficSource, instrument: str, min_rows: int = 2) -> Replay:
    """Call the traffic source and validate what it returned (clear errors, nothing guessed)."""
    got = source(instrument)
    if not isinstance(got, tuple) or len(got) != 2:
        raise ValueError(f"traffic source must return (features, bars) for {instrument}, got {type(got).__name__}")
    features, bars = got
    if not isinstance(bars, pd.DataFrame):
        raise ValueError(f"traffic source: bars for {instrument} must be a DataFrame, got {type(bars).__name__}")
    missing = [c for c in ("ts", "open", "close") if c not in bars.columns]
    if missing:
        raise ValueError(f"traffic source: bars for {instrument} lack column(s) {missing}")
    if isinstance(features, pd.DataFrame):
        values = features.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    else:
        values = np.asarray(features, dtype=np.float64)
        if values.ndim != 2:
            raise ValueError(f"traffic source: features for {instrument} must be 2-D, got shape {values.shape}")
    if len(values) != len(bars):
        raise ValueError(f"traffic source: {len(values)} feature rows but {len(bars)} bars for {instrument}")
    usable = np.isfinite(values).all(axis=1)
    if isinstance(features, pd.DataFrame):
        features = features.loc[usable].reset_index(drop=True)
    else:
        features = values[usable]
    bars = bars.loc[usable].reset_index(drop=True)
    if len(bars) < min_rows:
        raise ValueError(
            f"traffic source: only {len(bars)} usable rows (finite features) for {instrument}; need {min_rows}"
        )
    return Replay(instrument, features, bars)


# ------------------------------------------------------------------------------------- leases

_lease_metadata = sa.MetaData()
leases_table = sa.Table(
    "rollout_leases",
    _lease_metadata,
    sa.Column("deployment_id", sa.Integer, primary_key=True),
    sa.Column("owner_host", sa.String(255), nullable=False),
    sa.Column("owner_pid", sa.Integer, nullable=False),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column("version", sa.String(128), nullable=False),
    sa.Column("live_slot", sa.String(16), nullable=True),
    sa.Column("candidate_slot", sa.String(16), nullable=False),
    sa.Column("previous_version", sa.String(128), nullable=True),
)


@dataclass(frozen=True)
class Lease:
    """Who runs a deployment, their last heartbeat, and the slots it involves."""

    deployment_id: int
    owner_host: str
    owner_pid: int
    heartbeat_at: dt.datetime
    mode: str
    version: str
    live_slot: str | None
    candidate_slot: str
    previous_version: str | None

    @property
    def owner(self) -> str:
        return f"{self.owner_host}:{self.owner_pid}"


class LeaseStore:
    """Rollout leases in the state store's database (a table of their own)."""

    def __init__(self, state: DeploymentStateStore):
        self.engine = state.engine
        _lease_metadata.create_all(self.engine, checkfirst=True)

    def create(self, deployment_id: int, *, mode: str, version: str, live_slot: str | None,
               candidate_slot: str, previous_version: str | None) -> Lease:
        values = dict(
            deployment_id=deployment_id, owner_host=socket.gethostname(), owner_pid=os.getpid(),
            heartbeat_at=utcnow(), mode=mode, version=version, live_slot=live_slot,
            candidate_slot=candidate_slot, previous_version=previous_version,
        )
        with self.engine.begin() as conn:
            conn.execute(sa.insert(leases_table).values(**values))
        return Lease(**values)

    def heartbeat(self, deployment_id: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(leases_table).where(leases_table.c.deployment_id == deployment_id).values(heartbeat_at=utcnow())
            )

    def get(self, deployment_id: int) -> Lease | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(leases_table).where(leases_table.c.deployment_id == deployment_id)).one_or_none()
        if row is None:
            return None
        at = row.heartbeat_at if row.heartbeat_at.tzinfo else row.heartbeat_at.replace(tzinfo=dt.timezone.utc)
        return Lease(row.deployment_id, row.owner_host, row.owner_pid, at, row.mode, row.version,
                     row.live_slot, row.candidate_slot, row.previous_version)



def lease_is_alive(lease: Lease | None, started_at: dt.datetime, timeout: float) -> bool:
    """Whether a running deployment's owner is still there to finish it."""
    now = utcnow()
    if lease is None:
        # The row is written a moment before its lease; give a live starter that moment.
        return (now - started_at).total_seconds() < 5.0
    if (now - lease.heartbeat_at).total_seconds() > timeout:
        return False
    if lease.owner_host == socket.gethostname():
        return pid_running(lease.owner_pid)
    return True


class _Heartbeat:
    """Keeps a lease fresh from a background thread and notices preemption."""

    def __init__(self, leases: LeaseStore, state: DeploymentStateStore, deployment_id: int, interval: float):
        self.leases, self.state, self.deployment_id, self.interval = leases, state, deployment_id, interval
        self.preempted: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rollout-heartbeat-{deployment_id}", daemon=True)

    def __enter__(self) -> "_Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.leases.heartbeat(self.deployment_id)
                current = self.state.get_deployment(self.deployment_id)
                if not current.is_running:
                    self.preempted = f"deployment {self.deployment_id} was closed as {current.status}: {current.reason}"
            except Exception as exc:  # one missed beat is harmless; a lease left stale this long is logged
                logger.warning("rollout %s: heartbeat failed: %s: %s", self.deployment_id, type(exc).__name__, exc)


# --------------------------------------------------------------------------------- controller


class _GateTripped(Exception):
    def __init__(self, stage: str, reason: str):
        super().__init__(reason)
        self.stage = stage
        self.reason = reason


def find_live_slot(state: DeploymentStateStore, production: ModelVersion | None) -> str | None:
    """The ready slot serving the production version, preferring the one the default route names."""
    if production is None:
        return None
    slots = state.slots()
    serving = [s for s in SLOTS if s in slots and slots[s].version == str(production.version) and slots[s].is_ready]
    default = state.routing_table().get(DEFAULT_ROUTE)
    if default in serving:
        return default
    return serving[0] if serving else None


class RolloutController:
    """Drives a :class:`SlotBackend` through the staged rollout (see the module docstring)."""

    def __init__(
        self,
        registry: ModelRegistry,
        state: DeploymentStateStore,
        backend: SlotBackend,
        policy: RolloutPolicy,
        *,
        actor: str = "rollout-controller",
        progress: ProgressCallback | None = None,
    ):
        self.registry = registry
        self.state = state
        self.backend = backend
        self.policy = policy
        self.actor = actor
        self.token = backend.token
        self.progress = progress
        self.leases = LeaseStore(state)
        self._bundles: dict[int, ModelBundle] = {}

    # -- public -------------------------------------------------------------------------------
    def live_slot(self) -> str | None:
        """The slot currently serving the production version, if any."""
        return find_live_slot(self.state, self.registry.get_production())

    def recover_interrupted(self, *, force: bool = False) -> RecoveryReport | None:
        """Recover a deployment left ``running`` by a controller that is gone (see :func:`recover_interrupted`)."""
        return recover_interrupted(self.registry, self.state, self.backend,
                                   lease_timeout_seconds=self.policy.lease_timeout_seconds, force=force)

    def run(self, version: int, traffic: TrafficSource, *, candidate_env: Mapping[str, str] | None = None) -> RolloutReport:
        """Roll ``version`` out; returns the report (outcome succeeded, rolled_back or refused).

        ``candidate_env`` adds environment to the candidate's process (drills: fault injection).
        Unexpected errors roll traffic back to the live slot, close the deployment as failed,
        record a critical event and are re-raised."""
        self.recover_interrupted()
        production = self.registry.get_production()
        live = find_live_slot(self.state, production)
        bootstrap = production is None
        candidate = "blue" if bootstrap else other_slot(live) if live else "green"
        report = RolloutReport(
            version=int(version), outcome=REFUSED, mode="bootstrap" if bootstrap else "blue_green",
            deployment_id=None, live_slot=live, candidate_slot=candidate,
            previous_version=production.version if production else None, started_at=utcnow().isoformat(),
        )
        dep = self.state.start_deployment(str(version), slot=candidate, stage="pre_deploy_checks")
        report.deployment_id = dep.id
        self.leases.create(dep.id, mode=report.mode, version=str(version), live_slot=live, candidate_slot=candidate,
                           previous_version=str(production.version) if production else None)
        self.state.record_event(
            "rollout_started", f"rollout {dep.id} of version {version} to slot {candidate} ({report.mode})",
            details={"deployment_id": dep.id, "version": int(version), "candidate_slot": candidate,
                     "live_slot": live, "actor": self.actor},
        )
        with _Heartbeat(self.leases, self.state, dep.id, interval=min(2.0, self.policy.lease_timeout_seconds / 4)) as beat:
            self._beat = beat
            try:
                replays = self._pre_deploy(report, int(version), production, live, traffic)
                if replays is None:
                    return self._refuse(report)
                mv = self.registry.get(int(version))
                self._deploy(report, mv, candidate, candidate_env)
                self._smoke(report, mv, candidate, replays)
                for plan in plan_stages(self.policy, bootstrap=bootstrap):
                    self._traffic_stage(report, plan, mv, production, live, candidate, traffic)
                self._finalize(report, mv, live, candidate)
                return report
            except _GateTripped as trip:
                self._rollback(report, trip.stage, trip.reason, mark_failed=True)
                return report
            except (RolloutPreempted, RetireError):
                raise  # nothing to roll back: someone else owns traffic, or the new version already does
            except BaseException as exc:  # KeyboardInterrupt / run cancel included: traffic first
                reason = f"rollout aborted by {type(exc).__name__}: {exc}"
                if report.stages and not report.stages[-1].reason:
                    report.stages[-1].reason = reason
                self._rollback(report, self._stage_name(dep.id), reason, mark_failed=False, status="failed")
                raise

    # -- stages -------------------------------------------------------------------------------
    def _begin(self, report: RolloutReport, name: str) -> StageReport:
        self._check_preempted()
        stage = StageReport(stage=name, started_at=utcnow().isoformat())
        report.stages.append(stage)
        if report.deployment_id is not None:
            self.state.update_deployment(report.deployment_id, stage=name)
        if self.progress:
            self.progress(name, None)
        return stage

    def _end(self, stage: StageReport, started: float) -> None:
        stage.finished_at = utcnow().isoformat()
        stage.seconds = round(time.monotonic() - started, 3)
        stage.passed = all(g.passed for g in stage.gates)
        failing = [g for g in stage.gates if not g.passed]
        if failing and not stage.reason:
            stage.reason = "; ".join(f"{g.gate}: {g.detail}" for g in failing)
        if self.progress:
            self.progress(stage.stage, stage)
        if not stage.passed:
            raise _GateTripped(stage.stage, f"stage {stage.stage} failed: {stage.reason}")
        self.state.record_event(
            "rollout_stage_passed", f"stage {stage.stage} passed",
            details={"stage": stage.stage, "gates": [g.to_dict() for g in stage.gates]},
        )

    def _pre_deploy(self, report: RolloutReport, version: int, production: ModelVersion | None,
                    live: str | None, traffic: TrafficSource) -> dict[str, Replay] | None:
        started = time.monotonic()
        stage = self._begin(report, "pre_deploy_checks")
        gates = stage.gates
        mv = None
        artifact_ok = False
        try:
            mv = self.registry.get(version)
            gates.append(GateReading("version_exists", True, None, None, f"version {version} ({mv.name})"))
        except RegistryError as exc:
            gates.append(GateReading("version_exists", False, None, None, str(exc)))
        if mv is not None:
            gates.append(GateReading(
                "stage_is_staging", mv.stage == STAGING, None, None,
                f"version {version} is {mv.stage}" + ("" if mv.stage == STAGING else "; only staging versions are rolled out"),
            ))
            try:
                bundle = self._bundle(version)
                artifact_ok = True
                gates.append(GateReading("artifact_verifies", True, None, None,
                                         f"sha256 {mv.sha256[:12]}... matches; {bundle.n_features} features"))
            except Exception as exc:  # a missing, damaged or unloadable artifact all refuse the rollout
                gates.append(GateReading("artifact_verifies", False, None, None, f"{type(exc).__name__}: {exc}"))
        gates.append(self._system_health(production, live))
        replays: dict[str, Replay] = {}
        try:
            for instrument in self.policy.instruments:
                replays[instrument] = load_replay(traffic, instrument, self.policy.min_replay_rows)
            if artifact_ok:
                names = self._bundle(version).feature_names
                for replay in replays.values():
                    replay.rows_for(names)
            gates.append(GateReading("traffic_available", True, float(sum(map(len, replays.values()))), None,
                                     f"{len(replays)} instruments, {sum(map(len, replays.values()))} replay rows"))
        except Exception as exc:  # the source is caller code: any failure refuses, with its message
            gates.append(GateReading("traffic_available", False, None, None, f"{type(exc).__name__}: {exc}"))
        stage.finished_at = utcnow().isoformat()
        stage.seconds = round(time.monotonic() - started, 3)
        stage.passed = all(g.passed for g in gates)
        if not stage.passed:
            stage.reason = "; ".join(f"{g.gate}: {g.detail}" for g in gates if not g.passed)
        if self.progress:
            self.progress(stage.stage, stage)
        return replays if stage.passed else None

    def _system_health(self, production: ModelVersion | None, live: str | None) -> GateReading:
        try:
            return self._system_health_reading(production, live)
        except Exception as exc:  # an unreachable deployer or store refuses the rollout, it does not crash it
            return GateReading("system_healthy", False, None, None, f"health probe failed: {type(exc).__name__}: {exc}")

    def _system_health_reading(self, production: ModelVersion | None, live: str | None) -> GateReading:
        if production is None:
            slots = self.state.slots()
            busy = [s for s in SLOTS if s in slots and slots[s].is_ready and self.backend.check(s, None).ok]
            if busy:
                return GateReading("system_healthy", False, None, None,
                                   f"no production version, yet slot(s) {busy} are serving; stop them or promote first")
            return GateReading("system_healthy", True, None, None, "no production version: bootstrap into blue")
        if live is None:
            return GateReading(
                "system_healthy", False, None, None,
                f"production version {production.version} is not served by any ready slot; restore it first "
                f"(autotrader deploy rollback --to {production.version} --reason ...)",
            )
        check = self.backend.check(live, str(production.version))
        if not check.ok:
            return GateReading("system_healthy", False, None, None, f"live slot {live} is unhealthy: {check.detail}")
        default = self.state.routing_table().get(DEFAULT_ROUTE)
        if default != live:
            return GateReading("system_healthy", False, None, None,
                               f"the default route points at {default}, not at the live slot {live}")
        return GateReading("system_healthy", True, None, None,
                           f"live slot {live} serves production version {production.version}")

    def _deploy(self, report: RolloutReport, mv: ModelVersion, candidate: str, env: Mapping[str, str] | None) -> None:
        started = time.monotonic()
        stage = self._begin(report, "deploy")
        try:
            url = self.backend.start(candidate, mv, env=env)
        except Exception as exc:  # a slot that cannot load the model is the model's failure
            from deploy_ops.ecs_deployer import DeploymentError
            from deploy_ops.local_deployer import SlotInUseError, SlotStartError

            if not isinstance(exc, (SlotStartError, DeploymentError)) or isinstance(exc, SlotInUseError):
                raise
            stage.gates.append(GateReading("slot_started", False, None, None, f"{type(exc).__name__}: {str(exc)[:500]}"))
            self._end(stage, started)
            return
        stage.gates.append(GateReading("slot_started", True, None, None, f"slot {candidate} ready at {url}"))
        self._end(stage, started)

    def _smoke(self, report: RolloutReport, mv: ModelVersion, candidate: str, replays: Mapping[str, Replay]) -> None:
        started = time.monotonic()
        stage = self._begin(report, "smoke_test")
        check = self.backend.check(candidate, str(mv.version))
        stage.gates.append(GateReading("health", check.ok, None, None, check.detail))
        info = self.state.get_slot(candidate)
        bundle = self._bundle(mv.version)
        probe = replays[self.policy.canary_instruments[0]].rows_for(bundle.feature_names)[: self.policy.batch_rows]
        expected = bundle.predict_proba(probe)
        attempts, answer, last_error = 0, None, None
        with ServingClient(info.url, token=self.token) as client:
            try:
                ready = client.ready()
                sha_ok = ready.get("sha256") == mv.sha256
                stage.gates.append(GateReading("checksum", sha_ok, None, None,
                                               f"/ready sha256 {str(ready.get('sha256'))[:12]}... "
                                               + ("matches" if sha_ok else f"!= registry {mv.sha256[:12]}...")))
            except ServingError as exc:
                stage.gates.append(GateReading("checksum", False, None, None, str(exc)[:300]))
            # A few attempts: a transient 5xx is the error-rate gate's business, not a broken model.
            while attempts < 8 and answer is None:
                attempts += 1
                try:
                    answer = client.predict(self.policy.canary_instruments[0], probe)
                except ServingError as exc:
                    last_error = str(exc)[:300]
        if answer is None:
            stage.gates.append(GateReading("known_answer", False, None, None,
                                           f"no successful /predict in {attempts} attempts: {last_error}"))
        else:
            deviation = float(np.max(np.abs(np.asarray(answer.probabilities) - expected)))
            right_version = answer.model_version == str(mv.version)
            stage.gates.append(GateReading(
                "known_answer", deviation <= 1e-5 and right_version, deviation, 1e-5,
                f"max |served - registry bundle| = {deviation:.2e} over {len(probe)} rows; "
                f"answered by version {answer.model_version}" + (f" after {attempts} attempts" if attempts > 1 else ""),
            ))
        self._end(stage, started)

    def _traffic_stage(self, report: RolloutReport, plan: StagePlan, mv: ModelVersion, production: ModelVersion | None,
                       live: str | None, candidate: str, traffic: TrafficSource) -> None:
        started = time.monotonic()
        stage = self._begin(report, plan.name)
        stage.candidate_instruments = list(plan.candidate_instruments)
        stage.weight_percent = plan.weight_percent
        replays = {i: load_replay(traffic, i, self.policy.min_replay_rows) for i in self.policy.instruments}
        cand_bundle = self._bundle(mv.version)
        live_bundle = self._bundle(production.version) if production is not None else None
        cand_rows = {i: r.rows_for(cand_bundle.feature_names) for i, r in replays.items()}
        live_rows = {i: r.rows_for(live_bundle.feature_names) for i, r in replays.items()} if live_bundle else {}

        if plan.all_traffic:
            self.state.switch_all(candidate)
        else:
            routes = {DEFAULT_ROUTE: live}
            routes.update({i: candidate if i in plan.candidate_instruments else live for i in self.policy.instruments})
            self.state.set_routes(routes, replace=True)
        applied = self.backend.set_weights(weights_for(candidate, plan.weight_percent))
        if applied is not None:
            stage.server["alb_weights"] = dict(applied)

        slots = {"candidate": candidate, **({"live": live} if live else {})}
        scrape_before = {role: self._scrape(slot) for role, slot in slots.items()}
        stats = {role: SlotTraffic() for role in slots}
        health = {role: {"checks": 0, "ok": 0, "failures": []} for role in slots}
        compare = plan.compare_sharpe and live is not None
        canary = [i for i in self.policy.canary_instruments if i in plan.candidate_instruments]
        cand_p = {i: np.full(len(replays[i]), np.nan) for i in canary}
        live_p = {i: np.full(len(replays[i]), np.nan) for i in canary} if compare else {}
        cursors = {i: 0 for i in self.policy.instruments}
        versions = {"candidate": str(mv.version), "live": str(production.version) if production else None}

        router = RoutedClient(self.state, token=self.token, cache_seconds=0.5)
        router.refresh()
        clients: dict[str, ServingClient] = {}
        session = requests.Session()

        def client_for(url: str) -> ServingClient:
            if url not in clients:
                clients[url] = ServingClient(url, token=self.token, session=session, read_timeout=5.0)
            return clients[url]

        slot_url = {role: (self.state.get_slot(slot).url if self.state.get_slot(slot) else None) for role, slot in slots.items()}
        role_of = {slot: role for role, slot in slots.items()}
        deadline = started + self.policy.stage_seconds
        hard_deadline = started + self.policy.stage_timeout
        interval = 1.0 / self.policy.requests_per_second
        next_health = 0.0
        failure: str | None = None
        turn = 0
        instruments = list(self.policy.instruments)
        try:
            while True:
                now = time.monotonic()
                if now >= next_health:
                    next_health = now + self.policy.health_interval_seconds
                    self._check_preempted()
                    for role, slot in slots.items():
                        check = self.backend.check(slot, versions[role])
                        health[role]["checks"] += 1
                        health[role]["ok"] += int(check.ok)
                        if not check.ok and len(health[role]["failures"]) < 5:
                            health[role]["failures"].append(check.detail[:300])
                    if health["candidate"]["ok"] < health["candidate"]["checks"]:
                        failure = "health"
                        break
                cs = stats["candidate"]
                if cs.requests >= self.policy.min_requests:
                    # Stop early once the verdict cannot change: more errors than even 100
                    # requests would allow, or a p99 already over the limit.
                    if cs.errors > self.policy.max_error_rate * max(cs.requests, 100):
                        failure = "error rate"
                        break
                    p99 = cs.percentile(99)
                    if p99 is not None and p99 > self.policy.max_p99_latency_ms:
                        failure = "p99 latency"
                        break
                covered = all(not np.isnan(cand_p[i]).any() for i in canary) and all(
                    not np.isnan(live_p[i]).any() for i in live_p)
                if now >= deadline and cs.requests >= self.policy.min_requests and covered:
                    break
                if now >= hard_deadline:
                    break

                instrument = instruments[turn % len(instruments)]
                turn += 1
                n = len(replays[instrument])
                a = cursors[instrument]
                b = min(a + self.policy.batch_rows, n)
                cursors[instrument] = 0 if b >= n else b
                try:
                    info = router.slot_for(instrument)
                except ServingError as exc:
                    role = "candidate" if instrument in plan.candidate_instruments else "live"
                    stats.setdefault(role, SlotTraffic()).record_error(f"routing: {exc}")
                    continue
                role = role_of.get(info.slot)
                if role is None:
                    raise RolloutError(f"{instrument} is routed to slot {info.slot}, which is not part of this rollout")
                rows = (cand_rows if role == "candidate" else live_rows)[instrument][a:b]
                self._send(client_for(info.url), instrument, rows, stats[role],
                           cand_p.get(instrument) if role == "candidate" else None, a)
                if compare and role == "candidate" and instrument in live_p:
                    # Shadow: the live slot answers the same bars; callers never see its answer.
                    self._send(client_for(slot_url["live"]), instrument, live_rows[instrument][a:b], stats["live"],
                               live_p[instrument], a)
                spare = interval - (time.monotonic() - now)
                if spare > 0:
                    time.sleep(spare)
        finally:
            router.close()
            session.close()

        stage.traffic = {role: s.summary() for role, s in stats.items()}
        stage.health_checks = health
        for role, slot in slots.items():
            stage.server[role] = server_delta(scrape_before[role], self._scrape(slot))
        self._gates(stage, stats["candidate"], health["candidate"], failure, plan, compare,
                    cand_p, live_p, replays)
        if failure is not None:
            stage.reason = f"stage stopped early on {failure}: " + "; ".join(
                f"{g.gate}: {g.detail}" for g in stage.gates if not g.passed)
        self._end(stage, started)

    def _send(self, client: ServingClient, instrument: str, rows: np.ndarray, stats: SlotTraffic,
              sink: np.ndarray | None, offset: int) -> None:
        try:
            result = client.predict(instrument, rows)
        except ServingError as exc:
            stats.record_error(str(exc))
            return
        stats.record_ok(result.latency_ms, len(rows))
        if sink is not None:
            sink[offset: offset + len(rows)] = result.probabilities

    def _gates(self, stage: StageReport, cs: SlotTraffic, health: Mapping[str, Any], failure: str | None,
               plan: StagePlan, compare: bool, cand_p: Mapping[str, np.ndarray], live_p: Mapping[str, np.ndarray],
               replays: Mapping[str, Replay]) -> None:
        p = self.policy
        failed_checks = health["checks"] - health["ok"]
        stage.gates.append(GateReading(
            "health", failed_checks == 0, float(failed_checks), 0.0,
            f"{health['ok']}/{health['checks']} health checks of the candidate passed"
            + (f"; last failure: {health['failures'][-1]}" if health["failures"] else ""),
        ))
        if failure == "health":
            return  # traffic to a dead slot measures nothing more; the health gate says it all
        enough = cs.requests >= p.min_requests
        if not enough:
            stage.gates.append(GateReading(
                "traffic", False, float(cs.requests), float(p.min_requests),
                f"only {cs.requests} requests reached the candidate in {p.stage_timeout:.0f}s; need {p.min_requests}",
            ))
        rate = cs.error_rate
        stage.gates.append(GateReading(
            "error_rate", rate is not None and rate <= p.max_error_rate, rate, p.max_error_rate,
            f"{cs.errors}/{cs.requests} candidate requests failed" + (f" (e.g. {cs.error_samples[0]})" if cs.error_samples else ""),
        ))
        p99 = cs.percentile(99)
        stage.gates.append(GateReading(
            "p99_latency_ms", p99 is not None and p99 <= p.max_p99_latency_ms, p99, p.max_p99_latency_ms,
            f"client-side p99 {p99:.1f} ms over {len(cs.latencies_ms)} answered requests" if p99 is not None
            else "no answered request to measure",
        ))
        if failure is not None:
            stage.sharpe = {"evaluated": False, "reason": f"stage stopped early on {failure}"}
            return
        if not plan.compare_sharpe:
            stage.sharpe = {"applicable": False, "reason": "no production model to compare against (bootstrap)"}
            stage.gates.append(GateReading("sharpe", True, None, None, stage.sharpe["reason"]))
            return
        if not compare:
            stage.gates.append(GateReading("sharpe", False, None, None, "no live slot answered in shadow"))
            return
        both = {i: ~np.isnan(cand_p[i]) & ~np.isnan(live_p[i]) for i in cand_p}
        coverage = sum(int(m.sum()) for m in both.values()) / max(1, sum(len(m) for m in both.values()))
        if coverage < 0.5:
            stage.sharpe = {"coverage": coverage}
            stage.gates.append(GateReading("sharpe", False, None, None,
                                           f"only {coverage:.0%} of the canary bars were answered by both slots"))
            return
        bars = {i: replays[i].bars.loc[both[i]].reset_index(drop=True) for i in both}
        cand_sharpe, cand_detail = backtest_sharpe({i: cand_p[i][both[i]] for i in both}, bars,
                                                   fee_bps=p.fee_bps, slippage_bps=p.slippage_bps)
        live_sharpe, live_detail = backtest_sharpe({i: live_p[i][both[i]] for i in both}, bars,
                                                   fee_bps=p.fee_bps, slippage_bps=p.slippage_bps)
        gate = sharpe_gate(live_sharpe, cand_sharpe, p.max_sharpe_drop)
        stage.sharpe = {
            "instruments": sorted(both), "coverage": coverage, "live": live_sharpe, "candidate": cand_sharpe,
            "relative_drop": (live_sharpe - (cand_sharpe or 0.0)) / abs(live_sharpe) if live_sharpe else None,
            "floor": gate.threshold, "live_backtest": live_detail, "candidate_backtest": cand_detail,
        }
        stage.gates.append(gate)

    def _finalize(self, report: RolloutReport, mv: ModelVersion, live: str | None, candidate: str) -> None:
        started = time.monotonic()
        stage = self._begin(report, "finalize")
        passed = [s.stage for s in report.stages if s.passed and s.stage not in ("pre_deploy_checks", "finalize")]
        reason = f"rollout {report.deployment_id}: gates passed at {', '.join(passed)}"
        self.registry.promote(mv.version, PRODUCTION, actor=self.actor, reason=reason)
        stage.gates.append(GateReading("promoted", True, None, None,
                                       f"production alias moved to version {mv.version}"
                                       + (f" from {report.previous_version}" if report.previous_version else "")))
        retire_error = None
        if live is not None:
            try:
                self.backend.stop(live)
                stage.gates.append(GateReading("retired", True, None, None,
                                               f"slot {live} (version {report.previous_version}) stopped"))
            except Exception as exc:  # promoted and serving: surfaced below, never rolled back for this
                retire_error = f"{type(exc).__name__}: {exc}"
                stage.reason = f"slot {live} could not be stopped: {retire_error}"
        stage.finished_at = utcnow().isoformat()
        stage.seconds = round(time.monotonic() - started, 3)
        stage.passed = True
        report.outcome = SUCCEEDED
        report.finished_at = utcnow().isoformat()
        report.reason = reason
        self.state.finish_deployment(report.deployment_id, "succeeded", reason=reason)
        self.state.record_event(
            "rollout_succeeded", f"version {mv.version} serves 100% from slot {candidate}",
            details={"deployment_id": report.deployment_id, "version": mv.version, "slot": candidate,
                     "previous_version": report.previous_version, "stages": [s.stage for s in report.stages]},
        )
        if self.progress:
            self.progress(stage.stage, stage)
        if retire_error is not None:
            self.state.record_event(
                "slot_retire_failed", f"slot {live} still runs version {report.previous_version}: {retire_error}"[:2000],
                severity="critical", details={"slot": live, "deployment_id": report.deployment_id},
            )
            raise RetireError(f"version {mv.version} is live, but slot {live} could not be stopped: {retire_error}")

    # -- failure paths ------------------------------------------------------------------------
    def _refuse(self, report: RolloutReport) -> RolloutReport:
        stage = report.stages[-1]
        report.outcome = REFUSED
        report.reason = f"pre-deploy checks failed: {stage.reason}"
        report.finished_at = utcnow().isoformat()
        self.state.finish_deployment(report.deployment_id, "failed", reason=report.reason)
        self.state.record_event("rollout_refused", f"rollout of version {report.version} refused: {stage.reason}",
                                severity="warning",
                                details={"deployment_id": report.deployment_id, "version": report.version,
                                         "gates": [g.to_dict() for g in stage.gates]})
        return report

    def _rollback(self, report: RolloutReport, stage: str, reason: str, *, mark_failed: bool,
                  status: str = "rolled_back") -> None:
        live, candidate = report.live_slot, report.candidate_slot
        actions, problems = report.rollback_actions, []

        def step(description: str, fn: Callable[[], Any]) -> None:
            try:
                fn()
                actions.append(description)
            except Exception as exc:  # every step is attempted; the failures are raised together below
                problems.append(f"{description}: {type(exc).__name__}: {exc}")

        if live is not None:
            step(f"all routes -> {live}", lambda: self.state.switch_all(live))
            step(f"weights -> {live} 100%", lambda: self.backend.set_weights(weights_for(live, 100)))
            step(f"slot {candidate} stopped", lambda: self.backend.stop(candidate))
        else:
            step(f"slot {candidate} stopped (bootstrap: nothing to fall back to)",
                 lambda: self.backend.stop(candidate, force=True))
        if mark_failed:
            step(f"version {report.version} marked failed",
                 lambda: self.registry.mark_failed(report.version, actor=self.actor, reason=reason))
        if live is not None:
            check = self.backend.check(live, str(report.previous_version))
            if check.ok:
                actions.append(f"live slot {live} healthy")
            else:
                problems.append(f"live slot {live} unhealthy after rollback: {check.detail}")
        report.outcome = ROLLED_BACK if status == "rolled_back" else "failed"
        report.reason = reason
        report.finished_at = utcnow().isoformat()
        self.state.record_event(
            "rollout_rolled_back", f"rollout of version {report.version} rolled back at {stage}: {reason}"[:2000],
            severity="critical",
            details={"deployment_id": report.deployment_id, "version": report.version, "stage": stage,
                     "reason": reason, "live_slot": live, "candidate_slot": candidate, "actions": actions,
                     "problems": problems, "stages": [s.to_dict() for s in report.stages]},
        )
        try:
            self.state.finish_deployment(report.deployment_id, status, reason=reason[:2000])
        except StateError as exc:
            problems.append(f"closing deployment {report.deployment_id}: {exc}")
        if problems:
            raise RolloutError(f"rollback of version {report.version} incomplete: " + "; ".join(problems))

    # -- helpers ------------------------------------------------------------------------------
    def _bundle(self, version: int) -> ModelBundle:
        if version not in self._bundles:
            self._bundles[version] = self.registry.load_bundle(version)
        return self._bundles[version]

    def _scrape(self, slot: str) -> dict[str, Any] | None:
        info = self.state.get_slot(slot)
        if info is None or not info.url:
            return None
        try:
            with ServingClient(info.url, token=self.token, read_timeout=2.0) as client:
                return parse_serving_metrics(client.metrics_text())
        except ServingError:
            return None

    def _check_preempted(self) -> None:
        beat = getattr(self, "_beat", None)
        if beat is not None and beat.preempted:
            raise RolloutPreempted(beat.preempted)

    def _stage_name(self, deployment_id: int) -> str:
        try:
            return self.state.get_deployment(deployment_id).stage
        except Exception:  # reporting only: the rollback must proceed whatever the store says
            return "unknown"


def recover_interrupted(
    registry: ModelRegistry,
    state: DeploymentStateStore,
    backend: SlotBackend,
    *,
    lease_timeout_seconds: float = 60.0,
    force: bool = False,
) -> RecoveryReport | None:
    """Recover a deployment left ``running`` by a controller that is gone; None if there is none.

    Raises DeploymentInProgressError while its owner is alive (unless ``force``)."""
    dep = state.active_deployment()
    if dep is None:
        return None
    lease = LeaseStore(state).get(dep.id)
    if not force and lease_is_alive(lease, dep.started_at, lease_timeout_seconds):
        owner = lease.owner if lease else "a starting controller"
        raise DeploymentInProgressError(
            f"deployment {dep.id} of version {dep.version} is running (stage {dep.stage}, owner {owner})"
        )
    return _recover(registry, state, backend, dep, lease)


def _recover(registry: ModelRegistry, state: DeploymentStateStore, backend: SlotBackend, dep: Any,
             lease: Lease | None) -> RecoveryReport:
    production = registry.get_production()
    candidate = lease.candidate_slot if lease else dep.slot
    live = lease.live_slot if lease else find_live_slot(state, production)
    owner = lease.owner if lease else None
    actions: list[str] = []
    finished_promotion = (
        production is not None and str(production.version) == dep.version and candidate is not None
        and backend.check(candidate, dep.version).ok
    )
    if finished_promotion:
        # The owner died inside finalize after moving the production alias: finish it.
        state.switch_all(candidate)
        backend.set_weights(weights_for(candidate, 100))
        actions.append(f"all routes -> {candidate} (serves promoted version {dep.version})")
        if live is not None and live != candidate:
            backend.stop(live)
            actions.append(f"slot {live} stopped")
        outcome, status, new_live = "completed", "succeeded", candidate
    else:
        if live is not None:
            state.switch_all(live)
            backend.set_weights(weights_for(live, 100))
            actions.append(f"all routes -> {live}")
            if candidate and candidate != live:
                backend.stop(candidate)
                actions.append(f"slot {candidate} stopped")
        elif candidate:
            backend.stop(candidate, force=True)
            actions.append(f"slot {candidate} stopped (interrupted bootstrap)")
        outcome, status, new_live = "rolled_back", "failed", live
    reason = (
        f"interrupted at stage {dep.stage}: controller {owner or 'unknown'} stopped before finishing; "
        f"recovered by {socket.gethostname()}:{os.getpid()} ({'; '.join(actions) or 'nothing to undo'})"
    )
    state.finish_deployment(dep.id, status, reason=reason)
    state.record_event(
        "rollout_interrupted", f"rollout {dep.id} of version {dep.version} was interrupted at {dep.stage}; {outcome}",
        severity="critical",
        details={"deployment_id": dep.id, "version": dep.version, "stage": dep.stage, "owner": owner,
                 "outcome": outcome, "actions": actions, "live_slot": new_live},
    )
    if new_live is not None:
        check = backend.check(new_live, str(production.version) if production else None)
        if not check.ok:
            raise RolloutError(
                f"recovered rollout {dep.id}, but slot {new_live} is unhealthy ({check.detail}); "
                "run an emergency rollback"
            )
    return RecoveryReport(dep.id, dep.version, dep.stage, owner, outcome, new_live, actions)

