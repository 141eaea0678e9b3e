"""The real Prometheus and Pushgateway (``make monitoring-tools``) on free loopback ports, fed by a
real paper-trading materialization and a real serving slot found through the deployer's file_sd
targets file: every dashboard panel's query returns data, except the panels whose exporter this
machine does not run. No node exporter runs here (the project installs none: Debian's
``prometheus-node-exporter`` is not among the packages ``make monitoring-tools`` unpacks), so the
node-exporter queries (host CPU, memory, disk, network) are asserted to be exactly the ones without
data; the database-connections panel is a CloudWatch query, which no Prometheus can answer.

Also: a Pushgateway that is down leaves the paper-trading run green, with a warning in the run's
log and the failure in the metadata.
"""
from __future__ import annotations

import dataclasses
import json
import socket
import time
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pytest
import requests
import torch
from click.testing import CliRunner

from autotrader_assets.commands.breaker import group as breaker_cli
from autotrader_assets.defs.trading import paper_trading, trading_performance
from autotrader_assets.monitor import MonitoringStack
from autotrader_assets.resources import RegistryResource, WarehouseResource
from autotrader_assets.settings import FEATURE_COLUMNS, get_settings
from deploy_ops.db import make_engine
from deploy_ops.models.bundle import ModelBundle, StandardScaler, build_model
from deploy_ops.slots.local import LocalDeployer
from deploy_ops.state import DEFAULT_ROUTE, DeploymentStateStore
from deploy_ops.trading.breaker import BreakerStore
from tests.support.prometheus import ROOT, tool

pytestmark = pytest.mark.slow

FEATURES = ["ret_1", "ret_5", "rsi_14", "volume_z_60"]
INSTRUMENTS = ["BTCUSDT", "ETHUSDT"]
DATES = ["2024-03-01", "2024-03-02", "2024-03-03"]
# Thresholds at 0.5: the untrained model's signal flips often, so there are closed trades, a win
# rate and a profit factor; three dates give the daily returns a Sharpe ratio needs.
RUN_CONFIG = {"ops": {"paper_trading": {"config": {"instruments": INSTRUMENTS, "long_threshold": 0.5,
                                                   "short_threshold": 0.5}}}}
#: Queries that read what only an exporter this machine does not run provides.
NODE_EXPORTER = "node_"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save_bundle(path: Path, seed: int) -> str:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_model("mlp", len(FEATURES), hidden=[8])
    bundle = ModelBundle(model=model, model_class="mlp", model_kwargs={"hidden": [8]},
                         scaler=StandardScaler.fit(rng.normal(size=(100, len(FEATURES)))), feature_names=FEATURES)
    return bundle.save(str(path))


def bar_features(per_day: int = 240) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    frames = []
    n = per_day * len(DATES)
    for k, name in enumerate(INSTRUMENTS):
        close = (100.0 + 10 * k) * np.exp(np.cumsum(rng.normal(0.0, 1e-3, n)))
        open_ = np.r_[close[0], close[:-1]]
        ts = pd.DatetimeIndex(np.concatenate([pd.date_range(d, periods=per_day, freq="1min") for d in DATES]))
        frame = pd.DataFrame({"instrument": name, "ts": ts, "date": ts.date, "open": open_,
                              "high": np.maximum(open_, close) * 1.0002, "low": np.minimum(open_, close) * 0.9998,
                              "close": close, "volume": rng.uniform(1, 10, n)})
        for col in FEATURE_COLUMNS:
            # On the scaler's own scale, so the untrained model's output swings across 0.5.
            frame[col] = rng.normal(0.0, 1.0, n)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tool("prometheus"), tool("prometheus-pushgateway")
    root = tmp_path_factory.mktemp("prometheus_stack")
    targets = root / "serving_targets.json"
    stack = MonitoringStack(workdir=root / "monitoring", targets_file=targets, prometheus_port=free_port(),
                            pushgateway_port=free_port(), scrape_interval="1s")
    url = f"sqlite:///{root / 'registry.db'}"
    state = DeploymentStateStore(url)
    deployer = LocalDeployer(state, root / "slots", ready_timeout=90, stop_grace=5, targets_file=targets)
    sha = save_bundle(root / "v1.pt", 1)
    warehouse = root / "warehouse.duckdb"
    with duckdb.connect(str(warehouse)) as con:
        con.register("_bf", bar_features())
        con.execute("create table bar_features as select * from _bf")
    try:
        stack.start()
        yield {"root": root, "stack": stack, "state": state, "deployer": deployer, "url": url, "sha": sha,
               "warehouse": warehouse, "targets": targets}
    finally:
        deployer.stop_all()
        stack.stop()
        make_engine(url).dispose()


def resources(world, pushgateway_url: str) -> dict:
    settings = dataclasses.replace(get_settings(), registry_url=world["url"], pushgateway_url=pushgateway_url)
    return {"warehouse": WarehouseResource(path=str(world["warehouse"])),
            "registry": RegistryResource(url=world["url"], artifacts_uri=str(world["root"] / "artifacts")),
            "settings": settings}


def materialize(world, pushgateway_url: str, instance, dates=DATES):
    for date in dates:
        result = dg.materialize([paper_trading, trading_performance], partition_key=date, instance=instance,
                                resources=resources(world, pushgateway_url), run_config=RUN_CONFIG)
    return result


def pushed_metadata(result, asset: str) -> dict:
    mats = [e.event_specific_data.materialization for e in result.all_events
            if e.event_type_value == "ASSET_MATERIALIZATION" and e.asset_key == dg.AssetKey(asset)]
    return mats[-1].metadata["pushgateway"].value


def query(stack: MonitoringStack, expr: str) -> list:
    answer = requests.get(f"{stack.prometheus_url}/api/v1/query", params={"query": expr}, timeout=5).json()
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def serving_targets(stack: MonitoringStack) -> set[str]:
    data = requests.get(f"{stack.prometheus_url}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
    return {t["labels"]["instance"] for t in data if t["labels"]["job"] == "autotrader-serving"}


def wait_for(predicate, timeout: float = 30.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)


def panel_queries():
    for name in ("system", "trading"):
        board = json.loads((ROOT / "monitoring" / "grafana" / "dashboards" / f"{name}.json").read_text())
        for panel in board["panels"]:
            for target in panel["targets"]:
                yield name, panel["title"], target


def test_dashboards_have_data_from_paper_trading_and_the_live_slots(world, tmp_path, monkeypatch):
    stack, deployer, state = world["stack"], world["deployer"], world["state"]
    blue = deployer.start_slot("blue", world["root"] / "v1.pt", world["sha"], "1")
    state.set_routes({DEFAULT_ROUTE: "blue"})
    blue_address = blue.url.removeprefix("http://")
    # The deployer wrote the targets file, Prometheus picked blue up from it.
    assert json.loads(world["targets"].read_text()) == [{"targets": [blue_address], "labels": {"slot_name": "blue"}}]
    wait_for(lambda: serving_targets(stack) == {blue_address}, what="Prometheus to scrape blue")

    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = materialize(world, stack.pushgateway_url, instance)
    assert result.success
    assert pushed_metadata(result, "paper_trading")["status"] == "pushed"
    assert pushed_metadata(result, "trading_performance")["status"] == "pushed"

    # Paper trading called blue, but a counter first scraped after those calls has not moved for
    # rate(): live traffic for a few scrapes, as a serving slot has in operation.
    for _ in range(12):
        answer = requests.post(f"{blue.url}/predict", json={"instrument": "BTCUSDT", "rows": [[0.0, 0.0, 50.0, 0.0]]},
                               timeout=5)
        assert answer.status_code == 200, answer.text
        time.sleep(0.25)
    wait_for(lambda: query(stack, "autotrader_trading_pnl") and query(
        stack, 'sum(rate(autotrader_serving_requests_total{job="autotrader-serving",endpoint="/predict"}[5m])) > 0'),
        what="the pushed metrics and the slot's requests in Prometheus")
    # Fees on ~100 fills cost this account more than 5% on the first day: the breaker tripped, and
    # Prometheus has it. An approved reset through the CLI pushes the armed state at once.
    assert BreakerStore(world["url"]).status().tripped
    assert float(query(stack, "autotrader_circuit_breaker_tripped")[0]["value"][1]) == 1.0
    monkeypatch.setenv("AUTOTRADER_REGISTRY_URL", world["url"])
    monkeypatch.setenv("AUTOTRADER_PUSHGATEWAY_URL", stack.pushgateway_url)
    get_settings.cache_clear()
    try:
        done = CliRunner().invoke(breaker_cli, ["reset", "--approved-by", "test", "--reason", "prometheus test"])
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert done.exit_code == 0, done.output
    wait_for(lambda: query(stack, "autotrader_circuit_breaker_tripped == 0"), what="the reset in Prometheus")

    without_data, cloudwatch = [], []
    for board, title, target in panel_queries():
        if target["datasource"]["type"] == "cloudwatch":
            cloudwatch.append(title)
            continue
        if not query(stack, target["expr"]):
            without_data.append((board, title, target["expr"]))
    assert cloudwatch == ["Database connections"]
    # Only the node exporter's queries are empty here, and each of them is one.
    assert all(NODE_EXPORTER in expr for _, _, expr in without_data), without_data
    assert {(b, t) for b, t, _ in without_data} == {("system", "CPU"), ("system", "Memory"), ("system", "Disk"),
                                                     ("system", "Network")}
    # CPU and memory still show the serving processes' own series.
    assert query(stack, 'rate(process_cpu_seconds_total{job="autotrader-serving"}[5m])')
    assert query(stack, 'process_resident_memory_bytes{job="autotrader-serving"}')

    # Blue/green: green starts, blue stops; Prometheus follows the file to exactly green.
    green = deployer.start_slot("green", world["root"] / "v1.pt", world["sha"], "1")
    state.set_routes({DEFAULT_ROUTE: "green"})
    deployer.stop_slot("blue")
    green_address = green.url.removeprefix("http://")
    assert json.loads(world["targets"].read_text()) == [{"targets": [green_address], "labels": {"slot_name": "green"}}]
    wait_for(lambda: serving_targets(stack) == {green_address}, what="Prometheus to follow the slot change")


def test_a_pushgateway_that_is_down_never_fails_the_run(world, tmp_path):
    deployer, state = world["deployer"], world["state"]
    if not deployer.is_alive("green") and not deployer.is_alive("blue"):
        deployer.start_slot("blue", world["root"] / "v1.pt", world["sha"], "1")
        state.set_routes({DEFAULT_ROUTE: "blue"})
    down = f"http://127.0.0.1:{free_port()}"
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = materialize(world, down, instance, DATES[:1])
        logs = [e.user_message for e in instance.all_logs(result.run_id)]
    assert result.success
    for asset in ("paper_trading", "trading_performance"):
        meta = pushed_metadata(result, asset)
        assert meta["status"] == "failed" and meta["url"] == down and meta["error"] != "-"
    warnings = [m for m in logs if m.startswith(f"metrics not pushed to the Pushgateway {down}")]
    assert len(warnings) == 2, logs
