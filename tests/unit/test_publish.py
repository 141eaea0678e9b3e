"""The DuckDB publisher: one transaction per batch, publication and quarantine records."""

from __future__ import annotations

import duckdb
import pytest

from autotrader_assets.defs.market_data.publish import (
    DuckDBPublisher,
    PublishBatch,
    detect_interval_seconds,
    partition_status,
)
from autotrader_assets.defs.market_data.replay import ReplaySource


@pytest.fixture
def day():
    return ReplaySource(seed=5).day_bars("BTCUSDT", "2024-02-01")


def test_a_failing_commit_publishes_nothing(day, monkeypatch):
    con = duckdb.connect()
    pub = DuckDBPublisher(con)
    pub.publish(PublishBatch("market_bars", "b1", passed={("2024-02-01", "BTCUSDT"): day}))
    broken = day.assign(close="not a number")  # the insert fails inside the transaction
    with pytest.raises(duckdb.Error):
        pub.publish(
            PublishBatch(
                "market_bars", "b2", passed={("2024-02-01", "BTCUSDT"): broken, ("2024-02-02", "BTCUSDT"): day}
            )
        )
    assert con.execute("select count(*), count(distinct date) from market_bars").fetchone() == (len(day), 1)
    assert con.execute("select batch_id from published_partitions").fetchall() == [("b1",)]


def test_interval_and_status(day):
    con = duckdb.connect()
    pub = DuckDBPublisher(con)
    five = day[day["ts"].dt.minute % 5 == 0]
    assert detect_interval_seconds(day) == 60 and detect_interval_seconds(five) == 300
    assert detect_interval_seconds(day.iloc[:1]) is None
    pub.publish(
        PublishBatch(
            "market_bars", "b1", passed={("2024-02-01", "BTCUSDT"): five}, intervals={("2024-02-01", "BTCUSDT"): 300}
        )
    )
    status = partition_status(con, "market_bars", [("2024-02-01", "BTCUSDT"), ("2024-02-02", "BTCUSDT")])
    assert status["state"].tolist() == ["published", "missing"]
    assert status["interval_s"].tolist()[0] == 300


def test_a_new_model_column_reaches_the_published_table():
    con = duckdb.connect()
    con.execute("create table audit as select date '2024-02-01' as date, 'BTCUSDT' as instrument, 1.0 as f1")
    DuckDBPublisher(con).publish(
        PublishBatch("feats", "b1", audit_relation="audit", passed_keys=[("2024-02-01", "BTCUSDT")])
    )
    con.execute(
        "create or replace table audit as select date '2024-02-02' as date, 'BTCUSDT' as instrument, 1.0 as f1, 2.0 as f2"
    )
    DuckDBPublisher(con).publish(
        PublishBatch("feats", "b2", audit_relation="audit", passed_keys=[("2024-02-02", "BTCUSDT")])
    )
    assert con.execute("select cast(date as varchar), f1, f2 from feats order by date").fetchall() == [
        ("2024-02-01", 1.0, None),
        ("2024-02-02", 1.0, 2.0),
    ]
