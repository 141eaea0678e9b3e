"""``autotrader registry`` through click's CliRunner against a registry in a temporary home."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from autotrader_assets.commands.registry import group
from autotrader_assets.settings import get_settings
from deploy_ops.db import make_engine
from deploy_ops.models.registry import open_registry


@pytest.fixture
def registry(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOTRADER_HOME", str(tmp_path))
    for name in ("AUTOTRADER_ENV", "AUTOTRADER_REGISTRY_URL", "AUTOTRADER_ARTIFACTS_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("USER", "cli-tester")
    get_settings.cache_clear()
    settings = get_settings()
    reg = open_registry(settings.registry_url, settings.artifacts_uri)
    yield reg
    make_engine(settings.registry_url).dispose()
    get_settings.cache_clear()


@pytest.fixture
def three_versions(registry, make_bundle):
    """v1 production, v2 staging, v3 candidate."""
    for seed, stage in ((0, "staging"), (1, "staging"), (2, "candidate")):
        registry.register(
            make_bundle(seed),
            metrics={"auc": 0.6, "sharpe": 1.5},
            params={"lr": 0.001},
            lineage={"code_version": "abc123"},
            stage=stage,
            actor="trainer",
            reason="trained",
        )
    registry.promote(1, actor="trainer", reason="first production")
    return registry


def run(*args: str):
    return CliRunner().invoke(group, list(args), catch_exceptions=False)


def test_registry_reads_location_from_settings(registry, tmp_path):
    assert registry.engine.url.database == str(tmp_path / "registry.db")
    assert registry.artifacts.root == tmp_path / "artifacts"


def test_list_table_and_json(three_versions):
    result = run("list")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:3] == ["VERSION", "NAME", "STAGE"]
    assert [line.split()[2] for line in lines[1:]] == ["production", "staging", "candidate"]

    result = run("list", "--stage", "staging", "--json")
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert [d["version"] for d in data] == [2]
    assert data[0]["metrics"] == {"auc": 0.6, "sharpe": 1.5}


def test_list_empty_and_bad_stage(registry):
    assert run("list").output.strip() == "no model versions"
    result = run("list", "--stage", "live")
    assert result.exit_code == 2
    assert "Invalid value for '--stage'" in result.output


def test_get_text_and_json(three_versions):
    result = run("get", "2")
    assert result.exit_code == 0
    assert "stage:        staging" in result.output
    assert '"code_version": "abc123"' in result.output
    data = json.loads(run("get", "1", "--json").output)
    assert data["stage"] == "production"
    assert data["sha256"] == three_versions.get(1).sha256


def test_get_unknown_version_exits_1(three_versions):
    result = run("get", "99")
    assert result.exit_code == 1
    assert result.output.strip() == "Error: unknown model version 99"


def test_get_non_integer_is_usage_error(registry):
    result = run("get", "latest")
    assert result.exit_code == 2
    assert "is not a valid integer" in result.output


def test_promote_to_production_archives_previous_and_audits(three_versions):
    result = run("promote", "2", "--to", "production", "--reason", "better sharpe")
    assert result.exit_code == 0, result.output
    assert "version 2: staging -> production" in result.output
    assert "version 1: production -> archived" in result.output
    assert three_versions.get_production().version == 2
    entry = three_versions.audit(2)[-1]
    assert (entry.action, entry.actor, entry.reason) == ("promote", "cli-tester", "better sharpe")


def test_promote_requires_to_and_explicit_actor_wins(three_versions):
    result = run("promote", "2")
    assert result.exit_code == 2
    assert "Missing option '--to'" in result.output
    assert three_versions.get(2).stage == "staging"
    result = run("promote", "3", "--to", "staging", "--actor", "alice")
    assert result.exit_code == 0
    assert three_versions.audit(3)[-1].actor == "alice"


def test_promote_illegal_transition_exits_1_and_changes_nothing(three_versions):
    result = run("promote", "3", "--to", "production")
    assert result.exit_code == 1
    assert result.output.startswith("Error: illegal transition for version 3: candidate -> production")
    assert len(result.output.strip().splitlines()) == 1
    assert three_versions.get(3).stage == "candidate"
    assert three_versions.get_production().version == 1


def test_promote_to_failed_is_not_offered(three_versions):
    result = run("promote", "2", "--to", "failed")
    assert result.exit_code == 2


def test_rollback(three_versions):
    run("promote", "2", "--to", "production", "--reason", "new model")
    result = run("rollback", "--to", "1", "--reason", "latency regression", "--actor", "oncall")
    assert result.exit_code == 0, result.output
    assert "version 2: production -> archived" in result.output
    assert "version 1: now production" in result.output
    assert three_versions.get_production().version == 1
    entry = three_versions.audit()[-1]
    assert (entry.action, entry.actor, entry.reason) == ("rollback", "oncall", "latency regression")


def test_rollback_mark_failed(three_versions):
    run("promote", "2", "--to", "production")
    result = run("rollback", "--to", "1", "--reason", "losing money", "--mark-failed")
    assert result.exit_code == 0, result.output
    assert three_versions.get(2).stage == "failed"


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["rollback", "--to", "2"], 2, "Missing option '--reason'"),
        (["rollback", "--reason", "x"], 2, "Missing option '--to'"),
        (["rollback", "--to", "2", "--reason", "  "], 2, "must not be blank"),
        (["rollback", "--to", "99", "--reason", "x"], 1, "Error: unknown model version 99"),
        (["rollback", "--to", "1", "--reason", "x"], 1, "Error: version 1 already holds production"),
        (["rollback", "--to", "3", "--reason", "x"], 1, "stage candidate"),
    ],
)
def test_rollback_errors(three_versions, args, code, message):
    result = run(*args)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert three_versions.get_production().version == 1


def test_mark_failed(three_versions):
    result = run("mark-failed", "3", "--reason", "label leakage")
    assert result.exit_code == 0, result.output
    assert "version 3: candidate -> failed" in result.output
    entry = three_versions.audit(3)[-1]
    assert (entry.action, entry.actor, entry.reason) == ("mark_failed", "cli-tester", "label leakage")


def test_mark_failed_errors(three_versions):
    assert run("mark-failed", "2").exit_code == 2
    result = run("mark-failed", "1", "--reason", "bad")
    assert result.exit_code == 1
    assert "in production" in result.output and "rollback" in result.output
    assert three_versions.get(1).stage == "production"
    assert run("mark-failed", "42", "--reason", "bad").exit_code == 1


def test_history_all_one_and_production(three_versions):
    run("promote", "2", "--to", "production", "--reason", "better sharpe")
    result = run("history")
    assert result.exit_code == 0
    assert "(new) -> staging" in result.output
    assert "production -> archived" in result.output

    data = json.loads(run("history", "2", "--json").output)
    assert [(d["from_stage"], d["to_stage"]) for d in data] == [(None, "staging"), ("staging", "production")]

    result = run("history", "--production")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[1].split()[0] == "1" and "first production" in lines[1] and "better sharpe" in lines[1]
    assert lines[2].split()[0] == "2" and "(current)" in lines[2]

    assert run("history", "99").exit_code == 1


def test_no_actor_is_a_usage_error(three_versions, monkeypatch):
    monkeypatch.delenv("USER", raising=False)
    monkeypatch.setattr("autotrader_assets.commands._common.getpass.getuser", lambda: "")
    result = run("promote", "2", "--to", "production")
    assert result.exit_code == 2
    assert "pass --actor" in result.output
    assert three_versions.get_production().version == 1


@pytest.mark.parametrize("command", ["list", "get", "promote", "rollback", "mark-failed", "history"])
def test_every_command_has_help(command):
    result = run(command, "--help")
    assert result.exit_code == 0
    assert "Usage:" in result.output


def test_production_profile_without_configuration_is_a_clear_error(registry, monkeypatch):
    monkeypatch.setenv("AUTOTRADER_ENV", "production")
    get_settings.cache_clear()
    result = run("list")
    assert result.exit_code == 1
    assert "production profile cannot start" in result.output
    assert "AUTOTRADER_REGISTRY_URL is not set" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["promote", "2", "--to", "production", "--reason", "better\n2  staging -> production  forged"],
        ["rollback", "--to", "1", "--reason", "bad\x1b[31m"],
        ["mark-failed", "3", "--reason", "x\u2028y"],
        ["promote", "2", "--to", "production", "--actor", "eve\nmallory"],
    ],
)
def test_control_characters_are_refused_and_history_is_unchanged(three_versions, args):
    before = run("history").output
    result = run(*args)
    assert result.exit_code == 2
    assert "must be one line of printable text" in result.output
    assert run("history").output == before
    assert three_versions.get(1).stage == "production" and three_versions.get(2).stage == "staging"


def test_the_registry_refuses_control_characters_whoever_calls_it(three_versions):
    with pytest.raises(ValueError, match=r"reason must be one line of printable text; it contains \\n"):
        three_versions.promote(2, actor="trainer", reason="ok\nforged row")
    with pytest.raises(ValueError, match="actor must be one line of printable text"):
        three_versions.mark_failed(3, actor="ci\r", reason="bad")
    assert [h.to_stage for h in three_versions.history(2)] == ["staging"]
