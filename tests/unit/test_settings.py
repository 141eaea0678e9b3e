"""The one settings object: embedded defaults and the production profile."""

from __future__ import annotations

from pathlib import Path

import pytest

from autotrader_assets.settings import CANARY_INSTRUMENTS, FileSourceSettings, SettingsError, load_settings, secret
from tests.support.production import production_env

FILE_VARS = (
    "AUTOTRADER_FILE_SOURCE",
    "AUTOTRADER_FILE_DIR",
    "AUTOTRADER_FILE_PATTERN",
    "AUTOTRADER_FILE_SYMBOL_COLUMN",
    "AUTOTRADER_FILE_COLUMNS",
)


@pytest.fixture
def clean_env(monkeypatch):
    for name in [
        "AUTOTRADER_ENV",
        "AUTOTRADER_HOME",
        "DAGSTER_HOME",
        "AUTOTRADER_INSTRUMENTS",
        "AUTOTRADER_REGISTRY_URL",
        "AUTOTRADER_ARCHIVE_URI",
        "AUTOTRADER_ARTIFACTS_URI",
        "AUTOTRADER_WAREHOUSE",
        "AUTOTRADER_FEE_BPS",
        "AUTOTRADER_SLIPPAGE_BPS",
        "AUTOTRADER_MARKET_SOURCE",
        *FILE_VARS,
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


def test_production_requires_its_stores(clean_env, tmp_path):
    clean_env.setenv("AUTOTRADER_ENV", "production")
    with pytest.raises(SettingsError, match="AUTOTRADER_REGISTRY_URL"):
        load_settings()
    # every store shared (tests/unit/test_production_settings.py breaks them one by one)
    production_env(clean_env, tmp_path)
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


@pytest.mark.parametrize("name", ["AUTOTRADER_FEE_BPS", "AUTOTRADER_SLIPPAGE_BPS"])
@pytest.mark.parametrize("value", ["-50", "nan", "inf", "-inf", "NaN"])
def test_costs_must_be_finite_and_not_negative(clean_env, name, value):
    clean_env.setenv(name, value)
    with pytest.raises(SettingsError, match=f"{name}=.*finite number of basis points >= 0"):
        load_settings()


def test_costs_accept_zero_and_positive_values(clean_env):
    clean_env.setenv("AUTOTRADER_FEE_BPS", "0")
    clean_env.setenv("AUTOTRADER_SLIPPAGE_BPS", "7.5")
    s = load_settings()
    assert (s.fee_bps, s.slippage_bps) == (0.0, 7.5)


def test_file_source_without_a_path_says_what_to_set(clean_env):
    clean_env.setenv("AUTOTRADER_MARKET_SOURCE", "file")
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    for hint in (
        "AUTOTRADER_FILE_SOURCE",
        "AUTOTRADER_FILE_DIR",
        "AUTOTRADER_FILE_PATTERN",
        "AUTOTRADER_FILE_SYMBOL_COLUMN",
        "GBPUSD=../shared/data/fx_1m/GBPUSD_m1_ask_2012.csv",
        "README",
    ):
        assert hint in message, hint


def test_file_source_mapping_plain_and_json(clean_env, tmp_path):
    clean_env.setenv("AUTOTRADER_MARKET_SOURCE", "file")
    clean_env.setenv("AUTOTRADER_INSTRUMENTS", "GBPUSD,BTCUSDT")
    clean_env.setenv("AUTOTRADER_FILE_SOURCE", f"gbpusd={tmp_path}/a.csv, BTCUSDT=b.csv")
    clean_env.setenv("AUTOTRADER_FILE_COLUMNS", "ts=timestamp_utc, close=Close, volume=")
    clean_env.chdir(tmp_path)
    s = load_settings()
    assert s.file_source.paths == (("GBPUSD", (str(tmp_path / "a.csv"),)), ("BTCUSDT", (str(tmp_path / "b.csv"),)))
    assert s.file_source.columns == (("ts", "timestamp_utc"), ("close", "Close"), ("volume", ""))
    clean_env.setenv("AUTOTRADER_FILE_SOURCE", '{"GBPUSD": "a.csv", "BTCUSDT": ["b-1.zip", "b-2.zip"]}')
    s = load_settings()
    assert dict(s.file_source.paths)["BTCUSDT"] == (str(tmp_path / "b-1.zip"), str(tmp_path / "b-2.zip"))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"AUTOTRADER_FILE_SOURCE": "/data/one.csv"},
            r"one file but 2 instruments are configured \(GBPUSD, USDJPY\).*GBPUSD=/path/GBPUSD.csv,USDJPY=/path/USDJPY.csv",
        ),
        ({"AUTOTRADER_FILE_SOURCE": "GBPUSD=/data/gbpusd.csv"}, "no file for USDJPY; add USDJPY=/path/USDJPY.csv"),
        ({"AUTOTRADER_FILE_SOURCE": "GBPUSD=/a.csv,gbpusd=/b.csv,USDJPY=/c.csv"}, "maps GBPUSD twice.*JSON"),
        ({"AUTOTRADER_FILE_SOURCE": "GBPUSD=,USDJPY=/c.csv"}, "no file given for GBPUSD"),
        ({"AUTOTRADER_FILE_SOURCE": '{"GBPUSD": []}'}, "non-empty list of paths"),
        ({"AUTOTRADER_FILE_SOURCE": "{not json"}, "AUTOTRADER_FILE_SOURCE is not valid JSON"),
        ({"AUTOTRADER_FILE_SOURCE": "/a.csv", "AUTOTRADER_FILE_DIR": "/data"}, "not both"),
        ({"AUTOTRADER_FILE_PATTERN": "*.csv"}, "AUTOTRADER_FILE_DIR, which is not set"),
        ({"AUTOTRADER_FILE_DIR": "/data", "AUTOTRADER_FILE_PATTERN": "*.csv"}, "must contain {instrument}"),
        ({"AUTOTRADER_FILE_DIR": "/data", "AUTOTRADER_FILE_COLUMNS": "price=Close"}, "may only map ts, open"),
        ({"AUTOTRADER_FILE_DIR": "/data", "AUTOTRADER_FILE_COLUMNS": "close="}, "only volume may be empty"),
        ({"AUTOTRADER_FILE_DIR": "/data", "AUTOTRADER_FILE_COLUMNS": "close"}, "'close' is not KEY=VALUE"),
    ],
)
def test_ambiguous_or_malformed_file_source_is_refused(clean_env, env, message):
    clean_env.setenv("AUTOTRADER_MARKET_SOURCE", "file")
    clean_env.setenv("AUTOTRADER_INSTRUMENTS", "GBPUSD,USDJPY")
    for name, value in env.items():
        clean_env.setenv(name, value)
    with pytest.raises(SettingsError, match=message):
        load_settings()


def test_one_file_serves_several_instruments_only_through_a_symbol_column(clean_env):
    clean_env.setenv("AUTOTRADER_MARKET_SOURCE", "file")
    clean_env.setenv("AUTOTRADER_INSTRUMENTS", "GBPUSD,USDJPY")
    clean_env.setenv("AUTOTRADER_FILE_SOURCE", "/data/all.csv")
    clean_env.setenv("AUTOTRADER_FILE_SYMBOL_COLUMN", "ticker")
    assert load_settings().file_source == FileSourceSettings(path="/data/all.csv", symbol_column="ticker")


def test_file_variables_do_not_matter_to_other_sources(clean_env):
    clean_env.setenv("AUTOTRADER_INSTRUMENTS", "GBPUSD,USDJPY")
    clean_env.setenv("AUTOTRADER_FILE_SOURCE", "/data/one.csv")
    s = load_settings()
    assert s.market_source == "replay" and s.file_source.path == "/data/one.csv"


def test_secrets_are_read_on_demand_and_never_stored(clean_env):
    clean_env.setenv("ALPACA_API_SECRET_KEY", "s3cr3t-value")
    assert secret("ALPACA_API_SECRET_KEY") == "s3cr3t-value"
    assert "s3cr3t-value" not in repr(load_settings())
    clean_env.delenv("ALPACA_API_SECRET_KEY")
    assert secret("ALPACA_API_SECRET_KEY") is None


def test_market_data_code_reads_the_environment_only_through_settings():
    root = Path(__file__).resolve().parents[2] / "autotrader_assets" / "defs" / "market_data"
    offenders = [
        f"{path.relative_to(root)}:{n}"
        for path in sorted(root.rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if "os.environ" in line or "getenv" in line
    ]
    assert offenders == []
