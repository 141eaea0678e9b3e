"""Batch metrics to the Pushgateway: the catalogue's rules, what is sent, and that a Pushgateway
that is down never fails the caller. The real Pushgateway is in tests/integration/test_prometheus_stack.py."""

from __future__ import annotations

import math
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from deploy_ops import metrics_push as mp
from deploy_ops.slots.scrape_targets import target_groups, write_targets
from deploy_ops.state import SlotRecord

ROOT = Path(__file__).resolve().parents[2]


class _Recorder(BaseHTTPRequestHandler):
    received: list = []

    def _store(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        type(self).received.append((self.command, self.path, body))
        self.send_response(200)
        self.end_headers()

    do_PUT = do_POST = _store

    def log_message(self, *args):
        pass


@pytest.fixture
def gateway():
    _Recorder.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Recorder.received
    server.shutdown()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_catalogue_names_follow_the_conventions():
    for name, spec in mp.CATALOGUE.items():
        assert name.startswith("autotrader_") and re.fullmatch(r"[a-z_]+", name), name
        assert (spec.kind == "counter") == name.endswith("_total"), name
    with pytest.raises(ValueError, match="counters, and only counters"):
        mp.MetricSpec("autotrader_trades", "counter", "no _total")
    with pytest.raises(ValueError, match="must start with"):
        mp.MetricSpec("trades_total", "counter", "no prefix")


def test_the_readme_lists_exactly_the_catalogue():
    text = (ROOT / "monitoring" / "README.md").read_text()
    section = text.split("## Pushed metrics", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`(autotrader_[a-z_]+)`", section))
    assert listed == set(mp.CATALOGUE), f"missing {set(mp.CATALOGUE) - listed}, extra {listed - set(mp.CATALOGUE)}"


def test_push_sends_the_group_with_put_and_the_exposition(gateway):
    url, received = gateway
    summary = {
        "current_equity": 101_000.0,
        "total_pnl": 1000.0,
        "daily_pnl": -50.0,
        "sharpe": {"value": 1.7},
        "win_rate": 0.55,
        "max_drawdown": {"value": 0.04},
        "profit_factor": {"value": "inf"},
        "trades_per_minute": 0.2,
        "n_fills": 12,
        "n_trades": 5,
    }
    samples = mp.trading_samples(summary, [{"instrument": "BTCUSDT", "units": 0.5, "notional": 20_000.0, "pnl": 300.0}])
    outcome = mp.push(url, mp.TRADING_JOB, samples)
    assert outcome.status == "pushed" and outcome.warning is None
    method, path, body = received[0]
    assert (method, path) == ("PUT", "/metrics/job/paper_account")
    assert "# TYPE autotrader_trading_trades_total counter" in body
    assert "autotrader_trading_trades_total 5.0" in body
    assert "autotrader_trading_profit_factor +Inf" in body
    assert 'autotrader_trading_position_units{instrument="BTCUSDT"} 0.5' in body
    assert "_created" not in body  # a batch value has no creation time worth a series


def test_pushadd_uses_post_and_the_grouping_labels(gateway):
    url, received = gateway
    mp.push(url, "data_pipeline", mp.job_failure_samples(3), {"source": "run_status"}, replace=False)
    method, path, body = received[0]
    assert (method, path) == ("POST", "/metrics/job/data_pipeline/source/run_status")
    assert "autotrader_job_consecutive_failures 3.0" in body


def test_a_pushgateway_that_is_down_is_a_warning_not_an_error():
    url = f"http://127.0.0.1:{closed_port()}"
    started = time.perf_counter()
    outcome = mp.push(url, mp.BREAKER_JOB, mp.breaker_samples(True))
    assert time.perf_counter() - started < 3
    assert outcome.status == "failed"
    assert "ConnectionRefused" in outcome.error or "Connection refused" in outcome.error
    assert outcome.warning.startswith(f"metrics not pushed to the Pushgateway {url}")
    assert outcome.to_dict()["status"] == "failed"


def test_a_pushgateway_that_answers_an_error_is_a_warning_too():
    class Refuse(BaseHTTPRequestHandler):
        def do_PUT(self):
            self.send_response(400)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        outcome = mp.push(f"http://127.0.0.1:{server.server_address[1]}", mp.BREAKER_JOB, mp.breaker_samples(False))
    finally:
        server.shutdown()
    assert outcome.status == "failed" and "400" in outcome.error


def test_without_a_url_nothing_is_sent_but_samples_are_still_checked():
    assert mp.push("", mp.BREAKER_JOB, mp.breaker_samples(False)).status == "skipped"
    with pytest.raises(mp.UnknownMetricError, match="not a catalogued metric"):
        mp.push("", "x", [mp.Sample("autotrader_nonsense", 1.0)])
    with pytest.raises(mp.UnknownMetricError, match="labels"):
        mp.push("", "x", [mp.Sample("autotrader_feature_psi", 0.1, {"feature": "ret_1"})])
    with pytest.raises(mp.UnknownMetricError, match="NaN"):
        mp.push("", "x", [mp.Sample("autotrader_model_confidence_ratio", math.nan)])


def test_builders_leave_out_what_was_not_measured():
    summary = {
        "current_equity": 100.0,
        "total_pnl": 0.0,
        "daily_pnl": 0.0,
        "sharpe": {"value": None},
        "win_rate": None,
        "max_drawdown": {"value": 0.0},
        "profit_factor": {"value": None},
        "trades_per_minute": 0.0,
        "n_fills": 0,
        "n_trades": 0,
    }
    names = {s.name for s in mp.trading_samples(summary, [])}
    assert "autotrader_trading_sharpe_ratio" not in names and "autotrader_trading_win_rate_ratio" not in names
    assert mp.psi_samples([("ret_1", 3, float("nan")), ("rsi_14", 3, 0.25)]) == [
        mp.Sample("autotrader_feature_psi", 0.25, {"feature": "rsi_14", "model_version": "3"})
    ]
    assert mp.confidence_samples(None) == []
    assert mp.health_samples(None, None) == []
    assert mp.health_samples(0.7, 0.4) == [
        mp.Sample("autotrader_model_confidence_ratio", 0.7),
        mp.Sample("autotrader_trading_rolling_win_rate_ratio", 0.4),
    ]


def _slot(name, status, url):
    return SlotRecord(
        slot=name, status=status, version="3", url=url, host="127.0.0.1", port=None, pid=None, updated_at=None
    )


def test_targets_list_exactly_the_running_slots(tmp_path):
    slots = {
        "blue": _slot("blue", "ready", "http://127.0.0.1:8101"),
        "green": _slot("green", "stopped", "http://127.0.0.1:8102"),
    }
    path = write_targets(tmp_path / "sd" / "serving.json", slots)
    import json

    assert json.loads(path.read_text()) == [{"targets": ["127.0.0.1:8101"], "labels": {"slot_name": "blue"}}]
    slots["green"] = _slot("green", "starting", "http://127.0.0.1:8102")
    slots["blue"] = _slot("blue", "failed", "http://127.0.0.1:8101")
    assert target_groups(slots.values()) == [{"targets": ["127.0.0.1:8102"], "labels": {"slot_name": "green"}}]


def test_market_data_groups_take_each_instruments_last_published_date():
    import pandas as pd

    from autotrader_assets.pushing import market_data_groups

    fractions = {"2024-03-01|BTCUSDT": 0.2, "2024-03-02|BTCUSDT": 0.01, "2024-03-02|ETHUSDT": 0.07}
    outliers = [
        pd.DataFrame(
            {
                "ts": pd.to_datetime(["2024-03-01 10:00", "2024-03-02 11:00", "2024-03-02 12:00"], utc=True),
                "instrument": ["BTCUSDT", "BTCUSDT", "ETHUSDT"],
            }
        )
    ]
    groups = market_data_groups(fractions, outliers)
    assert groups["BTCUSDT"] == mp.market_data_samples("BTCUSDT", 0.01, 1)  # 2024-03-01's 20% is history
    assert groups["ETHUSDT"] == mp.market_data_samples("ETHUSDT", 0.07, 1)
    assert market_data_groups({"2024-03-02|SOLUSDT": 0.0}, [])["SOLUSDT"] == mp.market_data_samples("SOLUSDT", 0.0, 0)


def test_run_status_sensors_push_last_success_and_failures_in_a_row(gateway, tmp_path):
    import dataclasses

    import dagster as dg

    from autotrader_assets.defs.monitoring.run_metrics import (
        failures_in_a_row,
        job_failure_metrics_sensor,
        job_success_metrics_sensor,
    )
    from autotrader_assets.settings import get_settings

    url, received = gateway
    outcome = {"fail": True}

    @dg.op
    def step():
        if outcome["fail"]:
            raise RuntimeError("boom")

    @dg.job
    def data_pipeline():
        step()

    settings = dataclasses.replace(get_settings(), pushgateway_url=url)
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        runs = [data_pipeline.execute_in_process(instance=instance, raise_on_error=False) for _ in range(3)]
        failed = runs[-1].dagster_run
        assert failures_in_a_row(instance, failed) == 3
        ctx = dg.build_run_status_sensor_context(
            sensor_name="job_failure_metrics_sensor",
            dagster_instance=instance,
            dagster_run=failed,
            dagster_event=runs[-1].get_run_failure_event(),
            resources={"settings": settings},
        ).for_run_failure()
        job_failure_metrics_sensor(ctx)
        assert received[-1][:2] == ("POST", "/metrics/job/data_pipeline/source/run_status")
        assert "autotrader_job_consecutive_failures 3.0" in received[-1][2]

        outcome["fail"] = False
        ok = data_pipeline.execute_in_process(instance=instance)
        ctx = dg.build_run_status_sensor_context(
            sensor_name="job_success_metrics_sensor",
            dagster_instance=instance,
            dagster_run=ok.dagster_run,
            dagster_event=ok.get_run_success_event(),
            resources={"settings": settings},
        )
        job_success_metrics_sensor(ctx)
        body = received[-1][2]
        assert "autotrader_job_consecutive_failures 0.0" in body
        stamp = float(re.search(r"autotrader_job_last_success_timestamp_seconds ([0-9.e+]+)", body).group(1))
        assert abs(stamp - time.time()) < 60

        # Without a Pushgateway nothing is sent.
        before = len(received)
        ctx = dg.build_run_status_sensor_context(
            sensor_name="job_success_metrics_sensor",
            dagster_instance=instance,
            dagster_run=ok.dagster_run,
            dagster_event=ok.get_run_success_event(),
            resources={"settings": dataclasses.replace(settings, pushgateway_url="")},
        )
        job_success_metrics_sensor(ctx)
        assert len(received) == before
