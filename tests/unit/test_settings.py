"""The one settings object: embedded defaults and the production profile."""
from __future__ import annotations

import pytest

from autotrader_assets.settings import CANARY_INSTRUMENTS, SettingsError, load_settings


@pytest.fixture
def clean_env(monkeypatch):
    for name in [
        "AUTOTRADER_ENV", "AUTOTRADER_HOME", "DAGSTER_HOME", "AUTOTRADER_INSTRUMENTS", "AUTOTRADER_REGISTRY_URL",
        "AUTOTRADER_ARCHIVE_URI", "AUTOTRADER_ARTIFACTS_URI", "AUTOTRADER_WAREHOUSE", "AUTOTRADER_FEE_BPS",
    ]:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_embedded_default_needs_no_configuration(clean_env, tmp_path):
    clean_env.setenv("AUTOTRADER_HOME", str(tmp_path))
    s = load_settings()
    assert s.env == "local" and not s.is_production
    assert s.warehouse_path == tmp_path / "warehouse.duckdb"
    assert s.registry_url == f"sqlite:///{tmp_path / 'registry.db'}"
    assert s.archive_uri == str(tmp_path / "archive")
    assert s.dagster_home == tmp_path / "dagster_home"
    assert len(s.instruments) >= 8 and s.canary_instruments == CANARY_INSTRUMENTS
    assert s.thresholds.psi_warn == 0.2 and s.thresholds.psi_critical == 0.3
    assert s.thresholds.breaker_daily_loss == 0.05 and s.thresholds.breaker_drawdown == 0.15
    s.ensure_dirs()
    assert (tmp_path / "archive").is_dir() and (tmp_path / "dagster_home").is_dir()


def test_production_requires_its_stores(clean_env):
    clean_env.setenv("AUTOTRADER_ENV", "production")
    with pytest.raises(SettingsError, match="AUTOTRADER_REGISTRY_URL"):
        load_settings()
    clean_env.setenv("AUTOTRADER_REGISTRY_URL", "postgresql://u@db/registry")
    clean_env.setenv("AUTOTRADER_ARCHIVE_URI", "s3://bars/archive")
    clean_env.setenv("AUTOTRADER_ARTIFACTS_URI", "s3://models/artifacts")
    s = load_settings()
    assert s.is_production and s.archive_is_s3
    assert s.stage_seconds >= 60  # stages last minutes in production


def test_bad_values_are_rejected(clean_env):
    clean_env.setenv("AUTOTRADER_ENV", "staging")
    with pytest.raises(SettingsError, match="AUTOTRADER_ENV"):
        load_settings()
    clean_env.setenv("AUTOTRADER_ENV", "local")
    clean_env.setenv("AUTOTRADER_FEE_BPS", "cheap")
    with pytest.raises(SettingsError, match="AUTOTRADER_FEE_BPS"):
        load_settings()


def test_instrument_list_from_env(clean_env):
    clean_env.setenv("AUTOTRADER_INSTRUMENTS", "ethusdt, SOLUSDT")
    s = load_settings()
    assert s.instruments == ("ETHUSDT", "SOLUSDT")
    assert s.canary_instruments == ("ETHUSDT",)
