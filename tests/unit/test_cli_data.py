"""`autotrader data`: validate warehouse partitions, list archive versions, refuse bad restores."""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pytest
from click.testing import CliRunner

from autotrader_assets.commands.data import group
from autotrader_assets.defs.market_data.archive import LocalArchive
from autotrader_assets.defs.market_data.replay import ReplaySource
from autotrader_assets.defs.market_data.warehouse import replace_partitions
from autotrader_assets.settings import get_settings


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOTRADER_HOME", str(tmp_path))
    monkeypatch.delenv("AUTOTRADER_WAREHOUSE", raising=False)
    monkeypatch.delenv("AUTOTRADER_ARCHIVE_URI", raising=False)
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def _warehouse(home):
    replay = ReplaySource(seed=5)
    good = replay.day_bars("BTCUSDT", "2024-03-01")
    bad = replay.day_bars("ETHUSDT", "2024-03-01")
    bad.loc[3, "close"] = np.nan
    bad.loc[4, "low"] = bad.loc[4, "high"] * 2
    con = duckdb.connect(str(home / "warehouse.duckdb"))
    replace_partitions(con, {("2024-03-01", "BTCUSDT"): good, ("2024-03-01", "ETHUSDT"): bad})
    con.close()
    return good, bad


def run(*args):
    return CliRunner().invoke(group, list(args), catch_exceptions=False)


def test_validate_reports_each_partition_and_fails_on_bad_or_missing(home):
    good, _bad = _warehouse(home)
    result = run(
        "validate",
        "--start",
        "2024-03-01",
        "--instrument",
        "BTCUSDT",
        "--instrument",
        "ETHUSDT",
        "--instrument",
        "SOLUSDT",
        "--json",
    )
    assert result.exit_code == 1
    report = json.loads(result.stdout[: result.stdout.rindex("]") + 1])
    by_inst = {r["instrument"]: r for r in report}
    assert by_inst["BTCUSDT"] == {
        "date": "2024-03-01",
        "instrument": "BTCUSDT",
        "rows": len(good),
        "schema_passed": True,
        "failures": 0,
        "missing_fraction": round(1 - len(good) / 1440, 4),
        # written straight into the table: no publication record
        "bars": "missing",
        "features": "missing",
        "quarantine_reasons": None,
    }
    assert by_inst["ETHUSDT"]["schema_passed"] is False and by_inst["ETHUSDT"]["failures"] >= 2
    assert by_inst["SOLUSDT"]["failures"] == "partition missing" and not by_inst["SOLUSDT"]["schema_passed"]
    assert "2 partition(s) failed validation" in result.output


def test_validate_passes_clean_partitions(home):
    _warehouse(home)
    result = run("validate", "--start", "2024-03-01", "--instrument", "BTCUSDT")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok ") or "\nok " in result.output


def test_validate_needs_a_warehouse_and_sane_input(home):
    assert run("validate", "--start", "2024-03-01").exit_code == 2  # no warehouse yet: could not read
    _warehouse(home)
    assert run("validate", "--start", "2024-13-01").exit_code == 2
    assert run("validate", "--start", "2024-03-02", "--end", "2024-03-01").exit_code == 2
    assert run("validate", "--start", "2024-03-01", "--instrument", "../etc").exit_code == 2


def test_archive_versions_lists_superseded_files(home):
    store = LocalArchive(home / "archive")
    day = ReplaySource(seed=5).day_bars("BTCUSDT", "2024-03-01")
    store.write("2024-03-01", "BTCUSDT", day)
    store.write("2024-03-01", "BTCUSDT", day.iloc[:10])
    result = run("archive-versions", "--date", "2024-03-01", "--instrument", "BTCUSDT")
    assert result.exit_code == 0
    (stamp,) = store.versions("2024-03-01", "BTCUSDT")
    assert stamp in result.output and "latest" in result.output
    assert run("archive-versions", "--date", "2024-03-02", "--instrument", "BTCUSDT").exit_code == 1


@pytest.mark.parametrize(
    "args",
    [
        ["--date", "2024-02-30", "--reason", "x"],
        ["--date", "2024-03-01", "--instrument", "NOPE", "--reason", "x"],
        ["--date", "2024-03-01", "--reason", "  "],
        ["--date", "2024-03-01", "--reason", "x", "--version", "../../etc"],
        ["--date", "2024-03-01", "--reason", "bad data\nforged row"],
    ],
)
def test_restore_refuses_bad_input_before_running_anything(home, args):
    result = run("restore", *args)
    assert result.exit_code == 2, result.output


def test_restore_without_an_archive_ends_with_the_cause(home):
    """The run fails before writing anything; the last line says why, not only that a step failed."""
    result = CliRunner().invoke(
        group, ["restore", "--date", "2024-03-01", "--instrument", "BTCUSDT", "--reason", "drill"]
    )
    assert result.exit_code == 1
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error: data rollback failed (run ")
    assert "ArchiveMissingError: no archive (latest) for 1 partition(s), nothing restored: 2024-03-01|BTCUSDT" in last


def test_validate_shows_published_and_quarantined_partitions(home):
    """A partition whose newest fetch was quarantined is a validation failure (exit 1), shown
    with its reasons beside the published version that stays."""
    from autotrader_assets.defs.market_data.publish import DuckDBPublisher, PublishBatch

    replay = ReplaySource(seed=5)
    good = replay.day_bars("BTCUSDT", "2024-03-01")
    con = duckdb.connect(str(home / "warehouse.duckdb"))
    publisher = DuckDBPublisher(con)
    publisher.publish(
        PublishBatch(
            "market_bars",
            "b1",
            passed={("2024-03-01", "BTCUSDT"): good, ("2024-03-01", "ETHUSDT"): good.assign(instrument="ETHUSDT")},
        )
    )
    publisher.publish(
        PublishBatch(
            "market_bars",
            "b2",
            failed={("2024-03-01", "ETHUSDT"): good.iloc[:0]},
            reasons={("2024-03-01", "ETHUSDT"): "partition is empty"},
        )
    )
    con.close()
    result = run("validate", "--start", "2024-03-01", "--instrument", "BTCUSDT", "--instrument", "ETHUSDT", "--json")
    assert result.exit_code == 1
    report = {r["instrument"]: r for r in json.loads(result.stdout[: result.stdout.rindex("]") + 1])}
    assert report["BTCUSDT"]["bars"] == "published" and report["BTCUSDT"]["quarantine_reasons"] is None
    assert report["ETHUSDT"]["bars"] == "published; newer version quarantined"
    assert report["ETHUSDT"]["quarantine_reasons"] == "partition is empty"
    assert report["ETHUSDT"]["rows"] == len(good)  # the published version is still there


def test_validate_waits_for_a_writer_then_says_who_holds_the_warehouse(home, monkeypatch):
    """Two real processes: while another process writes, validate waits its bound and exits 2
    (could not read) naming the holder, never with a traceback; once the writer is gone, it reads."""
    import subprocess
    import sys

    _warehouse(home)
    db = str(home / "warehouse.duckdb")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, sys, time; c = duckdb.connect({db!r}); print('locked', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        monkeypatch.setenv("AUTOTRADER_WAREHOUSE_LOCK_TIMEOUT", "0.5")
        get_settings.cache_clear()
        result = CliRunner().invoke(group, ["validate", "--start", "2024-03-01", "--instrument", "BTCUSDT"])
        assert result.exit_code == 2, result.output
        assert f"PID {holder.pid}" in result.output and "sys.stdin.read()" in result.output
        assert "Traceback" not in result.output
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert run("validate", "--start", "2024-03-01", "--instrument", "BTCUSDT").exit_code == 0
