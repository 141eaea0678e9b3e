"""Benchmark: one paper-trading date x 10 instruments, end to end, against the engine alone.

    .venv/bin/python benchmarks/paper_trading.py [--instruments 10] [--bars 1440] [--repeats 5] [--no-dagster]

Setup (untimed): a real serving slot process (LocalDeployer, an MLP bundle over the 14 warehouse
features, hidden layers 64 and 32), a routing table sending every instrument to it, and a
temporary DuckDB warehouse with one date of synthetic ``bar_features`` per instrument.

Timed, best of ``--repeats``:

* ``paper date``: ``run_paper_trading`` for the date -- read the features from DuckDB, get the
  predictions over HTTP from the slot (batches of 1024 rows, so 2 requests per instrument for
  1440 bars), run the backtest engine with the breaker, write the seven warehouse tables.
* ``engine alone``: ``run_portfolio`` on the same bars and the same probabilities (turned into
  targets), the baseline the ratio is measured against.
* ``engine + breaker``: ``run_paper_day`` on the same inputs (the engine, the breaker detection
  and the account curve), to show what the breaker itself costs.

The ratio paper date / engine alone is the serving and bookkeeping overhead. With ``--dagster``
(the default) the script also times one ``dg.materialize`` of the asset, to show Dagster's own
per-run cost beside it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import duckdb  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from autotrader_assets.settings import DEFAULT_INSTRUMENTS, FEATURE_COLUMNS, Thresholds  # noqa: E402

DATE = "2024-03-01"
EXTRA = ("LINKUSDT", "DOTUSDT", "LTCUSDT", "TRXUSDT", "NEARUSDT", "ATOMUSDT")


def make_features(instruments: list[str], n_bars: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frames = []
    ts = pd.date_range(DATE, periods=n_bars, freq="1min")
    for k, name in enumerate(instruments):
        close = (100.0 + k) * np.exp(np.cumsum(rng.normal(0.0, 3e-4, n_bars)))
        open_ = np.r_[close[0], close[:-1]]
        frame = pd.DataFrame(
            {
                "instrument": name,
                "ts": ts,
                "date": ts.date,
                "open": open_,
                "high": np.maximum(open_, close),
                "low": np.minimum(open_, close),
                "close": close,
                "volume": rng.uniform(1, 10, n_bars),
            }
        )
        for col in FEATURE_COLUMNS:
            frame[col] = rng.normal(0.0, 1.0, n_bars)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def best(times: list[float]) -> str:
    return f"best {min(times) * 1000:8.1f} ms   median {statistics.median(times) * 1000:8.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instruments", type=int, default=10)
    parser.add_argument("--bars", type=int, default=1440)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-dagster", action="store_true", help="skip the dg.materialize timing")
    args = parser.parse_args()
    if not 1 <= args.instruments <= len(DEFAULT_INSTRUMENTS) + len(EXTRA):
        parser.error(f"--instruments must be in 1..{len(DEFAULT_INSTRUMENTS) + len(EXTRA)}")
    if not 2 <= args.bars <= 1440:
        parser.error("--bars must be in 2..1440 (one UTC day of 1-minute bars)")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    # Beta notices of Dagster APIs (partition mapping, backfill policy) are not results.
    warnings.filterwarnings("ignore", message=".*currently in beta")
    instruments = list((*DEFAULT_INSTRUMENTS, *EXTRA)[: args.instruments])

    import torch

    from autotrader_assets.defs.trading import warehouse as wh
    from autotrader_assets.defs.trading.paper import DayInput, PaperParams, run_paper_day, targets_from_proba
    from autotrader_assets.defs.trading.service import breaker_view, duckdb_connector, run_paper_trading
    from deploy_ops.models.bundle import ModelBundle, StandardScaler, build_model
    from deploy_ops.slots.local import LocalDeployer
    from deploy_ops.state import DEFAULT_ROUTE, DeploymentStateStore
    from deploy_ops.trading.backtest import run_portfolio
    from deploy_ops.trading.breaker import BreakerStore

    t = Thresholds()
    params = PaperParams(
        fee_bps=4.0, slippage_bps=2.0, daily_loss_limit=t.breaker_daily_loss, drawdown_limit=t.breaker_drawdown
    )
    with tempfile.TemporaryDirectory(prefix="bench-paper-") as tmp:
        root = Path(tmp)
        url = f"sqlite:///{root / 'registry.db'}"
        state = DeploymentStateStore(url)
        torch.manual_seed(args.seed)
        bundle = ModelBundle(
            model=build_model("mlp", len(FEATURE_COLUMNS), hidden=(64, 32)),
            model_class="mlp",
            model_kwargs={"hidden": [64, 32]},
            scaler=StandardScaler.fit(np.random.default_rng(args.seed).normal(size=(256, len(FEATURE_COLUMNS)))),
            feature_names=list(FEATURE_COLUMNS),
        )
        sha = bundle.save(str(root / "model.pt"))
        warehouse = str(root / "warehouse.duckdb")
        with duckdb.connect(warehouse) as con:
            con.register("_bf", make_features(instruments, args.bars, args.seed))
            con.execute("create table bar_features as select * from _bf")
        connect = duckdb_connector(warehouse)
        deployer = LocalDeployer(state, root / "slots", ready_timeout=120)
        try:
            deployer.start_slot("blue", root / "model.pt", sha, "bench-v1")
            state.set_routes({DEFAULT_ROUTE: "blue"})

            # Untimed warm-up: first connections, DuckDB catalog, the slot's first batches.
            report = run_paper_trading(connect, url, [DATE], instruments, params)
            paper, breakdowns = [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                report = run_paper_trading(connect, url, [DATE], instruments, params)
                paper.append(time.perf_counter() - t0)
                breakdowns.append(report.seconds)
            day = report.results[0]
            requests = sum(v["n_requests"] for v in report.serving[day.date].values())

            with connect() as con:
                bars = wh.read_day_features(con, dt.date.fromisoformat(DATE), instruments, [])
            proba = day.proba
            day_input = DayInput(day.date, bars, proba)
            # The same breaker view the timed runs saw: if the warm-up run tripped the breaker,
            # the stored trip halts the day from its bar and the engine runs once, as there.
            view = breaker_view(BreakerStore(url))[0]
            engine, engine_breaker = [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                targets = {n: targets_from_proba(proba[n], params.signal) for n in instruments}
                result = run_portfolio(
                    bars,
                    targets,
                    fee_bps=params.fee_bps,
                    slippage_bps=params.slippage_bps,
                    initial_equity=params.initial_equity,
                )
                engine.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                run_paper_day(day_input, None, params, view)
                engine_breaker.append(time.perf_counter() - t0)
            if day.halted_from is None and result.equity.iloc[-1] != day.end.equity:
                raise RuntimeError("the engine alone and the paper run disagree on the same predictions")

            dagster_seconds = None
            if not args.no_dagster:
                import dagster as dg

                from autotrader_assets.defs.trading import paper_trading
                from autotrader_assets.resources import RegistryResource, WarehouseResource
                from autotrader_assets.settings import get_settings

                (root / "dagster").mkdir()
                with dg.instance_for_test(temp_dir=str(root / "dagster")) as instance:
                    t0 = time.perf_counter()
                    dg.materialize(
                        [paper_trading],
                        partition_key=DATE,
                        instance=instance,
                        resources={
                            "warehouse": WarehouseResource(path=warehouse),
                            "registry": RegistryResource(url=url, artifacts_uri=str(root / "artifacts")),
                            "settings": get_settings(),
                        },
                        run_config={"ops": {"paper_trading": {"config": {"instruments": instruments}}}},
                    )
                    dagster_seconds = time.perf_counter() - t0
        finally:
            deployer.stop_all()

    fastest = breakdowns[int(np.argmin(paper))]
    print(
        f"paper trading, one date x {len(instruments)} instruments x {args.bars} bars "
        f"({requests} HTTP /predict requests, {day.portfolio.fills.shape[0]} fills), best of {args.repeats}"
    )
    if day.trip is not None:
        print(
            f"  (the untrained model loses: the breaker trips at {day.trip.at:%H:%M} on {day.trip.reason}; "
            f"later repeats find it stored and halt from there)"
        )
    print(f"  paper date (features + HTTP + engine + breaker + writes) {best(paper)}")
    print(
        f"    of which: read {fastest['read'] * 1000:.1f} ms, predict (HTTP) {fastest['predict'] * 1000:.1f} ms, "
        f"engine+breaker {fastest['engine'] * 1000:.1f} ms, breaker store {fastest['breaker'] * 1000:.1f} ms, "
        f"write {fastest['write'] * 1000:.1f} ms"
    )
    print(f"  engine alone (run_portfolio, same predictions)        {best(engine)}")
    print(f"  engine + breaker (run_paper_day, same predictions)    {best(engine_breaker)}")
    print(
        f"  overhead ratio paper date / engine alone: {min(paper) / min(engine):.1f}x "
        f"(serving + bookkeeping {1000 * (min(paper) - min(engine)):.1f} ms)"
    )
    if dagster_seconds is not None:
        print(f"  one dg.materialize of paper_trading (in-process, fresh instance): {dagster_seconds * 1000:.0f} ms")


if __name__ == "__main__":
    main()
