"""Shared HTTP plumbing for the broker connectors: timeouts, retries, rate limits, redaction.

Every connector talks to its API through :class:`HttpClient` so that retry and rate-limit
behaviour is the same everywhere and can be tested once. Sleeping and the wall clock are
injected so tests assert the waits that would have happened instead of waiting.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests

from autotrader_assets.defs.market_data.schema import MalformedPayloadError

log = logging.getLogger(__name__)

#: Statuses that mean "slow down": 429 is a rate limit, 418 is Binance's IP ban after
#: ignoring 429s. Both carry Retry-After.
RATE_LIMIT_STATUSES = frozenset({418, 429})

#: Query parameters whose values must never reach a log line or an exception message.
SENSITIVE_PARAMS = frozenset({"apikey", "api_key", "key", "secret", "signature", "password", "token", "access_token"})
#: Header names (lowercase substrings) whose values are treated as secrets.
SENSITIVE_HEADER_HINTS = ("key", "secret", "token", "auth", "cookie", "password")

#: Transport failures worth retrying: the request may not have reached the server, or the
#: answer was cut off.
RETRYABLE_EXCEPTIONS: tuple[type[BaseException], ...] = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)

_SNIPPET_CHARS = 200
_REDACTED = "***"


class ConnectorError(RuntimeError):
    """A market data API could not be read: retries exhausted, refused, or misconfigured.

    ``url`` is the request URL with secrets redacted; ``status`` the last HTTP status seen, or
    ``None`` when no response arrived.
    """

    def __init__(self, message: str, *, url: str | None = None, status: int | None = None):
        super().__init__(message)
        self.url = url
        self.status = status


def redact_url(url: str, params: Mapping[str, Any] | None = None) -> str:
    """Return ``url`` with ``params`` merged into its query and sensitive values masked."""
    prepared = requests.Request("GET", url, params=dict(params or {})).prepare().url or url
    parts = urlsplit(prepared)
    query = [
        (k, _REDACTED if k.lower() in SENSITIVE_PARAMS else v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit(parts._replace(query=urlencode(query, safe="/:,")))


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), or None."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - now
    if seconds != seconds:  # NaN: an unreadable header is treated as absent
        return None
    return max(0.0, seconds)


class HttpClient:
    """GET JSON from an API with timeouts, bounded retries and rate-limit handling.

    Retries (each one spends one unit of ``max_retries``):

    * connection errors, timeouts and 5xx: exponential backoff ``backoff_base * 2**n`` capped at
      ``backoff_max``, plus up to ``jitter`` (a fraction) of random extra so that many workers do
      not retry in lockstep;
    * 429 and 418: wait what ``Retry-After`` says (seconds or HTTP-date; ``X-RateLimit-Reset``
      epoch seconds as a fallback), else backoff. A server asking for more than
      ``max_retry_after`` seconds gets a :class:`ConnectorError` instead of a stalled run.

    Other 4xx fail at once: retrying a bad symbol or a bad key only burns rate limit. Error
    messages name the redacted URL and the status, never header values or ``redact`` strings.
    """

    def __init__(
        self,
        *,
        source: str = "http",
        session: requests.Session | None = None,
        timeout: float | tuple[float, float] = (5.0, 30.0),
        max_retries: int = 5,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        jitter: float = 0.1,
        max_retry_after: float = 300.0,
        verify: bool | str = True,
        headers: Mapping[str, str] | None = None,
        redact: Iterable[str] = (),
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ):
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if backoff_base < 0 or backoff_max < 0 or jitter < 0 or max_retry_after < 0:
            raise ValueError("backoff_base, backoff_max, jitter and max_retry_after must be >= 0")
        self.source = source
        self.session = session if session is not None else requests.Session()
        if headers:
            self.session.headers.update(headers)
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.jitter = jitter
        self.max_retry_after = max_retry_after
        self.verify = verify
        self.sleep = sleep
        self.clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._redact = [s for s in redact if s]

    def add_secret(self, value: str) -> None:
        """Register a secret string to be masked in every message this client produces."""
        if value and value not in self._redact:
            self._redact.append(value)

    def backoff_delay(self, attempt: int) -> float:
        """Delay before retry number ``attempt + 1`` (attempt counts from 0)."""
        base = min(self.backoff_max, self.backoff_base * (2**attempt))
        return base + self._rng.uniform(0.0, base * self.jitter)

    def get(
        self,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """GET ``url`` and return the first successful (< 400) response, retrying as documented."""
        safe_url = self._scrub(redact_url(url, params))
        secrets = self._secrets(headers)
        attempts = self.max_retries + 1
        last_problem = ""
        last_status: int | None = None
        last_exc: BaseException | None = None
        for attempt in range(attempts):
            try:
                response = self.session.get(
                    url, params=params, headers=headers, timeout=self.timeout, verify=self.verify
                )
            except RETRYABLE_EXCEPTIONS as exc:
                last_exc = exc
                last_status = None
                last_problem = f"connection error ({type(exc).__name__})"
                delay = self.backoff_delay(attempt)
            else:
                status = response.status_code
                if status < 400:
                    return response
                last_status = status
                last_exc = None
                if status in RATE_LIMIT_STATUSES or status >= 500:
                    last_problem = f"HTTP {status}"
                    wait = self._server_wait(response)
                    if wait is not None and wait > self.max_retry_after:
                        raise ConnectorError(
                            f"{self.source}: GET {safe_url} got HTTP {status} asking to wait "
                            f"{wait:.0f}s, more than max_retry_after={self.max_retry_after:.0f}s",
                            url=safe_url,
                            status=status,
                        )
                    delay = wait if wait is not None else self.backoff_delay(attempt)
                else:
                    body = _scrub_text(_snippet(response), secrets)
                    raise ConnectorError(
                        f"{self.source}: GET {safe_url} failed with HTTP {status}: {body}",
                        url=safe_url,
                        status=status,
                    )
            if attempt + 1 >= attempts:
                break
            log.warning(
                "%s: GET %s: %s; retry %d/%d in %.2fs",
                self.source,
                safe_url,
                last_problem,
                attempt + 1,
                self.max_retries,
                delay,
            )
            self.sleep(delay)
        raise ConnectorError(
            f"{self.source}: GET {safe_url} gave up after {attempts} attempts "
            f"(max_retries={self.max_retries}); last error: {last_problem}",
            url=safe_url,
            status=last_status,
        ) from last_exc

    def get_json(
        self,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """GET ``url`` and decode its JSON body; malformed JSON raises MalformedPayloadError."""
        response = self.get(url, params=params, headers=headers)
        return self.decode_json(response, url=url, params=params, headers=headers)

    def decode_json(
        self,
        response: requests.Response,
        *,
        url: str,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """Decode a response body as JSON, naming the redacted URL when it is not JSON."""
        try:
            return response.json()
        except ValueError as exc:
            safe_url = self._scrub(redact_url(url, params))
            body = _scrub_text(_snippet(response), self._secrets(headers))
            raise MalformedPayloadError(
                f"{self.source}: GET {safe_url} returned malformed JSON "
                f"(HTTP {response.status_code}, {len(response.content)} bytes): {body}"
            ) from exc

    def _server_wait(self, response: requests.Response) -> float | None:
        now = self.clock()
        wait = parse_retry_after(response.headers.get("Retry-After"), now)
        if wait is not None:
            return wait
        reset = response.headers.get("X-RateLimit-Reset")
        if reset is not None:
            try:
                return max(0.0, float(reset) - now)
            except ValueError:
                return None
        return None

    def _secrets(self, headers: Mapping[str, str] | None) -> list[str]:
        found = list(self._redact)
        for source in (self.session.headers, headers or {}):
            for name, value in source.items():
                if value and any(h in name.lower() for h in SENSITIVE_HEADER_HINTS):
                    found.append(str(value))
        return found

    def _scrub(self, text: str) -> str:
        return _scrub_text(text, self._secrets(None))


def client_for(source: str, http: HttpClient | None, options: Mapping[str, Any], **settings: Any) -> HttpClient:
    """``http`` when a connector was given one, else a new :class:`HttpClient` for ``source``.

    ``options`` are the HTTP options passed through the connector's constructor; with an injected
    client they would be silently ignored, so both together are refused. ``settings`` are what the
    connector itself sets on a client it builds (IBKR's ``verify``).
    """
    if http is not None:
        if options:
            raise ValueError(f"pass either http or HTTP options, not both: {sorted(options)}")
        return http
    return HttpClient(source=source, **settings, **options)


def _snippet(response: requests.Response) -> str:
    text = response.text or ""
    text = " ".join(text.split())
    return text[:_SNIPPET_CHARS] + ("..." if len(text) > _SNIPPET_CHARS else "")


def _scrub_text(text: str, secrets: Iterable[str]) -> str:
    # Longest first so a secret that contains another is masked whole.
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, _REDACTED)
    return text
