"""HttpClient: retries, backoff, Retry-After, the retry budget, JSON decoding and redaction."""

from __future__ import annotations

import email.utils
import logging
import random

import pytest
import requests

from autotrader_assets.defs.market_data.connectors import AlpacaSource, BinanceSource, IbkrSource
from autotrader_assets.defs.market_data.connectors.http import (
    ConnectorError,
    HttpClient,
    parse_retry_after,
    redact_url,
)
from autotrader_assets.defs.market_data.schema import MalformedPayloadError
from tests.support.connectors import FakeClock

URL = "https://api.example.test/v1/bars"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def client(clock: FakeClock, **options) -> HttpClient:
    options.setdefault("jitter", 0.0)
    return HttpClient(source="test", sleep=clock.sleep, clock=clock.time, **options)


def test_success_returns_json_and_passes_timeout_and_verify(mocked, clock):
    mocked.get(URL, json={"ok": 1})
    http = client(clock, timeout=(2.0, 9.0), verify=False)
    assert http.get_json(URL, params={"symbol": "BTCUSDT"}) == {"ok": 1}
    call = mocked.calls[0]
    assert call.request.url == URL + "?symbol=BTCUSDT"
    assert call.request.req_kwargs["timeout"] == (2.0, 9.0)
    assert call.request.req_kwargs["verify"] is False
    assert clock.sleeps == []


def test_5xx_then_success_backs_off_exponentially(mocked, clock):
    mocked.get(URL, status=502)
    mocked.get(URL, status=503)
    mocked.get(URL, json=[1, 2])
    http = client(clock, backoff_base=0.5)
    assert http.get_json(URL) == [1, 2]
    assert clock.sleeps == [0.5, 1.0]
    assert len(mocked.calls) == 3


def test_5xx_exhausted_raises_connector_error_naming_url_and_status(mocked, clock):
    mocked.get(URL, status=503, body="upstream down")
    http = client(clock, max_retries=3, backoff_base=1.0, backoff_max=3.0)
    with pytest.raises(ConnectorError) as info:
        http.get(URL, params={"symbol": "ETHUSDT"})
    err = info.value
    assert err.status == 503
    assert err.url == URL + "?symbol=ETHUSDT"
    assert URL in str(err) and "HTTP 503" in str(err) and "4 attempts" in str(err)
    assert len(mocked.calls) == 4
    # Backoff doubles and is capped at backoff_max.
    assert clock.sleeps == [1.0, 2.0, 3.0]


def test_zero_retries_means_one_attempt(mocked, clock):
    mocked.get(URL, status=500)
    with pytest.raises(ConnectorError, match="1 attempts"):
        client(clock, max_retries=0).get(URL)
    assert len(mocked.calls) == 1
    assert clock.sleeps == []


def test_429_honours_retry_after_seconds(mocked, clock):
    mocked.get(URL, status=429, headers={"Retry-After": "7"})
    mocked.get(URL, json={"ok": True})
    assert client(clock).get_json(URL) == {"ok": True}
    assert clock.sleeps == [7.0]


def test_418_honours_retry_after(mocked, clock):
    mocked.get(URL, status=418, headers={"Retry-After": "42"})
    mocked.get(URL, json=[])
    assert client(clock).get_json(URL) == []
    assert clock.sleeps == [42.0]


def test_429_retry_after_as_http_date(mocked, clock):
    when = email.utils.formatdate(clock.now + 30, usegmt=True)
    mocked.get(URL, status=429, headers={"Retry-After": when})
    mocked.get(URL, json={})
    client(clock).get_json(URL)
    assert clock.sleeps == [pytest.approx(30.0, abs=1.0)]


def test_429_without_retry_after_uses_rate_limit_reset_then_backoff(mocked, clock):
    mocked.get(URL, status=429, headers={"X-RateLimit-Reset": str(int(clock.now) + 12)})
    mocked.get(URL, status=429)
    mocked.get(URL, json={})
    client(clock, backoff_base=0.25).get_json(URL)
    assert clock.sleeps == [12.0, 0.5]


def test_retry_after_longer_than_allowed_fails_fast(mocked, clock):
    mocked.get(URL, status=418, headers={"Retry-After": "7200"})
    with pytest.raises(ConnectorError, match="7200s") as info:
        client(clock, max_retry_after=600).get(URL)
    assert info.value.status == 418
    assert clock.sleeps == []
    assert len(mocked.calls) == 1


def test_connection_error_then_success(mocked, clock):
    mocked.get(URL, body=requests.ConnectionError("connection refused"))
    mocked.get(URL, body=requests.Timeout("read timed out"))
    mocked.get(URL, json={"ok": 1})
    assert client(clock, backoff_base=2.0).get_json(URL) == {"ok": 1}
    assert clock.sleeps == [2.0, 4.0]


def test_connection_errors_exhausted_name_the_failure(mocked, clock):
    mocked.get(URL, body=requests.ConnectionError("connection refused"))
    with pytest.raises(ConnectorError, match="connection error") as info:
        client(clock, max_retries=2).get(URL)
    assert info.value.status is None
    assert isinstance(info.value.__cause__, requests.ConnectionError)
    assert len(mocked.calls) == 3


def test_client_error_is_not_retried_and_shows_the_body(mocked, clock):
    mocked.get(URL, status=400, json={"code": -1121, "msg": "Invalid symbol."})
    with pytest.raises(ConnectorError, match="HTTP 400") as info:
        client(clock).get(URL)
    assert "Invalid symbol." in str(info.value)
    assert len(mocked.calls) == 1
    assert clock.sleeps == []


def test_malformed_json_raises_malformed_payload_error(mocked, clock):
    mocked.get(URL, body="<html>gateway timeout</html>", content_type="text/html")
    with pytest.raises(MalformedPayloadError, match="malformed JSON") as info:
        client(clock).get_json(URL)
    assert URL in str(info.value)
    assert "gateway timeout" in str(info.value)


def test_secrets_never_appear_in_errors_or_logs(mocked, clock, caplog):
    secret = "sk-very-secret-value"
    key_id = "AKID-visible-nowhere"
    mocked.get(URL, status=500, body=f"debug echo {secret}")
    mocked.get(URL, status=403, body=f"forbidden for key {key_id} / {secret}")
    http = client(clock, headers={"APCA-API-KEY-ID": key_id})
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConnectorError) as info:
        http.get(URL, params={"signature": "sig123", "symbol": "X"}, headers={"APCA-API-SECRET-KEY": secret})
    message = str(info.value)
    for hidden in (secret, key_id, "sig123"):
        assert hidden not in message
        assert hidden not in caplog.text
        assert hidden not in (info.value.url or "")
    assert "forbidden for key ***" in message
    assert "signature=%2A%2A%2A" in message or "signature=***" in message
    # The retry of the 500 was logged, with the redacted URL.
    assert "symbol=X" in caplog.text


def test_registered_secret_is_masked_in_malformed_json_errors(mocked, clock):
    mocked.get(URL, body="not json, token=tok-123")
    http = client(clock, redact=["tok-123"])
    with pytest.raises(MalformedPayloadError) as info:
        http.get_json(URL)
    assert "tok-123" not in str(info.value)


def test_backoff_jitter_stays_within_bounds():
    http = HttpClient(backoff_base=1.0, backoff_max=8.0, jitter=0.5, rng=random.Random(1))
    for attempt in range(6):
        base = min(8.0, 2.0**attempt)
        delays = {http.backoff_delay(attempt) for _ in range(20)}
        assert all(base <= d <= base * 1.5 for d in delays)
        assert len(delays) > 1  # jitter actually varies the delay


def test_parse_retry_after_variants():
    assert parse_retry_after("5", now=0) == 5.0
    assert parse_retry_after("  1.5 ", now=0) == 1.5
    assert parse_retry_after("-3", now=0) == 0.0
    assert parse_retry_after("soon", now=0) is None
    assert parse_retry_after(None, now=0) is None
    assert parse_retry_after("", now=0) is None


def test_redact_url_masks_sensitive_params_only():
    url = redact_url(URL, {"apiKey": "k", "symbol": "BTC/USD", "page_token": "abc"})
    assert "apiKey=%2A%2A%2A" in url or "apiKey=***" in url
    assert "symbol=BTC/USD" in url and "page_token=abc" in url


@pytest.mark.parametrize(
    "options", [{"max_retries": -1}, {"backoff_base": -1.0}, {"jitter": -0.1}, {"max_retry_after": -5}]
)
def test_invalid_options_are_rejected(options):
    with pytest.raises(ValueError):
        HttpClient(**options)


@pytest.mark.parametrize("source_class", [AlpacaSource, BinanceSource, IbkrSource], ids=lambda c: c.__name__)
def test_every_connector_takes_a_client_or_http_options_never_both(source_class):
    client = HttpClient(source="injected")
    assert source_class(http=client).http is client
    built = source_class(max_retries=7)
    assert built.http is not client and built.http.max_retries == 7
    with pytest.raises(ValueError, match=r"pass either http or HTTP options, not both: \['max_retries'\]"):
        source_class(http=client, max_retries=7)


def test_ibkr_sets_verify_on_the_client_it_builds_only():
    assert IbkrSource(verify="/etc/ibkr-ca.pem").http.verify == "/etc/ibkr-ca.pem"
    injected = HttpClient(source="injected")
    assert IbkrSource(http=injected, verify=False).http is injected
