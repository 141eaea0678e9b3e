"""Market data connectors: broker APIs and files, all returning the normalized bar frame.

Every source implements :class:`BarSource`. :func:`get_source` builds one by name from
:data:`SOURCE_FACTORIES`; adding a source is one entry there. An entry may be the factory itself
or a ``"package.module:Attribute"`` string imported on first use, which lets a source that
imports this package register itself here without a circular import.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import pandas as pd

from autotrader_assets.defs.market_data.connectors.alpaca import AlpacaSource, MissingCredentialsError
from autotrader_assets.defs.market_data.connectors.binance import BinanceSource, parse_kline_rows
from autotrader_assets.defs.market_data.connectors.files import FileSource, FileSourceError, parse_times, read_bar_file
from autotrader_assets.defs.market_data.connectors.http import ConnectorError, HttpClient
from autotrader_assets.defs.market_data.connectors.ibkr import IbkrSource
from autotrader_assets.defs.market_data.schema import MalformedPayloadError


@runtime_checkable
class BarSource(Protocol):
    """Anything that returns normalized bars for an instrument and a time window."""

    def fetch_bars(self, instrument: str, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        """Bars (``schema.BAR_COLUMNS``) of ``instrument`` whose UTC open time is in ``[start, end)``.

        The frame's ``attrs`` carry ``interval_seconds`` (int or None) and ``duplicates_dropped``
        (int), see ``schema.with_bar_attrs``.
        """
        ...


#: Source name -> factory (a callable taking keyword options, or a lazy "module:attr" path).
SOURCE_FACTORIES: dict[str, Callable[..., BarSource] | str] = {
    "binance": BinanceSource,
    "ibkr": IbkrSource,
    "alpaca": AlpacaSource,
    "file": FileSource,
    "replay": "autotrader_assets.defs.market_data.replay:ReplaySource",
}


def get_source(name: str, **kwargs: Any) -> BarSource:
    """Build the source registered as ``name`` with ``kwargs`` as its constructor options."""
    key = name.strip().lower()
    if key not in SOURCE_FACTORIES:
        raise ValueError(f"unknown market data source {name!r}; known: {', '.join(sorted(SOURCE_FACTORIES))}")
    factory = SOURCE_FACTORIES[key]
    if isinstance(factory, str):
        module_name, _, attr = factory.partition(":")
        factory = getattr(importlib.import_module(module_name), attr)
    return factory(**kwargs)


__all__ = [
    "AlpacaSource",
    "BarSource",
    "BinanceSource",
    "ConnectorError",
    "FileSource",
    "FileSourceError",
    "HttpClient",
    "IbkrSource",
    "MalformedPayloadError",
    "MissingCredentialsError",
    "SOURCE_FACTORIES",
    "get_source",
    "parse_kline_rows",
    "parse_times",
    "read_bar_file",
]
