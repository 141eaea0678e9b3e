"""One configuration path: every gate and breaker limit has its one default in
``settings.Thresholds``, and one function each turns settings into the rollout policy and the
paper account's parameters; deploy_ops keeps no default of its own."""

from __future__ import annotations

import dataclasses

import pytest

from autotrader_assets.defs.deployment.resources import deployment_resource
from autotrader_assets.defs.deployment.stack import rollout_policy_from
from autotrader_assets.defs.trading.paper import PaperParams
from autotrader_assets.defs.trading.params import paper_params_from
from autotrader_assets.settings import Thresholds, load_settings
from deploy_ops.rollout.policy import RolloutPolicy
from deploy_ops.trading.breaker import find_trip


@pytest.fixture
def settings(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOTRADER_HOME", str(tmp_path))
    for name in ("AUTOTRADER_ENV", "AUTOTRADER_REGISTRY_URL", "AUTOTRADER_INSTRUMENTS", "AUTOTRADER_FEE_BPS"):
        monkeypatch.delenv(name, raising=False)
    unusual = Thresholds(
        max_error_rate=0.07,
        max_p99_latency_ms=33.0,
        max_sharpe_drop=0.4,
        breaker_daily_loss=0.02,
        breaker_drawdown=0.09,
    )
    return dataclasses.replace(load_settings(), thresholds=unusual, fee_bps=7.5, slippage_bps=0.5, stage_seconds=9.0)


def test_the_rollout_policy_takes_every_gate_from_the_settings(settings):
    policy = rollout_policy_from(settings)
    assert (policy.max_error_rate, policy.max_p99_latency_ms, policy.max_sharpe_drop) == (0.07, 33.0, 0.4)
    assert (policy.fee_bps, policy.slippage_bps, policy.stage_seconds) == (7.5, 0.5, 9.0)
    assert rollout_policy_from(settings, stage_seconds=1.5).stage_seconds == 1.5
    # the Dagster resource carries the same policy
    opened = deployment_resource(settings)
    assert (opened.max_error_rate, opened.max_p99_latency_ms, opened.max_sharpe_drop) == (0.07, 33.0, 0.4)


def test_the_paper_account_takes_the_breaker_limits_from_the_settings(settings):
    params = paper_params_from(settings)
    assert (params.daily_loss_limit, params.drawdown_limit) == (0.02, 0.09)
    assert (params.fee_bps, params.slippage_bps) == (7.5, 0.5)
    assert paper_params_from(settings, fee_bps=1.0).fee_bps == 1.0


@pytest.mark.parametrize(
    "build",
    [
        lambda: RolloutPolicy(instruments=("BTCUSDT",), canary_instruments=("BTCUSDT",), stage_seconds=1.0),
        lambda: PaperParams(fee_bps=4.0, slippage_bps=2.0),
        lambda: find_trip(None, 100.0, 100.0),
    ],
)
def test_no_second_default_outside_the_settings(build):
    with pytest.raises(TypeError, match="missing"):
        build()
