"""dbt writes its target/ and logs under AUTOTRADER_HOME, not into the code checkout: in the production
image the checkout is read-only and shared by every run; only the build-time manifest lives there."""

from __future__ import annotations

import dagster as dg
import pytest

from autotrader_assets.definitions import build_resources
from autotrader_assets.defs.features.project import DBT_PROJECT_DIR, dbt_resource
from autotrader_assets.settings import load_settings
from tests.support.pipeline import run_data_pipeline, temp_resources

pytestmark = pytest.mark.slow


def test_a_dbt_run_writes_its_artifacts_and_logs_outside_the_checkout(tmp_path):
    resources = temp_resources(tmp_path)
    result = run_data_pipeline(resources, dg.DagsterInstance.ephemeral(), "2024-03-01|BTCUSDT", "2024-03-01|BTCUSDT")
    assert result.success
    marker = f"dbt_feature_models-{result.run_id[:7]}-"
    (invocation,) = [p for p in (tmp_path / "dbt_target").iterdir() if p.name.startswith(marker)]
    assert (invocation / "run_results.json").is_file()
    assert (invocation / "dbt.log").is_file()
    assert not [p for p in (DBT_PROJECT_DIR / "target").iterdir() if p.name.startswith(marker)]


def test_the_code_location_puts_dbt_target_under_autotrader_home(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOTRADER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.delenv("AUTOTRADER_WAREHOUSE", raising=False)
    dbt = build_resources(load_settings())["dbt"]
    assert dbt.target_dir == str((tmp_path / "home" / "dbt_target").resolve())
    # the manifest the assets are built from stays with the project (made at image build)
    assert dbt.project_dir == str(DBT_PROJECT_DIR)
    assert dbt_resource(tmp_path / "w.duckdb", tmp_path / "p", target_dir=tmp_path / "t").target_dir == str(
        tmp_path / "t"
    )
