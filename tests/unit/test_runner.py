"""`make run`'s options: the day count comes from the settings (AUTOTRADER_RUN_DAYS), not from
the runner reading the environment itself."""
from __future__ import annotations

import dataclasses

import pytest

from autotrader_assets.runner import parse_args
from autotrader_assets.settings import SettingsError, load_settings


def test_days_default_to_the_settings(monkeypatch):
    monkeypatch.setenv("AUTOTRADER_RUN_DAYS", "5")
    settings = load_settings()
    assert settings.run_days == 5
    assert parse_args([], settings).days == 5
    assert parse_args(["--days", "2"], settings).days == 2


def test_run_days_that_is_not_a_number_is_a_settings_error(monkeypatch):
    monkeypatch.setenv("AUTOTRADER_RUN_DAYS", "two weeks")
    with pytest.raises(SettingsError, match="AUTOTRADER_RUN_DAYS"):
        load_settings()


@pytest.mark.parametrize("argv", [["--days", "0"], ["--paper-days", "0"]])
def test_zero_days_is_a_usage_error(argv, capsys):
    settings = dataclasses.replace(load_settings(), run_days=14)
    with pytest.raises(SystemExit) as exc:
        parse_args(argv, settings)
    assert exc.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err
