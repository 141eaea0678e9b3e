"""The deployment stack -- state store, slot backend, rollout policy -- built from settings, and
the warehouse traffic source a rollout replays. Plain Python (no Dagster imports): the Dagster
resource and the ``autotrader deploy`` CLI build the same objects through these functions.

The deployment state lives beside the registry (same database URL). The slot backend follows
the profile: local processes under ``<AUTOTRADER_HOME>/slots`` in ``local``, ECS services
behind the ALB in ``production``, configured by the JSON document in ``AUTOTRADER_ECS_CONFIG``
(inline, or ``@/path/to/file.json``; read by ``settings.parse_ecs_config``, the root Terraform
module's ``ecs_config`` output name for name)::

    {"deployer": {<EcsDeployerConfig fields>}, "endpoints": {"blue": "https://...", "green": "https://..."}}
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import duckdb
import pandas as pd

from autotrader_assets.settings import ECS_CONFIG_ENV, Settings, SettingsError, parse_ecs_config
from deploy_ops.models.registry import ModelRegistry, open_registry
from deploy_ops.rollout.controller import ProgressCallback, RolloutController
from deploy_ops.rollout.policy import RolloutPolicy
from deploy_ops.slots.backend import SlotBackend
from deploy_ops.slots.ecs.backend import EcsBackend
from deploy_ops.slots.local import LocalBackend
from deploy_ops.state import DeploymentStateStore

BACKENDS = ("local", "ecs")
FEATURE_TABLE = "bar_features"
_BAR_COLUMNS = ("instrument", "ts", "date", "open", "high", "low", "close", "volume")


@dataclass
class DeploymentStack:
    """Everything a rollout or rollback needs, opened together."""

    registry: ModelRegistry
    state: DeploymentStateStore
    backend: SlotBackend
    policy: RolloutPolicy

    def controller(self, *, actor: str, progress: ProgressCallback | None = None) -> RolloutController:
        return RolloutController(self.registry, self.state, self.backend, self.policy, actor=actor, progress=progress)


def rollout_policy_from(settings: Settings, *, stage_seconds: float | None = None) -> RolloutPolicy:
    """The rollout policy of these settings: the one place settings become gates. The error
    rate, p99 latency and Sharpe-drop limits come from ``settings.thresholds``, the costs and the
    stage length from the settings; ``stage_seconds`` overrides the stage length (demos, tests)."""
    t = settings.thresholds
    return RolloutPolicy(
        instruments=settings.instruments,
        canary_instruments=settings.canary_instruments,
        stage_seconds=settings.stage_seconds if stage_seconds is None else stage_seconds,
        max_error_rate=t.max_error_rate,
        max_p99_latency_ms=t.max_p99_latency_ms,
        max_sharpe_drop=t.max_sharpe_drop,
        fee_bps=settings.fee_bps,
        slippage_bps=settings.slippage_bps,
        min_sharpe_returns=t.min_sharpe_returns,
    )


def backend_for_env(env: str) -> str:
    """local profile -> local processes; production -> ECS."""
    return "ecs" if env == "production" else "local"


def open_backend(
    kind: str,
    state: DeploymentStateStore,
    registry: ModelRegistry,
    *,
    workdir: str | os.PathLike[str],
    ecs_config: str = "",
    serving_token: str | None = None,
    require_token: bool = False,
    instruments: Sequence[str] | None = None,
    targets_file: str | os.PathLike[str] | None = None,
) -> SlotBackend:
    """The slot backend. Local slots get the serving token (required in production: the deployer
    refuses to start a slot without one) and the instruments they answer for; ECS slots get the
    token from the task definition's secret, and the backend's clients send ``serving_token``."""
    if kind == "local":
        from deploy_ops.slots.local import LocalDeployer

        deployer = LocalDeployer(
            state,
            workdir,
            token=serving_token,
            require_token=require_token,
            instruments=instruments,
            targets_file=targets_file,
        )
        return LocalBackend(deployer, registry)
    if kind == "ecs":
        from deploy_ops.slots.ecs.deployer import EcsDeployer

        document = parse_ecs_config(ecs_config)
        return EcsBackend(EcsDeployer(document.deployer_config()), state, document.endpoints, token=serving_token)
    raise SettingsError(f"deployment backend must be one of {BACKENDS}, got {kind!r}")


def open_stack(
    registry: ModelRegistry,
    *,
    state_url: str,
    backend: str,
    workdir: str | os.PathLike[str],
    policy: RolloutPolicy,
    ecs_config: str = "",
    serving_token: str | None = None,
    require_token: bool = False,
    targets_file: str | os.PathLike[str] | None = None,
) -> DeploymentStack:
    state = DeploymentStateStore(state_url)
    backend_ = open_backend(
        backend,
        state,
        registry,
        workdir=workdir,
        ecs_config=ecs_config,
        serving_token=serving_token,
        require_token=require_token,
        instruments=policy.instruments,
        targets_file=targets_file,
    )
    return DeploymentStack(registry, state, backend_, policy)


def stack_from_settings(settings: Settings, *, stage_seconds: float | None = None) -> DeploymentStack:
    registry = open_registry(
        settings.registry_url,
        settings.artifacts_uri,
        aws_region=settings.aws_region,
        s3_endpoint_url=settings.s3_endpoint_url or None,
    )
    kind = backend_for_env(settings.env)
    return open_stack(
        registry,
        state_url=settings.registry_url,
        backend=kind,
        workdir=settings.home / "slots",
        policy=rollout_policy_from(settings, stage_seconds=stage_seconds),
        ecs_config=settings.ecs_config if kind == "ecs" else "",
        serving_token=settings.serving_token,
        require_token=settings.is_production,
        targets_file=settings.prometheus_targets_file,
    )


def status_stack_from_settings(settings: Settings) -> DeploymentStack:
    """The stack for read-only status views: like :func:`stack_from_settings`, but a production
    profile without ``AUTOTRADER_ECS_CONFIG`` still opens (registry, state, routing, events) with
    no backend, so an operator can read the shared state from anywhere; slots are then not probed."""
    if backend_for_env(settings.env) == "ecs" and not settings.ecs_config.strip():
        registry = open_registry(
            settings.registry_url,
            settings.artifacts_uri,
            aws_region=settings.aws_region,
            s3_endpoint_url=settings.s3_endpoint_url or None,
        )
        return DeploymentStack(
            registry,
            DeploymentStateStore(settings.registry_url),
            None,  # type: ignore[arg-type]
            rollout_policy_from(settings),
        )
    return stack_from_settings(settings)


def with_stage_seconds(stack: DeploymentStack, seconds: float | None) -> DeploymentStack:
    return stack if seconds is None else replace(stack, policy=replace(stack.policy, stage_seconds=float(seconds)))


class WarehouseTrafficSource:
    """The newest ``rows`` rows of ``bar_features`` per instrument, read once (one read-only
    connection) on first use, so a rollout never holds the warehouse open between stages."""

    def __init__(self, path: str | os.PathLike[str], instruments: Sequence[str], rows: int = 240):
        if rows < 2:
            raise ValueError(f"rows must be >= 2, got {rows}")
        self.path = str(path)
        self.instruments = list(instruments)
        self.rows = int(rows)
        self._frames: dict[str, pd.DataFrame] | None = None

    def _load(self) -> dict[str, pd.DataFrame]:
        if not Path(self.path).is_file():
            raise FileNotFoundError(f"warehouse {self.path} does not exist; materialize the feature assets first")
        con = duckdb.connect(self.path, read_only=True)
        try:
            tables = {r[0] for r in con.execute("select table_name from information_schema.tables").fetchall()}
            if FEATURE_TABLE not in tables:
                raise LookupError(
                    f"warehouse {self.path} has no {FEATURE_TABLE} table; materialize the feature assets first"
                )
            frame = con.execute(
                f"select * exclude (rn) from (select *, row_number() over (partition by instrument order by ts desc) rn "
                f"from {FEATURE_TABLE} where list_contains(?::varchar[], instrument)) where rn <= ? order by instrument, ts",
                [self.instruments, self.rows],
            ).df()
        finally:
            con.close()
        return {i: g.reset_index(drop=True) for i, g in frame.groupby("instrument", sort=False)}

    def __call__(self, instrument: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        if self._frames is None:
            self._frames = self._load()
        frame = self._frames.get(instrument)
        if frame is None or frame.empty:
            raise LookupError(f"{FEATURE_TABLE} has no rows for {instrument}")
        bars = frame[[c for c in _BAR_COLUMNS if c in frame.columns and c != "instrument"]].copy()
        bars["ts"] = pd.to_datetime(bars["ts"], utc=True)
        features = frame[[c for c in frame.columns if c not in _BAR_COLUMNS]]
        return features, bars


def resolve_version(registry: ModelRegistry, version: int | None) -> int:
    """The version to roll out: the one given, else the newest staging version."""
    if version is not None:
        return int(version)
    newest = registry.get_by_stage("staging")
    if newest is None:
        raise LookupError("no staging version to deploy; register one (materialize registered_model) or name one")
    return newest.version


def summarize_slots(stack: DeploymentStack) -> list[dict[str, Any]]:
    """Each recorded slot with a live health probe, for status views."""
    out = []
    for slot, info in sorted(stack.state.slots().items()):
        if info.status == "ready" and stack.backend is None:
            healthy, detail = None, f"not probed ({ECS_CONFIG_ENV} is not set)"
        elif info.status == "ready":
            check = stack.backend.check(slot, info.version)
            healthy, detail = check.ok, check.detail
        else:
            healthy, detail = False, info.status
        out.append(
            {
                "slot": slot,
                "status": info.status,
                "version": info.version,
                "url": info.url,
                "pid": info.pid,
                "healthy": healthy,
                "detail": detail,
                "updated_at": info.updated_at.isoformat() if info.updated_at else None,
            }
        )
    return out


def event_rows(events: Sequence[Any]) -> list[Mapping[str, Any]]:
    return [
        {"id": e.id, "at": e.at.isoformat(), "kind": e.kind, "severity": e.severity, "message": e.message}
        for e in events
    ]
