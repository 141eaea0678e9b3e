"""``autotrader drill drift|slot-crash|error-rate``: bad arguments are refused before anything is
read or injected (exit 2, the option named)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from autotrader_assets.cli import main


@pytest.mark.parametrize(
    "args, option",
    [
        (["drift", "--date", "2024-03-05", "--shift", "0"], "--shift"),
        (["drift", "--date", "2024-13-05"], "--date"),
        (["drift"], "--date"),
        (["error-rate", "--error-rate", "0"], "--error-rate"),
        (["error-rate", "--error-rate", "1.5"], "--error-rate"),
        (["error-rate", "--fault-seconds", "700", "--timeout", "600"], "--fault-seconds"),
        (["slot-crash", "--timeout", "0"], "--timeout"),
    ],
)
def test_bad_drill_arguments_are_refused_by_name(args, option, tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOTRADER_HOME", str(tmp_path))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    result = CliRunner().invoke(main, ["drill", *args])
    assert result.exit_code == 2, result.output
    assert option in result.output
    assert not (tmp_path / "drills").exists()  # nothing was injected or backed up
