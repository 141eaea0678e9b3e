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
    keys = context.partition_keys if context.has_partition_key_range or not context.has_partition_key else [context.partition_key]
    return sorted({split_key(k) for k in keys})
