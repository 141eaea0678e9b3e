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

import json
import time

import dagster as dg
import duckdb
import pytest
import requests
from click.testing import CliRunner

from autotrader_assets.commands.breaker import group as breaker_cli
from autotrader_assets.monitor import MonitoringStack
from autotrader_assets.settings import get_settings
from deploy_ops.db import make_engine
from deploy_ops.slots.local import LocalDeployer
from deploy_ops.state import DEFAULT_ROUTE, DeploymentStateStore
from deploy_ops.trading.breaker import BreakerStore
from tests.support.prometheus import (
    DATES,
    NODE_EXPORTER,
    bar_features,
    free_port,
    materialize,
    panel_queries,
    pushed_metadata,
    query,
    save_bundle,
    serving_targets,
    tool,
    wait_for,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tool("prometheus"), tool("prometheus-pushgateway")
    root = tmp_path_factory.mktemp("prometheus_stack")
    targets = root / "serving_targets.json"
    stack = MonitoringStack(
        workdir=root / "monitoring",
        targets_file=targets,
        prometheus_port=free_port(),
        pushgateway_port=free_port(),
        scrape_interval="1s",
    )
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
        yield {
            "root": root,
            "stack": stack,
            "state": state,
            "deployer": deployer,
            "url": url,
            "sha": sha,
            "warehouse": warehouse,
            "targets": targets,
        }
    finally:
        deployer.stop_all()
        stack.stop()
        make_engine(url).dispose()


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
        answer = requests.post(
            f"{blue.url}/predict", json={"instrument": "BTCUSDT", "rows": [[0.0, 0.0, 50.0, 0.0]]}, timeout=5
        )
        assert answer.status_code == 200, answer.text
        time.sleep(0.25)
    wait_for(
        lambda: (
            query(stack, "autotrader_trading_pnl")
            and query(
                stack,
                'sum(rate(autotrader_serving_requests_total{job="autotrader-serving",endpoint="/predict"}[5m])) > 0',
            )
        ),
        what="the pushed metrics and the slot's requests in Prometheus",
    )
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
    assert {(b, t) for b, t, _ in without_data} == {
        ("system", "CPU"),
        ("system", "Memory"),
        ("system", "Disk"),
        ("system", "Network"),
    }
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
