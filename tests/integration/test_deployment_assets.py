"""The Dagster side of deployment: ``production_deployment`` materialized against a temporary
registry, state store and DuckDB warehouse with real slot processes; the rollback jobs; the
deployment-failure sensor evaluated on a really failed run."""

from __future__ import annotations

import dataclasses

import dagster as dg
import pytest

from autotrader_assets.defs.deployment import (
    DeploymentStackResource,
    deployment_assets,
    deployment_failure_sensor,
    deployment_jobs,
    deployment_resource,
    deployment_sensors,
    production_deployment,
)
from autotrader_assets.defs.deployment.record import latest_record
from autotrader_assets.resources import RegistryResource, WarehouseResource, default_resources
from autotrader_assets.settings import FEATURE_COLUMNS, load_settings
from deploy_ops.models.registry import open_registry
from deploy_ops.slots.local import MissingTokenError
from tests.support.deployment import (
    CANARY,
    INSTRUMENTS,
    feature_bundle,
    make_stack,
    predict_everywhere,
    register,
    teardown_stack,
    write_bar_features,
)


@pytest.fixture
def env(tmp_path):
    stack = make_stack(tmp_path)
    warehouse = tmp_path / "warehouse.duckdb"
    write_bar_features(warehouse)
    resources = {
        "registry": RegistryResource(url=stack.url, artifacts_uri=str(tmp_path / "artifacts")),
        "deployment": DeploymentStackResource(
            state_url=stack.url,
            backend="local",
            workdir=str(tmp_path / "slots"),
            instruments=list(INSTRUMENTS),
            canary_instruments=list(CANARY),
            stage_seconds=1.0,
            fee_bps=4.0,
            slippage_bps=2.0,
            requests_per_second=150,
        ),
        "warehouse": WarehouseResource(path=str(warehouse)),
    }
    v1 = register(stack.registry, feature_bundle(3.0))
    stack.registry.promote(v1.version, actor="test", reason="initial production")
    stack.backend.start("blue", stack.registry.get(v1.version))
    stack.state.switch_all("blue")
    stack.resources = resources
    stack.v1 = v1
    yield stack
    teardown_stack(stack)


def _config(**config):
    return {"ops": {"production_deployment": {"config": config}}}


def test_definitions_name_everything(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOTRADER_HOME", str(tmp_path))
    for name in ("AUTOTRADER_ENV", "AUTOTRADER_REGISTRY_URL", "AUTOTRADER_ARTIFACTS_URI", "AUTOTRADER_INSTRUMENTS"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    resources = {**default_resources(settings), "deployment": deployment_resource(settings)}
    assert resources["deployment"].state_url == settings.registry_url  # state lives beside the registry
    assert resources["deployment"].backend == "local"
    assert resources["deployment"].canary_instruments == ["BTCUSDT", "ETHUSDT"]
    defs = dg.Definitions(
        assets=deployment_assets, jobs=deployment_jobs, sensors=deployment_sensors, resources=resources
    )
    assert [a.key for a in deployment_assets] == [dg.AssetKey("production_deployment")]
    assert sorted(j.name for j in deployment_jobs) == ["deployment_pipeline", "emergency_rollback", "model_rollback"]
    assert [s.name for s in deployment_sensors] == ["deployment_failure_sensor", "interrupted_deployment_sensor"]
    spec = production_deployment.specs_by_key[dg.AssetKey("production_deployment")]
    assert dg.AssetKey("registered_model") in {d.asset_key for d in spec.deps}
    assert spec.description and "\n" not in spec.description.strip()
    assert defs.resolve_job_def("model_rollback").name == "model_rollback"


def _production_settings(tmp_path, monkeypatch, token: str | None):
    # The production profile itself refuses to load without a token or with local stores
    # (tests/unit/test_production_settings.py); these tests exercise the deployer's own refusal
    # behind it, so they take the local stores and switch only the profile.
    monkeypatch.delenv("AUTOTRADER_ENV", raising=False)
    monkeypatch.setenv("AUTOTRADER_HOME", str(tmp_path))
    monkeypatch.setenv("AUTOTRADER_REGISTRY_URL", f"sqlite:///{tmp_path / 'registry.db'}")
    monkeypatch.setenv("AUTOTRADER_ARCHIVE_URI", str(tmp_path / "archive"))
    monkeypatch.setenv("AUTOTRADER_ARTIFACTS_URI", str(tmp_path / "artifacts"))
    if token is None:
        monkeypatch.delenv("AUTOTRADER_SERVING_TOKEN", raising=False)
    else:
        monkeypatch.setenv("AUTOTRADER_SERVING_TOKEN", token)
    return dataclasses.replace(load_settings(), env="production")


def test_production_profile_refuses_to_start_a_slot_without_a_serving_token(tmp_path, monkeypatch):
    settings = _production_settings(tmp_path, monkeypatch, token=None)
    (tmp_path / "artifacts").mkdir()
    resource = deployment_resource(settings)
    assert resource.require_serving_token is True and resource.serving_token is None
    # Even with the slots on local processes, no slot starts without the token.
    local = DeploymentStackResource(
        state_url=settings.registry_url,
        backend="local",
        workdir=str(tmp_path / "slots"),
        instruments=list(settings.instruments),
        canary_instruments=list(settings.canary_instruments),
        stage_seconds=settings.stage_seconds,
        fee_bps=settings.fee_bps,
        slippage_bps=settings.slippage_bps,
        serving_token=resource.serving_token,
        require_serving_token=resource.require_serving_token,
    )
    stack = local.open(open_registry(settings.registry_url, settings.artifacts_uri))
    mv = register(stack.registry, feature_bundle(1.0), stage="staging")
    with pytest.raises(MissingTokenError, match="requires a serving token"):
        stack.backend.start("blue", mv)
    assert stack.state.slots() == {}


def test_production_profile_hands_the_token_to_the_slots_without_showing_it(tmp_path, monkeypatch):
    settings = _production_settings(tmp_path, monkeypatch, token="prod-token-271")
    resource = deployment_resource(settings)
    assert "prod-token-271" not in repr(resource)  # Dagster shows the variable's name, not the secret
    # Dagster resolves the EnvVar when it initialises the resource, as in a run.
    with dg.build_resources({"deployment": resource}) as initialised:
        assert initialised.deployment.serving_token == "prod-token-271"
        assert initialised.deployment.require_serving_token is True
    # The same fields on a local-process backend reach the deployer that starts the slots.
    local = DeploymentStackResource(
        state_url=settings.registry_url,
        backend="local",
        workdir=str(tmp_path / "slots"),
        instruments=list(settings.instruments),
        canary_instruments=list(settings.canary_instruments),
        stage_seconds=settings.stage_seconds,
        fee_bps=settings.fee_bps,
        slippage_bps=settings.slippage_bps,
        serving_token="prod-token-271",
        require_serving_token=True,
    )
    deployer = local.open(open_registry(settings.registry_url, settings.artifacts_uri)).backend.deployer
    assert (deployer.token, deployer.require_token) == ("prod-token-271", True)
    assert deployer.instruments == settings.instruments


@pytest.mark.slow
def test_production_deployment_materializes_a_gated_rollout(env):
    v2 = register(env.registry, feature_bundle(3.0, bias=0.02))
    result = dg.materialize(
        [production_deployment], resources=env.resources, run_config=_config(), instance=dg.DagsterInstance.ephemeral()
    )
    assert result.success
    metadata = result.asset_materializations_for_node("production_deployment")[0].metadata
    assert metadata["outcome"].value == "succeeded"
    assert metadata["version"].value == v2.version  # default: the newest staging version
    table = metadata["gate_readings"].value
    for stage in ("canary", "pct_25", "pct_50", "pct_100"):
        assert f"| {stage} | pass |" in table
    report = metadata["report"].data
    assert [s["stage"] for s in report["stages"]][-1] == "finalize"
    canary = next(s for s in report["stages"] if s["stage"] == "canary")
    assert {g["gate"] for g in canary["gates"]} >= {"health", "error_rate", "p99_latency_ms", "sharpe"}
    assert canary["sharpe"]["live"] > 0 and canary["traffic"]["candidate"]["errors"] == 0
    assert env.registry.get_production().version == v2.version
    assert env.registry.history(v2.version)[-1].actor.startswith("dagster:")
    assert predict_everywhere(env.state, len(FEATURE_COLUMNS)) == {i: str(v2.version) for i in INSTRUMENTS}


@pytest.mark.slow
def test_rolled_back_rollout_fails_the_run_and_the_sensor_secures_traffic(env):
    anti = register(env.registry, feature_bundle(-3.0))
    defs = dg.Definitions(
        assets=deployment_assets, jobs=deployment_jobs, sensors=deployment_sensors, resources=env.resources
    )
    instance = dg.DagsterInstance.ephemeral()
    result = defs.resolve_job_def("deployment_pipeline").execute_in_process(
        run_config=_config(version=anti.version), instance=instance, raise_on_error=False
    )

    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data
    assert "rolled_back" in failure.user_failure_data.description
    assert "| canary | **FAIL** |" in failure.user_failure_data.metadata["gate_readings"].value
    # the rollback finished before the run failed, and the asset's latest record says v1 serves again
    record = latest_record(instance)
    assert (record.metadata["version"].value, record.metadata["change"].value) == (env.v1.version, "automatic_rollback")
    assert record.metadata["candidate_version"].value == anti.version
    assert env.registry.get(anti.version).stage == "failed"
    assert set(env.state.routing_table().values()) == {"blue"}
    assert env.state.get_slot("green").status == "stopped"

    env.state.set_routes({"BTCUSDT": "green"})  # as if a half-finished switch had been left behind
    context = dg.build_run_status_sensor_context(
        sensor_name="deployment_failure_sensor",
        dagster_event=result.get_run_failure_event(),
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        resources=env.resources,
    ).for_run_failure()
    deployment_failure_sensor(context)

    critical = env.state.events_since(0, kinds=["deployment_run_failed"])
    assert len(critical) == 1 and critical[0].severity == "critical"
    assert critical[0].details["run_id"] == result.run_id
    assert set(env.state.routing_table().values()) == {"blue"}
    ensured = env.state.events_since(0, kinds=["production_serving_ensured"])[-1]
    assert ensured.details["slot"] == "blue" and "all routes -> blue" in ensured.details["actions"]
    assert predict_everywhere(env.state, len(FEATURE_COLUMNS)) == {i: str(env.v1.version) for i in INSTRUMENTS}


@pytest.mark.slow
def test_an_emergency_rollback_after_a_rollout_leaves_the_asset_saying_version_1_serves(env):
    v2 = register(env.registry, feature_bundle(3.0, bias=0.02))
    defs = dg.Definitions(assets=deployment_assets, jobs=deployment_jobs, resources=env.resources)
    instance = dg.DagsterInstance.ephemeral()
    rollout = defs.resolve_job_def("deployment_pipeline").execute_in_process(run_config=_config(), instance=instance)
    assert rollout.success
    assert latest_record(instance).metadata["version"].value == v2.version

    emergency = defs.resolve_job_def("emergency_rollback").execute_in_process(instance=instance)

    assert emergency.success
    record = latest_record(instance)
    assert record.metadata["version"].value == env.v1.version
    assert record.metadata["outcome"].value == "rolled_back"
    assert record.metadata["change"].value == "emergency_rollback"
    assert record.metadata["from_version"].value == v2.version
    assert record.metadata["serving_slot"].value == "blue"
    assert record.metadata["slot_versions"].value == {"blue": str(env.v1.version)}
    assert env.registry.get(v2.version).stage == "failed"


@pytest.mark.slow
def test_model_rollback_and_emergency_rollback_jobs(env):
    v2 = register(env.registry, feature_bundle(3.0, bias=0.05))
    defs = dg.Definitions(jobs=deployment_jobs, resources=env.resources)
    instance = dg.DagsterInstance.ephemeral()

    manual = defs.resolve_job_def("model_rollback").execute_in_process(
        run_config={
            "ops": {"rollback_model": {"config": {"to_version": v2.version, "reason": "hotfix model", "actor": "bob"}}}
        },
        instance=instance,
    )
    assert manual.success
    assert manual.output_for_node("rollback_model")["slot"] == "green"
    assert env.registry.get_production().version == v2.version
    assert env.registry.audit(v2.version)[-1].reason == "hotfix model"
    assert predict_everywhere(env.state, len(FEATURE_COLUMNS)) == {i: str(v2.version) for i in INSTRUMENTS}

    emergency = defs.resolve_job_def("emergency_rollback").execute_in_process(instance=instance)
    assert emergency.success
    out = emergency.output_for_node("rollback_to_last_known_good")
    assert (out["to_version"], out["slot"], out["actor"]) == (env.v1.version, "blue", f"dagster:{emergency.run_id}")
    assert env.registry.get_production().version == env.v1.version
    assert env.registry.get(v2.version).stage == "failed"
    assert predict_everywhere(env.state, len(FEATURE_COLUMNS)) == {i: str(env.v1.version) for i in INSTRUMENTS}

    refused = defs.resolve_job_def("model_rollback").execute_in_process(
        run_config={"ops": {"rollback_model": {"config": {"to_version": v2.version, "reason": "again"}}}},
        instance=instance,
        raise_on_error=False,
    )
    assert not refused.success  # a failed version is never served again
    assert "it is marked failed" in refused.get_step_failure_events()[0].step_failure_data.error.to_string()
