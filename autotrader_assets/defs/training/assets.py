"""Training assets: dataset -> candidate model -> (promotion gates, ``checks.py``) -> registry.

The heavy lifting lives in the plain modules beside this file; the assets read and write the
stores, log progress and turn results into metadata. ``registered_model`` re-applies every
gate before writing to the registry, so a candidate reaches the registry only having passed
them all, even when someone materializes ``registered_model`` on its own.
"""

import contextlib
from typing import Any, Iterator, Mapping

import dagster as dg
import torch
from pydantic import Field

from autotrader_assets.defs.training.candidate import SplitConfig, train_candidate
from autotrader_assets.defs.training.dataset import (
    TRAINING_TABLE,
    DatasetError,
    available_range,
    build_training_frame,
    dataset_summary,
    frame_fingerprint,
    read_bar_features,
    read_training_table,
    resolve_date_window,
    write_training_table,
)
from autotrader_assets.defs.training.evaluate import BacktestConfig
from autotrader_assets.defs.training.gates import GATE_NAMES, evaluate_gates
from autotrader_assets.defs.training.labels import validate_horizon
from autotrader_assets.defs.training.lineage import build_lineage, git_revision
from autotrader_assets.defs.training.plots import equity_curves_png, png_markdown, training_curves_png
from autotrader_assets.defs.training.train import FoldReport, TrainConfig
from autotrader_assets.resources import RegistryResource, WarehouseResource
from autotrader_assets.settings import FEATURE_COLUMNS, PROJECT_ROOT, Settings
from deploy_ops.models.bundle import ModelBundle
from deploy_ops.trading.metrics import sharpe_text

TRAINING_GROUP = "training"
#: Who answers for the models: the quant research team.
TRAINING_OWNER = "team:quant-research"
# Spelled out rather than imported from defs.features: importing that package prepares the
# dbt manifest, which the training code has no reason to trigger.
DBT_MANIFEST_PATH = PROJECT_ROOT / "dbt_project" / "target" / "manifest.json"


class TrainingDatasetConfig(dg.Config):
    """Which feature rows to train on and how far ahead the label looks."""

    instruments: list[str] = Field(
        default_factory=list, description="Instruments to include; empty = every instrument in bar_features."
    )
    start_date: str | None = Field(default=None, description="First date (YYYY-MM-DD), inclusive.")
    end_date: str | None = Field(default=None, description="Last date (YYYY-MM-DD), inclusive.")
    last_n_days: int | None = Field(
        default=None, description="Instead of start/end: the last N days of available features."
    )
    horizon: int = Field(default=5, description="Label horizon in 1-minute bars.")


class CandidateModelConfig(dg.Config):
    """Model, training, cross-validation and signal settings of one candidate."""

    model_class: str = Field(default="mlp", description="A key of deploy_ops.models.bundle.MODEL_CLASSES.")
    hidden: list[int] = Field(default_factory=lambda: [32, 16], description="MLP hidden layer widths.")
    dropout: float = 0.1
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 512
    max_epochs: int = 30
    patience: int = Field(default=3, description="Epochs without validation improvement before stopping.")
    seed: int = 7
    n_folds: int = 4
    test_fraction: float = Field(default=0.2, description="Share of the timeline held out as the test period.")
    embargo_bars: int | None = Field(default=None, description="Gap before validation/test; default = horizon.")
    long_threshold: float = 0.55
    short_threshold: float = 0.45
    allow_short: bool = True
    torch_threads: int | None = Field(
        default=None, description="Cap torch CPU threads for this step (restored afterwards)."
    )

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            model_class=self.model_class,
            hidden=tuple(self.hidden),
            dropout=self.dropout,
            learning_rate=self.learning_rate,
            weight_decay=self.weight_decay,
            batch_size=self.batch_size,
            max_epochs=self.max_epochs,
            patience=self.patience,
            seed=self.seed,
        )


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    if n < 1:
        raise ValueError(f"torch_threads must be >= 1, got {n}")
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _meta(value: Any) -> Any:
    """Coerce a plain value to something Dagster metadata accepts."""
    if value is None:
        return dg.MetadataValue.null()
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (dict, list, tuple)):
        return dg.MetadataValue.json(value if not isinstance(value, tuple) else list(value))
    return str(value)


def meta_dict(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _meta(v) for k, v in values.items()}


@dg.asset(
    deps=[dg.AssetKey("bar_features")],
    group_name=TRAINING_GROUP,
    kinds={"duckdb"},
    owners=[TRAINING_OWNER],
    tags={"domain": "training", "tier": "standard"},
    # Bump when the same features would give other rows or labels.
    code_version="1",
)
def training_dataset(
    context: dg.AssetExecutionContext, config: TrainingDatasetConfig, warehouse: WarehouseResource
) -> dg.Output[dict]:
    """Feature rows joined with forward-return labels: what every candidate model learns from."""
    horizon = validate_horizon(config.horizon)
    with warehouse.connect() as con:
        lo, hi, instruments = available_range(con, config.instruments or None)
        start, end = resolve_date_window(lo, hi, config.start_date, config.end_date, config.last_n_days)
        context.log.info(f"reading bar_features for {instruments} from {start} to {end}")
        features = read_bar_features(con, instruments, start, end, FEATURE_COLUMNS)
        frame, dropped = build_training_frame(features, horizon, FEATURE_COLUMNS)
        write_training_table(con, frame)
        stored = read_training_table(con)
    summary = dataset_summary(stored)
    ref = {
        "table": TRAINING_TABLE,
        "fingerprint": frame_fingerprint(stored, FEATURE_COLUMNS),
        "horizon": horizon,
        "feature_columns": list(FEATURE_COLUMNS),
        **summary,
    }
    context.log.info(
        f"training_dataset: {summary['rows']} rows, {summary['start_date']}..{summary['end_date']}, "
        f"up share {summary['class_balance']['up']:.3f}; dropped {dropped}"
    )
    return dg.Output(
        ref,
        metadata={
            "dagster/row_count": summary["rows"],
            "rows": summary["rows"],
            "date_range": f"{summary['start_date']} .. {summary['end_date']}",
            "class_balance": dg.MetadataValue.json(summary["class_balance"]),
            "instruments": dg.MetadataValue.json(summary["instruments"]),
            "rows_per_instrument": dg.MetadataValue.json(summary["rows_per_instrument"]),
            "label_horizon_bars": horizon,
            "dropped": dg.MetadataValue.json(dropped),
            "n_partitions": len(summary["partitions"]),
            "fingerprint": ref["fingerprint"],
            "table": TRAINING_TABLE,
        },
    )


def _load_dataset_frame(warehouse: WarehouseResource, dataset: Mapping[str, Any]):
    with warehouse.connect(read_only=True) as con:
        frame = read_training_table(con, dataset["table"])
    actual = frame_fingerprint(frame, dataset["feature_columns"])
    if actual != dataset["fingerprint"]:
        raise DatasetError(
            f"table {dataset['table']} changed since training_dataset was materialized "
            f"(fingerprint {actual[:12]} != {dataset['fingerprint'][:12]}): re-materialize training_dataset"
        )
    return frame


@dg.asset(
    group_name=TRAINING_GROUP,
    kinds={"pytorch"},
    owners=[TRAINING_OWNER],
    tags={"domain": "training", "tier": "standard"},
    # Bump when training, evaluation or the bundle format change.
    code_version="1",
)
def candidate_model(
    context: dg.AssetExecutionContext,
    config: CandidateModelConfig,
    training_dataset: dict,
    warehouse: WarehouseResource,
    registry: RegistryResource,
    settings: dg.ResourceParam[Settings],
) -> dg.Output[dict]:
    """A cross-validated, backtested model awaiting its promotion gates."""
    frame = _load_dataset_frame(warehouse, training_dataset)
    feature_columns = training_dataset["feature_columns"]
    reg = registry.open()
    production_version = reg.get_production()
    production = None
    if production_version is not None:
        production = (production_version.version, reg.load_bundle(production_version.version))
        context.log.info(f"production is v{production_version.version}: evaluating it on the same test rows")

    def on_epoch(label: str, epoch: int, train_loss: float, val_loss: float) -> None:
        context.log.info(f"{label} epoch {epoch}: train loss {train_loss:.5f}, val loss {val_loss:.5f}")

    def on_fold(fold: FoldReport) -> None:
        context.log.info(
            f"fold {fold.index} done: val AUC {fold.val_metrics['auc']:.4f}, val log loss "
            f"{fold.val_metrics['log_loss']:.5f}, best epoch {fold.curve.best_epoch}/{fold.curve.epochs_run}"
        )

    backtest = BacktestConfig(
        fee_bps=settings.fee_bps,
        slippage_bps=settings.slippage_bps,
        long_threshold=config.long_threshold,
        short_threshold=config.short_threshold,
        allow_short=config.allow_short,
    )
    with _torch_threads(config.torch_threads):
        outcome = train_candidate(
            frame,
            feature_columns,
            config.train_config(),
            backtest,
            SplitConfig(n_folds=config.n_folds, test_fraction=config.test_fraction, embargo_bars=config.embargo_bars),
            production=production,
            on_epoch=on_epoch,
            on_fold=on_fold,
        )
    bundle = outcome.bundle
    bundle.metadata.update(
        {
            "dataset_fingerprint": training_dataset["fingerprint"],
            "label_horizon_bars": training_dataset["horizon"],
            "dagster_run_id": context.run.run_id,
        }
    )
    artifact_uri, sha256 = reg.artifacts.put(bundle.to_bytes())
    report = outcome.report()
    test = report["test"]
    context.log.info(
        f"candidate saved to {artifact_uri}: test AUC {test['auc']:.4f}, Sharpe "
        f"{sharpe_text(test['sharpe'], test['sharpe_n_returns'], settings.thresholds.min_sharpe_returns, returns=test['sharpe_returns'])} "
        f"({test['sharpe_annualization']}), max drawdown {test['max_drawdown']:.4f}"
    )

    curves = {"candidate": outcome.test.equity}
    if outcome.production is not None and outcome.production.evaluation is not None:
        curves[f"production v{outcome.production.version}"] = outcome.production.evaluation.equity
    value = {
        "artifact_uri": artifact_uri,
        "sha256": sha256,
        "report": report,
        "dataset": dict(training_dataset),
        "run_id": context.run.run_id,
    }
    return dg.Output(
        value,
        metadata={
            "artifact_uri": artifact_uri,
            "sha256": sha256,
            "model_class": bundle.model_class,
            "test_auc": float(test["auc"]),
            "test_log_loss": float(test["log_loss"]),
            "test_accuracy": float(test["accuracy"]),
            "test_sharpe": _meta(test["sharpe"]),
            "sharpe_convention": f"{test['sharpe_annualization']} on {test['sharpe_returns']} returns "
            f"(n={test['sharpe_n_returns']})",
            "test_sharpe_text": sharpe_text(
                test["sharpe"],
                test["sharpe_n_returns"],
                settings.thresholds.min_sharpe_returns,
                returns=test["sharpe_returns"],
            ),
            "test_max_drawdown": float(test["max_drawdown"]),
            "train_auc": float(report["train"]["auc"]),
            "shuffled_label_test_auc": float(report["shuffled_label_test_auc"]),
            "production_version": _meta(None if outcome.production is None else outcome.production.version),
            "fold_metrics": dg.MetadataValue.json(report["folds"]),
            "cv_summary": dg.MetadataValue.json(report["cv"]),
            "test_metrics": dg.MetadataValue.json(test),
            "split": dg.MetadataValue.json(report["split"]),
            "training_curves": dg.MetadataValue.md(
                png_markdown(training_curves_png(outcome.training.folds), "training curves")
            ),
            "equity_curve": dg.MetadataValue.md(png_markdown(equity_curves_png(curves), "test equity curve")),
        },
    )


def load_candidate_bundle(registry: RegistryResource, candidate: Mapping[str, Any]) -> ModelBundle:
    reg = registry.open()
    data = reg.artifacts.get(candidate["artifact_uri"], candidate["sha256"])
    return ModelBundle.from_bytes(data, expected_sha256=candidate["sha256"])


def registration_metrics(report: Mapping[str, Any]) -> dict[str, Any]:
    """The registry ``metrics`` of a candidate: test metrics plus CV, train and baseline AUCs."""
    production = report.get("production")
    metrics = {
        **report["test"],
        **report["cv"],
        "train_auc": report["train"]["auc"],
        "shuffled_label_test_auc": report["shuffled_label_test_auc"],
        "test_start": report["split"]["test_start"],
        "test_end": report["split"]["test_end"],
    }
    if production is not None and production.get("test") is not None:
        metrics["production_version_compared"] = production["version"]
        metrics["production_sharpe_same_test"] = production["test"]["sharpe"]
        metrics["production_auc_same_test"] = production["test"]["auc"]
    return metrics


@dg.asset(
    group_name=TRAINING_GROUP,
    kinds={"registry"},
    owners=[TRAINING_OWNER],
    tags={"domain": "training", "tier": "standard"},
    # Bump when the gates or what is registered change.
    code_version="1",
)
def registered_model(
    context: dg.AssetExecutionContext,
    candidate_model: dict,
    registry: RegistryResource,
    settings: dg.ResourceParam[Settings],
) -> dg.Output[dict]:
    """The candidate that passed every promotion gate, recorded in the registry as a staging version."""
    bundle = load_candidate_bundle(registry, candidate_model)
    report = candidate_model["report"]
    results = evaluate_gates(report, bundle, settings.thresholds)
    failed = {name: meta.get("reason") for name, (passed, meta) in results.items() if not passed}
    if failed:
        raise dg.Failure(
            description=f"candidate failed promotion gates {sorted(failed)}; not registering",
            metadata={k: _meta(v) for k, v in failed.items()},
        )
    lineage = build_lineage(
        candidate_model["dataset"],
        bundle.feature_names,
        DBT_MANIFEST_PATH,
        git_revision(PROJECT_ROOT),
        context.run.run_id,
        candidate_model["sha256"],
    )
    reg = registry.open()
    version = reg.register(
        bundle,
        metrics=registration_metrics(report),
        params=report["params"],
        lineage=lineage,
        stage="staging",
        actor=f"dagster:{context.run.run_id}",
        reason=f"passed promotion gates: {', '.join(GATE_NAMES)}",
    )
    context.log.info(f"registered v{version.version} as {version.stage} ({version.artifact_uri})")
    return dg.Output(
        {
            "version": version.version,
            "stage": version.stage,
            "artifact_uri": version.artifact_uri,
            "sha256": candidate_model["sha256"],
        },
        metadata={
            "version": version.version,
            "stage": version.stage,
            "artifact_uri": version.artifact_uri,
            "sha256": candidate_model["sha256"],
            "code_version": _meta(lineage["code_version"]),
            "dbt_manifest_sha256": _meta(lineage["dbt_manifest"]["sha256"]),
            "training_window": f"{lineage['training_data']['start_date']} .. {lineage['training_data']['end_date']}",
        },
    )


training_assets: list[dg.AssetsDefinition] = [training_dataset, candidate_model, registered_model]
