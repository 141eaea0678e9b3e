"""The circuit breaker of the paper (and later live) trading account.

Two halves:

* :func:`find_trip` -- pure detection on an account equity curve: the first bar at whose close
  the day's loss exceeds ``daily_loss_limit`` of the day's opening equity, or the fall from the
  running equity peak exceeds ``drawdown_limit``. The caller flattens from that bar on
  (``halt_from_index`` of the backtest engine: the decision at the trip bar is "flat", filled at
  the next bar's open).
* :class:`BreakerStore` -- the breaker's persistent state, in its own tables of the
  deployment-state database (SQLite by default, PostgreSQL in production), so it survives runs,
  processes and restarts. Tripping is idempotent while tripped; the only way back to trading is
  :meth:`BreakerStore.reset` with a named approver and a reason, which writes an audit row.
  Every trip also lands in the deployment-state event log as a ``critical``
  ``circuit_breaker_tripped`` event, where sensors look for it.

A trip is keyed by the market time of the bar that tripped it (``at``), not by the wall clock:
recomputing history reproduces the same trip at the same ``at``, and a trip an operator already
reset is recognised (:meth:`BreakerStore.was_reset`) instead of being raised a second time.

No Dagster imports here: the CLI, the assets and the sensors all call this module.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

from deploy_ops.db import as_utc, json_default, make_engine, utcnow
from deploy_ops.state import DeploymentStateStore
from deploy_ops.text import required_text

#: Event-log kinds written here (sensors filter on them).
TRIP_EVENT = "circuit_breaker_tripped"
RESET_EVENT = "circuit_breaker_reset"
REASONS: tuple[str, ...] = ("daily_loss", "drawdown")

_STATE_ID = 1
#: A trip event not published this long after its claim is published by the next trip() call.
EVENT_CLAIM_TIMEOUT = dt.timedelta(seconds=60)

breaker_metadata = sa.MetaData()

breaker_state_table = sa.Table(
    "circuit_breaker_state",
    breaker_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("tripped", sa.Boolean, nullable=False),
    # The last trip (kept after a reset, so `status` can say what was reset).
    sa.Column("trip_id", sa.Integer, nullable=True),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("details", sa.JSON, nullable=True),
    sa.Column("tripped_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("event_id", sa.Integer, nullable=True),
    # Who publishes the trip event: the tripping writer claims it in the trip's transaction; a
    # claim left stale by a crash is taken over (see BreakerStore.trip).
    sa.Column("event_claimed_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("reset_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("reset_by", sa.String(128), nullable=True),
    sa.Column("reset_reason", sa.Text, nullable=True),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint(f"id = {_STATE_ID}", name="ck_circuit_breaker_state_singleton"),
)

breaker_history_table = sa.Table(
    "circuit_breaker_history",
    breaker_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("action", sa.String(8), nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    # Trips: market time of the tripping bar. Resets: that of the trip they end.
    sa.Column("market_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("details", sa.JSON, nullable=False),
    sa.Column("approved_by", sa.String(128), nullable=True),
    # Resets point at the trip row they end.
    sa.Column("trip_id", sa.Integer, nullable=True),
    sa.CheckConstraint("action IN ('trip', 'reset')", name="ck_circuit_breaker_history_action"),
    sa.CheckConstraint(
        "action <> 'reset' OR (approved_by IS NOT NULL AND trip_id IS NOT NULL)",
        name="ck_circuit_breaker_history_reset_approved",
    ),
    sa.Index("ix_circuit_breaker_history_market_at", "market_at"),
    sqlite_autoincrement=True,
)


class BreakerError(ValueError):
    """Invalid input to the breaker (missing approval, bad timestamp, unserialisable details)."""


class BreakerNotTrippedError(RuntimeError):
    """A reset was asked for while the breaker is not tripped: there is nothing to reset."""


@dataclass(frozen=True)
class Trip:
    """The first bar at which a breaker limit was exceeded, with the numbers that exceeded it.

    ``index`` is the bar's position in the equity series, ``at`` its timestamp. ``reasons``
    holds ``"daily_loss"`` and/or ``"drawdown"`` (both when one bar breaks both limits).
    ``day_loss`` and ``drawdown`` are positive fractions at that bar.
    """

    index: int
    at: pd.Timestamp
    reasons: tuple[str, ...]
    equity: float
    day_open_equity: float
    peak_equity: float
    day_loss: float
    drawdown: float
    daily_loss_limit: float
    drawdown_limit: float

    @property
    def reason(self) -> str:
        """One line for people: which limit broke and by how much."""
        parts = []
        if "daily_loss" in self.reasons:
            parts.append(f"daily loss {self.day_loss:.3%} > {self.daily_loss_limit:.2%} of the day's opening equity")
        if "drawdown" in self.reasons:
            parts.append(f"drawdown {self.drawdown:.3%} > {self.drawdown_limit:.2%} from the equity peak")
        return "; ".join(parts)

    def to_details(self) -> dict[str, Any]:
        """JSON-safe numbers for the store and the event log."""
        return {
            "reasons": list(self.reasons),
            "bar_index": int(self.index),
            "bar_ts": self.at.isoformat(),
            "equity": float(self.equity),
            "day_open_equity": float(self.day_open_equity),
            "peak_equity": float(self.peak_equity),
            "day_loss": float(self.day_loss),
            "drawdown": float(self.drawdown),
            "daily_loss_limit": float(self.daily_loss_limit),
            "drawdown_limit": float(self.drawdown_limit),
        }


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0.0):
        raise BreakerError(f"{name} must be a positive finite number, got {value}")
    return value


def _limit(name: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and 0.0 < value < 1.0):
        raise BreakerError(f"{name} must be a fraction in (0, 1), got {value}")
    return value


def find_trip(
    equity: pd.Series,
    day_open_equity: float,
    peak_equity: float,
    daily_loss_limit: float,
    drawdown_limit: float,
) -> Trip | None:
    """The first bar where the day's loss or the drawdown from the peak exceeds its limit.

    ``equity`` is the account marked at each bar's close, indexed by UTC timestamps (it may span
    several UTC days). ``day_open_equity`` is the account value when the first bar's day opened
    (the previous day's last mark); later days open at the last mark of the day before.
    ``peak_equity`` is the highest account value seen before the first bar; the peak then runs
    on with the curve. Limits are strict: a loss of exactly 5% does not trip. None if nothing
    trips.
    """
    if not isinstance(equity, pd.Series) or not isinstance(equity.index, pd.DatetimeIndex):
        raise BreakerError("equity must be a pandas Series indexed by a DatetimeIndex")
    if len(equity) == 0:
        raise BreakerError("equity is empty")
    day_open_equity = _positive("day_open_equity", day_open_equity)
    peak_equity = _positive("peak_equity", peak_equity)
    daily_loss_limit = _limit("daily_loss_limit", daily_loss_limit)
    drawdown_limit = _limit("drawdown_limit", drawdown_limit)
    values = equity.to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        raise BreakerError("equity has non-finite values")
    idx = equity.index.tz_localize("UTC") if equity.index.tz is None else equity.index.tz_convert("UTC")
    if len(idx) > 1 and not (np.diff(idx.asi8) > 0).all():
        raise BreakerError("equity index must be strictly increasing")

    day_codes = idx.normalize().asi8
    new_day = np.empty(len(values), dtype=bool)
    new_day[0] = True
    new_day[1:] = day_codes[1:] != day_codes[:-1]
    # Each day opens at the previous bar's mark (the last close of the day before).
    open_marks = np.empty(len(values))
    open_marks[0] = day_open_equity
    open_marks[1:] = values[:-1]
    starts = np.flatnonzero(new_day)
    day_number = np.cumsum(new_day) - 1
    day_open = open_marks[starts][day_number]
    peaks = np.maximum.accumulate(np.maximum(values, peak_equity))

    # Equity at or below zero is an unbounded loss; the fractions stay well defined because
    # both bases are positive.
    day_loss = (day_open - values) / day_open
    drawdown = (peaks - values) / peaks
    loss_hit = day_loss > daily_loss_limit
    dd_hit = drawdown > drawdown_limit
    hit = np.flatnonzero(loss_hit | dd_hit)
    if len(hit) == 0:
        return None
    i = int(hit[0])
    reasons = tuple(name for name, flags in (("daily_loss", loss_hit), ("drawdown", dd_hit)) if flags[i])
    return Trip(
        index=i,
        at=idx[i],
        reasons=reasons,
        equity=float(values[i]),
        day_open_equity=float(day_open[i]),
        peak_equity=float(peaks[i]),
        day_loss=float(day_loss[i]),
        drawdown=float(drawdown[i]),
        daily_loss_limit=daily_loss_limit,
        drawdown_limit=drawdown_limit,
    )


# -- persistent state ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BreakerStatus:
    """The breaker as stored: tripped or not, and the last trip and reset it went through."""

    tripped: bool
    trip_id: int | None = None
    reason: str | None = None
    details: dict[str, Any] | None = None
    tripped_at: dt.datetime | None = None
    recorded_at: dt.datetime | None = None
    event_id: int | None = None
    reset_at: dt.datetime | None = None
    reset_by: str | None = None
    reset_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (timestamps as ISO strings) for the CLI and asset metadata."""
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            out[key] = value.isoformat() if isinstance(value, dt.datetime) else value
        return out


@dataclass(frozen=True)
class BreakerRecord:
    """One row of the breaker's history: a trip or an approved reset."""

    id: int
    action: str
    recorded_at: dt.datetime
    market_at: dt.datetime
    reason: str
    details: dict[str, Any]
    approved_by: str | None
    trip_id: int | None

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["recorded_at"] = self.recorded_at.isoformat()
        out["market_at"] = self.market_at.isoformat()
        return out


class TripOutcome(NamedTuple):
    """What :meth:`BreakerStore.trip` did: ``newly_tripped`` is False when it was a no-op.

    ``why`` is ``"tripped"``, ``"already_tripped"`` or ``"already_reset"`` (this very trip was
    reset by an operator before; recomputing history must not raise it again)."""

    status: BreakerStatus
    newly_tripped: bool
    why: str


def _utc(value: Any, what: str) -> dt.datetime:
    if isinstance(value, pd.Timestamp):
        if value is pd.NaT:
            raise BreakerError(f"{what} must be a timestamp, got NaT")
        value = value.to_pydatetime()
    elif isinstance(value, str):
        try:
            value = pd.Timestamp(value).to_pydatetime()
        except ValueError as exc:
            raise BreakerError(f"{what} is not a timestamp: {value!r}") from exc
    if not isinstance(value, dt.datetime):
        raise BreakerError(f"{what} must be a datetime, got {type(value).__name__}")
    # Naive means UTC everywhere in this project (the warehouse stores naive UTC).
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)


def _json_details(details: Mapping[str, Any] | None) -> dict[str, Any]:
    if details is not None and not isinstance(details, Mapping):
        raise BreakerError(f"details must be a mapping, got {type(details).__name__}")
    try:
        return json.loads(json.dumps(dict(details or {}), allow_nan=False, default=json_default))
    except (TypeError, ValueError) as exc:
        raise BreakerError(f"breaker details must be JSON-serialisable without NaN: {exc}") from exc


class BreakerStore:
    """The breaker's state and history in the deployment-state database at ``url``.

    Tables ``circuit_breaker_state`` (one row) and ``circuit_breaker_history`` are created if
    absent. Every change is one conditional UPDATE of the state row (``... WHERE tripped = false``
    for a trip, ``WHERE tripped = true`` for a reset) followed by its history row in the same
    transaction, so two processes racing to trip or reset cannot both win.
    """

    def __init__(self, url: str):
        self.url = url
        self.engine: sa.Engine = make_engine(url)
        self.events = DeploymentStateStore(url)
        breaker_metadata.create_all(self.engine, checkfirst=True)
        self._ensure_state_row()

    def __repr__(self) -> str:
        return f"BreakerStore({self.engine.url.render_as_string(hide_password=True)!r})"

    def _ensure_state_row(self) -> None:
        values = dict(id=_STATE_ID, tripped=False, updated_at=utcnow())
        with self.engine.begin() as conn:
            dialect = conn.dialect.name
            if dialect == "postgresql":
                stmt = pg_dialect.insert(breaker_state_table).values(**values)
            elif dialect == "sqlite":
                stmt = sqlite_dialect.insert(breaker_state_table).values(**values)
            else:
                raise BreakerError(f"unsupported database dialect {dialect!r}; use sqlite or postgresql")
            # Several processes may open the store at once; the first insert wins, the rest no-op.
            conn.execute(stmt.on_conflict_do_nothing(index_elements=["id"]))

    # -- reading ---------------------------------------------------------------------------------
    def status(self) -> BreakerStatus:
        """The breaker now."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(breaker_state_table).where(breaker_state_table.c.id == _STATE_ID)).one()
        return BreakerStatus(
            tripped=bool(row.tripped),
            trip_id=row.trip_id,
            reason=row.reason,
            details=dict(row.details) if row.details is not None else None,
            tripped_at=as_utc(row.tripped_at),
            recorded_at=as_utc(row.recorded_at),
            event_id=row.event_id,
            reset_at=as_utc(row.reset_at),
            reset_by=row.reset_by,
            reset_reason=row.reset_reason,
        )

    def history(self, limit: int = 100) -> list[BreakerRecord]:
        """Trips and resets, newest first."""
        if limit < 1:
            raise BreakerError(f"limit must be >= 1, got {limit}")
        t = breaker_history_table
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t).order_by(t.c.id.desc()).limit(limit)).all()
        return [
            BreakerRecord(
                id=r.id,
                action=r.action,
                recorded_at=as_utc(r.recorded_at),
                market_at=as_utc(r.market_at),
                reason=r.reason,
                details=dict(r.details or {}),
                approved_by=r.approved_by,
                trip_id=r.trip_id,
            )
            for r in rows
        ]

    def was_reset(self, at: Any) -> bool:
        """Whether a trip at market time ``at`` was recorded and then reset by an approver."""
        at = _utc(at, "at")
        t = breaker_history_table
        resets = sa.select(t.c.trip_id).where(t.c.action == "reset")
        query = sa.select(sa.func.count()).where(t.c.action == "trip", t.c.market_at == at, t.c.id.in_(resets))
        with self.engine.connect() as conn:
            return bool(conn.execute(query).scalar())

    def reset_trip_times(self) -> frozenset[pd.Timestamp]:
        """Market times of every trip an operator has reset (what recomputation must not re-raise)."""
        t = breaker_history_table
        resets = sa.select(t.c.trip_id).where(t.c.action == "reset")
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t.c.market_at).where(t.c.action == "trip", t.c.id.in_(resets))).all()
        return frozenset(pd.Timestamp(as_utc(r.market_at)) for r in rows)

    # -- changing --------------------------------------------------------------------------------
    def trip(self, reason: str, details: Mapping[str, Any] | None = None, at: Any = None) -> TripOutcome:
        """Trip the breaker at market time ``at`` (default: now) and log a critical event.

        A no-op while already tripped, and for a trip at an ``at`` that an operator has already
        reset (recomputed history reproducing a handled trip)."""
        reason = required_text("reason", reason, error=BreakerError)
        details = _json_details(details)
        at = utcnow() if at is None else _utc(at, "at")
        now = utcnow()
        s, h = breaker_state_table, breaker_history_table
        acknowledged = (
            sa.select(h.c.id)
            .where(
                h.c.action == "trip",
                h.c.market_at == at,
                h.c.id.in_(sa.select(h.c.trip_id).where(h.c.action == "reset")),
            )
            .exists()
        )
        with self.engine.begin() as conn:
            # The conditional UPDATE is the lock: only one writer can flip tripped from false.
            flipped = conn.execute(
                sa.update(s)
                .where(s.c.id == _STATE_ID, s.c.tripped.is_(False), ~acknowledged)
                .values(
                    tripped=True,
                    reason=reason,
                    details=details,
                    tripped_at=at,
                    recorded_at=now,
                    event_id=None,
                    event_claimed_at=now,
                    reset_at=None,
                    reset_by=None,
                    reset_reason=None,
                    updated_at=now,
                )
            ).rowcount
            if flipped:
                trip_id = int(
                    conn.execute(
                        sa.insert(h).values(
                            action="trip",
                            recorded_at=now,
                            market_at=at,
                            reason=reason,
                            details=details,
                        )
                    ).inserted_primary_key[0]
                )
                conn.execute(sa.update(s).where(s.c.id == _STATE_ID).values(trip_id=trip_id))
        if flipped:
            self._publish_trip_event()
            return TripOutcome(self.status(), True, "tripped")
        status = self.status()
        if status.tripped:
            # The writer that tripped may have died between its commit and the event: after the
            # claim timeout the event is published here, so no sensor misses the trip.
            if status.event_id is None and self._claim_stale_event(status.trip_id):
                self._publish_trip_event()
                status = self.status()
            return TripOutcome(status, False, "already_tripped")
        return TripOutcome(status, False, "already_reset")

    def _claim_stale_event(self, trip_id: int | None) -> bool:
        s = breaker_state_table
        now = utcnow()
        with self.engine.begin() as conn:
            return bool(
                conn.execute(
                    sa.update(s)
                    .where(
                        s.c.id == _STATE_ID,
                        s.c.trip_id == trip_id,
                        s.c.event_id.is_(None),
                        sa.or_(s.c.event_claimed_at.is_(None), s.c.event_claimed_at < now - EVENT_CLAIM_TIMEOUT),
                    )
                    .values(event_claimed_at=now)
                ).rowcount
            )

    def _publish_trip_event(self) -> None:
        status = self.status()
        s = breaker_state_table
        event = self.events.record_event(
            TRIP_EVENT,
            f"circuit breaker tripped at {status.tripped_at.isoformat()}: {status.reason}",
            severity="critical",
            details={
                "trip_id": status.trip_id,
                "tripped_at": status.tripped_at,
                "reason": status.reason,
                **(status.details or {}),
            },
        )
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(s).where(s.c.id == _STATE_ID, s.c.trip_id == status.trip_id).values(event_id=event.id)
            )

    def reset(self, approved_by: str, reason: str) -> BreakerStatus:
        """Re-enable trading: needs a named approver and a reason, and a tripped breaker.

        Raises BreakerError without both (nothing is written) and BreakerNotTrippedError when
        the breaker is not tripped. Writes the audit row and an event, in that order."""
        approved_by = required_text("approved_by", approved_by, max_len=128, error=BreakerError)
        reason = required_text("reason", reason, error=BreakerError)
        now = utcnow()
        s, h = breaker_state_table, breaker_history_table
        with self.engine.begin() as conn:
            flipped = conn.execute(
                sa.update(s)
                .where(s.c.id == _STATE_ID, s.c.tripped.is_(True))
                .values(tripped=False, reset_at=now, reset_by=approved_by, reset_reason=reason, updated_at=now)
            ).rowcount
            if not flipped:
                raise BreakerNotTrippedError("the circuit breaker is not tripped: there is nothing to reset")
            row = conn.execute(sa.select(s).where(s.c.id == _STATE_ID)).one()
            conn.execute(
                sa.insert(h).values(
                    action="reset",
                    recorded_at=now,
                    market_at=row.tripped_at,
                    reason=reason,
                    details={"trip_reason": row.reason},
                    approved_by=approved_by,
                    trip_id=row.trip_id,
                )
            )
        status = self.status()
        self.events.record_event(
            RESET_EVENT,
            f"circuit breaker reset by {approved_by}: {reason}",
            severity="warning",
            details={
                "trip_id": status.trip_id,
                "tripped_at": status.tripped_at,
                "approved_by": approved_by,
                "reason": reason,
            },
        )
        return status


__all__ = [
    "BreakerError",
    "BreakerNotTrippedError",
    "BreakerRecord",
    "BreakerStatus",
    "BreakerStore",
    "REASONS",
    "RESET_EVENT",
    "TRIP_EVENT",
    "Trip",
    "TripOutcome",
    "breaker_history_table",
    "breaker_state_table",
    "find_trip",
]
