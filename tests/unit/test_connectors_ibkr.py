"""IbkrSource against Client Portal history payloads shaped on recorded IBKR bars."""

from __future__ import annotations

import gzip
import json
from urllib.parse import parse_qs, urlsplit

import pandas as pd
import pytest
import responses

from autotrader_assets.defs.market_data.connectors import IbkrSource, get_source
from autotrader_assets.defs.market_data.connectors.http import ConnectorError, HttpClient
from autotrader_assets.defs.market_data.connectors.ibkr import period_for
from autotrader_assets.defs.market_data.schema import BAR_COLUMNS, MalformedPayloadError
from tests.support.connectors import FakeClock, query, shared_data_dir

GATEWAY = "https://gateway.test:5000"
HISTORY = GATEWAY + "/v1/api/iserver/marketdata/history"
SEARCH = GATEWAY + "/v1/api/iserver/secdef/search"
DAY = pd.Timestamp("2021-01-05", tz="UTC")
T0 = pd.Timestamp("2021-01-05 14:30", tz="UTC")


def ms(ts: pd.Timestamp) -> int:
    return int(ts.value // 1_000_000)


def bar(ts: pd.Timestamp, price: float = 130.0, volume: float = 10.0) -> dict:
    return {"o": price, "h": price + 0.5, "l": price - 0.5, "c": price + 0.25, "v": volume, "t": ms(ts)}


def history(bars: list[dict], **extra) -> dict:
    """A history response with the metadata fields the gateway sends around ``data``."""
    return {
        "serverId": "20477",
        "symbol": "AAPL",
        "text": "APPLE INC",
        "priceFactor": 100,
        "startTime": "20210105-14:30:00",
        "high": "13100/3400/0",
        "low": "12900/100/30",
        "timePeriod": "1d",
        "barLength": 60,
        "mdAvailability": "S",
        "mktDataDelay": 0,
        "outsideRth": True,
        "volumeFactor": 1,
        "priceDisplayRule": 1,
        "priceDisplayValue": "2",
        "negativeCapable": False,
        "messageVersion": 2,
        "data": bars,
        "points": len(bars),
        "travelTime": 48,
        **extra,
    }


def serve_history(bars: list[dict], anchor: str = "start"):
    """A gateway stand-in: bars within the requested period, counted from startTime."""

    def callback(request):
        q = {k: v[0] for k, v in parse_qs(urlsplit(request.url).query).items()}
        anchor_ts = pd.Timestamp(pd.to_datetime(q["startTime"], format="%Y%m%d-%H:%M:%S"), tz="UTC")
        period = q["period"]
        length = (
            pd.Timedelta(minutes=int(period[:-3])) if period.endswith("min") else pd.Timedelta(hours=int(period[:-1]))
        )
        lo, hi = (anchor_ts, anchor_ts + length) if anchor == "start" else (anchor_ts - length, anchor_ts)
        page = [b for b in bars if ms(lo) <= b["t"] < ms(hi)]
        return 200, {}, json.dumps(history(page))

    return callback


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def source(clock: FakeClock, **options) -> IbkrSource:
    options.setdefault("conids", {"AAPL": 265598})
    http = HttpClient(source="ibkr", sleep=clock.sleep, clock=clock.time, jitter=0.0, backoff_base=1.0)
    return IbkrSource(base_url=GATEWAY, http=http, **options)


def recorded_bars() -> list[dict]:
    """The recorded IBKR bars (JSON lines) in the Client Portal ``data`` shape."""
    path = shared_data_dir() / "api_payloads" / "ibkr_historical_bars.json.gz"
    with gzip.open(path, "rt") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return [
        {
            "o": r["open"],
            "h": r["high"],
            "l": r["low"],
            "c": r["close"],
            "v": r["volume"],
            "t": ms(pd.Timestamp(r["date"], tz="UTC")),
        }
        for r in rows
    ]


def test_recorded_day_is_fetched_in_eight_hour_windows(mocked, clock):
    bars = recorded_bars()
    mocked.add_callback(responses.GET, HISTORY, callback=serve_history(bars))
    out = source(clock).fetch_bars("AAPL", DAY, DAY + pd.Timedelta(days=1))
    assert len(out) == len(bars) == 405
    assert out["ts"].is_monotonic_increasing
    assert out["close"].tolist() == [b["c"] for b in bars]
    assert out["volume"].tolist() == [float(b["v"]) for b in bars]
    assert out.loc[0, "ts"] == pd.Timestamp("2021-01-05 09:28", tz="UTC")
    qs = [query(c) for c in mocked.calls]
    assert [q["startTime"] for q in qs] == ["20210105-00:00:00", "20210105-08:00:00", "20210105-16:00:00"]
    assert {q["period"] for q in qs} == {"8h"}
    assert {(q["conid"], q["bar"], q["outsideRth"]) for q in qs} == {("265598", "1min", "true")}


def test_normal_fetch_with_inline_payload(mocked, clock):
    mocked.get(HISTORY, json=history([bar(T0), bar(T0 + pd.Timedelta(minutes=1), price=131.0)]))
    out = source(clock).fetch_bars("AAPL", T0, T0 + pd.Timedelta(minutes=2))
    assert list(out.columns) == BAR_COLUMNS
    assert out["open"].tolist() == [130.0, 131.0]
    assert out["high"].tolist() == [130.5, 131.5]
    assert set(out["source"]) == {"ibkr"} and set(out["instrument"]) == {"AAPL"}
    assert query(mocked.calls[0])["period"] == "2min"


def test_last_window_is_shorter(mocked, clock):
    mocked.add_callback(responses.GET, HISTORY, callback=serve_history([]))
    source(clock).fetch_bars("AAPL", DAY, DAY + pd.Timedelta(hours=10))
    assert [query(c)["period"] for c in mocked.calls] == ["8h", "2h"]


def test_end_anchor_sends_window_end_as_start_time(mocked, clock):
    bars = [bar(DAY + pd.Timedelta(minutes=i)) for i in range(0, 600, 7)]
    mocked.add_callback(responses.GET, HISTORY, callback=serve_history(bars, anchor="end"))
    out = source(clock, start_time_anchor="end").fetch_bars("AAPL", DAY, DAY + pd.Timedelta(hours=10))
    assert len(out) == len(bars)
    assert [query(c)["startTime"] for c in mocked.calls] == ["20210105-08:00:00", "20210105-10:00:00"]


def test_bars_outside_the_window_are_dropped(mocked, clock):
    mocked.get(HISTORY, json=history([bar(T0 - pd.Timedelta(minutes=1)), bar(T0), bar(T0 + pd.Timedelta(minutes=5))]))
    out = source(clock).fetch_bars("AAPL", T0, T0 + pd.Timedelta(minutes=5))
    assert out["ts"].tolist() == [T0]


def test_volume_factor_scales_volume(mocked, clock):
    mocked.get(HISTORY, json=history([bar(T0, volume=12.0)], volumeFactor=100))
    out = source(clock).fetch_bars("AAPL", T0, T0 + pd.Timedelta(minutes=1))
    assert out.loc[0, "volume"] == 1200.0


def test_conid_lookup_when_not_mapped_is_cached(mocked, clock):
    mocked.get(
        SEARCH,
        json=[
            {"conid": "38708077", "symbol": "AAPL", "description": "MEXI", "sections": [{"secType": "OPT"}]},
            {"conid": "265598", "symbol": "AAPL", "companyName": "APPLE INC", "sections": [{"secType": "STK"}]},
            {"conid": "1", "symbol": "AAPLX", "sections": [{"secType": "STK"}]},
        ],
    )
    mocked.get(HISTORY, json=history([bar(T0)]))
    src = source(clock, conids={})
    src.fetch_bars("AAPL", T0, T0 + pd.Timedelta(minutes=1))
    src.fetch_bars("AAPL", T0, T0 + pd.Timedelta(minutes=1))
    search_calls = [c for c in mocked.calls if "secdef" in c.request.url]
    assert len(search_calls) == 1
    assert query(search_calls[0]) == {"symbol": "AAPL"}
    assert {query(c)["conid"] for c in mocked.calls if "history" in c.request.url} == {"265598"}


def test_unknown_contract_is_a_clear_error(mocked, clock):
    mocked.get(SEARCH, json=[{"conid": "9", "symbol": "AAPLX"}])
    with pytest.raises(ConnectorError, match="no contract with symbol 'ZZZZ'"):
        source(clock, conids={}).fetch_bars("ZZZZ", T0, T0 + pd.Timedelta(minutes=1))


def test_search_error_payload_is_reported(mocked, clock):
    mocked.get(SEARCH, json={"error": "Bad Request: no session"})
    with pytest.raises(ConnectorError, match="no session"):
        source(clock, conids={}).conid("AAPL")


def test_gateway_error_payload_is_a_connector_error(mocked, clock):
    mocked.get(HISTORY, json={"error": "Chart data unavailable"})
    with pytest.raises(ConnectorError, match="Chart data unavailable"):
        source(clock).fetch_bars("AAPL", T0, T0 + pd.Timedelta(minutes=1))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"o": 1, "h": 1, "l": 1, "v": 1, "t": 0}, r"bar 1: missing fields \['c'\]"),
        ({"o": "x", "h": 1, "l": 1, "c": 1, "v": 1, "t": 0}, "bar 1: open 'x' is not a number"),
        ({"o": 1, "h": 1, "l": 1, "c": 1, "v": 1, "t": "noon"}, "bar 1: t 'noon' is not epoch milliseconds"),
        ([1, 2, 3], "bar 1: expected an object, got list"),
    ],
)
def test_malformed_row_names_its_index(mocked, clock, bad, message):
    mocked.get(HISTORY, json=history([bar(T0), bad]))
    with pytest.raises(MalformedPayloadError, match=message):
        source(clock).fetch_bars("AAPL", T0, T0 + pd.Timedelta(minutes=5))


def test_payload_without_data_is_malformed(mocked, clock):
    mocked.get(HISTORY, json={"symbol": "AAPL"})
    with pytest.raises(MalformedPayloadError, match="no 'data' field"):
        source(clock).fetch_bars("AAPL", T0, T0 + pd.Timedelta(minutes=5))


def test_malformed_json(mocked, clock):
    mocked.get(HISTORY, body='{"data": [')
    with pytest.raises(MalformedPayloadError, match="malformed JSON"):
        source(clock).fetch_bars("AAPL", T0, T0 + pd.Timedelta(minutes=5))


def test_empty_result(mocked, clock):
    mocked.get(HISTORY, json=history([]))
    out = source(clock).fetch_bars("AAPL", T0, T0 + pd.Timedelta(minutes=5))
    assert out.empty and list(out.columns) == BAR_COLUMNS


def test_duplicates_and_unsorted_rows_are_normalized(mocked, clock):
    t1 = T0 + pd.Timedelta(minutes=1)
    mocked.get(HISTORY, json=history([bar(t1), bar(T0), bar(T0), bar(t1, price=140.0)]))
    out = source(clock).fetch_bars("AAPL", T0, T0 + pd.Timedelta(minutes=2))
    # identical repeat dropped and counted; conflicting bars kept for the schema check to show
    assert out["ts"].tolist() == [T0, t1, t1]
    assert out.loc[1:2, "open"].tolist() == [130.0, 140.0]
    assert out.attrs["duplicates_dropped"] == 1


def test_5xx_then_success_and_429_retry_after(mocked, clock):
    mocked.get(HISTORY, status=503)
    mocked.get(HISTORY, status=429, headers={"Retry-After": "2"})
    mocked.get(HISTORY, json=history([bar(T0)]))
    out = source(clock).fetch_bars("AAPL", T0, T0 + pd.Timedelta(minutes=1))
    assert len(out) == 1
    assert clock.sleeps == [1.0, 2.0]


def test_5xx_exhausted(mocked, clock):
    mocked.get(HISTORY, status=500, json={"error": "internal"})
    http = HttpClient(source="ibkr", sleep=clock.sleep, clock=clock.time, max_retries=1, jitter=0.0)
    with pytest.raises(ConnectorError, match="marketdata/history.*HTTP 500"):
        IbkrSource(base_url=GATEWAY, http=http, conids={"AAPL": 1}).fetch_bars("AAPL", T0, T0 + pd.Timedelta(minutes=1))
    assert len(mocked.calls) == 2


def test_verify_and_base_url_are_configurable(mocked):
    mocked.get(HISTORY, json=history([]))
    src = get_source("ibkr", base_url=GATEWAY, verify=False, conids={"AAPL": 1})
    src.fetch_bars("AAPL", T0, T0 + pd.Timedelta(minutes=1))
    assert mocked.calls[0].request.req_kwargs["verify"] is False
    assert IbkrSource().base_url == "https://localhost:5000"


def test_period_for_respects_api_units():
    assert period_for(pd.Timedelta(minutes=25)) == "25min"
    assert period_for(pd.Timedelta(minutes=30)) == "30min"
    assert period_for(pd.Timedelta(minutes=31)) == "1h"
    assert period_for(pd.Timedelta(hours=7, minutes=1)) == "8h"
    with pytest.raises(ValueError):
        period_for(pd.Timedelta(hours=9))
    with pytest.raises(ValueError):
        IbkrSource(window="12h")
    with pytest.raises(ValueError, match="start_time_anchor"):
        IbkrSource(start_time_anchor="middle")  # type: ignore[arg-type]
