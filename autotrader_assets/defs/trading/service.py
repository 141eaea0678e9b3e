"""One paper-trading run: warehouse features -> serving slots -> paper account -> warehouse.

No Dagster here: the ``paper_trading`` asset, the benchmark and the tests call
:func:`run_paper_trading` with a warehouse connection factory and the deployment-state URL.

Per instrument and date the day's feature rows go to the slot the routing table names in a few
batched HTTP requests (at most the serving batch limit of rows each), never one request per
bar. The whole bar loop then runs inside the backtest engine.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Sequence

import duckdb
import numpy as np
import pandas as pd

from autotrader_assets.defs.trading import warehouse as wh
from autotrader_assets.defs.trading.paper import (
    AccountState,
    BreakerView,
    DayInput,
    DayResult,
    PaperParams,
    PaperTradingError,
    block_at_start,
    plan_dates,
    run_paper_day,
)
from deploy_ops.serving.client import RoutedClient, ServingClient, ServingError
from deploy_ops.state import DeploymentStateStore
from deploy_ops.trading.breaker import BreakerStatus, BreakerStore, TripOutcome

#: Rows per /predict request: the serving default limit (``deploy_ops.serving.DEFAULT_MAX_BATCH``),
#: repeated because importing the serving module would load torch into every paper-trading run.
DEFAULT_MAX_BATCH = 1024

Connect = Callable[[], ContextManager[duckdb.DuckDBPyConnection]]


def duckdb_connector(path: str) -> Connect:
    """A connection factory on a DuckDB file, for callers without a Dagster resource."""
    return lambda: contextlib.closing(duckdb.connect(path))


@dataclass
class ServedPrediction:
    """P(up) per bar (NaN where a bar had no complete feature row) and who produced them."""

    proba: np.ndarray
    slot: str | None
    model_version: str | None
    n_requests: int
    latency_ms: float


@dataclass
class PaperRunReport:
    """Everything a run did, for asset metadata, tests and the benchmark."""

    selected: list[dt.date]
    work: list[dt.date]
    start_from: dt.date | None
    results: list[DayResult]
    serving: dict[dt.date, dict[str, dict[str, Any]]]
    trips: list[tuple[dt.date, TripOutcome]]
    breaker_before: BreakerStatus
    breaker_after: BreakerStatus
    rows_written: int
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def recomputed_later(self) -> list[dt.date]:
        """Dates outside the selection recomputed because an earlier date changed."""
        chosen = set(self.selected)
        return [d for d in self.work if d not in chosen]


class FeatureNames:
    """The feature order each serving URL expects (from its ``/ready``), asked once per URL."""

    def __init__(self, token: str | None):
        self.token = token
        self._names: dict[str, list[str]] = {}

    def __call__(self, url: str) -> list[str]:
        if url not in self._names:
            with ServingClient(url, token=self.token) as client:
                ready = client.ready()
            names = ready.get("feature_names")
            if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
                raise ServingError(f"{url}/ready gives no feature_names: {ready!r:.200}", url=url)
            self._names[url] = names
        return self._names[url]


def predict_bars(
    client: RoutedClient,
    instrument: str,
    features: pd.DataFrame,
    names: Sequence[str],
    max_batch: int = DEFAULT_MAX_BATCH,
) -> ServedPrediction:
    """Score every bar with complete features on the routed slot, ``max_batch`` rows a request."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    x = features[list(names)].to_numpy(dtype=np.float64)
    valid = np.isfinite(x).all(axis=1)
    proba = np.full(len(x), np.nan)
    rows = x[valid]
    slot = client.slot_for(instrument)
    versions: list[str] = []
    latency = 0.0
    parts = []
    for lo in range(0, len(rows), max_batch):
        answer = client.predict(instrument, rows[lo : lo + max_batch])
        parts.append(np.asarray(answer.probabilities, dtype=np.float64))
        latency += answer.latency_ms
        if answer.model_version not in versions:
            versions.append(answer.model_version)
    if parts:
        scored = np.concatenate(parts)
        if not (np.isfinite(scored).all() and scored.min() >= 0.0 and scored.max() <= 1.0):
            raise ServingError(f"{instrument}: slot {slot.slot} returned probabilities outside [0, 1]", url=slot.url)
        proba[valid] = scored
    # Two versions in one day means a rollout switched the route between two batches.
    return ServedPrediction(proba, slot.slot, ",".join(versions) or None, len(parts), latency)


def breaker_view(store: BreakerStore) -> tuple[BreakerView, BreakerStatus]:
    """What the pure paper-trading functions need to know about the breaker, and its raw status."""
    status = store.status()
    active = pd.Timestamp(status.tripped_at) if status.tripped and status.tripped_at is not None else None
    return BreakerView(active_trip_at=active, reset_trips=store.reset_trip_times()), status


def run_paper_trading(
    connect: Connect,
    state_url: str,
    dates: Sequence[dt.date | str],
    instruments: Sequence[str],
    params: PaperParams,
    *,
    token: str | None = None,
    run_id: str | None = None,
    log: Callable[[str], None] | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> PaperRunReport:
    """Paper-trade ``dates`` and every later date already computed, then write them all at once.

    The account continues from the date before the first selected one (fresh if there is none
    before it). A trip is persisted in the breaker store before the warehouse is written: a
    run that dies in between leaves the breaker tripped, never a loss without a trip."""
    say = log or (lambda _msg: None)
    if not instruments:
        raise PaperTradingError("no instruments to paper-trade")
    if len(set(instruments)) != len(instruments):
        raise PaperTradingError(f"instruments listed twice: {sorted(instruments)}")
    selected = sorted({pd.Timestamp(d).date() for d in dates})
    seconds = {"read": 0.0, "predict": 0.0, "engine": 0.0, "breaker": 0.0, "write": 0.0}

    started = time.perf_counter()
    store = BreakerStore(state_url)
    view, before = breaker_view(store)
    with connect() as con:
        wh.ensure_tables(con)
        fingerprint = wh.account_fingerprint(con)
        work, start_from = plan_dates(selected, wh.computed_dates(con))
        previous: AccountState | None = wh.load_account(con, start_from) if start_from is not None else None
    seconds["breaker"] += time.perf_counter() - started
    if previous is not None and set(previous.states) != set(instruments):
        raise PaperTradingError(
            f"the paper account trades {sorted(previous.states)} up to {start_from}, not {sorted(instruments)}: "
            f"recompute from the account's first date to change instruments"
        )
    if work != selected:
        say(
            f"recomputing {len(work)} date(s) {work[0]}..{work[-1]} (selected {len(selected)}) to keep the chain consistent"
        )

    results: list[DayResult] = []
    serving: dict[dt.date, dict[str, dict[str, Any]]] = {}
    feature_names = FeatureNames(token)
    with RoutedClient(DeploymentStateStore(state_url), token=token) as client:
        client.refresh()
        for date in work:
            reason, _ = block_at_start(date, previous, view)
            t0 = time.perf_counter()
            names_by_instrument: dict[str, list[str]] = {}
            if reason is None:
                for name in instruments:
                    names_by_instrument[name] = feature_names(client.slot_for(name).url)
            needed = sorted({f for names in names_by_instrument.values() for f in names})
            with connect() as con:
                bars = wh.read_day_features(con, date, instruments, needed)
            t1 = time.perf_counter()
            proba: dict[str, np.ndarray] = {}
            day_serving: dict[str, dict[str, Any]] = {}
            for name in instruments:
                if reason is not None:
                    # No orders can be placed today, so the model is not asked.
                    proba[name] = np.full(len(bars[name]), np.nan)
                    day_serving[name] = {"slot": None, "model_version": None, "n_requests": 0, "latency_ms": 0.0}
                    continue
                served = predict_bars(client, name, bars[name], names_by_instrument[name], max_batch)
                proba[name] = served.proba
                day_serving[name] = {
                    "slot": served.slot,
                    "model_version": served.model_version,
                    "n_requests": served.n_requests,
                    "latency_ms": served.latency_ms,
                }
            t2 = time.perf_counter()
            result = run_paper_day(DayInput(date, bars, proba), previous, params, view)
            t3 = time.perf_counter()
            seconds["read"] += t1 - t0
            seconds["predict"] += t2 - t1
            seconds["engine"] += t3 - t2
            results.append(result)
            serving[date] = day_serving
            previous = result.end
            if result.trip is not None:
                say(f"{date}: circuit breaker trips at {result.trip.at}: {result.trip.reason}")
            if result.blocked_at_start:
                say(f"{date}: no new orders: {result.block_reason}")

    t0 = time.perf_counter()
    trips = []
    for result in results:
        if result.trip is not None:
            details = {
                **result.trip.to_details(),
                "date": result.date.isoformat(),
                "units": {k: s.units for k, s in result.portfolio.final_states.items()},
            }
            trips.append((result.date, store.trip(result.trip.reason, details, at=result.trip.at)))
    after = store.status()
    seconds["breaker"] += time.perf_counter() - t0

    t0 = time.perf_counter()
    computed_at = dt.datetime.now(dt.timezone.utc)
    frames = [wh.frames_for(r, params, serving[r.date], run_id, computed_at) for r in results]
    with connect() as con:
        rows = wh.replace_dates(con, work, frames, expected=fingerprint)
    seconds["write"] += time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - started
    return PaperRunReport(
        selected=selected,
        work=work,
        start_from=start_from,
        results=results,
        serving=serving,
        trips=trips,
        breaker_before=before,
        breaker_after=after,
        rows_written=rows,
        seconds=seconds,
    )


__all__ = [
    "FeatureNames",
    "PaperRunReport",
    "ServedPrediction",
    "breaker_view",
    "duckdb_connector",
    "predict_bars",
    "run_paper_trading",
]
