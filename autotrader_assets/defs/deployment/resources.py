"""The Dagster resource for the deployment stack (state store, slot backend, rollout policy)."""

import dagster as dg
from pydantic import Field

from autotrader_assets.defs.deployment.stack import (
    DeploymentStack,
    backend_for_env,
    open_stack,
    rollout_policy_from,
)
from autotrader_assets.settings import Settings, Thresholds, get_settings
from deploy_ops.models.registry import ModelRegistry
from deploy_ops.rollout.policy import RolloutPolicy

#: The gate limits a resource built by hand (tests) gets when it names none: Thresholds' own.
_DEFAULT_THRESHOLDS = Thresholds()


class DeploymentStackResource(dg.ConfigurableResource):
    """Where the deployment state lives, which deployer runs the serving slots, and the rollout
    gates. Tests point it at a temporary state database and slot directory."""

    state_url: str = Field(description="Deployment-state database (beside the registry: the same URL).")
    backend: str = Field(default="local", description="local (processes on this machine) or ecs (ECS + ALB).")
    workdir: str = Field(description="Slot logs and fetched model files of the local backend.")
    instruments: list[str]
    canary_instruments: list[str]
    stage_seconds: float = Field(description="Seconds each traffic stage watches live traffic.")
    fee_bps: float = Field(description="Trading costs of the Sharpe gate's backtest.")
    slippage_bps: float
    max_error_rate: float = _DEFAULT_THRESHOLDS.max_error_rate
    max_p99_latency_ms: float = _DEFAULT_THRESHOLDS.max_p99_latency_ms
    max_sharpe_drop: float = _DEFAULT_THRESHOLDS.max_sharpe_drop
    min_sharpe_returns: int = _DEFAULT_THRESHOLDS.min_sharpe_returns
    requests_per_second: float | None = Field(default=None, description="Replay pace; default: the policy's.")
    ecs_config_json: str = Field(default="", description="ECS document (see deployment/stack.py); not secret.")
    serving_token: str | None = Field(default=None, description="Bearer token of the serving slots (secret).")
    require_serving_token: bool = Field(
        default=False, description="Refuse to start a slot without a serving token (the production profile)."
    )
    prometheus_targets_file: str = Field(
        default="", description="file_sd targets file the local deployer rewrites on slot changes; empty: none."
    )

    def open(self, registry: ModelRegistry, stage_seconds: float | None = None) -> DeploymentStack:
        pace = {} if self.requests_per_second is None else {"requests_per_second": self.requests_per_second}
        policy = RolloutPolicy(
            instruments=tuple(self.instruments),
            canary_instruments=tuple(self.canary_instruments),
            stage_seconds=self.stage_seconds if stage_seconds is None else stage_seconds,
            max_error_rate=self.max_error_rate,
            max_p99_latency_ms=self.max_p99_latency_ms,
            max_sharpe_drop=self.max_sharpe_drop,
            fee_bps=self.fee_bps,
            slippage_bps=self.slippage_bps,
            min_sharpe_returns=self.min_sharpe_returns,
            **pace,
        )
        return open_stack(
            registry,
            state_url=self.state_url,
            backend=self.backend,
            workdir=self.workdir,
            policy=policy,
            ecs_config=self.ecs_config_json,
            serving_token=self.serving_token or None,
            require_token=self.require_serving_token,
            targets_file=self.prometheus_targets_file or None,
        )


def deployment_resource(settings: Settings | None = None) -> DeploymentStackResource:
    """The resource for the given settings (key ``deployment`` in the Definitions)."""
    s = settings or get_settings()
    policy = rollout_policy_from(s)
    backend = backend_for_env(s.env)
    return DeploymentStackResource(
        state_url=s.registry_url,
        backend=backend,
        workdir=str(s.home / "slots"),
        instruments=list(policy.instruments),
        canary_instruments=list(policy.canary_instruments),
        stage_seconds=policy.stage_seconds,
        max_error_rate=policy.max_error_rate,
        max_p99_latency_ms=policy.max_p99_latency_ms,
        max_sharpe_drop=policy.max_sharpe_drop,
        fee_bps=policy.fee_bps,
        slippage_bps=policy.slippage_bps,
        ecs_config_json=s.ecs_config if backend == "ecs" else "",
        prometheus_targets_file=str(s.prometheus_targets_file or ""),
        # An EnvVar, not the value: Dagster then shows the variable's name, never the secret.
        serving_token=dg.EnvVar("AUTOTRADER_SERVING_TOKEN") if s.serving_token else None,
        require_serving_token=s.is_production,
    )
