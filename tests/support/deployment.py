"""Helpers for the deployment tests: synthetic markets and logistic bundles whose quality the
gates can see, a registry + state + local slots stack on a temporary folder, a ``bar_features``
table for rollouts that read the warehouse, and probes of what the slots serve.

Models are logistic bundles on synthetic bars where feature ``f0`` predicts the next bar's
return: a positive weight on ``f0`` trades profitably, a negative one loses, so the Sharpe gate
has a real difference to see.
"""

from __future__ import annotations

import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import duckdb
import numpy as np
import pandas as pd
import torch

from autotrader_assets.settings import FEATURE_COLUMNS, Thresholds
from deploy_ops.models.bundle import ModelBundle, StandardScaler, build_model
from deploy_ops.models.registry import open_registry
from deploy_ops.procs import pid_running
from deploy_ops.rollout.measurement import parse_serving_metrics
from deploy_ops.rollout.policy import RolloutPolicy
from deploy_ops.serving.client import RoutedClient, ServingClient
from deploy_ops.slots.local import LocalBackend, LocalDeployer
from deploy_ops.state import DeploymentStateStore

INSTRUMENTS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "ADAUSDT")
CANARY = ("BTCUSDT", "ETHUSDT")
FEATURES = ["f0", "f1", "f2"]


def synthetic_market(instrument: str, n: int = 240, signal: float = 0.003, noise: float = 0.0005):
    """Feature rows and 1-minute bars where ``f0`` at bar t predicts the open-to-open return of the
    bar the backtest holds a position for (filled at t+1's open, marked until t+2's open)."""
    rng = np.random.default_rng(zlib.crc32(instrument.encode()))
    f0 = rng.normal(size=n)
    r = np.empty(n + 1)
    r[0] = noise * rng.normal()
    r[1:] = signal * f0 + noise * rng.normal(size=n)
    opens = 100.0 * np.cumprod(np.concatenate([[1.0], 1.0 + r]))
    o, c = opens[:n], opens[1 : n + 1]
    bars = pd.DataFrame(
        {
            "ts": pd.date_range("2024-03-01", periods=n, freq="1min", tz="UTC"),
            "open": o,
            "high": np.maximum(o, c) * 1.0005,
            "low": np.minimum(o, c) * 0.9995,
            "close": c,
            "volume": rng.lognormal(3.0, 0.5, size=n),
        }
    )
    features = pd.DataFrame({"f0": f0, "f1": rng.normal(size=n), "f2": rng.normal(size=n)})
    features.iloc[:5] = np.nan  # warm-up rows, as bar_features has them
    return features, bars


def traffic_source(instrument: str):
    return synthetic_market(instrument)


def logistic_bundle(weight: float, bias: float = 0.0) -> ModelBundle:
    """P(up) = sigmoid(weight * f0 + bias): weight > 0 is the good model, < 0 the anti-model."""
    model = build_model("logistic", len(FEATURES))
    with torch.no_grad():
        model.linear.weight[:] = torch.tensor([[weight, 0.0, 0.0]])
        model.linear.bias[:] = bias
    return ModelBundle(
        model=model,
        model_class="logistic",
        model_kwargs={},
        scaler=StandardScaler(mean=np.zeros(len(FEATURES)), std=np.ones(len(FEATURES))),
        feature_names=list(FEATURES),
        metadata={"weight": weight, "bias": bias},
    )


#: The gates as the settings default them, and test costs (the policy itself has no defaults).
GATES = dict(
    max_error_rate=Thresholds().max_error_rate,
    max_p99_latency_ms=Thresholds().max_p99_latency_ms,
    max_sharpe_drop=Thresholds().max_sharpe_drop,
    min_sharpe_returns=Thresholds().min_sharpe_returns,
    fee_bps=4.0,
    slippage_bps=2.0,
)


def rollout_policy(**overrides) -> RolloutPolicy:
    kwargs = dict(
        GATES,
        instruments=INSTRUMENTS,
        canary_instruments=CANARY,
        stage_seconds=1.0,
        requests_per_second=150,
        min_requests=10,
        health_interval_seconds=0.2,
        lease_timeout_seconds=30,
    )
    kwargs.update(overrides)
    return RolloutPolicy(**kwargs)


def wait_dead(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while pid_running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not pid_running(pid)


def register(registry, bundle: ModelBundle, stage: str = "staging"):
    return registry.register(
        bundle,
        metrics={"auc": 0.6},
        params={},
        lineage={"test": True},
        stage=stage,
        actor="test",
        reason="trained in a test",
    )


def make_stack(tmp_path: Path) -> SimpleNamespace:
    url = f"sqlite:///{tmp_path / 'registry.db'}"  # state lives beside the registry, as in production
    registry = open_registry(url, str(tmp_path / "artifacts"))
    state = DeploymentStateStore(url)
    deployer = LocalDeployer(state, tmp_path / "slots", ready_timeout=60, stop_grace=3)
    backend = LocalBackend(deployer, registry)
    return SimpleNamespace(url=url, registry=registry, state=state, deployer=deployer, backend=backend, tmp=tmp_path)


def teardown_stack(stack: SimpleNamespace) -> None:
    """Stop every slot recorded in the store (also ones another process started); fail on leaks."""
    for slot, info in stack.state.slots().items():
        if info.pid and pid_running(info.pid):
            stack.deployer.stop_slot(slot, force=True)
    leaked = [info.pid for info in stack.state.slots().values() if info.pid and not wait_dead(info.pid, 5)]
    assert leaked == [], f"slot processes left running: {leaked}"


def serve_production(stack: SimpleNamespace, bundle: ModelBundle, slot: str = "blue"):
    """Register ``bundle``, promote it and serve it from ``slot`` with every route on it."""
    mv = register(stack.registry, bundle)
    stack.registry.promote(mv.version, actor="test", reason="initial production")
    stack.backend.start(slot, stack.registry.get(mv.version))
    stack.state.switch_all(slot)
    return stack.registry.get(mv.version)


def predict_everywhere(state: DeploymentStateStore, n_features: int = len(FEATURES)) -> dict[str, str]:
    """Ask the router for every instrument; return the version that answered each."""
    rows = np.zeros((2, n_features))
    with RoutedClient(state, cache_seconds=0) as client:
        return {i: client.predict(i, rows).model_version for i in INSTRUMENTS}


def predict_5xx(url: str) -> int:
    with ServingClient(url) as client:
        parsed = parse_serving_metrics(client.metrics_text())
    return int(sum(v for k, v in parsed["by_status"].items() if k.startswith("5")))


N_ROWS = 300
WARMUP = 60


def write_bar_features(path) -> None:
    """``bar_features`` as the dbt model lays it out, with ``ret_1`` predicting the next bar."""
    frames = []
    for instrument in INSTRUMENTS:
        rng = np.random.default_rng(zlib.crc32(instrument.encode()))
        signal = rng.normal(size=N_ROWS)
        # signal[t] moves the open of bar t+2: the bar a position decided at t is held over
        r = np.concatenate([[0.0005 * rng.normal()], 0.003 * signal + 0.0005 * rng.normal(size=N_ROWS)])
        opens = 50.0 * np.cumprod(np.concatenate([[1.0], 1.0 + r]))
        frame = pd.DataFrame(
            {
                "instrument": instrument,
                "ts": pd.date_range("2024-05-01", periods=N_ROWS, freq="1min"),
                "open": opens[:N_ROWS],
                "close": opens[1 : N_ROWS + 1],
            }
        )
        frame["date"] = frame["ts"].dt.date
        frame["high"] = frame[["open", "close"]].max(axis=1) * 1.0004
        frame["low"] = frame[["open", "close"]].min(axis=1) * 0.9996
        frame["volume"] = rng.lognormal(3, 0.5, size=N_ROWS)
        for j, name in enumerate(FEATURE_COLUMNS):
            frame[name] = signal if j == 0 else rng.normal(size=N_ROWS)
        frame.loc[: WARMUP - 1, list(FEATURE_COLUMNS)] = np.nan  # warm-up rows are NULL
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    con = duckdb.connect(str(path))
    try:
        con.register("frame", table)
        con.execute("create table bar_features as select * from frame")
    finally:
        con.close()


def feature_bundle(weight: float, bias: float = 0.0) -> ModelBundle:
    n = len(FEATURE_COLUMNS)
    model = build_model("logistic", n)
    with torch.no_grad():
        model.linear.weight.zero_()
        model.linear.weight[0, 0] = weight
        model.linear.bias[:] = bias
    return ModelBundle(
        model=model,
        model_class="logistic",
        model_kwargs={},
        scaler=StandardScaler(mean=np.zeros(n), std=np.ones(n)),
        feature_names=list(FEATURE_COLUMNS),
    )
