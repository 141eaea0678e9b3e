"""``autotrader deploy`` through click's CliRunner against a temporary home: help, status and
listing, clear refusals, and one end-to-end run with real slot processes (bootstrap rollout,
a second rollout, manual and emergency rollback)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from autotrader_assets.cli import main
from autotrader_assets.commands.deploy import group
from autotrader_assets.settings import get_settings
from deploy_ops.db import make_engine
from deploy_ops.models.registry import open_registry
from deploy_ops.slots.local import LocalDeployer
from deploy_ops.state import DeploymentStateStore

INSTRUMENTS = "BTCUSDT,ETHUSDT,SOLUSDT,BNBUSDT,XRPUSDT,ADAUSDT"


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOTRADER_HOME", str(tmp_path))
    monkeypatch.setenv("AUTOTRADER_INSTRUMENTS", INSTRUMENTS)
    monkeypatch.setenv("USER", "cli-tester")
    for name in (
        "AUTOTRADER_ENV",
        "AUTOTRADER_REGISTRY_URL",
        "AUTOTRADER_ARTIFACTS_URI",
        "AUTOTRADER_WAREHOUSE",
        "AUTOTRADER_STAGE_SECONDS",
        "AUTOTRADER_SERVING_TOKEN",
        "DAGSTER_HOME",
    ):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    settings = get_settings()
    registry = open_registry(settings.registry_url, settings.artifacts_uri)
    state = DeploymentStateStore(settings.registry_url)
    yield settings, registry, state
    deployer = LocalDeployer(state, settings.home / "slots")
    for slot, info in state.slots().items():
        if info.status in ("ready", "starting"):
            deployer.stop_slot(slot, force=True)
    make_engine(settings.registry_url).dispose()
    get_settings.cache_clear()


def run(*args: str):
    return CliRunner().invoke(group, list(args), catch_exceptions=False)


def feature_bundle(weight: float, bias: float = 0.0):
    from tests.support.deployment import feature_bundle as make

    return make(weight, bias)


def register(registry, weight=3.0, bias=0.0, stage="staging"):
    return registry.register(
        feature_bundle(weight, bias), metrics={}, params={}, lineage={}, stage=stage, actor="trainer", reason="trained"
    )


def test_deploy_group_is_wired_into_the_autotrader_cli():
    result = CliRunner().invoke(main, ["deploy", "--help"])
    assert result.exit_code == 0
    for command in ("status", "list-versions", "rollout", "switch-traffic", "rollback", "emergency-rollback"):
        assert command in result.output


@pytest.mark.parametrize(
    "command, expected",
    [
        ("rollout", "--stage-seconds"),
        ("rollback", "--reason"),
        ("switch-traffic", "[blue|green]"),
        ("emergency-rollback", "--keep-current"),
    ],
)
def test_every_command_has_help(command, expected):
    result = run(command, "--help")
    assert result.exit_code == 0 and expected in result.output


def test_status_and_list_versions_on_a_fresh_home(home):
    _, registry, _ = home
    result = run("status")
    assert result.exit_code == 0, result.output
    assert "production: none" in result.output and "no slot has ever been started" in result.output
    data = json.loads(run("status", "--json").output)
    assert data["production_version"] is None and data["slots"] == [] and data["backend"] == "local"

    assert run("list-versions").output.strip() == "no model versions registered"
    register(registry)
    register(registry, bias=0.1, stage="candidate")
    listing = run("list-versions")
    lines = listing.output.splitlines()
    assert lines[0].split()[:2] == ["VERSION", "STAGE"]
    assert [line.split()[:2] for line in lines[1:]] == [["2", "candidate"], ["1", "staging"]]
    rows = json.loads(run("list-versions", "--json").output)
    assert [(r["version"], r["serving_slots"]) for r in rows] == [(2, []), (1, [])]


def test_usage_errors_exit_2_and_refusals_exit_1_with_a_reason(home):
    _, registry, state = home
    assert run("rollback", "--to", "1").exit_code == 2  # --reason is required
    assert run("rollback", "--to", "1", "--reason", "  ").exit_code == 2
    assert run("switch-traffic", "--to", "purple").exit_code == 2
    assert run("rollout", "1", "--stage-seconds", "0").exit_code == 2
    assert run("rollout", "one").exit_code == 2

    unknown = run("rollback", "--to", "7", "--reason", "bad model")
    assert unknown.exit_code == 1 and "unknown model version 7" in unknown.output
    v1 = register(registry)
    nothing = run("rollback", "--to", str(v1.version), "--reason", "bad model")
    assert nothing.exit_code == 1 and "nothing to roll back" in nothing.output
    emergency = run("emergency-rollback")
    assert emergency.exit_code == 1 and "no known-good version" in emergency.output
    switch = run("switch-traffic", "--to", "green")
    assert switch.exit_code == 1 and "slot green is not recorded" in switch.output

    cand = register(registry, bias=0.2, stage="candidate")
    refused = run("rollout", str(cand.version))
    assert refused.exit_code == 1
    assert "refused" in refused.output
    # The gate table is a terminal table: aligned columns, no Markdown.
    lines = refused.stdout.splitlines()
    header = next(line for line in lines if line.startswith("STAGE "))
    row = next(line for line in lines if line.startswith("pre_deploy_checks "))
    assert row.split()[:2] == ["pre_deploy_checks", "FAIL"]
    assert row.index("FAIL") == header.index("RESULT")
    assert "|" not in refused.stdout and "**" not in refused.stdout and "---" not in refused.stdout
    assert "only staging versions are rolled out" in refused.output
    no_warehouse = run("rollout", str(v1.version))
    assert (
        no_warehouse.exit_code == 1 and "warehouse" in no_warehouse.output and "does not exist" in no_warehouse.output
    )
    assert state.slots() == {}  # refusals start nothing


@pytest.mark.slow
def test_rollout_status_rollback_and_emergency_rollback_end_to_end(home):
    from tests.support.deployment import write_bar_features

    settings, registry, state = home
    write_bar_features(settings.warehouse_path)
    v1 = register(registry)

    first = run("rollout", str(v1.version), "--stage-seconds", "0.5")
    assert first.exit_code == 0, first.output
    assert any(line.split()[:2] == ["bootstrap", "pass"] for line in first.stdout.splitlines())
    assert "serves 100% of traffic from slot blue" in first.stdout
    assert "rollout of version 1" in first.stderr  # the progress bar

    v2 = register(registry, bias=0.02)
    second = run("rollout", str(v2.version), "--stage-seconds", "0.5")
    assert second.exit_code == 0, second.output
    rows = {line.split()[0]: line.split()[1] for line in second.stdout.splitlines() if line.split()}
    assert all(rows.get(s) == "pass" for s in ("canary", "pct_25", "pct_50", "pct_100"))

    status = json.loads(run("status", "--json").output)
    assert status["production_version"] == v2.version
    green = next(s for s in status["slots"] if s["slot"] == "green")
    assert green["healthy"] and green["version"] == str(v2.version)
    assert status["instruments_by_slot"]["green"] == sorted(INSTRUMENTS.split(","))
    table = run("status").output
    assert "default -> green" in table and "succeeded" in table

    refused = run("switch-traffic", "--to", "blue")
    assert refused.exit_code == 1 and "slot blue is stopped" in refused.output

    back = run("rollback", "--to", str(v1.version), "--reason", "v2 misprices ETH")
    assert back.exit_code == 0, back.output
    assert f"production is version {v1.version}, served from slot blue" in back.output
    assert registry.get_production().version == v1.version
    assert registry.audit(v1.version)[-1].actor == "cli-tester"

    emergency = run("emergency-rollback", "--reason", "v1 feed broken")
    assert emergency.exit_code == 0, emergency.output
    assert registry.get_production().version == v2.version
    assert registry.get(v1.version).stage == "failed"
    assert set(state.routing_table().values()) == {"green"}
    # every change left the production_deployment record on the local instance (DAGSTER_HOME)
    import dagster as dg

    from autotrader_assets.defs.deployment.record import latest_record

    with dg.DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        record = latest_record(instance)
        assert record.metadata["version"].value == v2.version
        assert record.metadata["change"].value == "emergency_rollback"
        assert record.metadata["from_version"].value == v1.version
        changes = [
            e.asset_materialization.metadata["change"].value
            for e in instance.fetch_materializations(dg.AssetKey("production_deployment"), limit=10).records
        ]
        assert changes == ["emergency_rollback", "manual_rollback", "rollout", "rollout"]
    critical = json.loads(run("status", "--json").output)["events"]
    assert any(e["kind"] == "emergency_rollback" and e["severity"] == "critical" for e in critical)
