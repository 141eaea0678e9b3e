"""training_dataset -> candidate_model -> promotion gates -> registered_model through Dagster,
on a temporary DuckDB warehouse (a synthetic ``bar_features`` table) and a temporary SQLite
registry."""

from __future__ import annotations

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pytest
import torch

from autotrader_assets.defs.training import (
    registered_model,
    training_assets,
    training_checks,
    training_job,
)
from autotrader_assets.defs.training.gates import GATE_NAMES
from autotrader_assets.resources import RegistryResource, WarehouseResource
from autotrader_assets.settings import FEATURE_COLUMNS, get_settings
from deploy_ops.models.registry import open_registry
from tests.support.synthetic import WARMUP_BARS, bar_features_frame, random_walk_bars

torch.set_num_threads(1)
HORIZON = 5
DAYS = 5
INSTRUMENTS = ("BTCUSDT", "ETHUSDT")


@pytest.fixture
def zero_costs(monkeypatch):
    # The synthetic market's momentum edge is a few basis points: smaller than real trading
    # costs, which the unit tests of the backtest and gates cover. Here the gates must pass.
    monkeypatch.setenv("AUTOTRADER_FEE_BPS", "0")
    monkeypatch.setenv("AUTOTRADER_SLIPPAGE_BPS", "0")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _write_bar_features(path, frame: pd.DataFrame) -> None:
    con = duckdb.connect(str(path))
    try:
        con.register("_f", frame)
        con.execute(
            "create or replace table bar_features as select * replace (ts::timestamp as ts, date::date as date) from _f"
        )
    finally:
        con.close()


def _features(ar1: float = 0.3) -> pd.DataFrame:
    bars = random_walk_bars(instruments=INSTRUMENTS, days=DAYS, seed=3, ar1=ar1, vol=0.0005)
    return bar_features_frame(bars)


def _resources(tmp_path) -> dict:
    return {
        "warehouse": WarehouseResource(path=str(tmp_path / "warehouse.duckdb")),
        "registry": RegistryResource(
            url=f"sqlite:///{tmp_path / 'registry.db'}", artifacts_uri=str(tmp_path / "artifacts")
        ),
        # Called from the test body, so after zero_costs has set the costs to 0.
        "settings": get_settings(),
    }


RUN_CONFIG = {
    "ops": {
        "training_dataset": {"config": {"horizon": HORIZON}},
        "candidate_model": {
            "config": {
                "hidden": [16],
                "max_epochs": 4,
                "patience": 2,
                "learning_rate": 0.01,
                "n_folds": 2,
                "test_fraction": 0.4,
                "long_threshold": 0.52,
                "short_threshold": 0.48,
                "torch_threads": 1,
            }
        },
    }
}


def _materialize(tmp_path, instance, **kwargs) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [*training_assets, *training_checks],
        resources=_resources(tmp_path),
        run_config=RUN_CONFIG,
        instance=instance,
        **kwargs,
    )


def _check_results(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_pipeline_registers_a_gated_candidate_and_compares_with_production(tmp_path, zero_costs):
    features = _features()
    _write_bar_features(tmp_path / "warehouse.duckdb", features)
    instance = dg.DagsterInstance.ephemeral()

    result = _materialize(tmp_path, instance)
    assert result.success

    # training_dataset: warm-up rows dropped, end-of-day label rows dropped, table written
    ds = result.output_for_node("training_dataset")
    per_instrument_day = 1440 - HORIZON
    expected_rows = len(INSTRUMENTS) * (DAYS * per_instrument_day - WARMUP_BARS)
    assert ds["rows"] == expected_rows
    assert ds["instruments"] == list(INSTRUMENTS)
    assert ds["start_date"] == "2024-01-01" and ds["end_date"] == "2024-01-05"
    assert len(ds["partitions"]) == DAYS * len(INSTRUMENTS) and ds["partitions"][0] == "2024-01-01|BTCUSDT"
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        stored = con.execute("select * from training_dataset").df()
    assert len(stored) == expected_rows
    assert stored[list(FEATURE_COLUMNS)].notna().all().all()
    assert (pd.to_datetime(stored["label_end_ts"]).dt.date == pd.to_datetime(stored["ts"]).dt.date).all()
    ds_meta = result.asset_materializations_for_node("training_dataset")[0].metadata
    assert ds_meta["rows"].value == expected_rows
    assert abs(ds_meta["class_balance"].value["up"] - 0.5) < 0.05

    # candidate_model: metadata with fold/test metrics and inline PNG charts
    cand_meta = result.asset_materializations_for_node("candidate_model")[0].metadata
    assert len(cand_meta["fold_metrics"].value) == 2
    assert cand_meta["test_auc"].value > 0.51
    assert "sqrt(365)" in cand_meta["sharpe_convention"].value
    for key in ("training_curves", "equity_curve"):
        assert cand_meta[key].value.startswith("![") and "(data:image/png;base64,iVBOR" in cand_meta[key].value

    # every gate ran, blocking, at ERROR severity, passed, with its threshold in the metadata
    checks = _check_results(result)
    assert set(checks) == set(GATE_NAMES)
    assert all(e.passed and e.severity == dg.AssetCheckSeverity.ERROR for e in checks.values())
    assert checks["auc_floor"].metadata["auc_floor"].value == get_settings().thresholds.min_auc
    assert checks["max_drawdown"].metadata["max_drawdown_limit"].value == get_settings().thresholds.max_drawdown
    assert checks["sharpe_vs_production"].metadata["compared_to"].value == "floor (no production model)"

    # registered_model: a staging version with metrics, params and lineage
    reg = open_registry(f"sqlite:///{tmp_path / 'registry.db'}", str(tmp_path / "artifacts"))
    out = result.output_for_node("registered_model")
    mv = reg.get(out["version"])
    assert mv.stage == "staging" and mv.version == 1
    assert mv.metrics["auc"] == pytest.approx(cand_meta["test_auc"].value)
    assert mv.metrics["sharpe_annualization"] == "sqrt(365)"
    assert mv.params["n_folds"] == 2 and mv.params["hidden"] == [16]
    lineage = mv.lineage
    assert lineage["training_data"]["start_date"] == "2024-01-01"
    assert lineage["training_data"]["partitions"] == ds["partitions"]
    assert lineage["features"] == list(FEATURE_COLUMNS)
    assert "sha256" in lineage["dbt_manifest"]
    assert lineage["code_version"] is None or len(lineage["code_version"]) == 40
    bundle = reg.load_bundle(mv.version)
    assert bundle.feature_names == list(FEATURE_COLUMNS)
    assert set(bundle.metadata["feature_reference"]["quantile_edges"]) == set(FEATURE_COLUMNS)

    # a second run with v1 in production compares on the very same test rows
    reg.promote(1, "production", actor="test", reason="baseline")
    second = _materialize(tmp_path, instance)
    assert second.success
    sharpe_check = _check_results(second)["sharpe_vs_production"]
    assert sharpe_check.metadata["production_version"].value == 1
    # same data, same seed: the candidate is the production model, so the Sharpes match exactly
    assert sharpe_check.metadata["production_sharpe"].value == sharpe_check.metadata["candidate_sharpe"].value
    assert reg.get(second.output_for_node("registered_model")["version"]).stage == "staging"
    assert reg.get(2).metrics["production_version_compared"] == 1


def test_leaky_features_are_blocked_before_the_registry(tmp_path, zero_costs):
    features = _features(ar1=0.0)
    # Replace one feature with the 5-bar forward return: a classic look-ahead bug.
    future = features.groupby(["instrument", "date"])["close"].shift(-HORIZON)
    features["range_co"] = np.log(future / features["close"])
    _write_bar_features(tmp_path / "warehouse.duckdb", features)
    instance = dg.DagsterInstance.ephemeral()

    result = _materialize(tmp_path, instance, raise_on_error=False)
    assert not result.success
    checks = _check_results(result)
    assert not checks["leakage"].passed
    assert checks["leakage"].severity == dg.AssetCheckSeverity.ERROR
    assert "plausible maximum" in checks["leakage"].metadata["reason"].value
    materialized = {m.asset_key.path[-1] for m in result.get_asset_materialization_events()}
    assert "candidate_model" in materialized and "registered_model" not in materialized
    reg = open_registry(f"sqlite:///{tmp_path / 'registry.db'}", str(tmp_path / "artifacts"))
    assert reg.list_versions() == []

    # materializing registered_model on its own re-applies the gates and refuses as well
    with pytest.raises(dg.Failure, match="leakage"):
        dg.materialize(
            [*training_assets], selection=[registered_model], resources=_resources(tmp_path), instance=instance
        )
    assert reg.list_versions() == []


def test_training_job_selects_the_training_assets_and_their_gates(tmp_path):
    defs = dg.Definitions(
        assets=training_assets, asset_checks=training_checks, jobs=[training_job], resources=_resources(tmp_path)
    )
    job = defs.resolve_job_def("training_job")
    assert {k.path[-1] for k in job.asset_layer.selected_asset_keys} == {
        "training_dataset",
        "candidate_model",
        "registered_model",
    }
    # the gates run inside the job (one step each), not only when materialized by hand
    assert {n.name for n in job.graph.node_defs} == {
        "training_dataset",
        "candidate_model",
        "registered_model",
        *(f"candidate_model_{g}" for g in GATE_NAMES),
    }
    specs = {s.name: s for c in training_checks for s in c.check_specs}
    assert all(spec.blocking for spec in specs.values())


def test_lineage_helpers(tmp_path):
    import hashlib

    from autotrader_assets.defs.training.lineage import file_sha256, git_revision
    from autotrader_assets.defs.training.plots import png_markdown
    from autotrader_assets.settings import PROJECT_ROOT

    manifest = tmp_path / "manifest.json"
    manifest.write_bytes(b'{"nodes": {}}')
    assert file_sha256(manifest) == hashlib.sha256(b'{"nodes": {}}').hexdigest()
    assert file_sha256(tmp_path / "absent.json") is None
    assert git_revision(tmp_path) is None  # not a repository
    rev = git_revision(PROJECT_ROOT)
    assert rev is None or (len(rev) == 40 and int(rev, 16) >= 0)
    with pytest.raises(ValueError, match="PNG"):
        png_markdown(b"GIF89a", "x")
