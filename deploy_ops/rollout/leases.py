"""Rollout leases: who runs a deployment and their heartbeat, so an interrupted rollout or
rollback can be recognised and recovered.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
from dataclasses import dataclass

import sqlalchemy as sa

from deploy_ops.db import as_utc, utcnow
from deploy_ops.procs import pid_running
from deploy_ops.state import DeploymentStateStore

logger = logging.getLogger(__name__)


_lease_metadata = sa.MetaData()


leases_table = sa.Table(
    "rollout_leases",
    _lease_metadata,
    sa.Column("deployment_id", sa.Integer, primary_key=True),
    sa.Column("owner_host", sa.String(255), nullable=False),
    sa.Column("owner_pid", sa.Integer, nullable=False),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column("version", sa.String(128), nullable=False),
    sa.Column("live_slot", sa.String(16), nullable=True),
    sa.Column("candidate_slot", sa.String(16), nullable=False),
    sa.Column("previous_version", sa.String(128), nullable=True),
)


@dataclass(frozen=True)
class Lease:
    """Who runs a deployment, their last heartbeat, and the slots it involves."""

    deployment_id: int
    owner_host: str
    owner_pid: int
    heartbeat_at: dt.datetime
    mode: str
    version: str
    live_slot: str | None
    candidate_slot: str
    previous_version: str | None

    @property
    def owner(self) -> str:
        return f"{self.owner_host}:{self.owner_pid}"


class LeaseStore:
    """Rollout leases in the state store's database (a table of their own)."""

    def __init__(self, state: DeploymentStateStore):
        self.engine = state.engine
        _lease_metadata.create_all(self.engine, checkfirst=True)

    def create(
        self,
        deployment_id: int,
        *,
        mode: str,
        version: str,
        live_slot: str | None,
        candidate_slot: str,
        previous_version: str | None,
    ) -> Lease:
        values = dict(
            deployment_id=deployment_id,
            owner_host=socket.gethostname(),
            owner_pid=os.getpid(),
            heartbeat_at=utcnow(),
            mode=mode,
            version=version,
            live_slot=live_slot,
            candidate_slot=candidate_slot,
            previous_version=previous_version,
        )
        with self.engine.begin() as conn:
            conn.execute(sa.insert(leases_table).values(**values))
        return Lease(**values)

    def heartbeat(self, deployment_id: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(leases_table)
                .where(leases_table.c.deployment_id == deployment_id)
                .values(heartbeat_at=utcnow())
            )

    def get(self, deployment_id: int) -> Lease | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(leases_table).where(leases_table.c.deployment_id == deployment_id)
            ).one_or_none()
        if row is None:
            return None
        at = as_utc(row.heartbeat_at)
        return Lease(
            row.deployment_id,
            row.owner_host,
            row.owner_pid,
            at,
            row.mode,
            row.version,
            row.live_slot,
            row.candidate_slot,
            row.previous_version,
        )


def lease_is_alive(lease: Lease | None, started_at: dt.datetime, timeout: float) -> bool:
    """Whether a running deployment's owner is still there to finish it."""
    return owner_liveness(lease, started_at, timeout)[0]


def owner_liveness(lease: Lease | None, started_at: dt.datetime, timeout: float) -> tuple[bool, str]:
    """(alive, why) for a running deployment's owner: what ``deploy status`` shows and what the
    recovery decides on. Dead: its process is gone (same host), or no heartbeat for ``timeout``."""
    now = utcnow()
    if lease is None:
        # The row is written a moment before its lease; give a live starter that moment.
        age = (now - started_at).total_seconds()
        return (age < 5.0, "starting (no lease yet)" if age < 5.0 else f"no lease {age:.0f} s after it started")
    silent = (now - lease.heartbeat_at).total_seconds()
    if silent > timeout:
        return False, f"no heartbeat for {silent:.0f} s (limit {timeout:.0f} s)"
    if lease.owner_host == socket.gethostname():
        if not pid_running(lease.owner_pid):
            return False, f"process {lease.owner_pid} is gone (last heartbeat {silent:.0f} s ago)"
        return True, f"process {lease.owner_pid} alive, heartbeat {silent:.0f} s ago"
    return True, f"heartbeat {silent:.0f} s ago (another host)"


class Heartbeat:
    """Keeps a lease fresh from a background thread and notices preemption."""

    def __init__(self, leases: LeaseStore, state: DeploymentStateStore, deployment_id: int, interval: float):
        self.leases, self.state, self.deployment_id, self.interval = leases, state, deployment_id, interval
        self.preempted: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rollout-heartbeat-{deployment_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.leases.heartbeat(self.deployment_id)
                current = self.state.get_deployment(self.deployment_id)
                if not current.is_running:
                    self.preempted = f"deployment {self.deployment_id} was closed as {current.status}: {current.reason}"
            except Exception as exc:  # one missed beat is harmless; a lease left stale this long is logged
                logger.warning("rollout %s: heartbeat failed: %s: %s", self.deployment_id, type(exc).__name__, exc)
