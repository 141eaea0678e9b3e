"""The model registry: versions, stages, lineage and a full audit trail, on SQLite or PostgreSQL.

Each registered model gets the next integer version. Its artifact goes to a content-addressed
store (``deploy_ops.models.artifacts``) and the row records the artifact URI and sha256, which is
checked again on every load.

Stages and their legal transitions (``TRANSITIONS``)::

    candidate  -> staging | archived | failed
    staging    -> production | archived | failed
    production -> archived | failed          (only as the side effect of another version
                                             taking production; see below)
    archived   -> staging | production | failed   (production = rollback)
    failed     -> (nothing: terminal, a failed model is never served again)

Rules on top of the table:

* Exactly one version holds ``production``. Promoting or rolling back to a version moves the
  previous production version to ``archived`` in the same transaction; a partial unique index
  makes a second production row impossible even for a writer that bypasses this class.
* Production is never left empty: a production version cannot be promoted to ``archived`` or
  marked failed directly. To pull a bad production model, ``rollback(to_version,
  mark_failed=True)`` replaces it and marks it ``failed`` atomically (``last_known_good()``
  names the usual target).
* Every mutation (register, promote, rollback, mark_failed) writes one audit row and one
  stage-history row per stage change, in the same transaction as the change itself.

Writers are serialised (``BEGIN IMMEDIATE`` on SQLite, a transaction-scoped advisory lock on
PostgreSQL) so two concurrent promotes cannot both read the same "before" state and both win.

No Dagster imports here: the CLI and the Dagster assets share this module.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import numbers
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Mapping

import sqlalchemy as sa

from deploy_ops.db import as_utc, json_default, make_engine, utcnow
from deploy_ops.models.artifacts import ArtifactStore, open_artifact_store
from deploy_ops.models.bundle import ModelBundle
from deploy_ops.text import optional_text, required_text

CANDIDATE = "candidate"
STAGING = "staging"
PRODUCTION = "production"
ARCHIVED = "archived"
FAILED = "failed"

STAGES: tuple[str, ...] = (CANDIDATE, STAGING, PRODUCTION, ARCHIVED, FAILED)

#: Legal stage transitions: from-stage -> the stages it may move to.
TRANSITIONS: dict[str, frozenset[str]] = {
    CANDIDATE: frozenset({STAGING, ARCHIVED, FAILED}),
    STAGING: frozenset({PRODUCTION, ARCHIVED, FAILED}),
    PRODUCTION: frozenset({ARCHIVED, FAILED}),
    ARCHIVED: frozenset({STAGING, PRODUCTION, FAILED}),
    FAILED: frozenset(),
}

#: Stages a new version may be registered in (production is only reached through promotion).
REGISTER_STAGES: tuple[str, ...] = (CANDIDATE, STAGING)

# Arbitrary constant key for pg_advisory_xact_lock; only registry writers take it.
_PG_LOCK_KEY = 0x6175746F7472  # "autotr"

metadata = sa.MetaData()

model_versions = sa.Table(
    "registry_model_versions",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("stage", sa.String(20), nullable=False),
    sa.Column("metrics", sa.Text, nullable=False),
    sa.Column("params", sa.Text, nullable=False),
    sa.Column("lineage", sa.Text, nullable=False),
    sa.Column("artifact_uri", sa.Text, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("description", sa.Text, nullable=False, default=""),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("stage in ({})".format(", ".join(f"'{s}'" for s in STAGES)), name="ck_registry_stage"),
    # AUTOINCREMENT keeps SQLite from ever reusing a version number.
    sqlite_autoincrement=True,
)

# At most one production row, enforced by the database itself.
sa.Index(
    "uq_registry_one_production",
    model_versions.c.stage,
    unique=True,
    sqlite_where=model_versions.c.stage == PRODUCTION,
    postgresql_where=model_versions.c.stage == PRODUCTION,
)

audit_log = sa.Table(
    "registry_audit",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("action", sa.String(40), nullable=False),
    sa.Column("version", sa.Integer, sa.ForeignKey("registry_model_versions.version"), nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("details", sa.Text, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sqlite_autoincrement=True,
)

stage_history = sa.Table(
    "registry_stage_history",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("audit_id", sa.Integer, sa.ForeignKey("registry_audit.id"), nullable=False),
    sa.Column("version", sa.Integer, sa.ForeignKey("registry_model_versions.version"), nullable=False),
    sa.Column("from_stage", sa.String(20), nullable=True),
    sa.Column("to_stage", sa.String(20), nullable=False),
    sa.Column("action", sa.String(40), nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sqlite_autoincrement=True,
)
sa.Index("ix_registry_stage_history_version", stage_history.c.version)


class RegistryError(RuntimeError):
    """Base class of registry domain errors (the CLI maps these to exit code 1)."""


class UnknownVersionError(RegistryError, LookupError):
    """No model version with that number exists."""


class IllegalTransitionError(RegistryError):
    """The requested stage change is not allowed from the version's current stage."""


class _Record:
    """``to_dict``: a JSON-ready form of a dataclass record, datetimes as ISO-8601 strings."""

    def to_dict(self) -> dict[str, Any]:
        return {k: v.isoformat() if isinstance(v, dt.datetime) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class ModelVersion(_Record):
    """One registered model version as stored in the registry."""

    version: int
    name: str
    stage: str
    metrics: dict[str, Any]
    params: dict[str, Any]
    lineage: dict[str, Any]
    artifact_uri: str
    sha256: str
    created_at: dt.datetime
    description: str = ""


@dataclass(frozen=True)
class StageChange(_Record):
    """One row of the stage history: ``version`` moved ``from_stage -> to_stage``."""

    id: int
    version: int
    from_stage: str | None
    to_stage: str
    action: str
    actor: str
    reason: str
    at: dt.datetime


@dataclass(frozen=True)
class AuditEntry(_Record):
    """One registry mutation: who did what to which version, why, and the details."""

    id: int
    action: str
    version: int
    actor: str
    reason: str
    details: dict[str, Any]
    at: dt.datetime


@dataclass(frozen=True)
class ProductionPeriod(_Record):
    """A span during which one version held production; ``until`` is None while it still does."""

    version: int
    since: dt.datetime
    until: dt.datetime | None
    action: str
    actor: str
    reason: str
    ended_by_action: str | None = None
    ended_by_actor: str | None = None
    ended_reason: str | None = None
    ended_to_stage: str | None = None


@dataclass
class _Mutation:
    """Stage changes and the audit row of one write transaction."""

    action: str
    version: int
    actor: str
    reason: str
    details: dict[str, Any] = field(default_factory=dict)
    changes: list[tuple[int, str | None, str]] = field(default_factory=list)


class ModelRegistry:
    """Model versions and their stages, backed by a SQL database and an artifact store."""

    def __init__(self, engine: sa.Engine, artifacts: ArtifactStore):
        backend = engine.dialect.name
        if backend not in ("sqlite", "postgresql"):
            raise ValueError(f"model registry supports sqlite and postgresql, not {backend!r}")
        self.engine = engine
        self.artifacts = artifacts
        self._backend = backend
        metadata.create_all(engine, checkfirst=True)

    def __repr__(self) -> str:
        return f"ModelRegistry({self.engine.url.render_as_string(hide_password=True)!r}, {self.artifacts!r})"

    # -- writes -------------------------------------------------------------------------------
    def register(
        self,
        bundle: ModelBundle,
        *,
        metrics: Mapping[str, Any],
        params: Mapping[str, Any],
        lineage: Mapping[str, Any],
        stage: str = STAGING,
        actor: str,
        reason: str = "",
        description: str = "",
        name: str | None = None,
    ) -> ModelVersion:
        """Store the bundle's artifact and record it as the next version in ``stage``.

        ``lineage`` is free-form JSON (training partitions, dbt manifest / feature model
        checksums, code version...). ``name`` defaults to the bundle's model class. Input is
        validated before anything is written.
        """
        if not isinstance(bundle, ModelBundle):
            raise TypeError(f"register needs a ModelBundle, got {type(bundle).__name__}")
        if stage not in REGISTER_STAGES:
            raise ValueError(
                f"new versions are registered as {' or '.join(REGISTER_STAGES)}, not {stage!r}; "
                "production is reached by promotion"
            )
        actor = required_text("actor", actor)
        reason = optional_text("reason", reason)
        description = optional_text("description", description)
        name = required_text("name", name if name is not None else bundle.model_class)
        metrics_json = _to_json(metrics, "metrics")
        params_json = _to_json(params, "params")
        lineage_json = _to_json(lineage, "lineage")

        # The artifact is written before the row: if the insert fails, an unreferenced
        # content-addressed file is harmless, whereas a row without its artifact is not.
        uri, sha = self.artifacts.put(bundle.to_bytes())
        now = utcnow()
        with self._write() as conn:
            version = conn.execute(
                model_versions.insert()
                .values(
                    name=name,
                    stage=stage,
                    metrics=metrics_json,
                    params=params_json,
                    lineage=lineage_json,
                    artifact_uri=uri,
                    sha256=sha,
                    description=description,
                    created_at=now,
                )
                .returning(model_versions.c.version)
            ).scalar_one()
            mutation = _Mutation(
                "register",
                version,
                actor,
                reason,
                details={"stage": stage, "artifact_uri": uri, "sha256": sha, "name": name},
            )
            mutation.changes.append((version, None, stage))
            self._record(conn, mutation, now)
        return self.get(version)

    def promote(self, version: int, to: str = PRODUCTION, *, actor: str, reason: str = "") -> ModelVersion:
        """Move ``version`` to stage ``to`` (default production) if the transition table allows it.

        Promoting to production archives the current production version in the same
        transaction. Use ``mark_failed`` to fail a version and ``rollback`` to return production
        to an earlier version with an explicit reason.
        """
        if to not in STAGES:
            raise ValueError(f"unknown stage {to!r}; stages are {', '.join(STAGES)}")
        if to == FAILED:
            raise IllegalTransitionError("use mark_failed to move a version to failed")
        actor = required_text("actor", actor)
        reason = optional_text("reason", reason)
        with self._write() as conn:
            current = self._stage_of(conn, version)
            _check_transition(version, current, to)
            if current == PRODUCTION:
                raise IllegalTransitionError(
                    f"version {version} holds production; it leaves production only when another "
                    "version is promoted or rolled back to"
                )
            mutation = _Mutation("promote", version, actor, reason, details={"from_stage": current, "to_stage": to})
            if to == PRODUCTION:
                previous = self._production_version(conn)
                if previous is not None:
                    mutation.changes.append((previous, PRODUCTION, ARCHIVED))
                    mutation.details["replaced_production"] = previous
            mutation.changes.append((version, current, to))
            self._apply(conn, mutation)
        return self.get(version)

    def rollback(self, to_version: int, *, actor: str, reason: str, mark_failed: bool = False) -> ModelVersion:
        """Return production to ``to_version`` (an archived or staging version).

        The current production version becomes ``archived``, or ``failed`` with
        ``mark_failed=True`` (the only way to fail the version that is serving). Refuses failed
        and candidate versions, and refuses when nothing is in production (use ``promote``).
        """
        actor = required_text("actor", actor)
        reason = required_text("reason", reason)
        with self._write() as conn:
            target = self._stage_of(conn, to_version)
            current = self._production_version(conn)
            if current is None:
                raise IllegalTransitionError(
                    "no version is in production, so there is nothing to roll back; use promote"
                )
            if current == to_version:
                raise IllegalTransitionError(f"version {to_version} already holds production")
            if target == FAILED:
                raise IllegalTransitionError(f"refusing to roll back to version {to_version}: it is marked failed")
            if target not in (ARCHIVED, STAGING):
                raise IllegalTransitionError(
                    f"cannot roll back to version {to_version} in stage {target}; "
                    "rollback targets must be archived or staging"
                )
            outgoing = FAILED if mark_failed else ARCHIVED
            mutation = _Mutation(
                "rollback",
                to_version,
                actor,
                reason,
                details={"from_version": current, "from_version_to_stage": outgoing, "to_version_from_stage": target},
            )
            mutation.changes.append((current, PRODUCTION, outgoing))
            mutation.changes.append((to_version, target, PRODUCTION))
            self._apply(conn, mutation)
        return self.get(to_version)

    def mark_failed(self, version: int, *, actor: str, reason: str) -> ModelVersion:
        """Mark a candidate, staging or archived version as failed (terminal).

        The production version is refused: fail it with ``rollback(..., mark_failed=True)`` so
        production is replaced in the same transaction.
        """
        actor = required_text("actor", actor)
        reason = required_text("reason", reason)
        with self._write() as conn:
            current = self._stage_of(conn, version)
            if current == PRODUCTION:
                fallback = self._last_known_good(conn, exclude=version)
                hint = f" (last known good: version {fallback})" if fallback is not None else ""
                raise IllegalTransitionError(
                    f"version {version} is in production; fail it through rollback --to <version> --mark-failed{hint}"
                )
            _check_transition(version, current, FAILED)
            mutation = _Mutation("mark_failed", version, actor, reason, details={"from_stage": current})
            mutation.changes.append((version, current, FAILED))
            self._apply(conn, mutation)
        return self.get(version)

    # -- reads --------------------------------------------------------------------------------
    def get(self, version: int) -> ModelVersion:
        """The version with this number; ``UnknownVersionError`` if there is none."""
        version = _version_number(version)
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(model_versions).where(model_versions.c.version == version)).first()
        if row is None:
            raise UnknownVersionError(f"unknown model version {version}")
        return _row_to_version(row)

    def list_versions(self, stage: str | None = None) -> list[ModelVersion]:
        """All versions, oldest first, optionally only those in ``stage``."""
        query = sa.select(model_versions).order_by(model_versions.c.version)
        if stage is not None:
            _check_stage(stage)
            query = query.where(model_versions.c.stage == stage)
        with self.engine.connect() as conn:
            return [_row_to_version(r) for r in conn.execute(query)]

    def get_production(self) -> ModelVersion | None:
        """The version serving production, or None before the first promotion."""
        return self.get_by_stage(PRODUCTION)

    def get_by_stage(self, stage: str) -> ModelVersion | None:
        """The newest version currently in ``stage``, or None."""
        _check_stage(stage)
        query = (
            sa.select(model_versions)
            .where(model_versions.c.stage == stage)
            .order_by(model_versions.c.version.desc())
            .limit(1)
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return _row_to_version(row) if row is not None else None

    def load_bundle(self, version: int) -> ModelBundle:
        """Load the version's artifact, refusing it unless it matches the recorded sha256."""
        mv = self.get(version)
        data = self.artifacts.get(mv.artifact_uri, mv.sha256)
        return ModelBundle.from_bytes(data, expected_sha256=mv.sha256)

    def history(self, version: int | None = None) -> list[StageChange]:
        """Stage changes in the order they happened, for one version or all of them."""
        query = sa.select(stage_history).order_by(stage_history.c.id)
        if version is not None:
            self.get(version)  # unknown versions are an error, not an empty history
            query = query.where(stage_history.c.version == int(version))
        with self.engine.connect() as conn:
            return [
                StageChange(
                    id=r.id,
                    version=r.version,
                    from_stage=r.from_stage,
                    to_stage=r.to_stage,
                    action=r.action,
                    actor=r.actor,
                    reason=r.reason,
                    at=as_utc(r.at),
                )
                for r in conn.execute(query)
            ]

    def audit(self, version: int | None = None) -> list[AuditEntry]:
        """Audit rows (one per mutation), oldest first, for one version or all."""
        query = sa.select(audit_log).order_by(audit_log.c.id)
        if version is not None:
            query = query.where(audit_log.c.version == _version_number(version))
        with self.engine.connect() as conn:
            return [
                AuditEntry(
                    id=r.id,
                    action=r.action,
                    version=r.version,
                    actor=r.actor,
                    reason=r.reason,
                    details=json.loads(r.details),
                    at=as_utc(r.at),
                )
                for r in conn.execute(query)
            ]

    def production_history(self) -> list[ProductionPeriod]:
        """Which version held production, from when until when, who put it there and why."""
        periods: list[ProductionPeriod] = []
        open_index: dict[int, int] = {}
        for change in self.history():
            if change.to_stage == PRODUCTION:
                open_index[change.version] = len(periods)
                periods.append(
                    ProductionPeriod(
                        version=change.version,
                        since=change.at,
                        until=None,
                        action=change.action,
                        actor=change.actor,
                        reason=change.reason,
                    )
                )
            elif change.from_stage == PRODUCTION and change.version in open_index:
                i = open_index.pop(change.version)
                p = periods[i]
                periods[i] = ProductionPeriod(
                    version=p.version,
                    since=p.since,
                    until=change.at,
                    action=p.action,
                    actor=p.actor,
                    reason=p.reason,
                    ended_by_action=change.action,
                    ended_by_actor=change.actor,
                    ended_reason=change.reason,
                    ended_to_stage=change.to_stage,
                )
        return periods

    def last_known_good(self) -> ModelVersion | None:
        """The most recent version, other than the current one, that held production and has not
        been marked failed: the default target of an emergency rollback."""
        with self.engine.connect() as conn:
            version = self._last_known_good(conn, self._production_version(conn))
        return self.get(version) if version is not None else None

    # -- internals ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        """A write transaction holding the registry's writer lock until commit or rollback."""
        with self.engine.connect() as conn:
            if self._backend == "sqlite":
                # pysqlite defers BEGIN until the first write, so a read-then-write would race;
                # BEGIN IMMEDIATE takes the database write lock before we read anything.
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_LOCK_KEY)))
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            conn.commit()

    def _stage_of(self, conn: sa.Connection, version: int) -> str:
        version = _version_number(version)
        stage = conn.execute(
            sa.select(model_versions.c.stage).where(model_versions.c.version == version)
        ).scalar_one_or_none()
        if stage is None:
            raise UnknownVersionError(f"unknown model version {version}")
        return stage

    def _production_version(self, conn: sa.Connection) -> int | None:
        return conn.execute(
            sa.select(model_versions.c.version).where(model_versions.c.stage == PRODUCTION)
        ).scalar_one_or_none()

    def _last_known_good(self, conn: sa.Connection, exclude: int | None) -> int | None:
        query = (
            sa.select(stage_history.c.version)
            .join(model_versions, model_versions.c.version == stage_history.c.version)
            .where(stage_history.c.to_stage == PRODUCTION, model_versions.c.stage != FAILED)
            .order_by(stage_history.c.id.desc())
        )
        if exclude is not None:
            query = query.where(stage_history.c.version != exclude)
        return conn.execute(query.limit(1)).scalar_one_or_none()

    def _apply(self, conn: sa.Connection, mutation: _Mutation) -> None:
        # Changes are applied in order; callers list the outgoing production version first so
        # the one-production index never sees two production rows.
        for version, from_stage, to_stage in mutation.changes:
            result = conn.execute(
                model_versions.update()
                .where(model_versions.c.version == version, model_versions.c.stage == from_stage)
                .values(stage=to_stage)
            )
            if result.rowcount != 1:
                raise RegistryError(f"version {version} is no longer {from_stage}; retry the operation")
        self._record(conn, mutation, utcnow())

    def _record(self, conn: sa.Connection, mutation: _Mutation, at: dt.datetime) -> None:
        audit_id = conn.execute(
            audit_log.insert()
            .values(
                action=mutation.action,
                version=mutation.version,
                actor=mutation.actor,
                reason=mutation.reason,
                details=json.dumps(mutation.details, sort_keys=True),
                at=at,
            )
            .returning(audit_log.c.id)
        ).scalar_one()
        for version, from_stage, to_stage in mutation.changes:
            conn.execute(
                stage_history.insert().values(
                    audit_id=audit_id,
                    version=version,
                    from_stage=from_stage,
                    to_stage=to_stage,
                    action=mutation.action,
                    actor=mutation.actor,
                    reason=mutation.reason,
                    at=at,
                )
            )


def open_registry(
    url: str, artifacts_uri: str, aws_region: str = "us-east-1", s3_endpoint_url: str | None = None
) -> ModelRegistry:
    """Open (creating tables if absent) the registry at database ``url`` with artifacts at
    ``artifacts_uri`` (a local directory or ``s3://bucket/prefix``; ``s3_endpoint_url`` overrides
    the S3 endpoint)."""
    if not url:
        raise ValueError("registry URL is empty")
    return ModelRegistry(
        make_engine(url), open_artifact_store(artifacts_uri, aws_region=aws_region, endpoint_url=s3_endpoint_url)
    )


def allowed_transitions(stage: str) -> list[str]:
    """The stages a version in ``stage`` may move to, sorted."""
    _check_stage(stage)
    return sorted(TRANSITIONS[stage])


def _check_stage(stage: str) -> None:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")


def _check_transition(version: int, current: str, to: str) -> None:
    if to == current:
        raise IllegalTransitionError(f"version {version} is already {current}")
    if to not in TRANSITIONS[current]:
        allowed = ", ".join(sorted(TRANSITIONS[current])) or "nothing (terminal stage)"
        raise IllegalTransitionError(
            f"illegal transition for version {version}: {current} -> {to}; {current} may move to {allowed}"
        )


def _version_number(version: Any) -> int:
    if isinstance(version, bool) or not isinstance(version, int):
        try:
            version = int(str(version))
        except ValueError:
            raise UnknownVersionError(f"unknown model version {version!r}: versions are integers") from None
    return version


def _to_json(value: Any, what: str) -> str:
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a mapping, got {type(value).__name__}")
    try:
        text = json.dumps(dict(value), sort_keys=True, default=json_default, allow_nan=False)
    except ValueError as exc:
        bad = _non_finite_keys(value)
        raise ValueError(
            f"{what} contains non-finite numbers (NaN/inf){' at ' + ', '.join(bad) if bad else ''}; "
            "record them as null instead"
        ) from exc
    except TypeError as exc:
        raise TypeError(f"{what} must be JSON-serialisable: {exc}") from exc
    return text


def _non_finite_keys(value: Any, prefix: str = "") -> list[str]:
    found: list[str] = []
    if isinstance(value, Mapping):
        for k, v in value.items():
            found += _non_finite_keys(v, f"{prefix}{k}.")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found += _non_finite_keys(v, f"{prefix}{i}.")
    elif isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isfinite(float(value)):
        found.append(prefix.rstrip("."))
    return found


def _row_to_version(row: Any) -> ModelVersion:
    return ModelVersion(
        version=row.version,
        name=row.name,
        stage=row.stage,
        metrics=json.loads(row.metrics),
        params=json.loads(row.params),
        lineage=json.loads(row.lineage),
        artifact_uri=row.artifact_uri,
        sha256=row.sha256,
        created_at=as_utc(row.created_at),
        description=row.description or "",
    )
