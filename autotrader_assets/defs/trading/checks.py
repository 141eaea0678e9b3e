"""The ``circuit_breaker`` check on ``paper_trading``: red while the breaker is tripped."""

import dagster as dg

from autotrader_assets.defs.trading.assets import breaker_metadata, clean_metadata, paper_trading
from autotrader_assets.resources import RegistryResource, WarehouseResource
from autotrader_assets.settings import Settings
from deploy_ops.trading.breaker import BreakerStore


@dg.asset_check(
    asset=paper_trading,
    name="circuit_breaker",
    blocking=False,
    description="Fails with ERROR while the circuit breaker is tripped: trading stays halted until an "
    "approved `autotrader breaker reset`.",
)
def circuit_breaker_check(
    registry: RegistryResource, warehouse: WarehouseResource, settings: dg.ResourceParam[Settings]
) -> dg.AssetCheckResult:
    status = BreakerStore(registry.url).status()
    metadata = breaker_metadata(status)
    # The limits the account is held to, beside the latest readings they are compared with.
    metadata.update(
        daily_loss_limit=settings.thresholds.breaker_daily_loss,
        drawdown_limit=settings.thresholds.breaker_drawdown,
    )
    if warehouse.table_exists("paper_account_state"):
        with warehouse.connect() as con:
            latest = con.execute(
                "select date, end_equity, max_drawdown, max_day_loss, peak_equity from paper_account_state "
                "order by date desc limit 1"
            ).fetchone()
        if latest is not None:
            date, equity, max_dd, max_loss, peak = latest
            metadata.update(
                latest_date=str(date),
                latest_equity=float(equity),
                latest_max_drawdown=float(max_dd),
                latest_max_day_loss=float(max_loss),
                peak_equity=float(peak),
            )
    return dg.AssetCheckResult(
        passed=not status.tripped,
        severity=dg.AssetCheckSeverity.ERROR,
        description=(f"circuit breaker tripped: {status.reason}" if status.tripped else "circuit breaker armed"),
        metadata=clean_metadata(metadata),
    )
