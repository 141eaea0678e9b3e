"""Paper trading as Dagster assets: ``paper_trading`` (by date) and ``trading_performance``.

The deployment-state store (routing table, slots, events, breaker) lives at the registry URL,
so the ``registry`` resource's ``url`` is the store every definition here opens.
"""

import datetime as dt
import math
from typing import Any

import dagster as dg
import pandas as pd

from autotrader_assets.defs.trading import performance as perf
from autotrader_assets.defs.trading.paper import PaperParams, SignalParams
from autotrader_assets.defs.trading.params import paper_params_from
from autotrader_assets.defs.trading.partitions import trading_partitions
from autotrader_assets.defs.trading.service import PaperRunReport, run_paper_trading
from autotrader_assets.pushing import push_from_step
from autotrader_assets.resources import RegistryResource, WarehouseResource
from autotrader_assets.settings import Settings
from deploy_ops import metrics_push
from deploy_ops.trading.backtest import DEFAULT_INITIAL_EQUITY
from deploy_ops.trading.breaker import BreakerStatus, BreakerStore
from deploy_ops.trading.metrics import sharpe_meaningful, sharpe_text


class PaperTradingConfig(dg.Config):
    """Run config of ``paper_trading``; unset costs and instruments come from the settings."""

    instruments: list[str] | None = None
    initial_equity: float = DEFAULT_INITIAL_EQUITY
    # None: the thresholds the production model's backtest was gated with (registry params), so
    # paper trading trades the signal that was validated; 0.55/0.45 if the model has none.
    long_threshold: float | None = None
    short_threshold: float | None = None
    allow_short: bool | None = None
    sizing: str = "fixed"
    max_position: float = 1.0
    fee_bps: float | None = None
    slippage_bps: float | None = None


DEFAULT_SIGNAL = {"long_threshold": 0.55, "short_threshold": 0.45, "allow_short": True}


def resolve_signal(config: PaperTradingConfig, model_params: dict | None = None) -> dict:
    """Signal thresholds: the run config where set, else the production model's gated params,
    else the defaults."""
    model_params = model_params or {}
    out = {}
    for key, default in DEFAULT_SIGNAL.items():
        value = getattr(config, key)
        out[key] = value if value is not None else model_params.get(key, default)
    return out


def production_params(registry: "RegistryResource") -> dict:
    """Params of the production model in the registry ({} when nothing is in production)."""
    production = registry.open().get_production()
    return dict(production.params) if production is not None else {}


def paper_params(config: PaperTradingConfig, settings: Settings, model_params: dict | None = None) -> PaperParams:
    """The account's parameters: run config over settings, breaker limits from the thresholds."""
    signal = resolve_signal(config, model_params)
    return paper_params_from(
        settings,
        fee_bps=config.fee_bps,
        slippage_bps=config.slippage_bps,
        initial_equity=float(config.initial_equity),
        signal=SignalParams(
            long_threshold=float(signal["long_threshold"]),
            short_threshold=float(signal["short_threshold"]),
            allow_short=bool(signal["allow_short"]),
            sizing=config.sizing,
            max_position=config.max_position,
        ),
    )


def _days_frame(report: PaperRunReport) -> pd.DataFrame:
    rows = []
    for r in report.results:
        curve = r.account_curve()
        rows.append(
            {
                "date": r.date.isoformat(),
                "open_equity": r.day_open_equity,
                "end_equity": r.end.equity,
                "pnl": r.end.equity - r.day_open_equity,
                "max_day_loss": float(curve["day_loss"].max()),
                "max_drawdown": float(curve["drawdown"].max()),
                "fills": int(len(r.portfolio.fills)),
                "orders_blocked": "yes" if r.blocked_at_start else "no",
                "trip": r.trip.at.isoformat() if r.trip else "-",
            }
        )
    return pd.DataFrame(rows)


def _serving_frame(report: PaperRunReport) -> pd.DataFrame:
    rows = []
    for date, by_instrument in report.serving.items():
        for name, info in sorted(by_instrument.items()):
            rows.append(
                {
                    "date": date.isoformat(),
                    "instrument": name,
                    "slot": info["slot"] or "-",
                    "model_version": info["model_version"] or "-",
                    "requests": info["n_requests"],
                    "latency_ms": round(info["latency_ms"], 1),
                }
            )
    return pd.DataFrame(rows)


def _day_metadata(report: PaperRunReport, date: dt.date) -> dict[str, Any]:
    r = next(x for x in report.results if x.date == date)
    meta: dict[str, Any] = {
        "date": date.isoformat(),
        "day_open_equity": r.day_open_equity,
        "end_equity": r.end.equity,
        "day_pnl": r.end.equity - r.day_open_equity,
        "n_fills": int(len(r.portfolio.fills)),
        "orders_blocked": r.blocked_at_start,
    }
    if r.blocked_at_start:
        meta["no_new_orders"] = f"No new orders on {date}: {r.block_reason}. Positions stay flat."
    if r.trip is not None:
        meta["circuit_breaker_trip"] = dg.MetadataValue.json(r.trip.to_details())
    return meta


def breaker_metadata(status: BreakerStatus) -> dict[str, Any]:
    """Check and sensor metadata for a breaker status: reason, equity, drawdown, day loss, tripped_at."""
    details = status.details or {}
    return {
        "tripped": status.tripped,
        "reason": status.reason or "-",
        "tripped_at": status.tripped_at.isoformat() if status.tripped_at else "-",
        "equity": details.get("equity"),
        "drawdown": details.get("drawdown"),
        "day_loss": details.get("day_loss"),
        "trip_id": status.trip_id,
        "reset_by": status.reset_by or "-",
        "reset_at": status.reset_at.isoformat() if status.reset_at else "-",
    }


#: Who answers for the paper account: the trading desk.
TRADING_OWNER = "team:trading-desk"
#: `daily_paper_trading` (00:40 UTC) computes yesterday and then `trading_performance`: both are
#: stale if nothing materialized in the 24 hours before 01:30 UTC. (A cron policy looks at the
#: latest materialization of any partition: a recomputed old date also counts.)
PAPER_FRESHNESS = dg.FreshnessPolicy.cron(deadline_cron="30 1 * * *", lower_bound_delta=dt.timedelta(hours=24))


def clean_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    # Dagster metadata rejects None; a float NaN would render as "NaN" and mislead.
    out = {}
    for key, value in meta.items():
        if value is None or (isinstance(value, float) and math.isnan(value)):
            out[key] = "-"
        else:
            out[key] = value
    return out


@dg.asset(
    partitions_def=trading_partitions(),
    deps=[
        dg.AssetDep(
            "bar_features",
            partition_mapping=dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="date"),
        ),
        dg.AssetDep("production_deployment"),
    ],
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="trading",
    kinds={"python", "duckdb"},
    owners=[TRADING_OWNER],
    tags={"domain": "trading", "tier": "critical"},
    # Bump when the same predictions would give other fills, PnL or breaker decisions.
    code_version="1",
    freshness_policy=PAPER_FRESHNESS,
)
def paper_trading(
    context: dg.AssetExecutionContext,
    config: PaperTradingConfig,
    warehouse: WarehouseResource,
    registry: RegistryResource,
    settings: dg.ResourceParam[Settings],
) -> dg.MaterializeResult:
    """The deployed model trading on paper: each day's fills, positions and PnL, behind a circuit breaker."""
    params = paper_params(config, settings, production_params(registry))
    context.log.info(
        f"signal: long > {params.signal.long_threshold}, short < {params.signal.short_threshold}, "
        f"allow_short={params.signal.allow_short}"
    )
    instruments = list(config.instruments) if config.instruments else list(settings.instruments)
    report = run_paper_trading(
        warehouse.connect,
        registry.url,
        context.partition_keys,
        instruments,
        params,
        token=settings.serving_token,
        run_id=context.run_id,
        log=context.log.info,
    )
    # Later dates were rewritten in the warehouse; record them so their partitions show as fresh.
    for date in report.recomputed_later:
        meta = _day_metadata(report, date)
        meta["recomputed_from"] = report.work[0].isoformat()
        context.log_event(
            dg.AssetMaterialization(
                asset_key=context.asset_key, partition=date.isoformat(), metadata=clean_metadata(meta)
            )
        )
    for date, outcome in report.trips:
        trip_meta = breaker_metadata(outcome.status)
        trip_meta.update(newly_tripped=outcome.newly_tripped, outcome=outcome.why, trip_date=date.isoformat())
        context.log_event(
            dg.AssetObservation(
                asset_key=context.asset_key, partition=date.isoformat(), metadata=clean_metadata(trip_meta)
            )
        )
        log = context.log.error if outcome.newly_tripped else context.log.warning
        log(f"circuit breaker ({outcome.why}) on {date}: {outcome.status.reason}")

    last = report.results[-1]
    selected_last = next(r for r in reversed(report.results) if r.date in set(report.selected))
    blocked = [
        f"No new orders on {r.date}: {r.block_reason}. Positions stay flat."
        for r in report.results
        if r.blocked_at_start
    ]
    metadata: dict[str, Any] = {
        "dates_computed": dg.MetadataValue.json([d.isoformat() for d in report.work]),
        "recomputed_later_dates": dg.MetadataValue.json([d.isoformat() for d in report.recomputed_later]),
        "instruments": dg.MetadataValue.json(instruments),
        "end_equity": dg.MetadataValue.float(last.end.equity),
        "day_pnl": dg.MetadataValue.float(selected_last.end.equity - selected_last.day_open_equity),
        "n_fills": dg.MetadataValue.int(sum(len(r.portfolio.fills) for r in report.results)),
        "days": dg.MetadataValue.md(perf.markdown_table(_days_frame(report))),
        "serving": dg.MetadataValue.md(perf.markdown_table(_serving_frame(report))),
        "orders_blocked": dg.MetadataValue.md("\n".join(f"- {b}" for b in blocked) if blocked else "none"),
        "circuit_breaker": dg.MetadataValue.json(report.breaker_after.to_dict()),
        "rows_written": dg.MetadataValue.int(report.rows_written),
        "seconds": dg.MetadataValue.json({k: round(v, 4) for k, v in report.seconds.items()}),
    }
    # The breaker state as soon as it is known; the account's numbers follow from trading_performance.
    metadata.update(
        push_from_step(
            context, settings, metrics_push.BREAKER_JOB, metrics_push.breaker_samples(report.breaker_after.tripped)
        )
    )
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(
    deps=[paper_trading],
    group_name="trading",
    kinds={"python", "duckdb"},
    owners=[TRADING_OWNER],
    tags={"domain": "trading", "tier": "standard"},
    # Bump when a metric's definition or the charts change.
    code_version="1",
    freshness_policy=PAPER_FRESHNESS,
)
def trading_performance(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    registry: RegistryResource,
    settings: dg.ResourceParam[Settings],
) -> dg.MaterializeResult:
    """Trading-desk view of the paper account: PnL, Sharpe, drawdown, win rate, positions and charts."""
    with warehouse.connect() as con:
        history = perf.load_history(con)
    if history.empty:
        raise dg.Failure("the paper account has no history yet: materialize paper_trading for a date first")
    summary = perf.overall(history)
    daily = perf.daily_table(history)
    instruments = perf.instrument_table(history)
    with warehouse.connect() as con:
        perf.write_daily(con, daily)
    initial = float(history.account["day_open_equity"].iloc[0])
    equity = pd.Series(history.equity["equity"].to_numpy(), index=pd.DatetimeIndex(history.equity["ts"]))
    trips = [pd.Timestamp(t).tz_localize("UTC") for t in history.account["trip_at"].dropna()]
    limit = settings.thresholds.breaker_drawdown
    status = BreakerStore(registry.url).status()
    context.log.info(
        f"paper account: equity {summary['current_equity']:.2f}, pnl {summary['total_pnl']:.2f}, "
        f"{summary['n_fills']} fills over {summary['n_dates']} date(s)"
    )
    pf = summary["profit_factor"]
    sharpe = summary["sharpe"]
    metadata: dict[str, Any] = {
        # Short enough for the asset page to draw them in place (the PNGs below open in a dialog).
        "equity": dg.MetadataValue.md(perf.sparkline_markdown(equity, "equity", kind="equity", baseline=initial)),
        "drawdown": dg.MetadataValue.md(
            perf.sparkline_markdown(perf.drawdown_series(equity, initial), "drawdown", kind="drawdown")
        ),
        "current_equity": dg.MetadataValue.float(summary["current_equity"]),
        "total_pnl": dg.MetadataValue.float(summary["total_pnl"]),
        "daily_pnl": dg.MetadataValue.float(summary["daily_pnl"]),
        "total_return": dg.MetadataValue.float(summary["total_return"]),
        "sharpe": dg.MetadataValue.float(sharpe["value"]) if sharpe["value"] is not None else sharpe["reason"],
        "sharpe_convention": dg.MetadataValue.json(sharpe),
        # The count beside the figure: 3 daily returns give a Sharpe that means nothing.
        "sharpe_n_returns": int(sharpe["n_returns"]),
        "sharpe_meaningful": sharpe_meaningful(sharpe["n_returns"], settings.thresholds.min_sharpe_returns),
        "sharpe_text": sharpe_text(sharpe["value"], sharpe["n_returns"], settings.thresholds.min_sharpe_returns),
        "win_rate": dg.MetadataValue.float(summary["win_rate"])
        if summary["win_rate"] is not None
        else "no closed trades",
        "max_drawdown": dg.MetadataValue.float(summary["max_drawdown"]["value"]),
        "profit_factor": (pf["value"] if isinstance(pf["value"], str) else dg.MetadataValue.float(pf["value"]))
        if pf["value"] is not None
        else pf["reason"],
        "trades_per_minute": dg.MetadataValue.float(summary["trades_per_minute"]),
        "n_fills": dg.MetadataValue.int(summary["n_fills"]),
        "n_trades": dg.MetadataValue.int(summary["n_trades"]),
        "fees_paid": dg.MetadataValue.float(summary["fees_paid"]),
        "summary": dg.MetadataValue.json(summary),
        "positions": dg.MetadataValue.md(perf.markdown_table(instruments)),
        "daily": dg.MetadataValue.md(perf.markdown_table(daily.tail(60))),
        "equity_curve": dg.MetadataValue.md(perf.png_markdown(perf.equity_png(equity, initial, trips), "equity curve")),
        "drawdown_plot": dg.MetadataValue.md(perf.png_markdown(perf.drawdown_png(equity, initial, limit), "drawdown")),
        "circuit_breaker": dg.MetadataValue.json(status.to_dict()),
    }
    samples = metrics_push.trading_samples(summary, instruments.to_dict("records"))
    metadata.update(push_from_step(context, settings, metrics_push.TRADING_JOB, samples))
    return dg.MaterializeResult(metadata=metadata)
