"""The model-serving HTTP app: one process serves one model bundle in one slot (blue or green).

Endpoints:

* ``POST /predict`` -- ``{"instrument": "BTCUSDT", "rows": [[f1, ..., fn], ...]}`` or
  ``{"instrument": "BTCUSDT", "features": [{"name": value, ...}, ...]}``; answers
  ``{"instrument", "probabilities", "model_version", "slot"}``. Bearer-token auth when the
  process was given a token (``--token-stdin``); ``--require-token`` (the production profile)
  refuses to start without one. Every refusal is a JSON ``{"error", "status"}``: 422 for a body
  that names an instrument outside ``--instruments`` (the instruments the deployment serves; the
  instrument is a field of the body, not a resource of the URL, so not 404), for a NaN or
  infinite value, for a finite value the model's float32 input cannot hold after scaling (1e300),
  and for a batch whose model output is not finite (nothing of that batch is returned).
* ``GET /health`` -- the process is alive (for liveness probes; never touches the model).
* ``GET /ready`` -- the bundle is loaded and its sha256 matched the registry's at load; 503
  with the reason otherwise (load balancers and the deployer route only to ready slots).
* ``GET /metrics`` -- Prometheus text format.

Fault injection (drills and tests only): two arguments read once at start make a healthy slot
misbehave on purpose, so rollout gates, alerts and rollbacks can be exercised against a real
process (the local deployer passes a start's ``faults=`` as these arguments; the process itself
reads no environment):

* ``--fault-error-rate`` (``AUTOTRADER_FAULT_ERROR_RATE``) -- fraction (0..1) of valid ``/predict``
  calls answered 500.
* ``--fault-latency-ms`` (``AUTOTRADER_FAULT_LATENCY_MS``) -- milliseconds added to every ``/predict``.

Both are exported as gauges so a dashboard shows when a drill is active.

Run: ``python -m deploy_ops.serving --model PATH --sha256 HEX --version V --slot blue --port P``
(add ``--instruments A,B --require-token --token-stdin`` and write the token on stdin, as the
local deployer does; the token never appears in the command line).

Starlette on uvicorn (uvloop + httptools) is the stack: on these 2 cores it holds a p99 of
1-2 ms at 500 req/s for a 4-row batch (``benchmarks/serving.py``), and the same handler as a
bare ASGI callable on the same uvicorn measured the same within noise, so Starlette's routing
costs nothing worth a hand-written server. The model runs inline on the event loop: a small
batch takes tens of microseconds, far less than a thread-pool hand-off costs. Request bodies are
parsed with orjson (already installed with dagster-dbt), about ten times faster than ``json``
on large batches.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import os
import random
import re
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import orjson
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from deploy_ops.models.bundle import ModelBundle
from deploy_ops.serving.faults import ENV_FAULT_ERROR_RATE, ENV_FAULT_LATENCY_MS, FaultConfig
from deploy_ops.slots.names import SLOTS

logger = logging.getLogger("deploy_ops.serving")

ENV_TOKEN = "AUTOTRADER_SERVING_TOKEN"
MISSING_TOKEN_MESSAGE = (
    f"refusing to serve without a bearer token: this profile requires one ({ENV_TOKEN} in the "
    "deployer's settings, handed to the slot with --token-stdin)"
)

DEFAULT_MAX_BATCH = 1024
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024

# Fine low buckets so p99 is readable around 1 ms on loopback; the tail reaches seconds so a
# latency drill or a stalled model still lands in a real bucket rather than +Inf.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.00025,
    0.0005,
    0.00075,
    0.001,
    0.0015,
    0.002,
    0.003,
    0.004,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    2.0,
    5.0,
    10.0,
)
CONFIDENCE_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

_KNOWN_ENDPOINTS = frozenset({"/predict", "/health", "/ready", "/metrics"})
_INSTRUMENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}$")
_REQUEST_KEYS = frozenset({"instrument", "rows", "features"})


class RequestError(Exception):
    """A client error on ``/predict``: carries the HTTP status and a message for the caller."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ServingConfig:
    """Everything one serving process needs; built from the command line by :func:`main`."""

    model_path: str
    sha256: str
    version: str
    slot: str
    token: str | None = None
    faults: FaultConfig = FaultConfig()
    max_batch: int = DEFAULT_MAX_BATCH
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    #: The instruments this slot answers for; None answers any well-formed symbol.
    instruments: frozenset[str] | None = None
    #: Refuse to run without a token: an open ``/predict`` must never reach production.
    require_token: bool = False

    def __post_init__(self) -> None:
        if self.require_token and not self.token:
            raise ValueError(MISSING_TOKEN_MESSAGE)
        if self.instruments is not None:
            if not self.instruments:
                raise ValueError("instruments must not be empty when given")
            bad = sorted(i for i in self.instruments if not _INSTRUMENT_RE.match(i))
            if bad:
                raise ValueError(f"instruments {bad} are not symbols like 'BTCUSDT'")
        if self.slot not in SLOTS:
            raise ValueError(f"slot must be one of {SLOTS}, got {self.slot!r}")
        if not re.fullmatch(r"[0-9a-f]{64}", self.sha256 or ""):
            raise ValueError(f"sha256 must be 64 lowercase hex digits, got {self.sha256!r}")
        if not self.version:
            raise ValueError("version must not be empty")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes must be >= 1024, got {self.max_body_bytes}")


@dataclass
class LoadedModel:
    """The outcome of loading the bundle: either a verified bundle or the reason it is not."""

    bundle: ModelBundle | None
    error: str | None
    load_seconds: float

    @property
    def ready(self) -> bool:
        return self.bundle is not None


def load_model(config: ServingConfig) -> LoadedModel:
    """Load and checksum-verify the bundle. A failure is logged with its traceback and kept as
    the reason ``/ready`` gives, so the process stays up to explain itself instead of crash-looping."""
    started = time.perf_counter()
    try:
        bundle = ModelBundle.load(config.model_path, expected_sha256=config.sha256)
        # One throw-away prediction pays torch's first-call costs before traffic arrives (so the
        # first real request does not land in the p99) and proves the weights fit the network.
        bundle.predict_proba(bundle.scaler.mean[None, :])
    except Exception as exc:  # every load failure must surface through /ready, whatever its type
        logger.exception("model %s failed to load from %s", config.version, config.model_path)
        return LoadedModel(None, f"{type(exc).__name__}: {exc}", time.perf_counter() - started)
    elapsed = time.perf_counter() - started
    logger.info(
        "model %s loaded from %s in %.3fs (sha256 verified, %d features)",
        config.version,
        config.model_path,
        elapsed,
        bundle.n_features,
    )
    return LoadedModel(bundle, None, elapsed)


# Exact types, not isinstance: bool is an int subclass, but true/false in a feature row is a
# client bug, not 1.0/0.0.
_NUMERIC_TYPES = frozenset({int, float})


def _numeric(value: Any) -> bool:
    return type(value) in _NUMERIC_TYPES


def parse_predict_request(
    payload: Any,
    feature_names: Sequence[str],
    max_batch: int = DEFAULT_MAX_BATCH,
    instruments: frozenset[str] | None = None,
) -> tuple[str, np.ndarray]:
    """Validate a decoded ``/predict`` body and return ``(instrument, rows)`` as a float64 matrix
    in the model's feature order. Raises :class:`RequestError` (422, or 413 for a too-large batch).
    ``instruments``, when given, is the set this slot answers for; any other instrument is 422."""
    if not isinstance(payload, dict):
        raise RequestError(422, "request body must be a JSON object")
    unknown = sorted(set(payload) - _REQUEST_KEYS)
    if unknown:
        raise RequestError(422, f"unknown request fields {unknown}; expected 'instrument' and 'rows' or 'features'")
    if "instrument" not in payload:
        raise RequestError(422, "missing 'instrument'")
    instrument = payload["instrument"]
    if not isinstance(instrument, str) or not _INSTRUMENT_RE.match(instrument):
        raise RequestError(422, f"'instrument' must be a symbol like 'BTCUSDT', got {instrument!r}")
    if instruments is not None and instrument not in instruments:
        known = sorted(instruments)
        shown = ", ".join(known[:20]) + (f" and {len(known) - 20} more" if len(known) > 20 else "")
        raise RequestError(422, f"unknown instrument {instrument!r}: this slot serves {shown}")
    has_rows, has_features = "rows" in payload, "features" in payload
    if has_rows == has_features:
        raise RequestError(422, "give exactly one of 'rows' (lists of numbers) or 'features' (objects by name)")
    width = len(feature_names)
    batch = payload["rows"] if has_rows else payload["features"]
    key = "rows" if has_rows else "features"
    if not isinstance(batch, list):
        raise RequestError(422, f"'{key}' must be a list")
    if not batch:
        raise RequestError(422, f"empty batch: '{key}' has no entries")
    if len(batch) > max_batch:
        raise RequestError(413, f"batch of {len(batch)} rows exceeds the limit of {max_batch}")

    if has_rows:
        matrix = batch
        for i, row in enumerate(batch):
            if not isinstance(row, list):
                raise RequestError(422, f"rows[{i}] must be a list of {width} numbers")
            if len(row) != width:
                raise RequestError(422, f"rows[{i}] has {len(row)} values; the model expects {width}")
            if not set(map(type, row)) <= _NUMERIC_TYPES:  # C-speed check; locate the culprit only on failure
                j, value = next((j, v) for j, v in enumerate(row) if not _numeric(v))
                raise RequestError(422, f"rows[{i}][{j}] is {value!r}, not a number")
    else:
        expected = set(feature_names)
        matrix = []
        for i, record in enumerate(batch):
            if not isinstance(record, dict):
                raise RequestError(422, f"features[{i}] must be an object of feature name -> number")
            names = set(record)
            if names != expected:
                extra, missing = sorted(names - expected), sorted(expected - names)
                parts = []
                if extra:
                    parts.append(f"unknown feature names {extra}")
                if missing:
                    parts.append(f"missing feature names {missing}")
                raise RequestError(422, f"features[{i}]: " + "; ".join(parts))
            row = [record[name] for name in feature_names]
            if not set(map(type, row)) <= _NUMERIC_TYPES:
                name, value = next((n, v) for n, v in zip(feature_names, row) if not _numeric(v))
                raise RequestError(422, f"features[{i}][{name!r}] is {value!r}, not a number")
            matrix.append(row)

    try:
        x = np.asarray(matrix, dtype=np.float64)
    except OverflowError as exc:
        raise RequestError(422, f"a feature value is too large for a float64: {exc}") from exc
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)[:10].tolist()
        raise RequestError(422, f"NaN or infinite values in {key} at index {bad}")
    return instrument, x


def scale_for_model(bundle: ModelBundle, x: np.ndarray) -> np.ndarray:
    """The rows standardised into the network's float32 input. A finite float64 such as 1e300
    becomes inf there and NaN inside the network, so such a row is refused (422) naming the
    first offending row and feature, instead of answering a null probability."""
    with np.errstate(over="ignore"):  # the overflow is detected just below and answered, not warned
        scaled = bundle.scaler.transform(x)
    overflow = ~np.isfinite(scaled)
    if overflow.any():
        i, j = (int(v) for v in np.argwhere(overflow)[0])
        rows = np.flatnonzero(overflow.any(axis=1))[:10].tolist()
        raise RequestError(
            422,
            f"row {i}, feature {bundle.feature_names[j]!r}: {float(x[i, j])!r} is outside the range the model "
            f"can take (it overflows float32 after scaling); rows out of range: {rows}",
        )
    return scaled


def check_outputs(probabilities: np.ndarray) -> None:
    """Refuse (422) a batch whose probabilities are not all finite: extreme but representable
    inputs can still overflow inside the network, and a null probability is no answer."""
    bad = ~np.isfinite(probabilities)
    if bad.any():
        rows = np.flatnonzero(bad)[:10].tolist()
        raise RequestError(
            422,
            f"the model's output is not finite for rows {rows}: their inputs are outside the range "
            "the model can score; nothing of this batch was scored",
        )


class _BatchHistogram(Collector):
    """A histogram fed a whole batch per call. ``prometheus_client.Histogram.observe`` takes a lock
    per value, which made a 1024-row batch spend milliseconds on bookkeeping; this bins the batch
    with one numpy call and exports the same ``_bucket``/``_sum``/``_count`` series."""

    def __init__(self, name: str, documentation: str, labels: Mapping[str, str], buckets: Sequence[float]):
        self.name = name
        self.documentation = documentation
        self.labels = dict(labels)
        self.bounds = np.asarray(sorted(buckets), dtype=np.float64)
        self._counts = np.zeros(len(self.bounds) + 1, dtype=np.int64)  # the last cell is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe_many(self, values: np.ndarray) -> None:
        """Add every value of ``values`` to the histogram."""
        values = np.asarray(values, dtype=np.float64).ravel()
        # side="left": a value equal to a bound belongs to that bucket (le is "less or equal").
        cells = np.bincount(np.searchsorted(self.bounds, values, side="left"), minlength=len(self._counts))
        with self._lock:
            self._counts += cells
            self._sum += float(values.sum())

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            cumulative = np.cumsum(self._counts).tolist()
            total = self._sum
        family = HistogramMetricFamily(self.name, self.documentation, labels=list(self.labels))
        family.add_metric(
            list(self.labels.values()),
            # floatToGoString: the same le spelling as prometheus_client's own histograms.
            [(floatToGoString(b), c) for b, c in zip(self.bounds.tolist(), cumulative)] + [("+Inf", cumulative[-1])],
            total,
        )
        yield family


class ServingMetrics:
    """The Prometheus metrics of one serving process, in a registry of its own so two apps in
    one test process never collide. Slot and model version label every series, so rollout gates
    can compare blue and green without relying on scrape-target relabelling."""

    def __init__(self, config: ServingConfig, loaded: LoadedModel):
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        base = ("slot", "model_version")
        self._base = (config.slot, config.version)
        self.requests = Counter(
            "autotrader_serving_requests",
            "HTTP requests by endpoint and status code",
            base + ("endpoint", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "autotrader_serving_request_duration_seconds",
            "Server-side request latency",
            base + ("endpoint",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.predictions = Counter(
            "autotrader_serving_predictions",
            "Rows scored by the model",
            base,
            registry=self.registry,
        ).labels(*self._base)
        self.confidence = _BatchHistogram(
            "autotrader_serving_prediction_confidence",
            "Model confidence |p - 0.5| * 2 per scored row",
            dict(zip(base, self._base)),
            CONFIDENCE_BUCKETS,
        )
        self.registry.register(self.confidence)
        self.faults_injected = Counter(
            "autotrader_serving_faults_injected",
            "Requests failed on purpose by fault injection",
            base + ("kind",),
            registry=self.registry,
        )
        ready = Gauge(
            "autotrader_serving_model_ready", "1 when the bundle is loaded and verified", base, registry=self.registry
        )
        ready.labels(*self._base).set(1 if loaded.ready else 0)
        Gauge(
            "autotrader_serving_fault_error_rate",
            "Injected /predict error fraction (drills only)",
            base,
            registry=self.registry,
        ).labels(*self._base).set(config.faults.error_rate)
        Gauge(
            "autotrader_serving_fault_latency_ms",
            "Injected /predict latency (drills only)",
            base,
            registry=self.registry,
        ).labels(*self._base).set(config.faults.latency_ms)
        info = Info("autotrader_serving_model", "The model this process serves", registry=self.registry)
        bundle = loaded.bundle
        info.info(
            {
                "slot": config.slot,
                "model_version": config.version,
                "sha256": config.sha256,
                "model_class": bundle.model_class if bundle else "",
                "n_features": str(bundle.n_features) if bundle else "",
            }
        )
        self._request_children: dict[tuple[str, int], Any] = {}
        self._latency_children = {
            endpoint: self.latency.labels(*self._base, endpoint) for endpoint in (*_KNOWN_ENDPOINTS, "other")
        }

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        """Count one request and record its latency; label children are cached because
        ``labels()`` costs a lock and a dict lookup chain on every call."""
        key = (endpoint, status)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(*self._base, endpoint, str(status))
        child.inc()
        self._latency_children[endpoint].observe(seconds)

    def observe_predictions(self, probabilities: np.ndarray) -> None:
        """Count scored rows and record their confidence distribution."""
        self.predictions.inc(len(probabilities))
        self.confidence.observe_many(np.abs(probabilities - 0.5) * 2.0)

    def render(self) -> bytes:
        """The exposition text for ``/metrics``."""
        return generate_latest(self.registry)


class _MetricsMiddleware:
    """Times every request and counts it by endpoint and status. A raw ASGI wrapper because
    Starlette's ``BaseHTTPMiddleware`` adds a task and a memory stream per request."""

    def __init__(self, app: Any, metrics: ServingMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path = scope.get("path", "")
        endpoint = path if path in _KNOWN_ENDPOINTS else "other"  # bounded label cardinality
        status_holder = [500]

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status_holder[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.observe_request(endpoint, status_holder[0], time.perf_counter() - started)


def _decode_json(body: bytes) -> Any:
    """Decode a request body. orjson parses a 1024-row batch about ten times faster than the
    standard library; it rejects NaN/Infinity/1e999 outright, so those bodies are re-read with the
    standard parser, which accepts them, and the validator then names the offending row."""
    with contextlib.suppress(orjson.JSONDecodeError):
        return orjson.loads(body)
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"malformed JSON: {exc}") from exc


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


def create_app(config: ServingConfig, loaded: LoadedModel) -> Any:
    """Build the ASGI app for one slot around an already-attempted model load."""
    metrics = ServingMetrics(config, loaded)
    bundle = loaded.bundle
    expected_auth = f"Bearer {config.token}".encode() if config.token else None
    faults = config.faults
    started_at = time.time()
    rng = random.Random()

    async def health(_: Request) -> Response:
        return JSONResponse(
            {
                "status": "alive",
                "slot": config.slot,
                "model_version": config.version,
                "pid": os.getpid(),
                "uptime_s": round(time.time() - started_at, 3),
            }
        )

    async def ready(_: Request) -> Response:
        if bundle is None:
            return JSONResponse(
                {
                    "ready": False,
                    "status": "failed",
                    "error": loaded.error,
                    "slot": config.slot,
                    "model_version": config.version,
                },
                status_code=503,
            )
        return JSONResponse(
            {
                "ready": True,
                "status": "ready",
                "slot": config.slot,
                "model_version": config.version,
                "pid": os.getpid(),
                "sha256": config.sha256,
                "feature_names": bundle.feature_names,
                "load_seconds": round(loaded.load_seconds, 4),
            }
        )

    async def metrics_endpoint(_: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise RequestError(400, f"invalid Content-Length {declared!r}") from None
            if size > config.max_body_bytes:
                raise RequestError(413, f"body of {size} bytes exceeds the limit of {config.max_body_bytes}")
            return await request.body()
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > config.max_body_bytes:
                raise RequestError(413, f"body exceeds the limit of {config.max_body_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def predict(request: Request) -> Response:
        if expected_auth is not None:
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected_auth):
                reason = "missing bearer token" if not given else "invalid bearer token"
                return _error(401, reason, headers={"WWW-Authenticate": 'Bearer realm="autotrader"'})
        if bundle is None:
            return _error(503, f"model not loaded: {loaded.error}")
        try:
            body = await read_body(request)
            payload = _decode_json(body)
            instrument, x = parse_predict_request(payload, bundle.feature_names, config.max_batch, config.instruments)
            scaled = scale_for_model(bundle, x)
        except RequestError as exc:
            return _error(exc.status, exc.message)
        if faults.latency_ms > 0:
            await asyncio.sleep(faults.latency_ms / 1000.0)
        if faults.error_rate > 0 and rng.random() < faults.error_rate:
            metrics.faults_injected.labels(config.slot, config.version, "error").inc()
            return _error(500, f"injected fault ({ENV_FAULT_ERROR_RATE}={faults.error_rate})")
        try:
            probabilities = bundle.predict_scaled(scaled)
        except Exception as exc:  # logged with traceback and answered 500, so the error rate gate sees it
            logger.exception("prediction failed for %s (%d rows)", instrument, len(x))
            return _error(500, f"prediction failed: {type(exc).__name__}: {exc}")
        try:
            check_outputs(probabilities)
        except RequestError as exc:
            logger.warning("%s: %s", instrument, exc.message)
            return _error(exc.status, exc.message)
        metrics.observe_predictions(probabilities)
        return Response(
            orjson.dumps(
                {
                    "instrument": instrument,
                    "probabilities": probabilities,
                    "model_version": config.version,
                    "slot": config.slot,
                },
                option=orjson.OPT_SERIALIZE_NUMPY,
            ),
            media_type="application/json",
        )

    app = Starlette(
        routes=[
            Route("/predict", predict, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/ready", ready, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ]
    )
    return _MetricsMiddleware(app, metrics)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m deploy_ops.serving", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="path of the model bundle file")
    parser.add_argument("--sha256", required=True, help="expected sha256 of the bundle (from the registry)")
    parser.add_argument("--version", required=True, help="registry model version served")
    parser.add_argument("--slot", required=True, choices=SLOTS)
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH)
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    parser.add_argument(
        "--instruments",
        default=None,
        help="comma-separated instruments this slot serves; /predict for any other is 422 (default: any symbol)",
    )
    parser.add_argument(
        "--token-stdin",
        action="store_true",
        help="read the bearer token from the first line of stdin (kept out of argv and env)",
    )
    parser.add_argument(
        "--require-token",
        action="store_true",
        help="exit with code 2 instead of serving without a token (the production profile)",
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="intra-op threads; 1 because small batches lose more to thread hand-offs than they gain",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--fault-error-rate",
        default=None,
        help=f"drills only: fraction of valid /predict calls answered 500 ({ENV_FAULT_ERROR_RATE})",
    )
    parser.add_argument(
        "--fault-latency-ms",
        default=None,
        help=f"drills only: milliseconds added to every /predict ({ENV_FAULT_LATENCY_MS})",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, *, token: str | None = None) -> int:
    """Command-line entry point: load the bundle, then serve until SIGTERM/SIGINT. ``token`` is
    the bearer token when the caller already holds it (the container entrypoint,
    :mod:`deploy_ops.serving.container`); otherwise ``--token-stdin`` reads it."""
    args = _parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s",
    )
    token = (token or "").strip() or None
    if args.token_stdin:
        token = sys.stdin.readline().strip() or None
    instruments = None
    if args.instruments is not None:
        instruments = frozenset(i.strip() for i in args.instruments.split(",") if i.strip())
    try:
        faults = FaultConfig.from_env(
            {ENV_FAULT_ERROR_RATE: args.fault_error_rate or "", ENV_FAULT_LATENCY_MS: args.fault_latency_ms or ""}
        )
        config = ServingConfig(
            model_path=args.model,
            sha256=args.sha256.lower(),
            version=args.version,
            slot=args.slot,
            token=token,
            faults=faults,
            max_batch=args.max_batch,
            max_body_bytes=args.max_body_bytes,
            instruments=instruments,
            require_token=args.require_token,
        )
    except ValueError as exc:
        logger.error("invalid serving configuration: %s", exc)
        return 2
    if config.token is None:
        logger.warning("no serving token given (%s unset): /predict accepts unauthenticated requests", ENV_TOKEN)
    if faults.active:
        logger.warning(
            "FAULT INJECTION ACTIVE (drill/test): error_rate=%s latency_ms=%s", faults.error_rate, faults.latency_ms
        )

    # The *_created series double the exposition size and no rule or dashboard reads them.
    disable_created_metrics()

    import torch  # deferred: keeps `--help` and config errors fast

    torch.set_num_threads(max(1, args.torch_threads))
    torch.set_num_interop_threads(1)

    loaded = load_model(config)
    app = create_app(config, loaded)

    import uvicorn

    logger.info("serving slot=%s version=%s on http://%s:%d", config.slot, config.version, args.host, args.port)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level=args.log_level,
        server_header=False,
        date_header=False,
        timeout_graceful_shutdown=5,
    )
    return 0
