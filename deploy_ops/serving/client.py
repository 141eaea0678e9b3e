"""HTTP client of the serving slots.

:class:`ServingClient` talks to one slot by URL. :class:`RoutedClient` picks the slot for each
instrument from the routing table in the :class:`~deploy_ops.state.DeploymentStateStore`, so
paper trading follows a canary or a rollback without knowing about slots.

Both keep connections alive (one ``requests.Session``), use explicit connect/read timeouts and
send the bearer token they are given (callers take it from the settings; this module reads no
environment). Every failure --
connection refused, timeout, non-200 answer, malformed answer -- raises :class:`ServingError`
carrying the HTTP status (None when there was no HTTP answer).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, NamedTuple

import numpy as np
import requests
from requests.adapters import HTTPAdapter

from deploy_ops.state import DEFAULT_ROUTE, DeploymentStateStore, RoutingError, SlotRecord
from deploy_ops.text import EXCERPT, truncate


class ServingError(RuntimeError):
    """A prediction could not be obtained; ``status`` is the HTTP status or None (no answer)."""

    def __init__(self, message: str, status: int | None = None, body: Any = None, url: str | None = None):
        super().__init__(message)
        self.status = status
        self.body = body
        self.url = url


class PredictResult(NamedTuple):
    """Probabilities for each row, the model version that produced them, the round-trip time."""

    probabilities: list[float]
    model_version: str
    latency_ms: float


def _new_session(pool_size: int) -> requests.Session:
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def build_payload(instrument: str, rows: Any) -> dict[str, Any]:
    """The ``/predict`` body for ``rows``: a matrix (list of lists or 2-D array) becomes ``rows``,
    a list of name->value mappings becomes ``features``. A single 1-D row is one-row batch."""
    if isinstance(rows, np.ndarray):
        array = rows[None, :] if rows.ndim == 1 else rows
        if array.ndim != 2:
            raise ValueError(f"rows must be a 1-D or 2-D array, got shape {rows.shape}")
        return {"instrument": instrument, "rows": array.astype(np.float64).tolist()}
    rows = list(rows)
    if rows and all(isinstance(r, dict) for r in rows):
        return {"instrument": instrument, "features": [{str(k): float(v) for k, v in r.items()} for r in rows]}
    if rows and all(isinstance(r, (int, float, np.number)) for r in rows):
        rows = [rows]
    return {"instrument": instrument, "rows": [[float(v) for v in r] for r in rows]}


class ServingClient:
    """Client of one serving slot at ``base_url``."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        connect_timeout: float = 1.0,
        read_timeout: float = 5.0,
        session: requests.Session | None = None,
        pool_size: int = 16,
    ):
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = (connect_timeout, read_timeout)
        self._session = session if session is not None else _new_session(pool_size)
        self._owns_session = session is None

    def __enter__(self) -> ServingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close pooled connections (only if this client created the session)."""
        if self._owns_session:
            self._session.close()

    def predict(self, instrument: str, rows: Any) -> PredictResult:
        """Score ``rows`` for ``instrument``; raises ServingError on any failure."""
        payload = build_payload(instrument, rows)
        try:
            body = json.dumps(payload, allow_nan=False)
        except ValueError as exc:
            raise ValueError(f"rows for {instrument} contain NaN or infinite values") from exc
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        url = f"{self.base_url}/predict"
        started = time.perf_counter()
        try:
            response = self._session.post(url, data=body, headers=headers, timeout=self.timeout)
        except requests.RequestException as exc:
            raise ServingError(f"POST {url} failed: {type(exc).__name__}: {exc}", url=url) from exc
        latency_ms = (time.perf_counter() - started) * 1000.0
        answer = _decode(response, url)
        if response.status_code != 200:
            message = answer.get("error") if isinstance(answer, dict) else answer
            raise ServingError(
                f"POST {url} answered {response.status_code}: {message}", response.status_code, answer, url
            )
        try:
            probabilities = [float(p) for p in answer["probabilities"]]
            version = str(answer["model_version"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ServingError(
                f"POST {url}: malformed answer {answer!r:.200}", response.status_code, answer, url
            ) from exc
        expected = len(payload.get("rows") or payload.get("features") or ())
        if len(probabilities) != expected:
            raise ServingError(
                f"POST {url}: {len(probabilities)} probabilities for {expected} rows", response.status_code, answer, url
            )
        return PredictResult(probabilities, version, latency_ms)

    def health(self) -> dict[str, Any]:
        """``GET /health``; ServingError unless 200."""
        return self._get_json("/health")

    def ready(self) -> dict[str, Any]:
        """``GET /ready``; ServingError (status 503) while the slot is not ready."""
        return self._get_json("/ready")

    def metrics_text(self) -> str:
        """The Prometheus exposition text of ``GET /metrics``."""
        url = f"{self.base_url}/metrics"
        try:
            response = self._session.get(url, timeout=self.timeout)
        except requests.RequestException as exc:
            raise ServingError(f"GET {url} failed: {type(exc).__name__}: {exc}", url=url) from exc
        if response.status_code != 200:
            raise ServingError(f"GET {url} answered {response.status_code}", response.status_code, response.text, url)
        return response.text

    def _get_json(self, path: str) -> dict[str, Any]:
        url = f"{self.base_url}{path}"
        try:
            response = self._session.get(url, timeout=self.timeout)
        except requests.RequestException as exc:
            raise ServingError(f"GET {url} failed: {type(exc).__name__}: {exc}", url=url) from exc
        answer = _decode(response, url)
        if response.status_code != 200:
            raise ServingError(
                f"GET {url} answered {response.status_code}: {answer!r:.300}", response.status_code, answer, url
            )
        if not isinstance(answer, dict):
            raise ServingError(
                f"GET {url}: expected a JSON object, got {answer!r:.200}", response.status_code, answer, url
            )
        return answer


class RoutedClient:
    """Sends each instrument's predictions to the slot the routing table names for it.

    The routing table and slot records are cached for ``cache_seconds`` so a bar loop does not
    query the database per prediction; a route switch takes effect within that time, and
    :meth:`refresh` applies it at once."""

    def __init__(
        self,
        state: DeploymentStateStore,
        *,
        token: str | None = None,
        connect_timeout: float = 1.0,
        read_timeout: float = 5.0,
        cache_seconds: float = 1.0,
        pool_size: int = 16,
    ):
        self.state = state
        self.token = token
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.cache_seconds = cache_seconds
        self._session = _new_session(pool_size)
        self._clients: dict[str, ServingClient] = {}
        self._lock = threading.Lock()
        self._routes: dict[str, str] = {}
        self._slots: dict[str, SlotRecord] = {}
        self._loaded_at = float("-inf")

    def __enter__(self) -> RoutedClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close pooled connections."""
        self._session.close()

    def refresh(self) -> None:
        """Re-read the routing table and slots now."""
        routes, slots = self.state.routing_table(), self.state.slots()
        with self._lock:
            self._routes, self._slots, self._loaded_at = routes, slots, time.monotonic()

    def slot_for(self, instrument: str) -> SlotRecord:
        """The ready slot serving ``instrument``; ServingError if unrouted or not ready."""
        if time.monotonic() - self._loaded_at > self.cache_seconds:
            self.refresh()
        with self._lock:
            routes, slots = self._routes, self._slots
        slot = routes.get(instrument) or routes.get(DEFAULT_ROUTE)
        if slot is None:
            raise ServingError(str(RoutingError(f"no route for {instrument!r} and no default ('*') route")))
        info = slots.get(slot)
        if info is None or not info.url:
            raise ServingError(f"{instrument} is routed to slot {slot}, which has no recorded url")
        if not info.is_ready:
            raise ServingError(f"{instrument} is routed to slot {slot}, which is {info.status}", url=info.url)
        return info

    def predict(self, instrument: str, rows: Any) -> PredictResult:
        """Score ``rows`` on the slot routed for ``instrument``; raises ServingError on failure."""
        info = self.slot_for(instrument)
        return self._client(info.url).predict(instrument, rows)

    def _client(self, url: str) -> ServingClient:
        client = self._clients.get(url)
        if client is None:
            client = ServingClient(
                url,
                token=self.token,
                connect_timeout=self.connect_timeout,
                read_timeout=self.read_timeout,
                session=self._session,
            )
            self._clients[url] = client
        return client


def _decode(response: requests.Response, url: str) -> Any:
    try:
        return response.json()
    except ValueError:
        if response.status_code == 200:
            raise ServingError(
                f"{url}: answer is not JSON: {truncate(repr(response.text), EXCERPT)}",
                response.status_code,
                response.text,
                url,
            ) from None
        return response.text
