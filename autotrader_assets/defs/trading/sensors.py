"""Trading sensors: the circuit breaker's answer to a trip, and paper trading recomputed after a
data rollback.

A data rollback rewrites bars and features for some dates; paper-trading results of those
dates (and, through the carried account state, of every later date) were computed from the
old data. Re-running ``paper_trading`` for the earliest affected date recomputes it and every
later computed date in one step.
"""
import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_START_TAG, PARTITION_NAME_TAG

from autotrader_assets.defs.market_data.jobs import data_rollback_job
from autotrader_assets.defs.trading.jobs import paper_trading_job
from autotrader_assets.defs.trading.rollback_decision import ROLLBACK_JOB, pending_rollbacks
from autotrader_assets.resources import RegistryResource, WarehouseResource
from deploy_ops.trading.breaker import BreakerStore


def build_circuit_breaker_sensor(job_name: str = ROLLBACK_JOB) -> dg.SensorDefinition:
    """The sensor that answers a breaker trip with an alert event and the emergency rollback job.

    The job is referenced by name only; the Definitions it is loaded into must contain it."""

    @dg.sensor(
        name="circuit_breaker_sensor",
        job_name=job_name,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Circuit-breaker trips in the deployment event log -> alert event + emergency rollback run.",
    )
    def circuit_breaker_sensor(context: dg.SensorEvaluationContext, registry: RegistryResource):
        cursor = int(context.cursor) if context.cursor else 0
        store = BreakerStore(registry.url)
        requests, skipped, new_cursor = pending_rollbacks(store, cursor, job_name)
        for note in skipped:
            context.log.info(note)
        context.update_cursor(str(new_cursor))
        if not requests:
            return dg.SkipReason(
                "no new circuit-breaker trips" if not skipped else "; ".join(skipped)
            )
        return [
            dg.RunRequest(run_key=req.run_key, job_name=job_name, tags=req.tags) for req in requests
        ]

    return circuit_breaker_sensor


circuit_breaker_sensor = build_circuit_breaker_sensor()


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
