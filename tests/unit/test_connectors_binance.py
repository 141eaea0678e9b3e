"""BinanceSource against recorded-shape klines payloads served by `responses`."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pandas as pd
import pytest
import responses

from autotrader_assets.defs.market_data.connectors import BinanceSource, get_source
from autotrader_assets.defs.market_data.connectors.binance import WEIGHT_HEADER, parse_kline_rows
from autotrader_assets.defs.market_data.connectors.http import ConnectorError, HttpClient
from autotrader_assets.defs.market_data.schema import BAR_COLUMNS, MalformedPayloadError
from tests.support.connectors import FakeClock, query, shared_data_dir

BASE = "https://api.binance.test"
KLINES = BASE + "/api/v3/klines"
T0 = pd.Timestamp("2024-01-02 00:00", tz="UTC")
T0_MS = int(T0.value // 1_000_000)
MIN_MS = 60_000


def kline(open_ms: int, price: float = 100.0, volume: float = 1.5) -> list:
    """One kline in the exact 12-field layout of GET /api/v3/klines."""
    return [
        open_ms,
        f"{price:.8f}",
        f"{price + 1:.8f}",
        f"{price - 1:.8f}",
        f"{price + 0.5:.8f}",
        f"{volume:.8f}",
        open_ms + MIN_MS - 1,
        f"{price * volume:.8f}",
        12,
        "0.70000000",
        "70.0",
        "0",
    ]


def minutes(n: int, start_ms: int = T0_MS) -> list[list]:
    return [kline(start_ms + i * MIN_MS, price=100.0 + i) for i in range(n)]


def serve_klines(rows: list[list], weights: list[int] | None = None):
    """A callback that answers like Binance: rows in [startTime, endTime], at most `limit`."""
    calls = {"n": 0}

    def callback(request):
        q = parse_qs(urlsplit(request.url).query)
        start, end, limit = int(q["startTime"][0]), int(q["endTime"][0]), int(q["limit"][0])
        page = [r for r in rows if start <= r[0] <= end][:limit]
        headers = {}
        if weights is not None:
            headers[WEIGHT_HEADER] = str(weights[min(calls["n"], len(weights) - 1)])
        calls["n"] += 1
        return 200, headers, json.dumps(page)

    return callback


@pytest.fixture
def clock() -> FakeClock:
    # 10 s into a minute, so "time to the next minute" is 50 s.
    return FakeClock(now=1_700_000_040.0 + 10.0)


def source(clock: FakeClock, **options) -> BinanceSource:
    http = HttpClient(source="binance", sleep=clock.sleep, clock=clock.time, jitter=0.0, backoff_base=0.5)
    return BinanceSource(base_url=BASE, http=http, **options)


def test_normal_fetch_normalizes_and_sends_the_documented_params(mocked, clock):
    mocked.get(KLINES, json=minutes(3))
    bars = source(clock).fetch_bars("BTC/USDT", T0, T0 + pd.Timedelta(minutes=3))
    assert list(bars.columns) == BAR_COLUMNS
    assert str(bars["ts"].dtype) == "datetime64[ns, UTC]"
    assert bars["ts"].tolist() == [T0 + pd.Timedelta(minutes=i) for i in range(3)]
    assert bars["open"].tolist() == [100.0, 101.0, 102.0]
    assert bars["high"].tolist() == [101.0, 102.0, 103.0]
    assert bars["close"].tolist() == [100.5, 101.5, 102.5]
    assert bars["volume"].tolist() == [1.5, 1.5, 1.5]
    assert set(bars["instrument"]) == {"BTC/USDT"} and set(bars["source"]) == {"binance"}
    q = query(mocked.calls[0])
    assert q == {
        "symbol": "BTCUSDT",
        "interval": "1m",
        "startTime": str(T0_MS),
        "endTime": str(T0_MS + 3 * MIN_MS - 1),
        "limit": "1000",
    }


def test_recorded_payload_parses(mocked, clock):
    payload = json.loads((shared_data_dir() / "api_payloads" / "binance_spot_klines.json").read_text())
    mocked.get(KLINES, json=payload)
    first_open = pd.Timestamp(payload[0][0], unit="ms", tz="UTC")
    bars = source(clock).fetch_bars("BNBBTC", first_open, first_open + pd.Timedelta(days=1))
    assert len(bars) == len(payload)
    assert bars.loc[0, "ts"] == first_open
    assert bars.loc[0, "open"] == float(payload[0][1])
    assert bars.loc[0, "high"] == float(payload[0][2])
    assert bars.loc[0, "volume"] == float(payload[0][5])


def test_pagination_past_the_1000_bar_limit(mocked, clock):
    rows = minutes(2500)
    mocked.add_callback(responses.GET, KLINES, callback=serve_klines(rows))
    bars = source(clock).fetch_bars("BTCUSDT", T0, T0 + pd.Timedelta(minutes=2500))
    assert len(bars) == 2500
    assert bars["ts"].is_monotonic_increasing and bars["ts"].is_unique
    assert bars["open"].iloc[-1] == 100.0 + 2499
    starts = [int(query(c)["startTime"]) for c in mocked.calls]
    # Each page starts one minute after the previous page's last open time.
    assert starts == [T0_MS, T0_MS + 1000 * MIN_MS, T0_MS + 2000 * MIN_MS]


def test_pagination_stops_at_end_without_an_extra_request(mocked, clock):
    mocked.add_callback(responses.GET, KLINES, callback=serve_klines(minutes(3000)))
    bars = source(clock).fetch_bars("BTCUSDT", T0, T0 + pd.Timedelta(minutes=2000))
    assert len(bars) == 2000
    assert len(mocked.calls) == 2


def test_small_limit_pages_and_reports_row_index_across_pages(mocked, clock):
    rows = minutes(7)
    rows[5] = rows[5][:11]
    mocked.add_callback(responses.GET, KLINES, callback=serve_klines(rows))
    with pytest.raises(MalformedPayloadError, match="row 5: expected 12 fields, got 11"):
        source(clock, limit=3).fetch_bars("BTCUSDT", T0, T0 + pd.Timedelta(minutes=7))


def test_weight_limit_pauses_until_the_next_minute(mocked, clock):
    mocked.add_callback(responses.GET, KLINES, callback=serve_klines(minutes(2500), weights=[5, 9, 2]))
    src = source(clock, weight_limit=10, request_weight=2, weight_pause_margin=1.0)
    bars = src.fetch_bars("BTCUSDT", T0, T0 + pd.Timedelta(minutes=2500))
    assert len(bars) == 2500
    # After the 2nd page the used weight is 9; 9 + 2 > 10, so it waits 50 s (+1 s margin).
    assert clock.sleeps == [51.0]
    assert len(mocked.calls) == 3
    assert src.used_weight == 2


def test_weight_below_limit_does_not_pause(mocked, clock):
    mocked.add_callback(responses.GET, KLINES, callback=serve_klines(minutes(2500), weights=[4, 6, 8]))
    source(clock, weight_limit=1200).fetch_bars("BTCUSDT", T0, T0 + pd.Timedelta(minutes=2500))
    assert clock.sleeps == []


def test_weight_resets_when_the_minute_rolls_over(mocked, clock):
    mocked.add_callback(responses.GET, KLINES, callback=serve_klines(minutes(10), weights=[1199]))
    src = source(clock, weight_limit=1200)
    src.fetch_bars("BTCUSDT", T0, T0 + pd.Timedelta(minutes=5))
    clock.now += 60  # the next fetch happens in a later weight window
    src.fetch_bars("BTCUSDT", T0 + pd.Timedelta(minutes=5), T0 + pd.Timedelta(minutes=10))
    assert clock.sleeps == []
    # Without the rollover the same sequence must pause.
    src.fetch_bars("BTCUSDT", T0, T0 + pd.Timedelta(minutes=5))
    assert clock.sleeps == [51.0]


def test_weight_counted_locally_when_header_is_absent(mocked, clock):
    mocked.add_callback(responses.GET, KLINES, callback=serve_klines(minutes(3000)))
    src = source(clock, weight_limit=4, request_weight=2)
    src.fetch_bars("BTCUSDT", T0, T0 + pd.Timedelta(minutes=3000))
    assert clock.sleeps == [51.0]


def test_429_with_retry_after_then_success(mocked, clock):
    mocked.get(KLINES, status=429, headers={"Retry-After": "3"})
    mocked.get(KLINES, json=minutes(2))
    bars = source(clock).fetch_bars("BTCUSDT", T0, T0 + pd.Timedelta(minutes=2))
    assert len(bars) == 2
    assert clock.sleeps == [3.0]


def test_418_ban_honours_retry_after(mocked, clock):
    mocked.get(KLINES, status=418, headers={"Retry-After": "120"})
    mocked.get(KLINES, json=minutes(1))
    bars = source(clock).fetch_bars("BTCUSDT", T0, T0 + pd.Timedelta(minutes=1))
    assert len(bars) == 1
    assert clock.sleeps == [120.0]


def test_5xx_then_success(mocked, clock):
    mocked.get(KLINES, status=502)
    mocked.get(KLINES, status=504)
    mocked.get(KLINES, json=minutes(2))
    assert len(source(clock).fetch_bars("BTCUSDT", T0, T0 + pd.Timedelta(minutes=2))) == 2
    assert clock.sleeps == [0.5, 1.0]


def test_5xx_exhausted_raises_connector_error(mocked, clock):
    mocked.get(KLINES, status=503)
    http = HttpClient(source="binance", sleep=clock.sleep, clock=clock.time, jitter=0.0, max_retries=2)
    with pytest.raises(ConnectorError, match=r"api/v3/klines\?symbol=BTCUSDT.*HTTP 503") as info:
        BinanceSource(base_url=BASE, http=http).fetch_bars("BTCUSDT", T0, T0 + pd.Timedelta(minutes=2))
    assert info.value.status == 503
    assert len(mocked.calls) == 3


def test_invalid_symbol_is_not_retried(mocked, clock):
    mocked.get(KLINES, status=400, json={"code": -1121, "msg": "Invalid symbol."})
    with pytest.raises(ConnectorError, match="Invalid symbol"):
        source(clock).fetch_bars("NOPE", T0, T0 + pd.Timedelta(minutes=2))
    assert len(mocked.calls) == 1


def test_malformed_json(mocked, clock):
    mocked.get(KLINES, body='[[1704153600000, "1.0",')
    with pytest.raises(MalformedPayloadError, match="malformed JSON"):
        source(clock).fetch_bars("BTCUSDT", T0, T0 + pd.Timedelta(minutes=2))


@pytest.mark.parametrize(
    ("bad_row", "message"),
    [
        ({"open": 1}, "row 1: expected 12 fields, got dict"),
        (["x", "1", "1", "1", "1", "1", 0, "0", 0, "0", "0", "0"], "row 1: open time 'x' is not an integer"),
        ([T0_MS + MIN_MS, "abc", "1", "1", "1", "1", 0, "0", 0, "0", "0", "0"], "row 1: open 'abc' is not a number"),
        ([T0_MS + MIN_MS, "1", "1", "1", "1", None, 0, "0", 0, "0", "0", "0"], "row 1: volume None is not a number"),
        ([T0_MS + MIN_MS, "1", "nan", "1", "1", "1", 0, "0", 0, "0", "0", "0"], "row 1: high 'nan' is not finite"),
    ],
)
def test_malformed_row_names_its_index(mocked, clock, bad_row, message):
    mocked.get(KLINES, json=[kline(T0_MS), bad_row, kline(T0_MS + 2 * MIN_MS)])
    with pytest.raises(MalformedPayloadError, match=message):
        source(clock).fetch_bars("BTCUSDT", T0, T0 + pd.Timedelta(minutes=3))


def test_error_object_instead_of_array_is_malformed(mocked, clock):
    mocked.get(KLINES, json={"code": 0, "msg": "weird"})
    with pytest.raises(MalformedPayloadError, match="must be a JSON array"):
        source(clock).fetch_bars("BTCUSDT", T0, T0 + pd.Timedelta(minutes=2))


def test_empty_result_gives_an_empty_normalized_frame(mocked, clock):
    mocked.get(KLINES, json=[])
    bars = source(clock).fetch_bars("BTCUSDT", T0, T0 + pd.Timedelta(hours=1))
    assert bars.empty
    assert list(bars.columns) == BAR_COLUMNS
    assert str(bars["ts"].dtype) == "datetime64[ns, UTC]"
    assert len(mocked.calls) == 1


def test_empty_window_makes_no_request(mocked, clock):
    assert source(clock).fetch_bars("BTCUSDT", T0, T0).empty
    assert len(mocked.calls) == 0


def test_duplicates_and_unsorted_rows_are_normalized(mocked, clock):
    revised = kline(T0_MS + MIN_MS, price=555.0)
    mocked.get(KLINES, json=[kline(T0_MS + 2 * MIN_MS), kline(T0_MS + MIN_MS), kline(T0_MS), kline(T0_MS), revised])
    bars = source(clock).fetch_bars("BTCUSDT", T0, T0 + pd.Timedelta(minutes=3))
    minutes = [T0 + pd.Timedelta(minutes=i) for i in range(3)]
    # The identical repeat of T0 is dropped and counted; the two different bars for T0+1 are
    # both kept, so the schema check fails and shows them instead of one silently winning.
    assert bars["ts"].tolist() == [minutes[0], minutes[1], minutes[1], minutes[2]]
    assert bars.loc[1:2, "open"].tolist() == [100.0, 555.0]
    assert bars.attrs == {"interval_seconds": 60, "duplicates_dropped": 1}


def test_rows_outside_the_window_are_dropped(mocked, clock):
    mocked.get(KLINES, json=[kline(T0_MS - MIN_MS), kline(T0_MS), kline(T0_MS + MIN_MS)])
    bars = source(clock).fetch_bars("BTCUSDT", T0, T0 + pd.Timedelta(minutes=1))
    assert bars["ts"].tolist() == [T0]


def test_start_inside_a_minute_skips_that_minute(mocked, clock):
    mocked.add_callback(responses.GET, KLINES, callback=serve_klines(minutes(5)))
    bars = source(clock).fetch_bars("BTCUSDT", T0 + pd.Timedelta(seconds=30), T0 + pd.Timedelta(minutes=3))
    assert bars["ts"].tolist() == [T0 + pd.Timedelta(minutes=1), T0 + pd.Timedelta(minutes=2)]


def test_naive_bounds_are_utc_and_reversed_bounds_fail(mocked, clock):
    mocked.get(KLINES, json=minutes(1))
    bars = source(clock).fetch_bars("BTCUSDT", T0.tz_localize(None), (T0 + pd.Timedelta(minutes=1)).tz_localize(None))
    assert bars["ts"].tolist() == [T0]
    with pytest.raises(ValueError, match="before start"):
        source(clock).fetch_bars("BTCUSDT", T0, T0 - pd.Timedelta(minutes=1))


def test_parse_kline_rows_directly():
    frame = parse_kline_rows([kline(T0_MS, price=10.0)])
    assert frame.loc[0, "ts"] == T0 and frame.loc[0, "low"] == 9.0


def test_configuration_is_validated():
    with pytest.raises(ValueError, match="limit"):
        BinanceSource(limit=1001)
    with pytest.raises(ValueError, match="request_weight"):
        BinanceSource(weight_limit=1, request_weight=2)
    with pytest.raises(ValueError, match="either http or HTTP options"):
        BinanceSource(http=HttpClient(), max_retries=2)


def test_get_source_builds_binance_with_options():
    src = get_source("Binance", base_url=BASE + "/", weight_limit=600, max_retries=2)
    assert isinstance(src, BinanceSource)
    assert src.base_url == BASE and src.weight_limit == 600 and src.http.max_retries == 2
    with pytest.raises(ValueError, match="unknown market data source 'kraken'.*binance"):
        get_source("kraken")
