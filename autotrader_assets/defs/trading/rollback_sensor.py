"""After a data rollback, paper trading is recomputed from the first restored date.

A data rollback rewrites bars and features for some dates; paper-trading results of those
dates (and, through the carried account state, of every later date) were computed from the
old data. Re-running ``paper_trading`` for the earliest affected date recomputes it and every
later computed date in one step.
"""
import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_START_TAG, PARTITION_NAME_TAG

from autotrader_assets.defs.market_data.jobs import data_rollback_job
from autotrader_assets.defs.trading.assets import paper_trading_job
from autotrader_assets.resources import WarehouseResource


def first_restored_date(tags: dict[str, str]) -> str | None:
    """The earliest date a data-rollback run restored, from its partition tags."""
    key = tags.get(ASSET_PARTITION_RANGE_START_TAG) or tags.get(PARTITION_NAME_TAG)
    if not key:
        return None
    return key.split("|", 1)[0]


def earliest_paper_date_from(warehouse: WarehouseResource, date: str) -> str | None:
    """The first already paper-traded date on or after ``date`` (None if nothing to redo)."""
    if not warehouse.table_exists("paper_account_state"):
        return None
    with warehouse.connect(read_only=True) as con:
        row = con.execute(
            "select cast(min(date) as varchar) from paper_account_state where date >= cast(? as date)", [date]
        ).fetchall()
    return row[0][0] if row and row[0][0] else None


@dg.run_status_sensor(
    name="data_rollback_reprocess_sensor",
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[data_rollback_job],
    request_job=paper_trading_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="A successful data rollback -> paper trading recomputed from the first restored date.",
)
def data_rollback_reprocess_sensor(context: dg.RunStatusSensorContext, warehouse: WarehouseResource):
    run = context.dagster_run
    restored = first_restored_date(run.tags)
    if restored is None:
        return dg.SkipReason(f"data rollback run {run.run_id} carries no partition tags")
    start = earliest_paper_date_from(warehouse, restored)
    if start is None:
        return dg.SkipReason(f"no paper-trading dates on or after {restored}: nothing to recompute")
    context.log.info(f"data rollback {run.run_id} restored from {restored}: paper trading recomputes from {start}")
    return dg.RunRequest(
        run_key=f"reprocess-after-{run.run_id}",
        partition_key=start,
        tags={"autotrader/reason": f"data rollback {run.run_id}"},
    )
