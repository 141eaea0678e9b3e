"""Deployment state: the serving slots, the routing table, the deployment history and the event log.

One store, shared by the Dagster deployment assets, the rollout controller, the deployers, the
paper-trading client, the sensors and the ``autotrader`` CLI: SQLite by default (WAL, so
several processes share the file), PostgreSQL in production. SQLAlchemy Core only, tables in
their own :data:`metadata` and created if absent.

Routing maps an instrument to a slot. The row ``"*"`` (:data:`DEFAULT_ROUTE`) is the route of
every instrument without a row of its own, so a percentage stage is "some instruments on green,
``*`` on blue" and a full switch is one ``switch_all``. Every multi-row change runs in one
transaction: a reader sees the table before or after, never half of it.

Other modules may keep their own tables in the same database (the circuit breaker does), using
:attr:`DeploymentStateStore.engine` with a ``MetaData`` of their own.
"""

from __future__ import annotations

import datetime as dt
import json
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

from deploy_ops.db import as_utc, json_default, make_engine, utcnow
from deploy_ops.slots.names import SLOTS

SLOT_STATUSES: tuple[str, ...] = ("starting", "ready", "stopped", "failed")
SEVERITIES: tuple[str, ...] = ("info", "warning", "critical")
DEPLOYMENT_STATUSES: tuple[str, ...] = ("running", "succeeded", "failed", "rolled_back")
TERMINAL_DEPLOYMENT_STATUSES: tuple[str, ...] = ("succeeded", "failed", "rolled_back")
DEFAULT_ROUTE = "*"

# Any fixed 64-bit number works: it only has to be the same in every writer of the event log.
_EVENT_LOCK_KEY = 0x61757472_65766E74

metadata = sa.MetaData()


def _in(column: str, values: Iterable[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


slots_table = sa.Table(
    "slots",
    metadata,
    sa.Column("slot", sa.String(16), primary_key=True),
    sa.Column("version", sa.String(128), nullable=True),
    sa.Column("url", sa.String(512), nullable=True),
    sa.Column("host", sa.String(255), nullable=True),
    sa.Column("port", sa.Integer, nullable=True),
    sa.Column("pid", sa.Integer, nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint(_in("slot", SLOTS), name="ck_slots_slot"),
    sa.CheckConstraint(_in("status", SLOT_STATUSES), name="ck_slots_status"),
)

routing_table = sa.Table(
    "routing",
    metadata,
    sa.Column("instrument", sa.String(64), primary_key=True),
    sa.Column("slot", sa.String(16), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint(_in("slot", SLOTS), name="ck_routing_slot"),
)

events_table = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("details", sa.JSON, nullable=False),
    sa.CheckConstraint(_in("severity", SEVERITIES), name="ck_events_severity"),
    sa.Index("ix_events_kind_id", "kind", "id"),
    # Without AUTOINCREMENT SQLite may hand out an id again; readers page with "id > last seen".
    sqlite_autoincrement=True,
)

deployments_table = sa.Table(
    "deployments",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("version", sa.String(128), nullable=False),
    sa.Column("slot", sa.String(16), nullable=True),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("stage", sa.String(64), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("reason", sa.Text, nullable=True),
    sa.CheckConstraint(_in("status", DEPLOYMENT_STATUSES), name="ck_deployments_status"),
    # At most one rollout at a time, enforced by the database itself so two processes racing to
    # start one cannot both win.
    sa.Index(
        "uq_deployments_one_running",
        "status",
        unique=True,
        sqlite_where=sa.text("status = 'running'"),
        postgresql_where=sa.text("status = 'running'"),
    ),
    sqlite_autoincrement=True,
)


class StateError(ValueError):
    """Invalid input to the state store (unknown slot, status, severity ...)."""


class RoutingError(LookupError):
    """An instrument has no route: neither a row of its own nor the default ``*`` row."""


class DeploymentInProgressError(RuntimeError):
    """A deployment is already running; finish or fail it before starting another."""


class DeploymentNotFoundError(LookupError):
    """No deployment with that id."""


def _check_slot(slot: str) -> str:
    if slot not in SLOTS:
        raise StateError(f"unknown slot {slot!r}; slots are {SLOTS}")
    return slot


def _check_instrument(instrument: Any) -> str:
    if not isinstance(instrument, str) or not instrument.strip() or len(instrument) > 64:
        raise StateError(f"instrument must be a non-empty string of at most 64 characters, got {instrument!r}")
    return instrument


@dataclass(frozen=True)
class SlotRecord:
    """One serving slot as recorded: what runs there, where, and in which state."""

    slot: str
    status: str
    version: str | None = None
    url: str | None = None
    host: str | None = None
    port: int | None = None
    pid: int | None = None
    updated_at: dt.datetime | None = None

    @property
    def is_ready(self) -> bool:
        return self.status == "ready"


@dataclass(frozen=True)
class Event:
    """One entry of the event log."""

    id: int
    at: dt.datetime
    kind: str
    severity: str
    message: str
    details: dict[str, Any]


@dataclass(frozen=True)
class Deployment:
    """One rollout of a model version, from start to its terminal status."""

    id: int
    version: str
    slot: str | None
    started_at: dt.datetime
    status: str
    stage: str
    finished_at: dt.datetime | None
    reason: str | None

    @property
    def is_running(self) -> bool:
        return self.status == "running"


def _slot_from_row(row: Any) -> SlotRecord:
    return SlotRecord(
        slot=row.slot,
        status=row.status,
        version=row.version,
        url=row.url,
        host=row.host,
        port=row.port,
        pid=row.pid,
        updated_at=as_utc(row.updated_at),
    )


def _event_from_row(row: Any) -> Event:
    return Event(
        id=row.id,
        at=as_utc(row.at),
        kind=row.kind,
        severity=row.severity,
        message=row.message,
        details=dict(row.details or {}),
    )


def _deployment_from_row(row: Any) -> Deployment:
    return Deployment(
        id=row.id,
        version=row.version,
        slot=row.slot,
        started_at=as_utc(row.started_at),
        status=row.status,
        stage=row.stage,
        finished_at=as_utc(row.finished_at),
        reason=row.reason,
    )


class DeploymentStateStore:
    """Slots, routing, deployments and events in one SQL database (see the module docstring)."""

    def __init__(self, url: str):
        self.url = url
        self.engine: sa.Engine = make_engine(url)
        metadata.create_all(self.engine, checkfirst=True)

    def __repr__(self) -> str:
        return f"DeploymentStateStore({self.engine.url.render_as_string(hide_password=True)!r})"

    @contextmanager
    def transaction(self) -> Iterator[sa.Connection]:
        """A connection inside one transaction, for callers combining several writes atomically."""
        with self.engine.begin() as conn:
            yield conn

    # -- generic upsert ------------------------------------------------------------------------
    def _upsert(self, conn: sa.Connection, table: sa.Table, values: Mapping[str, Any], key: str) -> None:
        dialect = conn.dialect.name
        if dialect == "postgresql":
            stmt = pg_dialect.insert(table).values(**values)
        elif dialect == "sqlite":
            stmt = sqlite_dialect.insert(table).values(**values)
        else:
            raise StateError(f"unsupported database dialect {dialect!r}; use sqlite or postgresql")
        update = {k: stmt.excluded[k] for k in values if k != key}
        conn.execute(stmt.on_conflict_do_update(index_elements=[key], set_=update))

    # -- slots ---------------------------------------------------------------------------------
    def set_slot(
        self,
        slot: str,
        *,
        status: str,
        version: str | None = None,
        url: str | None = None,
        host: str | None = None,
        port: int | None = None,
        pid: int | None = None,
    ) -> SlotRecord:
        """Record everything about a slot at once (fields not given are cleared)."""
        _check_slot(slot)
        if status not in SLOT_STATUSES:
            raise StateError(f"unknown slot status {status!r}; statuses are {SLOT_STATUSES}")
        values = dict(
            slot=slot, status=status, version=version, url=url, host=host, port=port, pid=pid, updated_at=utcnow()
        )
        with self.engine.begin() as conn:
            self._upsert(conn, slots_table, values, "slot")
        return SlotRecord(**values)

    def set_slot_status(self, slot: str, status: str) -> SlotRecord:
        """Change only a slot's status; the slot must have been recorded before."""
        _check_slot(slot)
        if status not in SLOT_STATUSES:
            raise StateError(f"unknown slot status {status!r}; statuses are {SLOT_STATUSES}")
        with self.engine.begin() as conn:
            result = conn.execute(
                sa.update(slots_table).where(slots_table.c.slot == slot).values(status=status, updated_at=utcnow())
            )
            if result.rowcount == 0:
                raise StateError(f"slot {slot!r} has never been recorded")
            row = conn.execute(sa.select(slots_table).where(slots_table.c.slot == slot)).one()
        return _slot_from_row(row)

    def get_slot(self, slot: str) -> SlotRecord | None:
        """The recorded state of one slot, or None if nothing was ever deployed there."""
        _check_slot(slot)
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(slots_table).where(slots_table.c.slot == slot)).one_or_none()
        return _slot_from_row(row) if row is not None else None

    def slots(self) -> dict[str, SlotRecord]:
        """Every recorded slot by name."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(slots_table).order_by(slots_table.c.slot)).all()
        return {row.slot: _slot_from_row(row) for row in rows}

    # -- routing -------------------------------------------------------------------------------
    def route(self, instrument: str) -> str:
        """The slot serving ``instrument``: its own row, else the ``*`` row; RoutingError if neither."""
        _check_instrument(instrument)
        with self.engine.connect() as conn:
            rows = dict(
                conn.execute(
                    sa.select(routing_table.c.instrument, routing_table.c.slot).where(
                        routing_table.c.instrument.in_([instrument, DEFAULT_ROUTE])
                    )
                ).all()
            )
        slot = rows.get(instrument) or rows.get(DEFAULT_ROUTE)
        if slot is None:
            raise RoutingError(f"no route for {instrument!r} and no default ('*') route")
        return slot

    def routing_table(self) -> dict[str, str]:
        """The whole routing table, instrument (or ``*``) -> slot."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(routing_table.c.instrument, routing_table.c.slot).order_by(routing_table.c.instrument)
            ).all()
        return {instrument: slot for instrument, slot in rows}

    def set_routes(self, mapping: Mapping[str, str], *, replace: bool = False) -> dict[str, str]:
        """Set several routes in one transaction and return the resulting table.

        ``replace=True`` makes the table exactly ``mapping``; otherwise rows not named are kept.
        Everything is validated before anything is written, so bad input changes nothing."""
        items = [(_check_instrument(i), _check_slot(s)) for i, s in dict(mapping).items()]
        if replace and not items:
            raise StateError("refusing to replace the routing table with an empty mapping")
        now = utcnow()
        with self.engine.begin() as conn:
            if replace:
                conn.execute(sa.delete(routing_table))
            for instrument, slot in items:
                self._upsert(conn, routing_table, dict(instrument=instrument, slot=slot, updated_at=now), "instrument")
            rows = conn.execute(sa.select(routing_table.c.instrument, routing_table.c.slot)).all()
        return dict(sorted((i, s) for i, s in rows))

    def switch_all(self, to_slot: str) -> dict[str, str]:
        """Send every instrument to ``to_slot`` at once (rows kept, default route included)."""
        _check_slot(to_slot)
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(sa.update(routing_table).values(slot=to_slot, updated_at=now))
            self._upsert(
                conn, routing_table, dict(instrument=DEFAULT_ROUTE, slot=to_slot, updated_at=now), "instrument"
            )
            rows = conn.execute(sa.select(routing_table.c.instrument, routing_table.c.slot)).all()
        return dict(sorted((i, s) for i, s in rows))

    def instruments_on(self, slot: str, instruments: Iterable[str]) -> list[str]:
        """Which of ``instruments`` the table currently sends to ``slot`` (default route applied)."""
        _check_slot(slot)
        table = self.routing_table()
        default = table.get(DEFAULT_ROUTE)
        return [i for i in instruments if table.get(i, default) == slot]

    # -- events --------------------------------------------------------------------------------
    def record_event(
        self, kind: str, message: str, *, severity: str = "info", details: Mapping[str, Any] | None = None
    ) -> Event:
        """Append one event to the log and return it with its id."""
        if not isinstance(kind, str) or not kind.strip() or len(kind) > 64:
            raise StateError(f"event kind must be a non-empty string of at most 64 characters, got {kind!r}")
        if severity not in SEVERITIES:
            raise StateError(f"unknown severity {severity!r}; severities are {SEVERITIES}")
        if not isinstance(message, str) or not message:
            raise StateError("event message must be a non-empty string")
        details = dict(details or {})
        try:
            # Round-trip so what is stored is exactly what readers get back, and NaN (not JSON) fails here.
            details = json.loads(json.dumps(details, allow_nan=False, default=json_default))
        except (TypeError, ValueError) as exc:
            raise StateError(f"event details must be JSON-serialisable: {exc}") from exc
        at = utcnow()
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Serialise writers until commit, so ids become visible in increasing order and a
                # reader paging with events_since(last_id) never skips a slower transaction's id.
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_EVENT_LOCK_KEY)))
            result = conn.execute(
                sa.insert(events_table).values(at=at, kind=kind, severity=severity, message=message, details=details)
            )
            event_id = int(result.inserted_primary_key[0])
        return Event(id=event_id, at=at, kind=kind, severity=severity, message=message, details=details)

    def events_since(
        self,
        after_id: int = 0,
        *,
        kinds: Iterable[str] | None = None,
        min_severity: str | None = None,
        limit: int = 1000,
    ) -> list[Event]:
        """Events with an id greater than ``after_id``, oldest first (a sensor's cursor is the last id)."""
        if limit < 1:
            raise StateError(f"limit must be >= 1, got {limit}")
        query = sa.select(events_table).where(events_table.c.id > int(after_id))
        if kinds is not None:
            query = query.where(events_table.c.kind.in_(list(kinds)))
        if min_severity is not None:
            if min_severity not in SEVERITIES:
                raise StateError(f"unknown severity {min_severity!r}; severities are {SEVERITIES}")
            query = query.where(events_table.c.severity.in_(SEVERITIES[SEVERITIES.index(min_severity) :]))
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(events_table.c.id).limit(limit)).all()
        return [_event_from_row(row) for row in rows]

    def last_event_id(self) -> int:
        """The id of the newest event, 0 when the log is empty (a fresh sensor cursor)."""
        with self.engine.connect() as conn:
            value = conn.execute(sa.select(sa.func.max(events_table.c.id))).scalar()
        return int(value or 0)

    # -- deployments ---------------------------------------------------------------------------
    def start_deployment(
        self, version: str, *, slot: str | None = None, stage: str = "pending", reason: str | None = None
    ) -> Deployment:
        """Open a deployment in status ``running``; DeploymentInProgressError if one already runs."""
        if not version:
            raise StateError("deployment version must not be empty")
        if slot is not None:
            _check_slot(slot)
        now = utcnow()
        try:
            with self.engine.begin() as conn:
                result = conn.execute(
                    sa.insert(deployments_table).values(
                        version=version, slot=slot, started_at=now, status="running", stage=stage, reason=reason
                    )
                )
                deployment_id = int(result.inserted_primary_key[0])
        except sa.exc.IntegrityError as exc:
            running = self.active_deployment()
            detail = (
                f" (deployment {running.id} of version {running.version}, stage {running.stage})" if running else ""
            )
            raise DeploymentInProgressError(f"a deployment is already running{detail}") from exc
        return Deployment(deployment_id, version, slot, now, "running", stage, None, reason)

    def update_deployment(
        self, deployment_id: int, *, stage: str | None = None, reason: str | None = None
    ) -> Deployment:
        """Move a running deployment to another stage and/or note why."""
        values: dict[str, Any] = {}
        if stage is not None:
            values["stage"] = stage
        if reason is not None:
            values["reason"] = reason
        if not values:
            raise StateError("nothing to update: give stage and/or reason")
        with self.engine.begin() as conn:
            current = self._get_deployment(conn, deployment_id, for_update=True)
            if not current.is_running:
                raise StateError(f"deployment {deployment_id} already finished with status {current.status!r}")
            conn.execute(sa.update(deployments_table).where(deployments_table.c.id == deployment_id).values(**values))
            return self._get_deployment(conn, deployment_id)

    def finish_deployment(self, deployment_id: int, status: str, *, reason: str | None = None) -> Deployment:
        """Close a running deployment with a terminal status (succeeded, failed, rolled_back)."""
        if status not in TERMINAL_DEPLOYMENT_STATUSES:
            raise StateError(f"terminal status must be one of {TERMINAL_DEPLOYMENT_STATUSES}, got {status!r}")
        with self.engine.begin() as conn:
            current = self._get_deployment(conn, deployment_id, for_update=True)
            if not current.is_running:
                raise StateError(f"deployment {deployment_id} already finished with status {current.status!r}")
            values: dict[str, Any] = {"status": status, "finished_at": utcnow()}
            if reason is not None:
                values["reason"] = reason
            conn.execute(sa.update(deployments_table).where(deployments_table.c.id == deployment_id).values(**values))
            return self._get_deployment(conn, deployment_id)

    def get_deployment(self, deployment_id: int) -> Deployment:
        """One deployment by id; DeploymentNotFoundError if there is none."""
        with self.engine.connect() as conn:
            return self._get_deployment(conn, deployment_id)

    def active_deployment(self) -> Deployment | None:
        """The running deployment, if any."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(deployments_table).where(deployments_table.c.status == "running")
            ).one_or_none()
        return _deployment_from_row(row) if row is not None else None

    def deployments(self, limit: int = 20) -> list[Deployment]:
        """The most recent deployments, newest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(deployments_table).order_by(deployments_table.c.id.desc()).limit(limit)).all()
        return [_deployment_from_row(row) for row in rows]

    @staticmethod
    def _get_deployment(conn: sa.Connection, deployment_id: int, for_update: bool = False) -> Deployment:
        query = sa.select(deployments_table).where(deployments_table.c.id == int(deployment_id))
        if for_update:
            # PostgreSQL: lock the row so a concurrent finish cannot slip between check and write.
            query = query.with_for_update()
        row = conn.execute(query).one_or_none()
        if row is None:
            raise DeploymentNotFoundError(f"no deployment with id {deployment_id}")
        return _deployment_from_row(row)
