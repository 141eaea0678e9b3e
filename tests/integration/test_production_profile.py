"""The production profile against the real PostgreSQL: status reads the shared state from anywhere."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from autotrader_assets.cli import main
from autotrader_assets.settings import get_settings
from deploy_ops.state import DEFAULT_ROUTE, DeploymentStateStore
from tests.support.production import production_env

pytestmark = pytest.mark.postgres


@pytest.fixture
def prod(pg_url, monkeypatch, tmp_path):
    monkeypatch.delenv("AUTOTRADER_ECS_CONFIG", raising=False)
    production_env(monkeypatch, tmp_path, registry_url=pg_url)
    get_settings.cache_clear()
    yield pg_url
    get_settings.cache_clear()


def test_deploy_status_works_without_the_ecs_document(prod):
    state = DeploymentStateStore(prod)
    state.set_slot("blue", status="ready", version="3", url="http://10.0.1.7:8080")
    state.set_routes({DEFAULT_ROUTE: "blue"})

    result = CliRunner().invoke(main, ["deploy", "status"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "backend:    ecs (not probed: AUTOTRADER_ECS_CONFIG is not set)" in result.output
    assert "routing:    default -> blue" in result.output
    blue = next(line for line in result.output.splitlines() if line.startswith("blue "))
    assert "not probed (AUTOTRADER_ECS_CONFIG is not set)" in blue and "DOWN" not in blue

    as_json = json.loads(CliRunner().invoke(main, ["deploy", "status", "--json"], catch_exceptions=False).output)
    assert as_json["routing"] == {DEFAULT_ROUTE: "blue"}
    assert as_json["slots"][0]["healthy"] is None


def test_operations_that_change_slots_still_need_the_ecs_document(prod):
    result = CliRunner().invoke(main, ["deploy", "switch-traffic", "--to", "blue", "--actor", "ops"])
    assert result.exit_code == 1
    assert "the ECS backend needs AUTOTRADER_ECS_CONFIG" in result.output
