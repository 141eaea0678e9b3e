"""Paper trading through Dagster against real serving slots.

Two slot processes are started with LocalDeployer: blue serves a small untrained MLP (v1), green
an always-long logistic model (v2), and the routing table sends BTCUSDT to green (a canary) and
everything else to blue. A temporary DuckDB warehouse holds a synthetic ``bar_features`` table
for three dates x three instruments; BTCUSDT crashes on the second date, so the account's
circuit breaker trips there. The test materializes ``paper_trading`` date by date with
``dg.materialize`` and checks the tables, the carry-over, the breaker (check, observation,
event, sensor, blocked next date, CLI reset), a re-run of the first date recomputing the later
ones identically, and the metrics asset's pictures.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from autotrader_assets.commands.breaker import group as breaker_cli
from autotrader_assets.defs.trading import (
    circuit_breaker_check,
    circuit_breaker_sensor,
    paper_trading,
    trading_performance,
)
from autotrader_assets.defs.trading.rollback_decision import ALERT_EVENT
from autotrader_assets.resources import RegistryResource, WarehouseResource
from autotrader_assets.settings import FEATURE_COLUMNS, get_settings
from deploy_ops.db import make_engine
from deploy_ops.models.bundle import ModelBundle, StandardScaler, build_model
from deploy_ops.slots.local import LocalDeployer
from deploy_ops.state import DEFAULT_ROUTE, DeploymentStateStore
from deploy_ops.trading.breaker import TRIP_EVENT, BreakerStore

MODEL_FEATURES = ["ret_1", "ret_5", "rsi_14", "volume_z_60"]
INSTRUMENTS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
DATES = ["2024-03-01", "2024-03-02", "2024-03-03"]
BARS_PER_DAY = 240
CRASH_START = 100  # BTCUSDT falls 1.5% a bar for 40 bars from here on the second date
RUN_CONFIG = {"ops": {"paper_trading": {"config": {"instruments": INSTRUMENTS}}}}


def save_bundle(path: Path, model_class: str, seed: int) -> tuple[str, ModelBundle]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    kwargs = {"hidden": [8]} if model_class == "mlp" else {}
    model = build_model(model_class, len(MODEL_FEATURES), **kwargs)
    if model_class == "logistic":
        # Ignores its inputs and says "up" with p = sigmoid(5) = 0.993: always long.
        with torch.no_grad():
            model.linear.weight.zero_()
            model.linear.bias.fill_(5.0)
    bundle = ModelBundle(
        model=model,
        model_class=model_class,
        model_kwargs=kwargs,
        scaler=StandardScaler.fit(rng.normal(size=(100, len(MODEL_FEATURES)))),
        feature_names=list(MODEL_FEATURES),
    )
    return bundle.save(str(path)), bundle


def synthetic_bar_features() -> pd.DataFrame:
    rng = np.random.default_rng(42)
    frames = []
    n = BARS_PER_DAY * len(DATES)
    for k, name in enumerate(INSTRUMENTS):
        ret = rng.normal(0.0, 1e-4, n)
        if name == "BTCUSDT":
            crash = BARS_PER_DAY + CRASH_START
            ret[crash : crash + 40] = np.log(0.985)
        close = (100.0 + 10 * k) * np.exp(np.cumsum(ret))
        open_ = np.r_[close[0], close[:-1]]
        ts = np.concatenate([pd.date_range(d, periods=BARS_PER_DAY, freq="1min").to_numpy() for d in DATES])
        frame = pd.DataFrame(
            {
                "instrument": name,
                "ts": ts,
                "date": pd.to_datetime(ts).date,
                "open": open_,
                "high": np.maximum(open_, close) * 1.0002,
                "low": np.minimum(open_, close) * 0.9998,
                "close": close,
                "volume": rng.uniform(1, 10, n),
            }
        )
        for col in FEATURE_COLUMNS:
            values = rng.normal(50.0, 10.0, n) if col == "rsi_14" else rng.normal(0.0, 1.0, n)
            values[:60] = np.nan  # warm-up: the first 60 bars of an instrument's history
            frame[col] = values
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def slots(tmp_path_factory):
    """blue = MLP v1, green = always-long logistic v2, as real serving processes."""
    root = tmp_path_factory.mktemp("slots")
    state = DeploymentStateStore(f"sqlite:///{root / 'slots.db'}")
    deployer = LocalDeployer(state, root / "work", ready_timeout=90, stop_grace=5)
    sha1, bundle1 = save_bundle(root / "v1.pt", "mlp", 1)
    sha2, bundle2 = save_bundle(root / "v2.pt", "logistic", 2)
    try:
        deployer.start_slot("blue", root / "v1.pt", sha1, "v1")
        deployer.start_slot("green", root / "v2.pt", sha2, "v2")
        yield {"state": state, "bundles": {"v1": bundle1, "v2": bundle2}}
    finally:
        deployer.stop_all()
        make_engine(state.url).dispose()


@pytest.fixture
def world(slots, tmp_path, monkeypatch):
    """A fresh state store pointing at the running slots, a warehouse with bar_features, an instance."""
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    state = DeploymentStateStore(url)
    for info in slots["state"].slots().values():
        state.set_slot(
            info.slot,
            status=info.status,
            version=info.version,
            url=info.url,
            host=info.host,
            port=info.port,
            pid=info.pid,
        )
    state.set_routes({DEFAULT_ROUTE: "blue", "BTCUSDT": "green"})
    warehouse = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(warehouse)) as con:
        frame = synthetic_bar_features()
        con.register("_bf", frame)
        con.execute("create table bar_features as select * from _bf")
    monkeypatch.setenv("AUTOTRADER_REGISTRY_URL", url)
    get_settings.cache_clear()
    resources = {
        "warehouse": WarehouseResource(path=str(warehouse)),
        "registry": RegistryResource(url=url, artifacts_uri=str(tmp_path / "artifacts")),
        "settings": get_settings(),
    }
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        yield {
            "url": url,
            "state": state,
            "warehouse": str(warehouse),
            "resources": resources,
            "instance": instance,
            "bundles": slots["bundles"],
        }
    make_engine(url).dispose()
    get_settings.cache_clear()


def materialize(world, date: str, *assets, raise_on_error: bool = True):
    return dg.materialize(
        [paper_trading, circuit_breaker_check, *assets],
        partition_key=date,
        resources=world["resources"],
        instance=world["instance"],
        run_config=RUN_CONFIG,
        raise_on_error=raise_on_error,
    )


def query(world, sql: str, params=()) -> pd.DataFrame:
    with duckdb.connect(world["warehouse"], read_only=True) as con:
        return con.execute(sql, list(params)).df()


def snapshot(world) -> dict[str, pd.DataFrame]:
    out = {}
    with duckdb.connect(world["warehouse"], read_only=True) as con:
        for table in (
            "paper_account_state",
            "paper_instrument_state",
            "paper_positions",
            "paper_equity",
            "paper_fills",
            "paper_trades",
            "model_confidence",
        ):
            cols = [
                c
                for c in con.execute(f"select * from {table} limit 0").df().columns
                if c not in ("computed_at", "run_id")
            ]
            order = ", ".join(c for c in ("date", "instrument", "ts") if c in cols)
            out[table] = con.execute(f"select {', '.join(cols)} from {table} order by {order}").df()
    return out


def check_evaluation(result):
    evals = [e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert len(evals) == 1
    return evals[0]


def materialized_partitions(result) -> set[str]:
    return {
        e.event_specific_data.materialization.partition
        for e in result.all_events
        if e.event_type_value == "ASSET_MATERIALIZATION" and e.asset_key == dg.AssetKey("paper_trading")
    }


def test_paper_trading_through_dagster_with_real_slots(world):
    # -- date 1: fresh account, canary instrument on green ------------------------------------
    result = materialize(world, DATES[0])
    assert result.success
    assert check_evaluation(result).passed
    conf = query(world, "select * from model_confidence order by instrument")
    assert conf["slot"].tolist() == ["green", "blue", "blue"]  # BTC, ETH, SOL
    assert conf["model_version"].tolist() == ["v2", "v1", "v1"]
    assert conf["n"].tolist() == [BARS_PER_DAY - 60] * 3  # warm-up bars are not sent
    assert conf["mean_confidence"].iloc[0] == pytest.approx(abs(1 / (1 + np.exp(-5.0)) - 0.5) * 2, rel=1e-6)

    # The stored probabilities are the blue model's own answers for the same feature rows.
    eth = query(
        world,
        "select p.proba, f.ret_1, f.ret_5, f.rsi_14, f.volume_z_60 from paper_positions p "
        "join bar_features f using (instrument, ts) where instrument = 'ETHUSDT' order by ts",
    )
    assert eth["proba"].iloc[:60].isna().all()
    expected = world["bundles"]["v1"].predict_proba(eth[MODEL_FEATURES].iloc[60:].to_numpy())
    # float32 inference: batch composition moves the last digits.
    np.testing.assert_allclose(eth["proba"].iloc[60:].to_numpy(), expected, rtol=1e-5, atol=1e-7)

    btc_fills = query(world, "select * from paper_fills where instrument = 'BTCUSDT'")
    # Always long: one buy, at the open of the bar after the first prediction (bar 60).
    assert btc_fills["side"].tolist() == ["buy"] and btc_fills["slot"].tolist() == ["green"]
    assert btc_fills["ts"].iloc[0] == pd.Timestamp(DATES[0]) + pd.Timedelta(minutes=61)

    # -- date 2: BTCUSDT crashes; the breaker trips and flattens at the next bar ---------------
    result = materialize(world, DATES[1])
    assert result.success  # a tripped breaker is a failed check, not a failed run
    evaluation = check_evaluation(result)
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    meta = {k: v.value for k, v in evaluation.metadata.items()}
    assert meta["tripped"] is True and "daily loss" in meta["reason"]
    assert meta["day_loss"] > 0.05 and meta["equity"] < 100_000 * 0.95

    account = query(world, "select * from paper_account_state order by date")
    assert account["day_open_equity"].iloc[1] == account["end_equity"].iloc[0]  # carried exactly
    trip_at = account["trip_at"].iloc[1]
    curve = query(world, "select * from paper_equity where date = ? order by ts", [DATES[1]])
    first_breach = curve.loc[curve["day_loss"] > 0.05, "ts"].iloc[0]
    assert trip_at == first_breach
    assert pd.Timestamp(meta["tripped_at"]).tz_localize(None) == trip_at
    after = query(
        world, "select instrument, ts, units from paper_positions where date = ? and ts > ?", [DATES[1], trip_at]
    )
    assert (after["units"] == 0.0).all()  # every sleeve flat from the bar after the trip
    sells = query(world, "select * from paper_fills where instrument = 'BTCUSDT' and date = ?", [DATES[1]])
    assert sells["side"].tolist() == ["sell"] and sells["ts"].iloc[0] == trip_at + pd.Timedelta(minutes=1)

    observations = [
        e.event_specific_data.asset_observation for e in result.all_events if e.event_type_value == "ASSET_OBSERVATION"
    ]
    assert len(observations) == 1 and observations[0].partition == DATES[1]
    assert observations[0].metadata["newly_tripped"].value is True
    store = BreakerStore(world["url"])
    assert store.status().tripped
    trip_events = world["state"].events_since(0, kinds=[TRIP_EVENT])
    assert len(trip_events) == 1 and trip_events[0].severity == "critical"

    # -- the sensor: alert event + emergency rollback request, once -----------------------------
    context = dg.build_sensor_context(
        instance=world["instance"], resources={"registry": world["resources"]["registry"]}
    )
    tick = circuit_breaker_sensor.evaluate_tick(context)
    assert [(r.job_name, r.run_key) for r in tick.run_requests] == [
        ("emergency_rollback", f"circuit-breaker-trip-{store.status().trip_id}")
    ]
    alerts = world["state"].events_since(0, kinds=[ALERT_EVENT])
    assert len(alerts) == 1 and alerts[0].severity == "critical"
    again = circuit_breaker_sensor.evaluate_tick(
        dg.build_sensor_context(
            instance=world["instance"], cursor=tick.cursor, resources={"registry": world["resources"]["registry"]}
        )
    )
    assert again.run_requests == [] and again.skip_message
    assert len(world["state"].events_since(0, kinds=[ALERT_EVENT])) == 1

    # -- date 3: the breaker is still tripped -> no new orders, and the metadata says so --------
    result = materialize(world, DATES[2])
    mat = result.asset_materializations_for_node("paper_trading")[0]
    assert f"No new orders on {DATES[2]}" in mat.metadata["orders_blocked"].value
    assert query(world, "select count(*) n from paper_fills where date = ?", [DATES[2]])["n"].iloc[0] == 0
    assert (query(world, "select units from paper_positions where date = ?", [DATES[2]])["units"] == 0.0).all()
    blocked_conf = query(world, "select * from model_confidence where date = ?", [DATES[2]])
    assert (blocked_conf["n"] == 0).all() and blocked_conf["slot"].isna().all()  # the model is not even asked

    # -- re-running date 1 recomputes dates 2 and 3, identically --------------------------------
    before = snapshot(world)
    runs_before = query(world, "select date, run_id from paper_account_state order by date")
    result = materialize(world, DATES[0])
    assert materialized_partitions(result) == set(DATES)
    after = snapshot(world)
    for table, frame in before.items():
        pd.testing.assert_frame_equal(after[table], frame, check_exact=True, obj=table)
    runs_after = query(world, "select date, run_id from paper_account_state order by date")
    assert (runs_after["run_id"] == result.run_id).all() and not (runs_before["run_id"] == result.run_id).any()
    assert [r.action for r in store.history()] == ["trip"]  # the same trip, not a second one

    # -- an approved reset (CLI) re-enables trading from the next computed date -----------------
    refused = CliRunner().invoke(breaker_cli, ["reset", "--reason", "x"])
    assert refused.exit_code == 2 and store.status().tripped
    reset = CliRunner().invoke(breaker_cli, ["reset", "--approved-by", "risk-desk", "--reason", "crash understood"])
    assert reset.exit_code == 0, reset.output
    result = materialize(world, DATES[2], trading_performance)
    assert check_evaluation(result).passed
    resumed = query(world, "select * from paper_fills where date = ? and instrument = 'BTCUSDT'", [DATES[2]])
    assert resumed["side"].tolist() == ["buy"]
    assert not query(world, "select blocked_at_start from paper_account_state where date = ?", [DATES[2]]).iloc[0, 0]

    # -- trading_performance: numbers and pictures -------------------------------------------------
    perf = result.asset_materializations_for_node("trading_performance")[0].metadata
    for key in ("equity_curve", "drawdown_plot"):
        image = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)\)", perf[key].value)
        assert image, key
        assert base64.b64decode(image.group(1))[:8] == b"\x89PNG\r\n\x1a\n"
    account = query(world, "select * from paper_account_state order by date")
    assert perf["current_equity"].value == pytest.approx(account["end_equity"].iloc[-1])
    assert perf["total_pnl"].value == pytest.approx(account["end_equity"].iloc[-1] - 100_000.0)
    assert perf["max_drawdown"].value > 0.05
    assert perf["sharpe_convention"].value["annualization"] == "sqrt(365)"
    # A handful of paper-traded days: the Sharpe is shown with its count and marked as meaningless.
    n_returns = perf["sharpe_n_returns"].value
    assert n_returns < 30 and perf["sharpe_meaningful"].value is False
    assert perf["sharpe_text"].value.endswith(f"({n_returns} daily returns; not meaningful below 30)")
    assert "BTCUSDT" in perf["positions"].value and "green" in perf["positions"].value
    daily = query(world, "select * from trading_performance_daily order by date")
    assert daily["tripped"].tolist() == [False, True, False]
    assert daily["pnl"].to_numpy() == pytest.approx((account["end_equity"] - account["day_open_equity"]).to_numpy())


def test_a_run_that_cannot_get_predictions_fails_loudly_and_writes_nothing(world):
    assert materialize(world, DATES[0]).success
    before = snapshot(world)
    world["state"].set_slot_status("green", "stopped")  # the canary's slot is gone
    result = materialize(world, DATES[1], raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "BTCUSDT is routed to slot green, which is stopped" in str(failure.event_specific_data.error)
    after = snapshot(world)
    for table, frame in before.items():
        pd.testing.assert_frame_equal(after[table], frame, obj=table)
    assert not BreakerStore(world["url"]).status().tripped


def test_missing_feature_rows_are_refused_with_the_instrument_named(world):
    with duckdb.connect(world["warehouse"]) as con:
        con.execute("delete from bar_features where instrument = 'SOLUSDT' and date = ?", [dt.date(2024, 3, 1)])
    result = materialize(world, DATES[0], raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "no rows for 2024-03-01 and instrument(s) ['SOLUSDT']" in str(failure.event_specific_data.error)
