"""Writers and readers of the one DuckDB warehouse take turns (two real processes)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from autotrader_assets.resources import WarehouseBusyError, WarehouseResource


def _hold(db: str) -> subprocess.Popen:
    """Another process that holds the warehouse open for writing until its stdin closes."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, sys; c = duckdb.connect({db!r}); print('locked', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.parametrize("read_only", [False, True])
def test_connect_waits_for_the_holder_to_finish(tmp_path, read_only):
    db = str(tmp_path / "warehouse.duckdb")
    with WarehouseResource(path=db).connect():  # the file exists, for read-only opens
        pass
    holder = _hold(db)
    threading.Timer(1.0, holder.stdin.close).start()
    t0 = time.monotonic()
    with WarehouseResource(path=db, lock_timeout_s=30).connect(read_only=read_only) as con:
        assert con.execute("select 1").fetchone() == (1,)
    assert time.monotonic() - t0 >= 0.9
    holder.wait(timeout=30)


def test_connect_gives_up_after_the_bound_naming_the_holder(tmp_path):
    db = str(tmp_path / "warehouse.duckdb")
    holder = _hold(db)
    try:
        t0 = time.monotonic()
        with pytest.raises(WarehouseBusyError, match=rf"locked by PID {holder.pid} \(.*sys\.stdin\.read"):
            with WarehouseResource(path=db, lock_timeout_s=0.5).connect():
                pass
        assert time.monotonic() - t0 < 10
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def test_lock_timeout_comes_from_the_settings(monkeypatch):
    from autotrader_assets.resources import default_resources
    from autotrader_assets.settings import load_settings

    monkeypatch.setenv("AUTOTRADER_WAREHOUSE_LOCK_TIMEOUT", "12.5")
    settings = load_settings()
    assert settings.warehouse_lock_timeout_s == 12.5
    assert default_resources(settings)["warehouse"].lock_timeout_s == 12.5


def test_run_summary_counts_quarantined_partitions_and_waits_like_every_reader(tmp_path):
    import duckdb

    from autotrader_assets.defs.market_data.publish import DuckDBPublisher, PublishBatch
    from autotrader_assets.defs.market_data.replay import ReplaySource
    from autotrader_assets.runner import warehouse_summary

    db = str(tmp_path / "warehouse.duckdb")
    day = ReplaySource(seed=5).day_bars("BTCUSDT", "2024-03-01")
    con = duckdb.connect(db)
    DuckDBPublisher(con).publish(PublishBatch("market_bars", "b1", passed={("2024-03-01", "BTCUSDT"): day}))
    DuckDBPublisher(con).publish(
        PublishBatch(
            "market_bars",
            "b2",
            failed={("2024-03-02", "BTCUSDT"): day.iloc[:0]},
            reasons={("2024-03-02", "BTCUSDT"): "partition is empty"},
        )
    )
    con.close()
    assert warehouse_summary(db) == {"market_bars": {"rows": len(day), "partitions": 1, "quarantined": 1}}
    holder = _hold(db)
    try:
        with pytest.raises(WarehouseBusyError, match=f"PID {holder.pid}"):
            warehouse_summary(db, lock_timeout_s=0.3)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
