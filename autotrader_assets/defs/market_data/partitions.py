"""The date x instrument partitioning shared by market data and the dbt feature models."""

from __future__ import annotations

import functools

import dagster as dg

from autotrader_assets.settings import get_settings


@functools.lru_cache(maxsize=8)
def _build(start_date: str, instruments: tuple[str, ...]) -> dg.MultiPartitionsDefinition:
    return dg.MultiPartitionsDefinition(
        {
            "date": dg.DailyPartitionsDefinition(start_date=start_date, timezone="UTC"),
            "instrument": dg.StaticPartitionsDefinition(list(instruments)),
        }
    )


def market_partitions() -> dg.MultiPartitionsDefinition:
    """Partitions for the current settings (cached, so every asset shares one definition)."""
    s = get_settings()
    return _build(s.start_date, s.instruments)


def split_key(key: str | dg.MultiPartitionKey) -> tuple[str, str]:
    """(date, instrument) of a multi-partition key such as ``2024-01-02|BTCUSDT``."""
    if isinstance(key, dg.MultiPartitionKey):
        dims = key.keys_by_dimension
        return dims["date"], dims["instrument"]
    date, _, instrument = str(key).partition("|")
    if not instrument:
        raise ValueError(f"not a date|instrument partition key: {key!r}")
    return date, instrument


def partition_key(date: str, instrument: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"date": date, "instrument": instrument})


def context_partitions(context) -> list[tuple[str, str]]:
    """Every (date, instrument) a run or backfill selected, sorted by date then instrument."""
    keys = (
        context.partition_keys
        if context.has_partition_key_range or not context.has_partition_key
        else [context.partition_key]
    )
    return sorted({split_key(k) for k in keys})


def range_tags(
    first_date: str, last_date: str, instruments: list[str] | tuple[str, ...] | None = None
) -> dict[str, str]:
    """Run tags selecting dates [first_date, last_date] x instruments as one single-run backfill.

    A multi-partition range is a rectangle in each dimension's own order, so the instrument
    bounds are taken from the partitions definition's order, not alphabetically; the rectangle
    must contain exactly the requested instruments.
    """
    from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

    order = list(market_partitions().get_partitions_def_for_dimension("instrument").get_partition_keys())
    wanted = list(instruments) if instruments else order
    unknown = [i for i in wanted if i not in order]
    if unknown:
        raise ValueError(f"unknown instrument(s) {unknown}; configured: {order}")
    idx = sorted(order.index(i) for i in wanted)
    if idx != list(range(idx[0], idx[-1] + 1)):
        raise ValueError(f"instruments {wanted} are not contiguous in the partition order {order}; run them separately")
    if last_date < first_date:
        raise ValueError(f"last date {last_date} is before first date {first_date}")
    return {
        ASSET_PARTITION_RANGE_START_TAG: f"{first_date}|{order[idx[0]]}",
        ASSET_PARTITION_RANGE_END_TAG: f"{last_date}|{order[idx[-1]]}",
    }
