"""The production profile refuses local and missing stores at start, listing everything wrong."""

from __future__ import annotations

import pytest
import yaml

from autotrader_assets.settings import SettingsError, load_settings
from tests.support.production import production_env


@pytest.fixture
def prod(monkeypatch, tmp_path):
    for name in ("AUTOTRADER_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AUTOTRADER_ECS_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    return production_env(monkeypatch, tmp_path)


def _problems(exc: pytest.ExceptionInfo) -> list[str]:
    return [line.strip()[2:] for line in str(exc.value).splitlines()[1:]]


def test_a_complete_production_profile_loads(prod, tmp_path):
    s = load_settings()
    assert s.is_production and s.archive_is_s3
    assert s.warehouse_shared_dir == tmp_path / "efs"
    assert s.warehouse_path == tmp_path / "efs" / "warehouse.duckdb"  # default: in the shared folder
    assert s.s3_endpoint_url == ""


def test_every_local_or_missing_store_is_listed_at_once(prod, monkeypatch, tmp_path):
    monkeypatch.setenv("AUTOTRADER_REGISTRY_URL", f"sqlite:///{tmp_path / 'registry.db'}")
    monkeypatch.setenv("AUTOTRADER_ARCHIVE_URI", str(tmp_path / "archive"))
    monkeypatch.setenv("AUTOTRADER_ARTIFACTS_URI", str(tmp_path / "artifacts"))
    monkeypatch.delenv("AUTOTRADER_WAREHOUSE_SHARED_DIR")
    monkeypatch.delenv("AUTOTRADER_SERVING_TOKEN")
    monkeypatch.delenv("DAGSTER_HOME")
    with pytest.raises(SettingsError, match=r"production profile cannot start \(6 problem") as exc:
        load_settings()
    problems = _problems(exc)
    assert len(problems) == 6, problems
    assert problems[0].startswith("AUTOTRADER_REGISTRY_URL is a sqlite: URL")
    assert problems[1].startswith("AUTOTRADER_ARCHIVE_URI=") and "s3://" in problems[1]
    assert problems[2].startswith("AUTOTRADER_ARTIFACTS_URI=")
    assert "AUTOTRADER_WAREHOUSE_SHARED_DIR" in problems[3] and "own disk" in problems[3]
    assert problems[4].startswith("AUTOTRADER_SERVING_TOKEN is not set")
    assert problems[5].startswith("DAGSTER_HOME is not set")


def test_unset_stores_are_named(prod, monkeypatch):
    for name in ("AUTOTRADER_REGISTRY_URL", "AUTOTRADER_ARCHIVE_URI", "AUTOTRADER_ARTIFACTS_URI"):
        monkeypatch.delenv(name)
    with pytest.raises(SettingsError) as exc:
        load_settings()
    assert [p.split(" ")[0] for p in _problems(exc)] == [
        "AUTOTRADER_REGISTRY_URL",
        "AUTOTRADER_ARCHIVE_URI",
        "AUTOTRADER_ARTIFACTS_URI",
    ]


def test_a_registry_password_is_never_echoed(prod, monkeypatch):
    monkeypatch.setenv("AUTOTRADER_REGISTRY_URL", "mysql://admin:hunter2@db/registry")
    with pytest.raises(SettingsError, match="mysql: URL") as exc:
        load_settings()
    assert "hunter2" not in str(exc.value)


def test_warehouse_must_be_inside_the_mounted_shared_folder(prod, monkeypatch, tmp_path):
    monkeypatch.setenv("AUTOTRADER_WAREHOUSE", str(tmp_path / "home" / "warehouse.duckdb"))
    with pytest.raises(SettingsError, match="is outside AUTOTRADER_WAREHOUSE_SHARED_DIR"):
        load_settings()
    monkeypatch.setenv("AUTOTRADER_WAREHOUSE", str(tmp_path / "efs" / "wh" / "prod.duckdb"))
    assert load_settings().warehouse_path == tmp_path / "efs" / "wh" / "prod.duckdb"
    monkeypatch.setenv("AUTOTRADER_WAREHOUSE_SHARED_DIR", str(tmp_path / "not-mounted"))
    with pytest.raises(SettingsError, match="is not a directory \\(is the EFS volume mounted"):
        load_settings()


def test_the_instance_must_exist_and_be_on_postgres(prod, monkeypatch, tmp_path):
    config = tmp_path / "dagster_home" / "dagster.yaml"
    config.unlink()
    with pytest.raises(SettingsError, match="dagster.yaml does not exist"):
        load_settings()
    config.write_text(yaml.safe_dump({"telemetry": {"enabled": False}}))
    with pytest.raises(SettingsError, match="no 'storage: postgres' section"):
        load_settings()


def test_instance_variables_must_be_set_but_the_pg_password_may_be_empty(prod, monkeypatch):
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "")
    assert load_settings().is_production  # empty password: a role without one (trust, IAM, .pgpass)
    monkeypatch.delenv("DAGSTER_PG_PASSWORD")
    monkeypatch.delenv("DAGSTER_COMPUTE_LOG_BUCKET")
    monkeypatch.setenv("DAGSTER_PG_HOST", " ")
    with pytest.raises(SettingsError) as exc:
        load_settings()
    problems = _problems(exc)
    assert any(
        "reads DAGSTER_PG_PASSWORD, DAGSTER_COMPUTE_LOG_BUCKET, which are not set" in p
        and "may be empty, but must be set" in p
        for p in problems
    ), problems
    assert any(p.endswith("reads DAGSTER_PG_HOST, which is empty") for p in problems), problems


def test_s3_endpoint_override_own_name_first_then_boto3s(prod, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:5000/")
    assert load_settings().s3_endpoint_url == "http://127.0.0.1:5000"
    monkeypatch.setenv("AUTOTRADER_S3_ENDPOINT_URL", "http://minio:9000")
    assert load_settings().s3_endpoint_url == "http://minio:9000"
    monkeypatch.setenv("AUTOTRADER_S3_ENDPOINT_URL", "minio:9000")
    with pytest.raises(SettingsError, match="AUTOTRADER_S3_ENDPOINT_URL='minio:9000' must be an http"):
        load_settings()


def test_the_endpoint_reaches_the_archive_and_the_registry(prod, monkeypatch):
    from autotrader_assets.definitions import build_resources

    monkeypatch.setenv("AUTOTRADER_S3_ENDPOINT_URL", "http://127.0.0.1:5999")
    resources = build_resources(load_settings())
    assert resources["archive"].endpoint_url == "http://127.0.0.1:5999"
    assert resources["registry"].s3_endpoint_url == "http://127.0.0.1:5999"
    from deploy_ops.models.artifacts import open_artifact_store

    store = open_artifact_store("s3://bucket/prefix", endpoint_url=resources["registry"].s3_endpoint_url)
    assert store.client.meta.endpoint_url == "http://127.0.0.1:5999"
