"""AlpacaSource: stock and crypto bars, pagination, credentials and their secrecy."""

from __future__ import annotations

import logging

import pandas as pd
import pytest

from autotrader_assets.defs.market_data.connectors import AlpacaSource, MissingCredentialsError, get_source
from autotrader_assets.defs.market_data.connectors.alpaca import (
    KEY_ID_ENV,
    KEY_ID_HEADER,
    SECRET_KEY_ENV,
    SECRET_KEY_HEADER,
)
from autotrader_assets.defs.market_data.connectors.http import ConnectorError, HttpClient
from autotrader_assets.defs.market_data.schema import BAR_COLUMNS, MalformedPayloadError
from tests.support.connectors import FakeClock, query

BASE = "https://data.alpaca.test"
STOCK_BARS = BASE + "/v2/stocks/AAPL/bars"
CRYPTO_BARS = BASE + "/v1beta3/crypto/us/bars"
KEY_ID = "PKTESTKEYID0000000001"
SECRET = "s3cr3t-alpaca-secret-key-value"
T0 = pd.Timestamp("2024-01-02 14:30", tz="UTC")


def bar(ts: pd.Timestamp, price: float = 185.0) -> dict:
    """One bar in Alpaca's v2 shape."""
    return {
        "t": ts.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "o": price,
        "h": price + 0.4,
        "l": price - 0.3,
        "c": price + 0.1,
        "v": 21_500,
        "n": 310,
        "vw": price + 0.05,
    }


def minute(i: int) -> pd.Timestamp:
    return T0 + pd.Timedelta(minutes=i)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def creds(monkeypatch):
    monkeypatch.setenv(KEY_ID_ENV, KEY_ID)
    monkeypatch.setenv(SECRET_KEY_ENV, SECRET)


@pytest.fixture
def no_creds(monkeypatch):
    monkeypatch.delenv(KEY_ID_ENV, raising=False)
    monkeypatch.delenv(SECRET_KEY_ENV, raising=False)


def source(clock: FakeClock, **options) -> AlpacaSource:
    http = HttpClient(
        source="alpaca",
        sleep=clock.sleep,
        clock=clock.time,
        jitter=0.0,
        backoff_base=1.0,
        max_retries=options.pop("max_retries", 3),
    )
    return AlpacaSource(base_url=BASE, http=http, **options)


def test_stock_bars_with_pagination_and_headers(mocked, clock, creds):
    mocked.get(
        STOCK_BARS,
        json={"bars": [bar(minute(0)), bar(minute(1), 186.0)], "symbol": "AAPL", "next_page_token": "QUFQTHxNfDIwMjQ="},
    )
    mocked.get(STOCK_BARS, json={"bars": [bar(minute(2), 187.0)], "symbol": "AAPL", "next_page_token": None})
    out = source(clock, feed="iex").fetch_bars("AAPL", T0, minute(3))
    assert list(out.columns) == BAR_COLUMNS
    assert out["ts"].tolist() == [minute(0), minute(1), minute(2)]
    assert out["open"].tolist() == [185.0, 186.0, 187.0]
    assert out["low"].tolist() == [184.7, 185.7, 186.7]
    assert out["volume"].tolist() == [21_500.0] * 3
    assert set(out["source"]) == {"alpaca"}
    first, second = (query(c) for c in mocked.calls)
    assert first == {
        "feed": "iex",
        "timeframe": "1Min",
        "start": "2024-01-02T14:30:00Z",
        "end": "2024-01-02T14:33:00Z",
        "limit": "10000",
    }
    assert second["page_token"] == "QUFQTHxNfDIwMjQ="
    headers = mocked.calls[0].request.headers
    assert headers[KEY_ID_HEADER] == KEY_ID and headers[SECRET_KEY_HEADER] == SECRET


def test_bar_at_inclusive_end_is_dropped(mocked, clock, creds):
    mocked.get(STOCK_BARS, json={"bars": [bar(minute(0)), bar(minute(1))], "next_page_token": None})
    out = source(clock).fetch_bars("AAPL", T0, minute(1))
    assert out["ts"].tolist() == [minute(0)]


def test_crypto_bars_use_v1beta3_and_work_without_credentials(mocked, clock, no_creds):
    mocked.get(CRYPTO_BARS, json={"bars": {"BTC/USD": [bar(minute(0), 42_000.0)]}, "next_page_token": None})
    out = source(clock).fetch_bars("BTC/USD", T0, minute(1))
    assert out["close"].tolist() == [42_000.1]
    assert set(out["instrument"]) == {"BTC/USD"}
    q = query(mocked.calls[0])
    assert q["symbols"] == "BTC/USD" and q["timeframe"] == "1Min"
    assert KEY_ID_HEADER not in mocked.calls[0].request.headers


def test_crypto_sends_credentials_when_present(mocked, clock, creds):
    mocked.get(CRYPTO_BARS, json={"bars": {}, "next_page_token": None})
    assert source(clock).fetch_bars("ETH/USD", T0, minute(1)).empty
    assert mocked.calls[0].request.headers[KEY_ID_HEADER] == KEY_ID


def test_missing_credentials_is_a_clear_error_before_any_request(mocked, clock, no_creds):
    with pytest.raises(MissingCredentialsError, match=f"{KEY_ID_ENV}, {SECRET_KEY_ENV}"):
        source(clock).fetch_bars("AAPL", T0, minute(1))
    assert len(mocked.calls) == 0


def test_only_the_missing_variable_is_named(mocked, clock, no_creds, monkeypatch):
    monkeypatch.setenv(KEY_ID_ENV, KEY_ID)
    with pytest.raises(MissingCredentialsError) as info:
        source(clock).fetch_bars("AAPL", T0, minute(1))
    assert SECRET_KEY_ENV in str(info.value)
    assert KEY_ID_ENV not in str(info.value) and KEY_ID not in str(info.value)
    assert isinstance(info.value, ConnectorError)


def test_explicit_credentials_override_the_environment(mocked, clock, no_creds):
    mocked.get(STOCK_BARS, json={"bars": None, "symbol": "AAPL", "next_page_token": None})
    source(clock, key_id="explicit-id", secret_key="explicit-secret").fetch_bars("AAPL", T0, minute(1))
    assert mocked.calls[0].request.headers[SECRET_KEY_HEADER] == "explicit-secret"


def test_secrets_absent_from_errors_logs_and_repr(mocked, clock, creds, caplog):
    caplog.set_level(logging.DEBUG)
    mocked.get(STOCK_BARS, status=500, body=f"trace: key={KEY_ID}")
    mocked.get(STOCK_BARS, status=403, json={"message": f"forbidden: {KEY_ID}/{SECRET}"})
    src = source(clock)
    with pytest.raises(ConnectorError) as info:
        src.fetch_bars("AAPL", T0, minute(1))
    for text in (str(info.value), caplog.text, repr(src), info.value.url or ""):
        assert KEY_ID not in text and SECRET not in text
    assert "HTTP 403" in str(info.value) and "forbidden" in str(info.value)


def test_secrets_absent_when_retries_are_exhausted(mocked, clock, creds):
    mocked.get(STOCK_BARS, status=502)
    with pytest.raises(ConnectorError) as info:
        source(clock, max_retries=2).fetch_bars("AAPL", T0, minute(1))
    assert "v2/stocks/AAPL/bars" in str(info.value) and "HTTP 502" in str(info.value)
    assert KEY_ID not in str(info.value) and SECRET not in str(info.value)
    assert clock.sleeps == [1.0, 2.0]


def test_429_with_retry_after_then_success(mocked, clock, creds):
    mocked.get(STOCK_BARS, status=429, headers={"Retry-After": "5"})
    mocked.get(STOCK_BARS, json={"bars": [bar(minute(0))], "next_page_token": None})
    assert len(source(clock).fetch_bars("AAPL", T0, minute(1))) == 1
    assert clock.sleeps == [5.0]


def test_empty_result_null_bars(mocked, clock, creds):
    mocked.get(STOCK_BARS, json={"bars": None, "symbol": "AAPL", "next_page_token": None})
    out = source(clock).fetch_bars("AAPL", T0, minute(60))
    assert out.empty and list(out.columns) == BAR_COLUMNS


def test_duplicates_and_unsorted_across_pages_are_normalized(mocked, clock, creds):
    mocked.get(STOCK_BARS, json={"bars": [bar(minute(2)), bar(minute(0))], "next_page_token": "p2"})
    mocked.get(
        STOCK_BARS, json={"bars": [bar(minute(1)), bar(minute(2), 200.0), bar(minute(0))], "next_page_token": None}
    )
    out = source(clock).fetch_bars("AAPL", T0, minute(3))
    # the page overlap's identical bar is dropped and counted; the conflicting one is kept
    assert out["ts"].tolist() == [minute(0), minute(1), minute(2), minute(2)]
    assert out.loc[2:3, "open"].tolist() == [185.0, 200.0]
    assert out.attrs == {"interval_seconds": 60, "duplicates_dropped": 1}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"t": "yesterday", "o": 1, "h": 1, "l": 1, "c": 1, "v": 1}, "bar 1: t 'yesterday' is not an RFC3339"),
        ({"t": "2024-01-02T14:31:00", "o": 1, "h": 1, "l": 1, "c": 1, "v": 1}, "bar 1: .* with a zone"),
        ({"t": "2024-01-02T14:31:00Z", "o": 1, "h": 1, "l": 1, "c": 1}, r"bar 1: missing fields \['v'\]"),
        ({"t": "2024-01-02T14:31:00Z", "o": 1, "h": "?", "l": 1, "c": 1, "v": 1}, "bar 1: high '\\?' is not a number"),
        ("bar", "bar 1: expected an object"),
    ],
)
def test_malformed_row_names_its_index(mocked, clock, creds, bad, message):
    mocked.get(STOCK_BARS, json={"bars": [bar(minute(0)), bad], "next_page_token": None})
    with pytest.raises(MalformedPayloadError, match=message):
        source(clock).fetch_bars("AAPL", T0, minute(5))


def test_malformed_json(mocked, clock, creds):
    mocked.get(STOCK_BARS, body='{"bars": [{"t": ')
    with pytest.raises(MalformedPayloadError, match="malformed JSON"):
        source(clock).fetch_bars("AAPL", T0, minute(5))


def test_payload_without_bars_is_malformed(mocked, clock, creds):
    mocked.get(STOCK_BARS, json={"message": "ok"})
    with pytest.raises(MalformedPayloadError, match="no 'bars' field"):
        source(clock).fetch_bars("AAPL", T0, minute(5))


def test_repeated_page_token_stops_instead_of_looping(mocked, clock, creds):
    mocked.get(STOCK_BARS, json={"bars": [bar(minute(0))], "next_page_token": "same"})
    with pytest.raises(MalformedPayloadError, match="repeats"):
        source(clock).fetch_bars("AAPL", T0, minute(5))
    assert len(mocked.calls) == 2


def test_asset_class_can_be_forced(mocked, clock, creds):
    mocked.get(CRYPTO_BARS, json={"bars": {"BTCUSD": [bar(minute(0))]}, "next_page_token": None})
    out = source(clock, asset_class="crypto").fetch_bars("BTCUSD", T0, minute(1))
    assert len(out) == 1


def test_configuration_is_validated():
    with pytest.raises(ValueError, match="asset_class"):
        AlpacaSource(asset_class="forex")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit"):
        AlpacaSource(limit=20_000)


def test_get_source_alpaca_defaults_to_the_public_data_host():
    src = get_source("alpaca")
    assert isinstance(src, AlpacaSource) and src.base_url == "https://data.alpaca.markets"
