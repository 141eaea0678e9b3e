"""The daily partitioning of paper trading (shared by the asset and its job)."""

from __future__ import annotations

import functools

import dagster as dg

from autotrader_assets.settings import get_settings


@functools.lru_cache(maxsize=8)
def _daily(start_date: str) -> dg.DailyPartitionsDefinition:
    return dg.DailyPartitionsDefinition(start_date=start_date, timezone="UTC")


def trading_partitions() -> dg.DailyPartitionsDefinition:
    """One partition per UTC day from the settings' start date (shared by asset and job)."""
    return _daily(get_settings().start_date)
