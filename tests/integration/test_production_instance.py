"""The production Dagster instance config: PostgreSQL storage for real, ECS launcher and S3 logs on moto."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "infra" / "dagster" / "dagster.yaml"


@pytest.mark.postgres
def test_runs_and_events_are_stored_in_postgres(pg_url, tmp_path, monkeypatch):
    url = sa.engine.make_url(pg_url)
    monkeypatch.setenv("DAGSTER_PG_HOST", url.host)
    monkeypatch.setenv("DAGSTER_PG_PORT", str(url.port or 5432))
    monkeypatch.setenv("DAGSTER_PG_DB", url.database)
    monkeypatch.setenv("DAGSTER_PG_USERNAME", url.username)
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", url.password or "")
    # Storage comes from the production file as is; the launcher and log manager need AWS, so
    # this test keeps the in-process defaults for them (they are checked in the test below).
    config = yaml.safe_load(CONFIG.read_text())
    home = tmp_path / "dh"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump({"storage": config["storage"], "telemetry": {"enabled": False}}))

    @dg.asset
    def probe() -> int:
        """A one-row asset that proves runs and events land in PostgreSQL."""
        return 1

    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        result = dg.materialize([probe], instance=instance)
        assert result.success
        assert instance.get_latest_materialization_event(dg.AssetKey("probe")) is not None
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        n_runs = conn.exec_driver_sql("select count(*) from runs").scalar()
    engine.dispose()
    assert n_runs == 1


def test_production_config_names_ecs_launcher_and_s3_logs():
    config = yaml.safe_load(CONFIG.read_text())
    assert config["run_launcher"]["class"] == "EcsRunLauncher"
    assert config["compute_logs"]["class"] == "S3ComputeLogManager"
    # the referenced classes exist in the pinned dagster-aws
    from dagster_aws.ecs import EcsRunLauncher  # noqa: F401
    from dagster_aws.s3.compute_log_manager import S3ComputeLogManager  # noqa: F401

    # no literal secrets: every connection value is an env reference
    for key, value in config["storage"]["postgres"]["postgres_db"].items():
        if key != "scheme":
            assert isinstance(value, dict) and set(value) == {"env"}, key
