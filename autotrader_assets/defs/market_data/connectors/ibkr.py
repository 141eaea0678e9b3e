"""Interactive Brokers Client Portal Web API historical bars as normalized 1-minute bars.

The Client Portal gateway (``https://localhost:5000`` by default) serves
``GET /v1/api/iserver/marketdata/history``: one request returns one ``period`` of bars, at
most 1000 points, and 1-minute periods can be at most 8 hours. A day is therefore fetched as a
sequence of windows, each filtered back to the requested ``[start, end)``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any, Literal

import pandas as pd

from autotrader_assets.defs.market_data.connectors._common import (
    ONE_MINUTE,
    finish,
    finite_number,
    object_bar,
    raw_bars,
    utc_range,
)
from autotrader_assets.defs.market_data.connectors.http import ConnectorError, HttpClient, client_for
from autotrader_assets.defs.market_data.schema import MalformedPayloadError
from deploy_ops.text import EXCERPT, truncate

log = logging.getLogger(__name__)

HISTORY_PATH = "/v1/api/iserver/marketdata/history"
SEARCH_PATH = "/v1/api/iserver/secdef/search"
#: Longest period the history endpoint accepts in hours ({1-8}h) and in minutes ({1-30}min).
MAX_WINDOW = pd.Timedelta(hours=8)
_MAX_MINUTE_PERIOD = 30


def period_for(window: pd.Timedelta) -> str:
    """The smallest history ``period`` string covering ``window`` (``"25min"``, ``"3h"``)."""
    if window <= pd.Timedelta(0) or window > MAX_WINDOW:
        raise ValueError(f"window must be within (0, {MAX_WINDOW}], got {window}")
    minutes = math.ceil(window / ONE_MINUTE)
    if minutes <= _MAX_MINUTE_PERIOD:
        return f"{minutes}min"
    return f"{math.ceil(minutes / 60)}h"


def parse_history(payload: Any, source: str = "ibkr", first_index: int = 0) -> pd.DataFrame:
    """Validate a history response and return a raw ts/OHLCV frame.

    ``data[].t`` is the bar open time in epoch milliseconds. ``v`` is multiplied by the
    response's ``volumeFactor`` because the gateway reports some volumes in lots.
    """
    if not isinstance(payload, dict):
        raise MalformedPayloadError(f"{source}: history payload must be a JSON object, got {type(payload).__name__}")
    if "data" not in payload:
        if "error" in payload:
            raise ConnectorError(f"{source}: gateway refused the history request: {payload['error']}")
        raise MalformedPayloadError(f"{source}: history payload has no 'data' field: {truncate(payload, EXCERPT)}")
    data = payload["data"]
    if data is None:
        data = []
    if not isinstance(data, list):
        raise MalformedPayloadError(f"{source}: 'data' must be a list, got {type(data).__name__}")
    raw_factor = payload.get("volumeFactor")
    factor = 1.0 if raw_factor is None else finite_number(raw_factor, source, "volumeFactor")
    times: list[int] = []
    values: list[list[float]] = []
    for i, bar in enumerate(data):
        where = f"{source}: bar {first_index + i}"
        t, ohlcv = object_bar(bar, where)
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t != int(t):
            raise MalformedPayloadError(f"{where}: t {t!r} is not epoch milliseconds")
        times.append(int(t))
        values.append(ohlcv)
    frame = raw_bars(pd.to_datetime(pd.Series(times, dtype="int64"), unit="ms", utc=True), values)
    frame["volume"] = frame["volume"] * factor
    return frame


class IbkrSource:
    """1-minute bars from an IBKR Client Portal gateway.

    ``conids`` maps instruments to IBKR contract ids; unmapped instruments are looked up once
    through ``/iserver/secdef/search`` (preferring contracts of ``sec_type``) and cached.

    ``start_time_anchor`` says which end of a window is sent as ``startTime``. IBKR documents
    ``startTime`` as the start of the period ("start", the default); set "end" for a gateway that
    counts the period back from it. Bars outside each window are dropped either way, so a wrong
    anchor shows up as missing bars (caught by completeness checks), never as wrong ones.
    ``verify`` is passed to requests: the gateway's self-signed certificate needs a CA bundle
    path or ``False``.
    """

    source_name = "ibkr"

    def __init__(
        self,
        *,
        base_url: str = "https://localhost:5000",
        conids: Mapping[str, int | str] | None = None,
        verify: bool | str = True,
        window: pd.Timedelta | str = MAX_WINDOW,
        start_time_anchor: Literal["start", "end"] = "start",
        outside_rth: bool = True,
        exchange: str | None = None,
        sec_type: str = "STK",
        http: HttpClient | None = None,
        **http_options: Any,
    ):
        self.window = pd.Timedelta(window)
        period_for(self.window)  # validates the window before any request is made
        if start_time_anchor not in ("start", "end"):
            raise ValueError(f"start_time_anchor must be 'start' or 'end', got {start_time_anchor!r}")
        self.base_url = base_url.rstrip("/")
        self.conids = {k: str(v) for k, v in (conids or {}).items()}
        self.start_time_anchor = start_time_anchor
        self.outside_rth = outside_rth
        self.exchange = exchange
        self.sec_type = sec_type
        self.http = client_for(self.source_name, http, http_options, verify=verify)

    def conid(self, instrument: str) -> str:
        """The contract id for ``instrument``: from config, else from a secdef search (cached)."""
        if instrument in self.conids:
            return self.conids[instrument]
        url = self.base_url + SEARCH_PATH
        payload = self.http.get_json(url, params={"symbol": instrument})
        if isinstance(payload, dict) and "error" in payload:
            raise ConnectorError(f"{self.source_name}: contract search for {instrument!r} failed: {payload['error']}")
        if not isinstance(payload, list):
            raise MalformedPayloadError(
                f"{self.source_name}: contract search for {instrument!r} returned "
                f"{type(payload).__name__}, expected a list"
            )
        matches = [
            c
            for c in payload
            if isinstance(c, dict)
            and c.get("conid") not in (None, "", -1)
            and str(c.get("symbol", "")).upper() == instrument.upper()
        ]
        preferred = [
            c
            for c in matches
            if any(isinstance(s, dict) and s.get("secType") == self.sec_type for s in c.get("sections") or [])
        ]
        chosen = (preferred or matches or [None])[0]
        if chosen is None:
            raise ConnectorError(
                f"{self.source_name}: no contract with symbol {instrument!r} found; map it explicitly in conids"
            )
        conid = str(chosen["conid"])
        log.info("%s: resolved %s to conid %s", self.source_name, instrument, conid)
        self.conids[instrument] = conid
        return conid

    def fetch_bars(self, instrument: str, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        """Bars of ``instrument`` opening in ``[start, end)``, one request per window."""
        start, end = utc_range(start, end)
        if start == end:
            return finish(pd.DataFrame(), instrument, self.source_name, start, end)
        conid = self.conid(instrument)
        url = self.base_url + HISTORY_PATH
        pages: list[pd.DataFrame] = []
        seen = 0
        window_start = start
        while window_start < end:
            window_end = min(window_start + self.window, end)
            anchor = window_start if self.start_time_anchor == "start" else window_end
            params: dict[str, Any] = {
                "conid": conid,
                "period": period_for(window_end - window_start),
                "bar": "1min",
                "startTime": anchor.strftime("%Y%m%d-%H:%M:%S"),
                "outsideRth": "true" if self.outside_rth else "false",
            }
            if self.exchange:
                params["exchange"] = self.exchange
            page = parse_history(self.http.get_json(url, params=params), self.source_name, seen)
            seen += len(page)
            inside = (page["ts"] >= window_start) & (page["ts"] < window_end)
            if inside.any():
                pages.append(page.loc[inside])
            window_start = window_end
        raw = pd.concat(pages, ignore_index=True) if pages else pd.DataFrame()
        return finish(raw, instrument, self.source_name, start, end)
