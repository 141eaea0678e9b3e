"""The whole asset graph end to end through Dagster, as `make run` drives it, on temporary stores.

Each test points a fresh AUTOTRADER_HOME at ``tmp_path`` (warehouse DuckDB, archive, SQLite
registry + deployment state, dbt profiles, serving-slot workdir), builds a ``dg.Definitions``
from the code location's real assets, checks and jobs with the resources ``build_resources``
makes for that home, and executes the jobs in process on a temporary Dagster instance:
data_pipeline -> training_job -> deployment_pipeline -> paper_trading_job. Serving slots are
real local processes; every slot a test started is stopped (and checked dead) at teardown.

* Replay source: 8 days x every configured instrument train a model that passes its gates,
  rolls out (bootstrap) to a real slot, paper-trades the last two days; a second candidate then
  goes through the full canary -> 25% -> 50% -> 100% rollout onto the other slot.
* Real BTCUSDT minutes (10 days of January 2022, file source): the promotion gates block the
  candidate (its backtest Sharpe after fees is negative), so nothing is registered, the
  deployment pipeline has nothing to roll out and paper trading refuses with nothing served.
"""

from __future__ import annotations

import base64
import datetime as dt
from types import SimpleNamespace

import dagster as dg
import duckdb
import pytest
import requests
import torch
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from autotrader_assets.defs.deployment import DeploymentStackResource
from autotrader_assets.defs.market_data.partitions import range_tags
from autotrader_assets.defs.market_data.resources import MarketSourceResource
from autotrader_assets.defs.training.gates import GATE_NAMES
from autotrader_assets.runner import (
    PAPER_TRADING_CONFIG,
    REPLAY_PAPER_DAYS,
    REPLAY_WINDOW_DAYS,
    REPLAY_WINDOW_END,
    TRAINING_RUN_CONFIG,
    default_dates,
)
from autotrader_assets.settings import get_settings, load_settings
from deploy_ops.db import make_engine
from deploy_ops.models.registry import open_registry
from deploy_ops.slots.local import LocalDeployer
from deploy_ops.state import DeploymentStateStore
from tests.support.deployment import teardown_stack
from tests.support.pipeline import shared_file

pytestmark = pytest.mark.slow
torch.set_num_threads(1)

#: The smallest replay window on which v1 (seed 7) and v2 (seed 9) clear every gate, measured on
#: the minute-based features (horizons in minutes of time, so the replay's dropped minutes change
#: some rows and with them the trained weights). 30% of 8 days leaves 3 daily test returns, fewer
#: than min_sharpe_returns (30), so sharpe_vs_production judges the test period's total return
#: after costs: v1 +2.83% against the floor 0 (Sharpe 7.85, not meaningful on 3 returns; max
#: drawdown 3.1%, test AUC 0.675), v2 +3.92% against v1's +2.83% on the same test rows (drawdown
#: 2.1%, test minus train AUC 0.012, shuffled-label AUC 0.462). In the canary (the newest 240
#: minutes of BTCUSDT and ETHUSDT, 0.55/0.45 signal, 4+2 bps) v2 loses less than v1 per minute:
#: Sharpe -59.8 against -95.5 (floor -114.6; the gate allows 20% below live). Both lose money in
#: those four hours after costs; the gate compares them, it does not ask for a profit.
#: Seed 8, the v2 seed before the feature rewrite, now passes training (+3.63%) but fails that
#: canary (-154.5, 62% below live: it trades 92 times against v1's 75); seed 10 passes everything
#: (+6.37%, canary -88.9); seeds 11 and 12 fail sharpe_vs_production (+2.80%, +1.93%). With 7
#: days (from 03-08) seed 9 trips the leakage gate (test AUC 0.675 is 0.268 above the
#: shuffled-label AUC, limit 0.25) and seed 8 fails the canary again (24% below live); 6 days
#: leave only the minimum 2 daily returns.
#: `make run` uses the same window (runner.REPLAY_WINDOW_*): this test is its proof.
REPLAY_DATES = default_dates(REPLAY_WINDOW_DAYS, end=REPLAY_WINDOW_END)
PAPER_DATES = REPLAY_DATES[-REPLAY_PAPER_DAYS:]
#: Real BTCUSDT minutes: 10 days of January 2022.
BTC_FILE = ("crypto_1m", "BTCUSDT-PERP_1m_2021-12-31_2022-02-01.csv")
BTC_DATES = [(dt.date(2022, 1, 3) + dt.timedelta(days=i)).isoformat() for i in range(10)]


def training_config(seed: int = 7, **dataset) -> dict:
    """`make run`'s TRAINING_RUN_CONFIG (horizon 15, 30% test, thresholds 0.6/0.4), one torch thread."""
    ops = TRAINING_RUN_CONFIG["ops"]
    return {
        "ops": {
            "training_dataset": {"config": {**ops["training_dataset"]["config"], **dataset}},
            "candidate_model": {"config": {**ops["candidate_model"]["config"], "seed": seed, "torch_threads": 1}},
        }
    }


def paper_config(**overrides) -> dict:
    """`make run`'s PAPER_TRADING_CONFIG (empty: thresholds come from the production model's params)."""
    return {"ops": {"paper_trading": {"config": {**PAPER_TRADING_CONFIG, **overrides}}}}


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A temporary AUTOTRADER_HOME with the embedded local profile; slots stopped at the end."""
    for name in (
        "AUTOTRADER_ENV",
        "AUTOTRADER_REGISTRY_URL",
        "AUTOTRADER_ARCHIVE_URI",
        "AUTOTRADER_ARTIFACTS_URI",
        "AUTOTRADER_WAREHOUSE",
        "AUTOTRADER_INSTRUMENTS",
        "AUTOTRADER_MARKET_SOURCE",
        "AUTOTRADER_SERVING_TOKEN",
        "AUTOTRADER_FEE_BPS",
        "AUTOTRADER_SLIPPAGE_BPS",
        "AUTOTRADER_REPLAY_SEED",
        "DAGSTER_HOME",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AUTOTRADER_HOME", str(tmp_path))
    monkeypatch.setenv("AUTOTRADER_STAGE_SECONDS", "1")
    get_settings.cache_clear()
    settings = load_settings()
    assert settings.home == tmp_path.resolve() and settings.registry_url.startswith("sqlite:///")
    state = DeploymentStateStore(settings.registry_url)
    try:
        yield settings
    finally:
        teardown_stack(SimpleNamespace(state=state, deployer=LocalDeployer(state, tmp_path / "slots")))
        make_engine(settings.registry_url).dispose()
        get_settings.cache_clear()


def build_defs(settings, **overrides) -> dg.Definitions:
    """The code location's assets, checks and jobs with the resources of ``settings`` (+ overrides)."""
    from autotrader_assets.definitions import build_definitions, build_resources

    location = build_definitions(settings)
    resources = build_resources(settings)
    resources.update(overrides)
    return dg.Definitions(
        assets=location.assets,
        asset_checks=location.asset_checks,
        jobs=location.jobs,
        resources=resources,
        executor=dg.in_process_executor,
    )


def run(defs: dg.Definitions, job: str, instance: dg.DagsterInstance, **kwargs) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def(job).execute_in_process(instance=instance, raise_on_error=False, **kwargs)


def materialized(result: dg.ExecuteInProcessResult) -> set[str]:
    return {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}


def checks(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def failures(result: dg.ExecuteInProcessResult) -> str:
    """Step failures and failed checks of a run, for assertion messages."""
    out = [
        f"{e.step_key}: {e.step_failure_data.error.to_string() if e.step_failure_data.error else ''} "
        f"{e.step_failure_data.user_failure_data.description if e.step_failure_data.user_failure_data else ''}"
        for e in result.get_step_failure_events()
    ]
    out += [
        f"check {name} failed: {dict((k, v.value) for k, v in ev.metadata.items())}"
        for name, ev in checks(result).items()
        if not ev.passed
    ]
    return "\n".join(out) or "no step failures"


def query(settings, sql: str, params=()) -> list[tuple]:
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


def deployment_metadata(result: dg.ExecuteInProcessResult) -> dict:
    return {k: v.value for k, v in result.asset_materializations_for_node("production_deployment")[0].metadata.items()}


def ready(slot_info) -> dict:
    """GET /ready of a slot process: the real HTTP answer, not the recorded status."""
    response = requests.get(f"{slot_info.url}/ready", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def png_from_markdown(markdown: str) -> bytes:
    prefix = "(data:image/png;base64,"
    assert prefix in markdown, markdown[:200]
    data = markdown.split(prefix, 1)[1].split(")", 1)[0]
    return base64.b64decode(data)


def test_replay_data_to_paper_trading(home):
    """Replay bars -> features -> v1 (bootstrap on blue) -> two paper days -> v2 (canary..100% on green)."""
    settings = home
    instruments = list(settings.instruments)
    assert len(instruments) == 8
    defs = build_defs(settings)
    instance = dg.DagsterInstance.ephemeral()

    # -- data: market_bars (+ checks, archive) -> dbt staging and features --------------------------
    data = run(defs, "data_pipeline", instance, tags=range_tags(REPLAY_DATES[0], REPLAY_DATES[-1], instruments))
    assert data.success, failures(data)
    assert {"market_bars", "stg_market_bars", "bar_features"} <= materialized(data)
    expected_partitions = {(d, i) for d in REPLAY_DATES for i in instruments}
    for table in ("market_bars", "bar_features"):
        counts = dict(
            ((str(d), i), n)
            for d, i, n in query(settings, f"select date, instrument, count(*) from {table} group by 1, 2")
        )
        assert set(counts) == expected_partitions, table
        # the replay leaves a few single-minute gaps and rare outages, never most of a day
        assert min(counts.values()) > 1300 and max(counts.values()) <= 1440, table
    assert (settings.home / "archive" / REPLAY_DATES[0] / "BTCUSDT.parquet").is_file()

    # -- training: dataset -> candidate -> every promotion gate -> registered v1 (staging) ----------
    trained = run(defs, "training_job", instance, run_config=training_config())
    assert trained.success, failures(trained)
    gates = checks(trained)
    assert set(gates) == set(GATE_NAMES) and all(g.passed for g in gates.values()), failures(trained)
    registry = open_registry(settings.registry_url, settings.artifacts_uri)
    v1 = registry.get(trained.output_for_node("registered_model")["version"])
    assert (v1.version, v1.stage) == (1, "staging")
    training_data = v1.lineage["training_data"]
    assert sorted(training_data["partitions"]) == sorted(f"{d}|{i}" for d, i in expected_partitions)
    assert (training_data["start_date"], training_data["end_date"]) == (REPLAY_DATES[0], REPLAY_DATES[-1])
    assert training_data["label_horizon_bars"] == 15 and v1.metrics["sharpe"] > 0

    # -- deployment: nothing in production yet, so v1 bootstraps onto blue with all routes ----------
    deployed = run(defs, "deployment_pipeline", instance)
    assert deployed.success, failures(deployed)
    meta = deployment_metadata(deployed)
    assert (meta["version"], meta["outcome"], meta["mode"]) == (1, "succeeded", "bootstrap"), meta
    assert "| bootstrap | pass |" in meta["gate_readings"]
    assert registry.get_production().version == 1
    state = DeploymentStateStore(settings.registry_url)
    assert set(state.routing_table().values()) == {"blue"}
    blue = state.get_slot("blue")
    answer = ready(blue)
    assert (answer["model_version"], answer["sha256"], answer["slot"]) == ("1", v1.sha256, "blue")

    # -- paper trading over the last two days (the served model's predictions), then the metrics ---
    paper = run(
        defs,
        "paper_trading_job",
        instance,
        tags={ASSET_PARTITION_RANGE_START_TAG: PAPER_DATES[0], ASSET_PARTITION_RANGE_END_TAG: PAPER_DATES[-1]},
        run_config=paper_config(),
    )
    assert paper.success, failures(paper)
    assert {"paper_trading", "trading_performance"} <= materialized(paper)
    assert checks(paper)["circuit_breaker"].passed
    for table in (
        "paper_account_state",
        "paper_instrument_state",
        "paper_positions",
        "paper_equity",
        "paper_fills",
        "model_confidence",
    ):
        dates = [str(d) for (d,) in query(settings, f"select distinct date from {table} order by 1")]
        assert dates == PAPER_DATES, table
    served = set(query(settings, "select slot, model_version from model_confidence"))
    assert served == {("blue", "1")}
    (n_instruments,) = query(settings, "select count(distinct instrument) from paper_positions")[0]
    assert n_instruments == len(instruments)
    (day1_open, day1_end), (day2_open, day2_end) = query(
        settings, "select day_open_equity, end_equity from paper_account_state order by date"
    )
    assert day2_open == pytest.approx(day1_end, rel=1e-12)  # the account carries over midnight
    assert day1_end != day1_open and day2_end != day2_open  # it really traded
    perf = {k: v.value for k, v in paper.asset_materializations_for_node("trading_performance")[0].metadata.items()}
    assert perf["current_equity"] == pytest.approx(day2_end)
    assert png_from_markdown(perf["equity_curve"]).startswith(b"\x89PNG\r\n\x1a\n")

    # -- a second candidate (another seed) must beat v1 on the same test rows, then roll out --------
    retrained = run(defs, "training_job", instance, run_config=training_config(seed=9))
    assert retrained.success, failures(retrained)
    assert checks(retrained)["sharpe_vs_production"].metadata["compared_to"].value != "floor (no production model)"
    v2 = registry.get(retrained.output_for_node("registered_model")["version"])
    assert (v2.version, v2.stage) == (2, "staging") and v2.sha256 != v1.sha256

    rolled = run(defs, "deployment_pipeline", instance)
    assert rolled.success, failures(rolled)
    meta = deployment_metadata(rolled)
    assert (meta["version"], meta["outcome"], meta["mode"]) == (2, "succeeded", "blue_green"), meta
    assert (meta["live_slot"], meta["candidate_slot"], meta["previous_version"]) == ("blue", "green", 1)
    for stage in ("canary", "pct_25", "pct_50", "pct_100"):
        assert f"| {stage} | pass |" in meta["gate_readings"], meta["gate_readings"]
    stages = [s["stage"] for s in meta["report"]["stages"]]
    assert stages.index("canary") < stages.index("pct_25") < stages.index("pct_50") < stages.index("pct_100")
    # The canary's Sharpe: both models on the same 2 x 240 replayed minutes, annualised per minute.
    canary = next(s for s in meta["report"]["stages"] if s["stage"] == "canary")["sharpe"]
    assert canary["instruments"] == ["BTCUSDT", "ETHUSDT"] and canary["coverage"] == 1.0, canary
    for side in ("candidate_backtest", "live_backtest"):
        assert (canary[side]["n_bars"], canary[side]["periods_per_year"]) == (240, 525_600), canary
    assert canary["candidate"] >= canary["floor"], canary
    assert registry.get_production().version == 2
    assert registry.get(1).stage == "archived"
    assert set(state.routing_table().values()) == {"green"}
    green = state.get_slot("green")
    answer = ready(green)
    assert (answer["model_version"], answer["sha256"], answer["slot"]) == ("2", v2.sha256, "green")
    assert state.get_slot("blue").status == "stopped"  # the old live slot is stopped after finalize


def test_real_btc_file_to_paper_trading(home):
    """Real BTCUSDT minutes -> features -> a candidate the Sharpe gate blocks -> nothing downstream."""
    path = shared_file(*BTC_FILE)
    settings = home
    # Only BTCUSDT is served and paper-traded; the canary is BTCUSDT itself.
    deployment = DeploymentStackResource(
        state_url=settings.registry_url,
        backend="local",
        workdir=str(settings.home / "slots"),
        instruments=["BTCUSDT"],
        canary_instruments=["BTCUSDT"],
        stage_seconds=1.0,
        fee_bps=settings.fee_bps,
        slippage_bps=settings.slippage_bps,
    )
    defs = build_defs(
        settings, market_source=MarketSourceResource(name="file", file_path=str(path)), deployment=deployment
    )
    instance = dg.DagsterInstance.ephemeral()

    # The partitions definition holds every configured instrument: select only BTCUSDT's.
    data = run(defs, "data_pipeline", instance, tags=range_tags(BTC_DATES[0], BTC_DATES[-1], ["BTCUSDT"]))
    assert data.success, failures(data)
    counts = query(settings, "select date, instrument, count(*) from bar_features group by 1, 2 order by 1")
    assert [(str(d), i, n) for d, i, n in counts] == [(d, "BTCUSDT", 1440) for d in BTC_DATES]  # contiguous file
    # The market_bars checks record one result per partition: judge them all.
    data_checks = data.get_asset_check_evaluations()
    assert all(ev.passed for ev in data_checks if ev.check_name in ("market_bars_schema", "market_bars_completeness"))
    # The one honest warning on 2022 history: it is not fresh today. It does not block: features
    # and training go ahead. Real minutes have fat tails, but no bad print in these ten days: the
    # outlier rule (scale floored at the day's mean absolute return, a spike must be taken back)
    # flags none; the rule before that floor listed 20 ordinary fat-tail minutes here.
    assert any(ev.check_name == "market_bars_outliers" for ev in data_checks)  # it ran (and passed)
    not_passed = {ev.check_name: ev.severity for ev in data_checks if not ev.passed}
    assert not_passed == {"market_bars_freshness": dg.AssetCheckSeverity.WARN}, failures(data)

    # Real prices: the candidate learns a little (test AUC 0.54-0.56, above the 0.51 floor), but
    # after 4 bps fees and 2 bps slippage its test-period backtest loses money: total return -6.4%,
    # -5.9% and -6.3% for seeds 7, 8 and 9 on this window (Sharpe -37, -26 and -34, not meaningful
    # on 3 daily returns, so the gate judges the total return; -26 to -91 on every 10-14 day
    # January window tried), drawdown 6% (limit 15%). So sharpe_vs_production alone blocks it,
    # every time: the stable outcome this test holds the pipeline to. A blocked model reaches
    # nothing downstream.
    trained = run(
        defs,
        "training_job",
        instance,
        run_config=training_config(instruments=["BTCUSDT"], start_date=BTC_DATES[0], end_date=BTC_DATES[-1]),
    )
    assert not trained.success, "a candidate passed the gates on real BTC minutes: revisit this test's premise"
    gates = checks(trained)
    assert set(gates) == set(GATE_NAMES)
    failed = {name for name, ev in gates.items() if not ev.passed}
    assert failed == {"sharpe_vs_production"}, failures(trained)
    sharpe = {k: v.value for k, v in gates["sharpe_vs_production"].metadata.items()}
    assert sharpe["compared_to"] == "floor (no production model)"
    assert sharpe["candidate_sharpe"] < sharpe["sharpe_floor_without_production"] == 0.0
    assert gates["sharpe_vs_production"].severity == dg.AssetCheckSeverity.ERROR
    assert {"training_dataset", "candidate_model"} <= materialized(trained)
    assert "registered_model" not in materialized(trained)
    dataset = trained.output_for_node("training_dataset")
    assert dataset["instruments"] == ["BTCUSDT"] and len(dataset["partitions"]) == len(BTC_DATES)
    registry = open_registry(settings.registry_url, settings.artifacts_uri)
    assert registry.list_versions() == []

    # ... so the deployment pipeline has nothing to roll out and no slot ever starts ...
    deployed = run(defs, "deployment_pipeline", instance)
    assert not deployed.success
    assert "no staging version to deploy" in failures(deployed)
    state = DeploymentStateStore(settings.registry_url)
    assert state.slots() == {} and state.routing_table() == {}
    assert registry.get_production() is None

    # ... and paper trading, with no model served, fails loudly before a single order.
    paper = run(
        defs,
        "paper_trading_job",
        instance,
        tags={ASSET_PARTITION_RANGE_START_TAG: BTC_DATES[-2], ASSET_PARTITION_RANGE_END_TAG: BTC_DATES[-1]},
        run_config=paper_config(instruments=["BTCUSDT"]),
    )
    assert not paper.success
    assert "no route for 'BTCUSDT'" in failures(paper)
    assert materialized(paper) == set()
    tables = {t for (t,) in query(settings, "select table_name from information_schema.tables")}
    assert "paper_account_state" not in tables or query(settings, "select count(*) from paper_account_state") == [(0,)]
