"""A complete, valid production environment for tests: every store shared, the instance shipped.

The production profile refuses to start with a local or missing store (``settings.production_problems``);
tests that need ``AUTOTRADER_ENV=production`` set all of it here and then break one thing on purpose.
"""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INSTANCE_YAML = ROOT / "infra" / "dagster" / "dagster.yaml"

#: What the shipped dagster.yaml reads (values for tests; no server is contacted by loading settings).
INSTANCE_ENV = {
    "DAGSTER_PG_HOST": "127.0.0.1",
    "DAGSTER_PG_PORT": "5432",
    "DAGSTER_PG_DB": "dagster",
    "DAGSTER_PG_USERNAME": "dagster",
    "DAGSTER_PG_PASSWORD": "",
    "DAGSTER_COMPUTE_LOG_BUCKET": "autotrader-logs",
    "DAGSTER_RUN_TASK_DEFINITION": "arn:aws:ecs:us-east-1:123456789012:task-definition/autotrader-run:1",
    "DAGSTER_RUN_CONTAINER_NAME": "run",
    "DAGSTER_ECS_CLUSTER": "autotrader",
}


def production_env(
    monkeypatch,
    tmp_path: Path,
    *,
    registry_url: str = "postgresql://autotrader@127.0.0.1/registry",
    token: str | None = "test-serving-token",
) -> dict[str, str]:
    """Set a valid production profile in ``monkeypatch``'s environment; returns what was set."""
    home, dagster_home, shared = tmp_path / "home", tmp_path / "dagster_home", tmp_path / "efs"
    for folder in (home, dagster_home, shared):
        folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(INSTANCE_YAML, dagster_home / "dagster.yaml")
    env = {
        "AUTOTRADER_ENV": "production",
        "AUTOTRADER_HOME": str(home),
        "DAGSTER_HOME": str(dagster_home),
        "AUTOTRADER_REGISTRY_URL": registry_url,
        "AUTOTRADER_ARCHIVE_URI": "s3://autotrader-archive/archive",
        "AUTOTRADER_ARTIFACTS_URI": "s3://autotrader-artifacts/artifacts",
        "AUTOTRADER_WAREHOUSE_SHARED_DIR": str(shared),
        **INSTANCE_ENV,
    }
    if token is not None:
        env["AUTOTRADER_SERVING_TOKEN"] = token
    else:
        monkeypatch.delenv("AUTOTRADER_SERVING_TOKEN", raising=False)
    monkeypatch.delenv("AUTOTRADER_WAREHOUSE", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env
