"""The events table as an outbox: every alerting event reaches Alertmanager at least once.

Two steps, both safe to run from several processes at once (the Dagster sensor
``alert_delivery_sensor`` every 30 s, ``autotrader alerts flush``, ``autotrader alerts test``):

1. :meth:`Outbox.enqueue` reads the event log after its cursor and, in one transaction with
   the cursor's move, writes one ``fire`` row per alerting event and one ``resolve`` row per
   condition a resolver event clears (``catalog.py`` decides which is which). Nothing depends on
   Alertmanager here, so events raised while it is down are queued all the same.
2. :meth:`Outbox.deliver` posts the due rows to Alertmanager's v2 API. A row is marked delivered
   only after Alertmanager accepted it; a failure keeps it pending with the error and the next
   attempt time (exponential backoff, :data:`BACKOFF_CAP` at most). Rows are never dropped.
   Open conditional alerts are re-sent every :data:`REFRESH` so they survive an Alertmanager
   restart (it keeps alerts in memory) and never time out while their condition holds.

Alertmanager identifies an alert by its labels, so sending a row twice (a crash between the
post and the commit, two flushers racing) gives one alert and one notification per dedup key.

The tables live beside ``events`` in the deployment-state database and are created if absent,
so a database that predates them keeps working: its first flush queues its history once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Iterable

import sqlalchemy as sa

from deploy_ops.alerting.catalog import CONDITION_TTL, ONE_SHOT_TTL, RESOLVERS, Alert, alert_for
from deploy_ops.alerting.client import AlertmanagerClient, AlertmanagerError
from deploy_ops.db import as_utc, utcnow
from deploy_ops.events import OpsEvent, shape
from deploy_ops.state import DeploymentStateStore
from deploy_ops.text import MESSAGE, truncate

#: First retry after this long, doubling per failed attempt ...
BACKOFF_BASE = dt.timedelta(seconds=5)
#: ... up to this (Alertmanager back after an outage gets everything within five minutes).
BACKOFF_CAP = dt.timedelta(minutes=5)
#: Open conditional alerts are re-sent when last sent longer ago than this.
REFRESH = dt.timedelta(minutes=5)
#: Events read and rows posted per step (a long outage drains in several batches of one flush).
BATCH = 500
STATUSES = ("pending", "delivered")
ACTIONS = ("fire", "resolve")
_CURSOR = "events"

metadata = sa.MetaData()

outbox_table = sa.Table(
    "alert_outbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.Integer, nullable=False),
    sa.Column("action", sa.String(8), nullable=False),
    sa.Column("alertname", sa.String(128), nullable=False),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("dedup_key", sa.String(256), nullable=False),
    sa.Column("conditional", sa.Boolean, nullable=False),
    sa.Column("summary", sa.Text, nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("runbook", sa.String(512), nullable=False),
    #: The alert event's details (what a resolver matches on); the resolver's for resolve rows.
    sa.Column("details", sa.JSON, nullable=False),
    sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("ends_at", sa.DateTime(timezone=True), nullable=True),
    #: Fire rows of a conditional alert: the event that resolved it (NULL while it is open).
    sa.Column("resolved_by", sa.Integer, nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("last_sent_at", sa.DateTime(timezone=True), nullable=True),
    sa.UniqueConstraint("event_id", "action", "dedup_key", name="uq_alert_outbox_event_action_key"),
    sa.Index("ix_alert_outbox_status_next", "status", "next_attempt_at"),
    sa.Index("ix_alert_outbox_open", "dedup_key", "resolved_by"),
    sqlite_autoincrement=True,
)

cursor_table = sa.Table(
    "alert_outbox_cursor",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("last_event_id", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True)
class OutboxRow:
    """One alert notification to send (or sent): what the CLI lists."""

    id: int
    event_id: int
    action: str
    alertname: str
    severity: str
    dedup_key: str
    conditional: bool
    summary: str
    description: str
    runbook: str
    starts_at: dt.datetime
    ends_at: dt.datetime | None
    resolved_by: int | None
    status: str
    attempts: int
    next_attempt_at: dt.datetime
    last_error: str | None
    delivered_at: dt.datetime | None
    last_sent_at: dt.datetime | None

    @property
    def is_open(self) -> bool:
        return self.action == "fire" and self.conditional and self.resolved_by is None

    def alert(self) -> Alert:
        return Alert(
            self.alertname,
            self.severity,
            self.dedup_key,
            self.conditional,
            self.summary,
            self.description,
            self.runbook,
            self.event_id,
        )

    def payload(self, now: dt.datetime, runbook_base_url: str = "") -> dict[str, Any]:
        """The alert as Alertmanager's ``POST /api/v2/alerts`` takes it, as of ``now``."""
        alert = self.alert()
        if self.action == "resolve":
            ends = self.ends_at or now
        else:
            # Counted from the send, not the event: an alert queued through an outage still
            # arrives firing.
            ends = now + (CONDITION_TTL if self.conditional else ONE_SHOT_TTL)
        starts = min(self.starts_at, ends)
        return {
            "labels": alert.labels,
            "annotations": alert.annotations(runbook_base_url),
            "startsAt": starts.isoformat(),
            "endsAt": ends.isoformat(),
        }

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for k, v in out.items():
            if isinstance(v, dt.datetime):
                out[k] = v.isoformat()
        return out


def _row(r: Any) -> OutboxRow:
    return OutboxRow(
        id=r.id,
        event_id=r.event_id,
        action=r.action,
        alertname=r.alertname,
        severity=r.severity,
        dedup_key=r.dedup_key,
        conditional=bool(r.conditional),
        summary=r.summary,
        description=r.description,
        runbook=r.runbook,
        starts_at=as_utc(r.starts_at),
        ends_at=as_utc(r.ends_at),
        resolved_by=r.resolved_by,
        status=r.status,
        attempts=int(r.attempts or 0),
        next_attempt_at=as_utc(r.next_attempt_at),
        last_error=r.last_error,
        delivered_at=as_utc(r.delivered_at),
        last_sent_at=as_utc(r.last_sent_at),
    )


def backoff(attempts: int) -> dt.timedelta:
    """The wait after ``attempts`` failed attempts: 5 s, 10 s, 20 s ... capped at 5 minutes."""
    return min(BACKOFF_BASE * (2 ** max(0, attempts - 1)), BACKOFF_CAP)


@dataclass
class FlushResult:
    """What one flush did (the sensor and the CLI print it)."""

    enqueued: int = 0
    resolved: int = 0
    delivered: int = 0
    refreshed: int = 0
    failed: int = 0
    error: str | None = None
    pending: int = 0
    delivered_rows: list[OutboxRow] = field(default_factory=list)

    def describe(self) -> str:
        text = (
            f"{self.enqueued} alert(s) and {self.resolved} resolution(s) queued, {self.delivered} delivered, "
            f"{self.refreshed} open alert(s) re-sent, {self.pending} pending"
        )
        if self.error:
            text += f"; delivery failed ({self.failed} row(s) retried later): {self.error}"
        return text


class Outbox:
    """The outbox tables on the deployment-state database (see the module docstring)."""

    def __init__(self, state: DeploymentStateStore, *, runbook_base_url: str = ""):
        self.state = state
        self.engine = state.engine
        self.runbook_base_url = runbook_base_url
        metadata.create_all(self.engine, checkfirst=True)
        self._ensure_cursor()

    # -- step 1: events -> rows ---------------------------------------------------------------
    def enqueue(self, *, limit: int = BATCH) -> tuple[int, int]:
        """Queue the alerts and resolutions of events not yet seen; returns (alerts, resolutions)."""
        fired = resolved = 0
        with self.engine.begin() as conn:
            last = self._lock_cursor(conn)
            events = self.state.events_since(last, limit=limit)
            for event in events:
                ops = shape(event)
                alert = alert_for(ops)
                if alert is not None and self._insert(conn, ops, alert, "fire"):
                    fired += 1
                resolver = RESOLVERS.get(ops.kind)
                if resolver is not None:
                    resolved += self._resolve(conn, ops, resolver)
            if events:
                conn.execute(
                    sa.update(cursor_table)
                    .where(cursor_table.c.name == _CURSOR)
                    .values(last_event_id=events[-1].id, updated_at=utcnow())
                )
        return fired, resolved

    def _ensure_cursor(self) -> None:
        # IntegrityError: another process created it between our look and our insert.
        with contextlib.suppress(sa.exc.IntegrityError), self.engine.begin() as conn:
            if conn.execute(sa.select(cursor_table.c.name).where(cursor_table.c.name == _CURSOR)).first() is None:
                conn.execute(sa.insert(cursor_table).values(name=_CURSOR, last_event_id=0, updated_at=utcnow()))

    @staticmethod
    def _lock_cursor(conn: sa.Connection) -> int:
        # The first statement writes, so SQLite takes its write lock and PostgreSQL the row lock
        # now: two flushers queue the same events one after the other, never both.
        conn.execute(sa.update(cursor_table).where(cursor_table.c.name == _CURSOR).values(name=_CURSOR))
        return int(
            conn.execute(sa.select(cursor_table.c.last_event_id).where(cursor_table.c.name == _CURSOR)).scalar_one()
        )

    def _insert(
        self,
        conn: sa.Connection,
        event: OpsEvent,
        alert: Alert,
        action: str,
        *,
        ends_at: dt.datetime | None = None,
        starts_at: dt.datetime | None = None,
        summary: str | None = None,
    ) -> bool:
        exists = conn.execute(
            sa.select(outbox_table.c.id).where(
                outbox_table.c.event_id == event.id,
                outbox_table.c.action == action,
                outbox_table.c.dedup_key == alert.dedup_key,
            )
        ).first()
        if exists:
            return False
        at = as_utc(dt.datetime.fromisoformat(event.at)) if event.at else utcnow()
        conn.execute(
            sa.insert(outbox_table).values(
                event_id=event.id,
                action=action,
                alertname=alert.alertname,
                severity=alert.severity,
                dedup_key=alert.dedup_key,
                conditional=alert.conditional,
                summary=summary or alert.summary,
                description=alert.description,
                runbook=alert.runbook_url,
                details=event.details,
                starts_at=starts_at or at,
                ends_at=ends_at,
                resolved_by=None,
                status="pending",
                attempts=0,
                next_attempt_at=utcnow(),
                last_error=None,
                delivered_at=None,
                last_sent_at=None,
            )
        )
        return True

    def _resolve(self, conn: sa.Connection, event: OpsEvent, resolver: Any) -> int:
        o = outbox_table
        open_rows = [
            _row(r)
            for r in conn.execute(
                sa.select(o)
                .where(
                    o.c.action == "fire",
                    o.c.conditional.is_(True),
                    o.c.resolved_by.is_(None),
                    o.c.alertname.in_(resolver.alertnames),
                    o.c.event_id < event.id,
                )
                .order_by(o.c.id)
            ).all()
        ]
        details = {r.id: conn.execute(sa.select(o.c.details).where(o.c.id == r.id)).scalar_one() for r in open_rows}
        cleared = [r for r in open_rows if resolver.clears(event, details[r.id] or {})]
        by_key: dict[str, OutboxRow] = {}
        for r in cleared:
            by_key[r.dedup_key] = r  # the newest fire row of each condition carries its labels
        at = as_utc(dt.datetime.fromisoformat(event.at)) if event.at else utcnow()
        for r in by_key.values():
            self._insert(
                conn,
                event,
                r.alert(),
                "resolve",
                ends_at=max(at, r.starts_at),
                starts_at=r.starts_at,
                summary=truncate(f"{r.summary} -- resolved: {event.summary}", MESSAGE),
            )
        if cleared:
            conn.execute(sa.update(o).where(o.c.id.in_([r.id for r in cleared])).values(resolved_by=event.id))
        return len(by_key)

    # -- step 2: rows -> Alertmanager --------------------------------------------------------------
    def deliver(
        self, client: AlertmanagerClient, *, force: bool = False, now: dt.datetime | None = None, limit: int = BATCH
    ) -> FlushResult:
        """Post every due pending row (all pending ones with ``force``) and re-send stale open alerts."""
        result = FlushResult()
        now = now or utcnow()
        o = outbox_table
        while True:
            query = sa.select(o).where(o.c.status == "pending")
            if not force:
                query = query.where(o.c.next_attempt_at <= now)
            with self.engine.connect() as conn:
                due = [_row(r) for r in conn.execute(query.order_by(o.c.id).limit(limit)).all()]
            refresh = self._stale_open(now, exclude={r.dedup_key for r in due}) if not result.refreshed else []
            if not due and not refresh:
                break
            # Fires before resolutions: a condition raised and cleared in the same batch ends resolved.
            ordered = [r for r in due if r.action == "fire"] + refresh + [r for r in due if r.action == "resolve"]
            try:
                client.post_alerts([r.payload(now, self.runbook_base_url) for r in ordered])
            except AlertmanagerError as exc:
                self._failed(due, str(exc), now)
                result.failed += len(due)
                result.error = str(exc)
                break
            self._sent(due, refresh, now)
            result.delivered += len(due)
            result.refreshed += len(refresh)
            result.delivered_rows.extend(due)
            if len(due) < limit:
                break
        result.pending = self.pending_count()
        return result

    def _stale_open(self, now: dt.datetime, *, exclude: set[str]) -> list[OutboxRow]:
        o = outbox_table
        with self.engine.connect() as conn:
            rows = [
                _row(r)
                for r in conn.execute(
                    sa.select(o)
                    .where(
                        o.c.action == "fire",
                        o.c.conditional.is_(True),
                        o.c.resolved_by.is_(None),
                        o.c.status == "delivered",
                    )
                    .order_by(o.c.id)
                ).all()
            ]
        newest: dict[str, OutboxRow] = {}
        for r in rows:
            newest[r.dedup_key] = r
        return [
            r
            for k, r in newest.items()
            if k not in exclude and (r.last_sent_at is None or r.last_sent_at <= now - REFRESH)
        ]

    def _sent(self, due: Iterable[OutboxRow], refresh: Iterable[OutboxRow], now: dt.datetime) -> None:
        o = outbox_table
        with self.engine.begin() as conn:
            for r in due:
                conn.execute(
                    sa.update(o)
                    .where(o.c.id == r.id)
                    .values(
                        status="delivered", delivered_at=now, last_sent_at=now, attempts=r.attempts + 1, last_error=None
                    )
                )
            ids = [r.id for r in refresh]
            if ids:
                conn.execute(sa.update(o).where(o.c.id.in_(ids)).values(last_sent_at=now))

    def _failed(self, due: Iterable[OutboxRow], error: str, now: dt.datetime) -> None:
        o = outbox_table
        with self.engine.begin() as conn:
            for r in due:
                conn.execute(
                    sa.update(o)
                    .where(o.c.id == r.id)
                    .values(
                        attempts=r.attempts + 1,
                        next_attempt_at=now + backoff(r.attempts + 1),
                        last_error=truncate(error, MESSAGE),
                    )
                )

    # -- both, and reading ---------------------------------------------------------------------
    def flush(self, client: AlertmanagerClient | None, *, force: bool = False) -> FlushResult:
        """Queue new events' alerts, then deliver them when there is an Alertmanager."""
        fired = resolved = 0
        while True:
            f, r = self.enqueue()
            fired, resolved = fired + f, resolved + r
            if self.state.last_event_id() <= self.cursor():
                break
        result = self.deliver(client, force=force) if client is not None else FlushResult(pending=self.pending_count())
        result.enqueued, result.resolved = fired, resolved
        return result

    def cursor(self) -> int:
        with self.engine.connect() as conn:
            value = conn.execute(sa.select(cursor_table.c.last_event_id).where(cursor_table.c.name == _CURSOR)).scalar()
        return int(value or 0)

    def pending_count(self) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).select_from(outbox_table).where(outbox_table.c.status == "pending")
                ).scalar_one()
            )

    def rows(self, *, status: str | None = None, limit: int = 50) -> list[OutboxRow]:
        """Rows newest first, optionally only ``pending`` or ``delivered`` ones."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"unknown outbox status {status!r}; statuses are {STATUSES}")
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        query = sa.select(outbox_table)
        if status is not None:
            query = query.where(outbox_table.c.status == status)
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(query.order_by(outbox_table.c.id.desc()).limit(limit)).all()]

    def open_alerts(self) -> list[OutboxRow]:
        """Conditional alerts still firing (newest fire row per dedup key)."""
        o = outbox_table
        with self.engine.connect() as conn:
            rows = [
                _row(r)
                for r in conn.execute(
                    sa.select(o)
                    .where(o.c.action == "fire", o.c.conditional.is_(True), o.c.resolved_by.is_(None))
                    .order_by(o.c.id)
                ).all()
            ]
        return list({r.dedup_key: r for r in rows}.values())


__all__ = [
    "BACKOFF_BASE",
    "BACKOFF_CAP",
    "FlushResult",
    "Outbox",
    "OutboxRow",
    "REFRESH",
    "backoff",
    "cursor_table",
    "outbox_table",
]
