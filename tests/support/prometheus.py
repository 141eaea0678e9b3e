"""The project's own Prometheus, Pushgateway and Alertmanager binaries (``make monitoring-tools``)
for tests: their paths, or a skip that says how to get them; and the small paper-trading world the
Prometheus tests feed them (an untrained bundle, three days of features, the materializations, the
Prometheus queries and the dashboards' panels)."""

from __future__ import annotations

import dataclasses
import json
import socket
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import requests
import torch

from autotrader_assets.defs.trading import paper_trading, trading_performance
from autotrader_assets.monitor import MonitoringStack
from autotrader_assets.resources import RegistryResource, WarehouseResource
from autotrader_assets.settings import FEATURE_COLUMNS, get_settings
from deploy_ops.models.bundle import ModelBundle, StandardScaler, build_model

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".tools" / "monitoring" / "usr" / "bin"


def tool(name: str) -> Path:
    """``promtool``, ``prometheus``, ``prometheus-pushgateway``, ...; skips the test when absent."""
    import pytest

    path = TOOLS / name
    if not path.is_file():
        pytest.skip(f"{path} is absent: run `make monitoring-tools` (make test does)")
    return path


FEATURES = ["ret_1", "ret_5", "rsi_14", "volume_z_60"]
INSTRUMENTS = ["BTCUSDT", "ETHUSDT"]
DATES = ["2024-03-01", "2024-03-02", "2024-03-03"]
# Thresholds at 0.5: the untrained model's signal flips often, so there are closed trades, a win
# rate and a profit factor; three dates give the daily returns a Sharpe ratio needs.
RUN_CONFIG = {
    "ops": {"paper_trading": {"config": {"instruments": INSTRUMENTS, "long_threshold": 0.5, "short_threshold": 0.5}}}
}
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
    bundle = ModelBundle(
        model=model,
        model_class="mlp",
        model_kwargs={"hidden": [8]},
        scaler=StandardScaler.fit(rng.normal(size=(100, len(FEATURES)))),
        feature_names=FEATURES,
    )
    return bundle.save(str(path))


def bar_features(per_day: int = 240) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    frames = []
    n = per_day * len(DATES)
    for k, name in enumerate(INSTRUMENTS):
        close = (100.0 + 10 * k) * np.exp(np.cumsum(rng.normal(0.0, 1e-3, n)))
        open_ = np.r_[close[0], close[:-1]]
        ts = pd.DatetimeIndex(np.concatenate([pd.date_range(d, periods=per_day, freq="1min") for d in DATES]))
        frame = pd.DataFrame(
            {
                "instrument": name,
                "ts": ts,
                "date": ts.date,
                "open": open_,
                "high": np.maximum(open_, close) * 1.0002,
                "low": np.minimum(open_, close) * 0.9998,
                "close": close,
                "volume": rng.uniform(1, 10, n),
            }
        )
        for col in FEATURE_COLUMNS:
            # On the scaler's own scale, so the untrained model's output swings across 0.5.
            frame[col] = rng.normal(0.0, 1.0, n)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def resources(world, pushgateway_url: str, **settings_changes) -> dict:
    settings = dataclasses.replace(
        get_settings(), registry_url=world["url"], pushgateway_url=pushgateway_url, **settings_changes
    )
    return {
        "warehouse": WarehouseResource(path=str(world["warehouse"])),
        "registry": RegistryResource(url=world["url"], artifacts_uri=str(world["root"] / "artifacts")),
        "settings": settings,
    }


def materialize(world, pushgateway_url: str, instance, dates=DATES, **settings_changes):
    for date in dates:
        result = dg.materialize(
            [paper_trading, trading_performance],
            partition_key=date,
            instance=instance,
            resources=resources(world, pushgateway_url, **settings_changes),
            run_config=RUN_CONFIG,
        )
    return result


def pushed_metadata(result, asset: str) -> dict:
    mats = [
        e.event_specific_data.materialization
        for e in result.all_events
        if e.event_type_value == "ASSET_MATERIALIZATION" and e.asset_key == dg.AssetKey(asset)
    ]
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
