"""The Dagster resource for the deployment stack (state store, slot backend, rollout policy)."""

from typing import Optional

import dagster as dg
from pydantic import Field

from autotrader_assets.defs.deployment.stack import (
    DeploymentStack,
    backend_for_env,
    build_policy,
    ecs_config_from_environment,
    open_stack,
)
from autotrader_assets.settings import Settings, get_settings
from deploy_ops.models.registry import ModelRegistry


class DeploymentStackResource(dg.ConfigurableResource):
    """Where the deployment state lives, which deployer runs the serving slots, and the rollout
    gates. Tests point it at a temporary state database and slot directory."""

    state_url: str = Field(description="Deployment-state database (beside the registry: the same URL).")
    backend: str = Field(default="local", description="local (processes on this machine) or ecs (ECS + ALB).")
    workdir: str = Field(description="Slot logs and fetched model files of the local backend.")
    instruments: list[str]
    canary_instruments: list[str]
    stage_seconds: float = 2.0
    max_error_rate: float = 0.01
    max_p99_latency_ms: float = 200.0
    max_sharpe_drop: float = 0.20
    fee_bps: float = 4.0
    slippage_bps: float = 2.0
    requests_per_second: float = 100.0
    ecs_config_json: str = Field(default="", description="ECS document (see deployment/stack.py); not secret.")
    serving_token: Optional[str] = Field(default=None, description="Bearer token of the serving slots (secret).")
    require_serving_token: bool = Field(
        default=False, description="Refuse to start a slot without a serving token (the production profile)."
    )

    def open(self, registry: ModelRegistry, stage_seconds: Optional[float] = None) -> DeploymentStack:
        policy = build_policy(
            instruments=self.instruments, canary_instruments=self.canary_instruments,
            stage_seconds=self.stage_seconds if stage_seconds is None else stage_seconds,
            max_error_rate=self.max_error_rate, max_p99_latency_ms=self.max_p99_latency_ms,
            max_sharpe_drop=self.max_sharpe_drop, fee_bps=self.fee_bps, slippage_bps=self.slippage_bps,
            requests_per_second=self.requests_per_second,
        )
        return open_stack(registry, state_url=self.state_url, backend=self.backend, workdir=self.workdir,
                          policy=policy, ecs_config=self.ecs_config_json, serving_token=self.serving_token or None,
                          require_token=self.require_serving_token)


def deployment_resource(settings: Optional[Settings] = None) -> DeploymentStackResource:
    """The resource for the given settings (key ``deployment`` in the Definitions)."""
    s = settings or get_settings()
    t = s.thresholds
    backend = backend_for_env(s.env)
    return DeploymentStackResource(
        state_url=s.registry_url, backend=backend, workdir=str(s.home / "slots"),
        instruments=list(s.instruments), canary_instruments=list(s.canary_instruments),
        stage_seconds=s.stage_seconds, max_error_rate=t.max_error_rate, max_p99_latency_ms=t.max_p99_latency_ms,
        max_sharpe_drop=t.max_sharpe_drop, fee_bps=s.fee_bps, slippage_bps=s.slippage_bps,
        ecs_config_json=ecs_config_from_environment() if backend == "ecs" else "",
        # An EnvVar, not the value: Dagster then shows the variable's name, never the secret.
        serving_token=dg.EnvVar("AUTOTRADER_SERVING_TOKEN") if s.serving_token else None,
        require_serving_token=s.is_production,
    )
