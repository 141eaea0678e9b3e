"""A small world for the drift tests: a warehouse with one day of features and paper-trading
records, and a registry where v1 (known-good) and v2 (production) carry their own references."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from types import SimpleNamespace

import duckdb
import numpy as np
import pandas as pd
import torch

from autotrader_assets.defs.monitoring.psi import fit_reference
from deploy_ops.models.bundle import LogisticClassifier, ModelBundle, StandardScaler
from deploy_ops.models.registry import open_registry

FEATURES = ["f0", "f1", "f2"]
INSTRUMENTS = ["BTCUSDT", "ETHUSDT"]
DAY = "2024-03-05"


def bundle_with_reference(center: float, seed: int, reference: bool = True) -> ModelBundle:
    """A logistic bundle whose training rows (for the reference) are N(center, 1) per feature."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    rows = {f: rng.normal(center, 1.0, 4000) for f in FEATURES}
    meta = {"feature_reference": fit_reference(rows)} if reference else {}
    x = np.column_stack([rows[f] for f in FEATURES])
    return ModelBundle(
        model=LogisticClassifier(len(FEATURES)),
        model_class="logistic",
        model_kwargs={},
        scaler=StandardScaler.fit(x),
        feature_names=list(FEATURES),
        metadata=meta,
    )


def register(registry, bundle: ModelBundle):
    return registry.register(
        bundle,
        metrics={"auc": 0.6},
        params={},
        lineage={"test": True},
        stage="staging",
        actor="test",
        reason="trained in a test",
    )


def write_day(
    warehouse: Path, day: str, center: float, version: str | None = "2", seed: int = 99, features: list[str] = FEATURES
) -> None:
    """One day of 1-minute feature rows, N(center, 1), for INSTRUMENTS, and the paper-trading
    record that ``version`` served them (None: nothing paper-traded the day)."""
    rng = np.random.default_rng(seed)
    ts = pd.date_range(day, periods=1440, freq="1min")
    frames = []
    for name in INSTRUMENTS:
        frame = pd.DataFrame({"instrument": name, "ts": ts, "date": pd.Timestamp(day).date()})
        for f in features:
            frame[f] = rng.normal(center, 1.0, len(ts))
        frames.append(frame)
    rows = pd.concat(frames, ignore_index=True)
    con = duckdb.connect(str(warehouse))
    try:
        con.register("rows", rows)
        tables = {r[0] for r in con.execute("select table_name from information_schema.tables").fetchall()}
        if "bar_features" in tables:
            con.execute("delete from bar_features where date = ?", [pd.Timestamp(day).date()])
            con.execute("insert into bar_features by name select * from rows")
        else:
            con.execute("create table bar_features as select * from rows")
        con.execute(
            "create table if not exists model_confidence (date date, instrument varchar, mean_confidence double, "
            "n integer, model_version varchar, slot varchar, computed_at timestamp)"
        )
        con.execute("delete from model_confidence where date = ?", [pd.Timestamp(day).date()])
        if version is not None:
            for name in INSTRUMENTS:
                con.execute(
                    "insert into model_confidence values (?, ?, 0.2, 1440, ?, 'blue', now())",
                    [pd.Timestamp(day).date(), name, version],
                )
    finally:
        con.close()


def make_world(tmp_path: Path, *, old_production_bundle: bool = False) -> SimpleNamespace:
    """v1: trained on N(0, 1), once production, now known-good; v2: trained on N(3, 1), in production."""
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    registry = open_registry(url, str(tmp_path / "artifacts"))
    v1 = register(registry, bundle_with_reference(0.0, seed=1))
    registry.promote(v1.version, actor="test", reason="first production")
    v2 = register(registry, bundle_with_reference(3.0, seed=2, reference=not old_production_bundle))
    registry.promote(v2.version, actor="test", reason="second production")
    return SimpleNamespace(
        url=url,
        registry=registry,
        v1=v1,
        v2=v2,
        warehouse=tmp_path / "warehouse.duckdb",
        artifacts=str(tmp_path / "artifacts"),
        tmp=tmp_path,
    )


def day_date(day: str = DAY) -> dt.date:
    return dt.date.fromisoformat(day)
