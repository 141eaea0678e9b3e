"""Where production keeps the values runs hand each other (AUTOTRADER_IO_URI): S3, never the task's disk."""

from __future__ import annotations

import pytest

from autotrader_assets.resources import default_resources
from autotrader_assets.settings import SettingsError, load_settings
from tests.support.production import production_env


@pytest.fixture
def prod(monkeypatch, tmp_path):
    for name in ("AUTOTRADER_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AUTOTRADER_IO_URI"):
        monkeypatch.delenv(name, raising=False)
    return production_env(monkeypatch, tmp_path)


def test_values_go_beside_the_artifacts_by_default(prod):
    s = load_settings()
    assert s.io_uri == "s3://autotrader-artifacts/artifacts/dagster-io"
    manager = default_resources(s)["io_manager"]
    assert type(manager).__name__ == "S3PickleIOManager"
    assert (manager.s3_bucket, manager.s3_prefix) == ("autotrader-artifacts", "artifacts/dagster-io")


def test_an_explicit_s3_uri_is_used(prod, monkeypatch):
    monkeypatch.setenv("AUTOTRADER_IO_URI", "s3://autotrader-io/values/")
    assert load_settings().io_uri == "s3://autotrader-io/values"


def test_a_local_io_uri_is_refused_in_production(prod, monkeypatch, tmp_path):
    monkeypatch.setenv("AUTOTRADER_IO_URI", str(tmp_path / "io"))
    with pytest.raises(SettingsError, match="AUTOTRADER_IO_URI=.* is on this task's disk"):
        load_settings()


def test_the_local_profile_keeps_dagsters_filesystem_default(monkeypatch, tmp_path):
    monkeypatch.delenv("AUTOTRADER_ENV", raising=False)
    monkeypatch.setenv("AUTOTRADER_HOME", str(tmp_path))
    s = load_settings()
    assert s.io_uri == "" and "io_manager" not in default_resources(s)
