"""Alpaca market data v2 stock bars and v1beta3 crypto bars as normalized 1-minute bars.

Credentials come from ``ALPACA_API_KEY_ID`` / ``ALPACA_API_SECRET_KEY`` (or the constructor) and
travel only in the ``APCA-API-KEY-ID`` / ``APCA-API-SECRET-KEY`` headers: never in URLs, logs,
``repr`` or exception messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import pandas as pd

from autotrader_assets.defs.market_data.connectors._common import finish, object_bar, raw_bars, utc_range
from autotrader_assets.defs.market_data.connectors.http import ConnectorError, HttpClient, client_for
from autotrader_assets.defs.market_data.schema import MalformedPayloadError
from autotrader_assets.settings import secret
from deploy_ops.text import EXCERPT, truncate

KEY_ID_ENV = "ALPACA_API_KEY_ID"
SECRET_KEY_ENV = "ALPACA_API_SECRET_KEY"
KEY_ID_HEADER = "APCA-API-KEY-ID"
SECRET_KEY_HEADER = "APCA-API-SECRET-KEY"
MAX_LIMIT = 10_000


class MissingCredentialsError(ConnectorError):
    """Alpaca keys are not configured; the message names the variables, never their values."""


def rfc3339(ts: pd.Timestamp) -> str:
    """A UTC timestamp in the ``2024-01-02T14:30:00Z`` form Alpaca expects."""
    return ts.tz_convert("UTC").isoformat().replace("+00:00", "Z")


def parse_bars(bars: Any, source: str = "alpaca", first_index: int = 0) -> pd.DataFrame:
    """Validate a list of Alpaca bar objects (``t`` RFC3339, ``o h l c v``) into a raw frame."""
    if bars is None:
        bars = []
    if not isinstance(bars, list):
        raise MalformedPayloadError(f"{source}: 'bars' must be a list, got {type(bars).__name__}")
    times: list[pd.Timestamp] = []
    values: list[list[float]] = []
    for i, bar in enumerate(bars):
        where = f"{source}: bar {first_index + i}"
        t, ohlcv = object_bar(bar, where)
        try:
            if not isinstance(t, str):
                raise ValueError
            ts = pd.Timestamp(t)
        except ValueError as exc:
            raise MalformedPayloadError(f"{where}: t {t!r} is not an RFC3339 timestamp") from exc
        if ts is pd.NaT or ts.tzinfo is None:
            raise MalformedPayloadError(f"{where}: t {t!r} is not an RFC3339 timestamp with a zone")
        times.append(ts.tz_convert("UTC"))
        values.append(ohlcv)
    return raw_bars(pd.Series(pd.DatetimeIndex(times, tz="UTC"), dtype="datetime64[ns, UTC]"), values)


class AlpacaSource:
    """1-minute bars from Alpaca's market data API, following ``next_page_token``.

    ``asset_class="auto"`` sends instruments with a slash (``BTC/USD``) to the crypto endpoint
    and everything else to stocks. Stock bars need credentials; crypto bars are served without
    them, so keys are sent for crypto only when configured (they raise the rate limit).
    """

    source_name = "alpaca"

    def __init__(
        self,
        *,
        base_url: str = "https://data.alpaca.markets",
        asset_class: Literal["auto", "stocks", "crypto"] = "auto",
        feed: str | None = None,
        adjustment: str | None = None,
        crypto_location: str = "us",
        limit: int = MAX_LIMIT,
        key_id: str | None = None,
        secret_key: str | None = None,
        http: HttpClient | None = None,
        **http_options: Any,
    ):
        if asset_class not in ("auto", "stocks", "crypto"):
            raise ValueError(f"asset_class must be 'auto', 'stocks' or 'crypto', got {asset_class!r}")
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be within 1..{MAX_LIMIT}, got {limit}")
        self.base_url = base_url.rstrip("/")
        self.asset_class = asset_class
        self.feed = feed
        self.adjustment = adjustment
        self.crypto_location = crypto_location
        self.limit = limit
        self._key_id = key_id
        self._secret_key = secret_key
        self.http = client_for(self.source_name, http, http_options)

    def __repr__(self) -> str:
        return f"AlpacaSource(base_url={self.base_url!r}, asset_class={self.asset_class!r})"

    def is_crypto(self, instrument: str) -> bool:
        """Whether ``instrument`` is fetched from the crypto endpoint."""
        if self.asset_class == "auto":
            return "/" in instrument
        return self.asset_class == "crypto"

    def credential_headers(self, required: bool = True) -> dict[str, str]:
        """Auth headers from the constructor or the environment (``settings.secret``), read at call time.

        Raises :class:`MissingCredentialsError` naming the missing variables when ``required``.
        """
        key_id = self._key_id or secret(KEY_ID_ENV) or ""
        secret_key = self._secret_key or secret(SECRET_KEY_ENV) or ""
        missing = [name for name, value in ((KEY_ID_ENV, key_id), (SECRET_KEY_ENV, secret_key)) if not value]
        if missing:
            if required:
                raise MissingCredentialsError(
                    f"{self.source_name}: credentials missing; set environment variable(s) "
                    f"{', '.join(missing)} (or pass key_id/secret_key)"
                )
            return {}
        self.http.add_secret(key_id)
        self.http.add_secret(secret_key)
        return {KEY_ID_HEADER: key_id, SECRET_KEY_HEADER: secret_key}

    def fetch_bars(self, instrument: str, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        """Bars of ``instrument`` opening in ``[start, end)``, across all result pages."""
        start, end = utc_range(start, end)
        crypto = self.is_crypto(instrument)
        headers = self.credential_headers(required=not crypto)
        if start == end:
            return finish(pd.DataFrame(), instrument, self.source_name, start, end)
        if crypto:
            url = f"{self.base_url}/v1beta3/crypto/{self.crypto_location}/bars"
            base_params: dict[str, Any] = {"symbols": instrument}
        else:
            url = f"{self.base_url}/v2/stocks/{instrument.upper()}/bars"
            base_params = {}
            if self.feed:
                base_params["feed"] = self.feed
            if self.adjustment:
                base_params["adjustment"] = self.adjustment
        # Alpaca's end is inclusive; a bar opening exactly at `end` is dropped by `finish`.
        base_params.update(timeframe="1Min", start=rfc3339(start), end=rfc3339(end), limit=self.limit)
        pages: list[pd.DataFrame] = []
        seen = 0
        token: str | None = None
        used_tokens: set[str] = set()
        while True:
            params = dict(base_params)
            if token:
                params["page_token"] = token
            payload = self.http.get_json(url, params=params, headers=headers)
            bars = self._extract_bars(payload, instrument, crypto)
            page = parse_bars(bars, self.source_name, seen)
            seen += len(page)
            if not page.empty:
                pages.append(page)
            token = payload.get("next_page_token")
            if not token:
                break
            if not isinstance(token, str) or token in used_tokens:
                raise MalformedPayloadError(
                    f"{self.source_name}: next_page_token {token!r} repeats or is not a string; "
                    "pagination would not end"
                )
            used_tokens.add(token)
        raw = pd.concat(pages, ignore_index=True) if pages else pd.DataFrame()
        return finish(raw, instrument, self.source_name, start, end)

    def _extract_bars(self, payload: Any, instrument: str, crypto: bool) -> Any:
        if not isinstance(payload, dict):
            raise MalformedPayloadError(
                f"{self.source_name}: bars payload must be a JSON object, got {type(payload).__name__}"
            )
        if "bars" not in payload:
            raise MalformedPayloadError(
                f"{self.source_name}: payload has no 'bars' field: {truncate(payload, EXCERPT)}"
            )
        bars = payload["bars"]
        if not crypto:
            return bars
        # Crypto answers for several symbols at once: {"bars": {"BTC/USD": [...]}}.
        if bars is None:
            return []
        if not isinstance(bars, Mapping):
            raise MalformedPayloadError(
                f"{self.source_name}: crypto 'bars' must be an object keyed by symbol, got {type(bars).__name__}"
            )
        return bars.get(instrument, [])
