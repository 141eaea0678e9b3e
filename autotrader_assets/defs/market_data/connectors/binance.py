"""Binance spot klines (``GET /api/v3/klines``) as normalized 1-minute bars."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from autotrader_assets.defs.market_data.connectors._common import (
    finish,
    finite_number,
    raw_bars,
    to_epoch_ms,
    utc_range,
)
from autotrader_assets.defs.market_data.connectors.http import HttpClient, client_for
from autotrader_assets.defs.market_data.schema import MalformedPayloadError
from deploy_ops.text import EXCERPT, truncate

log = logging.getLogger(__name__)

KLINE_FIELDS = 12
KLINES_PATH = "/api/v3/klines"
WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"
_MINUTE_MS = 60_000
#: Positions of the fields kept from each kline array.
_OHLCV: Sequence[tuple[int, str]] = ((1, "open"), (2, "high"), (3, "low"), (4, "close"), (5, "volume"))


def parse_kline_rows(rows: Any, source: str = "binance", first_index: int = 0) -> pd.DataFrame:
    """Validate Binance 12-field kline arrays and return a raw ts/OHLCV frame.

    ``first_index`` offsets the row numbers in error messages so that a bad row on page 3 is
    reported by its position in the whole download.
    """
    if not isinstance(rows, list):
        raise MalformedPayloadError(
            f"{source}: klines payload must be a JSON array, got {type(rows).__name__}: {truncate(rows, EXCERPT)}"
        )
    times: list[int] = []
    values: list[tuple[float, ...]] = []
    for i, row in enumerate(rows):
        where = f"{source}: kline row {first_index + i}"
        if not isinstance(row, (list, tuple)) or len(row) != KLINE_FIELDS:
            shape = f"{len(row)} fields" if isinstance(row, (list, tuple)) else type(row).__name__
            raise MalformedPayloadError(f"{where}: expected {KLINE_FIELDS} fields, got {shape}")
        times.append(_epoch_int(row[0], where))
        values.append(tuple(finite_number(row[j], where, name) for j, name in _OHLCV))
    return raw_bars(pd.to_datetime(pd.Series(times, dtype="int64"), unit="ms", utc=True), values)


def _epoch_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise MalformedPayloadError(f"{where}: open time {value!r} is not an integer")
    try:
        return int(value)
    except ValueError as exc:
        raise MalformedPayloadError(f"{where}: open time {value!r} is not an integer") from exc


def binance_symbol(instrument: str) -> str:
    """Binance spells pairs without separators: ``BTC/USDT`` and ``btc-usdt`` become ``BTCUSDT``."""
    return instrument.replace("/", "").replace("-", "").replace("_", "").upper()


class BinanceSource:
    """1-minute bars from Binance spot klines, paginated and kept under the request-weight limit.

    Binance allows ``weight_limit`` request weight per IP per clock minute and reports what has
    been used in ``X-MBX-USED-WEIGHT-1M``. Before a request that would cross the limit the source
    sleeps to the next minute (plus ``weight_pause_margin`` for clock skew) rather than earning a
    429 and, after repeated 429s, an IP ban (418).
    """

    source_name = "binance"

    def __init__(
        self,
        *,
        base_url: str = "https://api.binance.com",
        limit: int = 1000,
        weight_limit: int = 1200,
        request_weight: int = 2,
        weight_pause_margin: float = 1.0,
        symbols: Mapping[str, str] | None = None,
        http: HttpClient | None = None,
        **http_options: Any,
    ):
        if not 1 <= limit <= 1000:
            raise ValueError(f"limit must be within 1..1000 (Binance's maximum), got {limit}")
        if request_weight < 1 or weight_limit < request_weight:
            raise ValueError(f"need 1 <= request_weight <= weight_limit, got {request_weight} and {weight_limit}")
        self.base_url = base_url.rstrip("/")
        self.limit = limit
        self.weight_limit = weight_limit
        self.request_weight = request_weight
        self.weight_pause_margin = weight_pause_margin
        self.symbols = dict(symbols or {})
        self.http = client_for(self.source_name, http, http_options)
        self.used_weight = 0
        self._weight_minute: int | None = None

    def fetch_bars(self, instrument: str, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        """Bars of ``instrument`` opening in ``[start, end)``, following pages past ``limit``."""
        start, end = utc_range(start, end)
        symbol = self.symbols.get(instrument, binance_symbol(instrument))
        end_ms = to_epoch_ms(end)
        cursor = to_epoch_ms(start)
        # Whole minutes only: a start inside a minute must not pull that minute's bar.
        cursor = -(-cursor // _MINUTE_MS) * _MINUTE_MS
        pages: list[pd.DataFrame] = []
        seen = 0
        while cursor < end_ms:
            params = {
                "symbol": symbol,
                "interval": "1m",
                "startTime": cursor,
                # Binance's endTime is inclusive; the window is half-open.
                "endTime": end_ms - 1,
                "limit": self.limit,
            }
            rows = self._request(params)
            page = parse_kline_rows(rows, self.source_name, first_index=seen)
            seen += len(page)
            if page.empty:
                break
            pages.append(page)
            last_open = to_epoch_ms(page["ts"].max())
            if len(page) < self.limit:
                break
            next_cursor = last_open + _MINUTE_MS
            if next_cursor <= cursor:
                raise MalformedPayloadError(
                    f"{self.source_name}: page starting at {cursor} ended at {last_open}; pagination would not advance"
                )
            cursor = next_cursor
        raw = pd.concat(pages, ignore_index=True) if pages else pd.DataFrame()
        return finish(raw, instrument, self.source_name, start, end)

    def _request(self, params: Mapping[str, Any]) -> Any:
        self._respect_weight_limit()
        url = self.base_url + KLINES_PATH
        response = self.http.get(url, params=params)
        self._record_weight(response.headers.get(WEIGHT_HEADER))
        return self.http.decode_json(response, url=url, params=params)

    def _respect_weight_limit(self) -> None:
        now = self.http.clock()
        minute = int(now // 60)
        if self._weight_minute is not None and minute != self._weight_minute:
            self.used_weight = 0
            self._weight_minute = minute
        if self.used_weight + self.request_weight > self.weight_limit:
            pause = (minute + 1) * 60 - now + self.weight_pause_margin
            log.info(
                "%s: used weight %d of %d this minute; pausing %.1fs",
                self.source_name,
                self.used_weight,
                self.weight_limit,
                pause,
            )
            self.http.sleep(pause)
            self.used_weight = 0
            self._weight_minute = int(self.http.clock() // 60)

    def _record_weight(self, header: str | None) -> None:
        if header is None:
            # Without the header, count our own requests so the limit still holds.
            self.used_weight += self.request_weight
        else:
            try:
                self.used_weight = int(header)
            except ValueError:
                log.warning("%s: ignoring unreadable %s header %r", self.source_name, WEIGHT_HEADER, header)
                self.used_weight += self.request_weight
        self._weight_minute = int(self.http.clock() // 60)
