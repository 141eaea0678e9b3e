"""The README's backfill command, run as a user would: a subprocess of the Dagster CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_dg_launch_partition_range_backfill(tmp_path):
    env = {**os.environ, "AUTOTRADER_HOME": str(tmp_path), "DAGSTER_HOME": str(tmp_path / "dh")}
    (tmp_path / "dh").mkdir()
    dg = Path(sys.executable).parent / "dg"
    proc = subprocess.run(
        [
            str(dg),
            "launch",
            "--assets",
            "market_bars,stg_market_bars,bar_features",
            "--partition-range",
            "2024-03-01|BTCUSDT...2024-03-02|ETHUSDT",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True)
    parts = con.execute(
        "select cast(date as varchar), instrument from bar_features group by all order by all"
    ).fetchall()
    con.close()
    assert parts == [
        ("2024-03-01", "BTCUSDT"),
        ("2024-03-01", "ETHUSDT"),
        ("2024-03-02", "BTCUSDT"),
        ("2024-03-02", "ETHUSDT"),
    ]
    assert sorted(p.name for p in (tmp_path / "archive" / "2024-03-02").iterdir()) == [
        "BTCUSDT.parquet",
        "ETHUSDT.parquet",
    ]
