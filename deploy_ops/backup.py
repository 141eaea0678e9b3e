"""Backups of the platform's state: the registry and deployment-state database and the warehouse.

A backup is a folder (local, or a prefix in S3) named by its id, holding one file per component
and a ``manifest.json`` with each file's size and sha256. The manifest is written last, so a
backup without one is incomplete and never listed as usable.

* Registry + deployment state (one database: models, slots, routing, breaker, leases, alert
  outbox): SQLite through the online backup API (a consistent copy while other processes use the
  file); PostgreSQL through ``pg_dump --format=custom`` and ``pg_restore``.
* Warehouse (the DuckDB file): copied while a read-only connection is held. DuckDB lets a reader
  in only when no writer holds the file, and keeps writers out while it reads, so the copy (file
  plus any write-ahead log) is a consistent state. The caller passes the connect function so the
  code location's lock wait (``connect_waiting``) applies.

``restore_backup`` verifies every checksum before it touches anything, refuses to overwrite
existing stores unless ``force=True``, and restores the database before the warehouse.

Recovery objectives: RPO 1 h (the ``hourly_backup`` schedule), RTO 4 h (docs/runbooks/disaster-recovery.md).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable, Protocol

from sqlalchemy.engine import make_url

from deploy_ops.db import normalize_url

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
REGISTRY_SQLITE = "registry.sqlite"
REGISTRY_PGDUMP = "registry.pgdump"
WAREHOUSE = "warehouse.duckdb"
WAREHOUSE_WAL = "warehouse.duckdb.wal"
_CHUNK = 1 << 20

#: ``progress(label)``: called once per finished step of a long operation (the CLI's progress bar).
Progress = Callable[[str], None]
#: Opens the warehouse (path, read_only) -> a DuckDB connection; may wait for the file lock.
ConnectWarehouse = Callable[..., Any]


class BackupError(RuntimeError):
    """A backup could not be made, found or restored."""


class BackupNotFoundError(BackupError, LookupError):
    """No complete backup with that id at the destination."""


class BackupInvalidError(BackupError):
    """The backup fails verification (corrupt, truncated or incomplete); nothing was changed."""


class RestoreConflictError(BackupError):
    """The restore would overwrite existing stores and ``--force`` was not given; nothing was changed."""


@dataclasses.dataclass(frozen=True)
class BackupFile:
    """One file of a backup: what it holds, its size and checksum."""

    name: str
    component: str  #: "registry" or "warehouse"
    size: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class Manifest:
    backup_id: str
    created_at: str
    registry_backend: str  #: "sqlite" or "postgresql"
    files: tuple[BackupFile, ...]
    format_version: int = FORMAT_VERSION

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def components(self) -> list[str]:
        return sorted({f.component for f in self.files})

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["files"] = [dataclasses.asdict(f) for f in self.files]
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> Manifest:
        try:
            data = json.loads(text)
            files = tuple(BackupFile(**f) for f in data["files"])
            manifest = cls(
                backup_id=data["backup_id"],
                created_at=data["created_at"],
                registry_backend=data["registry_backend"],
                files=files,
                format_version=data["format_version"],
            )
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise BackupInvalidError(f"the manifest of {where} is unreadable (truncated or corrupt): {exc}") from exc
        if manifest.format_version != FORMAT_VERSION:
            raise BackupInvalidError(
                f"{where} has manifest format {manifest.format_version}; this version reads format {FORMAT_VERSION}"
            )
        for f in files:
            # Names come from the manifest: never let one point outside the backup folder.
            if f.name != Path(f.name).name or f.name in ("", ".", "..", MANIFEST):
                raise BackupInvalidError(f"the manifest of {where} names an invalid file {f.name!r}")
        return manifest


# ------------------------------------------------------------------------------ destinations


class Destination(Protocol):
    """Where backups are kept: a local folder or an S3 prefix."""

    uri: str

    def ids(self) -> list[str]: ...
    def put(self, backup_id: str, name: str, source: Path) -> None: ...
    def get(self, backup_id: str, name: str, target: Path) -> None: ...
    def exists(self, backup_id: str, name: str) -> bool: ...


class LocalDestination:
    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)

    def __repr__(self) -> str:
        return f"LocalDestination({self.uri!r})"

    def ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())

    def put(self, backup_id: str, name: str, source: Path) -> None:
        folder = self.root / backup_id
        folder.mkdir(parents=True, exist_ok=True)
        # Write beside, then rename: a crash never leaves a half-written file under the final name.
        tmp = folder / f".{name}.part"
        shutil.copyfile(source, tmp)
        os.replace(tmp, folder / name)

    def get(self, backup_id: str, name: str, target: Path) -> None:
        path = self.root / backup_id / name
        if not path.is_file():
            raise BackupInvalidError(f"backup {backup_id} at {self.uri} is missing its file {name}")
        shutil.copyfile(path, target)

    def exists(self, backup_id: str, name: str) -> bool:
        return (self.root / backup_id / name).is_file()


class S3Destination:
    def __init__(self, bucket: str, prefix: str = "", region: str = "us-east-1", client: Any = None):
        if not bucket:
            raise BackupError("an S3 backup destination needs a bucket: s3://bucket/prefix")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.region = region
        self._client = client
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")

    def __repr__(self) -> str:
        return f"S3Destination({self.uri!r})"

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.client("s3", region_name=self.region)
        return self._client

    def _key(self, backup_id: str, name: str = "") -> str:
        parts = [p for p in (self.prefix, backup_id, name) if p]
        return "/".join(parts)

    def ids(self) -> list[str]:
        base = f"{self.prefix}/" if self.prefix else ""
        found = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=base, Delimiter="/"):
            for common in page.get("CommonPrefixes", []):
                found.append(common["Prefix"][len(base) :].rstrip("/"))
        return sorted(found)

    def put(self, backup_id: str, name: str, source: Path) -> None:
        # SSE on every object even if the bucket default were missing (the Terraform sets both).
        self.client.upload_file(
            str(source), self.bucket, self._key(backup_id, name), ExtraArgs={"ServerSideEncryption": "AES256"}
        )

    def get(self, backup_id: str, name: str, target: Path) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.download_file(self.bucket, self._key(backup_id, name), str(target))
        except ClientError as exc:
            raise BackupInvalidError(
                f"backup {backup_id} at {self.uri} is missing its file {name} ({exc.response['Error'].get('Code')})"
            ) from exc

    def exists(self, backup_id: str, name: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(backup_id, name))
            return True
        except ClientError:
            return False


def open_destination(uri: str, region: str = "us-east-1") -> Destination:
    """``s3://bucket/prefix`` or a local folder."""
    if not uri or not uri.strip():
        raise BackupError("no backup destination: set AUTOTRADER_BACKUP_URI or pass --to/--from")
    if uri.startswith("s3://"):
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        return S3Destination(bucket, prefix, region=region)
    if "://" in uri:
        raise BackupError(f"backup destination {uri!r} must be a local folder or s3://bucket/prefix")
    return LocalDestination(uri)


# ------------------------------------------------------------------------------ helpers


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def new_backup_id(now: dt.datetime | None = None) -> str:
    """Sorts by time; the random tail keeps two backups in the same second apart."""
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


def registry_backend(url: str) -> str:
    backend = make_url(normalize_url(url)).get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise BackupError(f"registry URL backend {backend!r} cannot be backed up (sqlite or postgresql only)")
    return backend


def _sqlite_path(url: str) -> Path:
    database = make_url(normalize_url(url)).database
    if not database or database == ":memory:":
        raise BackupError("an in-memory SQLite registry has nothing to back up")
    return Path(database)


def _pg_args(url: str) -> tuple[list[str], dict[str, str]]:
    """pg_dump/pg_restore connection options and environment (the password never on a command line)."""
    parsed = make_url(normalize_url(url))
    args = [
        "--host",
        parsed.host or "127.0.0.1",
        "--port",
        str(parsed.port or 5432),
        "--username",
        parsed.username or "postgres",
        "--dbname",
        parsed.database or "postgres",
    ]
    env = dict(os.environ)
    if parsed.password:
        env["PGPASSWORD"] = str(parsed.password)
    return args, env


def _run_pg(tool: str, args: list[str], env: dict[str, str]) -> None:
    exe = shutil.which(tool)
    if exe is None:
        raise BackupError(f"{tool} is not installed (PostgreSQL client tools, e.g. apt-get install postgresql-client)")
    done = subprocess.run([exe, *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise BackupError(f"{tool} failed (exit {done.returncode}): {done.stderr.strip() or done.stdout.strip()}")


def _duckdb_connect(path: str, read_only: bool = False) -> Any:
    import duckdb

    return duckdb.connect(path, read_only=read_only)


# ------------------------------------------------------------------------------ create


def _dump_registry(url: str, folder: Path) -> Path:
    if registry_backend(url) == "sqlite":
        source = _sqlite_path(url)
        if not source.is_file():
            raise BackupError(f"the registry database {source} does not exist: nothing to back up")
        target = folder / REGISTRY_SQLITE
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
        dst = sqlite3.connect(target)
        try:
            # The online backup API copies a consistent snapshot while writers keep working.
            src.backup(dst)
        finally:
            dst.close()
            src.close()
        return target
    target = folder / REGISTRY_PGDUMP
    args, env = _pg_args(url)
    _run_pg("pg_dump", ["--format=custom", "--no-owner", "--no-privileges", "--file", str(target), *args], env)
    return target


def _copy_warehouse(path: Path, folder: Path, connect: ConnectWarehouse) -> list[Path]:
    con = connect(str(path), read_only=True)
    try:
        copied = [folder / WAREHOUSE]
        shutil.copyfile(path, copied[0])
        wal = Path(f"{path}.wal")
        if wal.is_file():
            shutil.copyfile(wal, folder / WAREHOUSE_WAL)
            copied.append(folder / WAREHOUSE_WAL)
        return copied
    finally:
        con.close()


def create_backup(
    destination: Destination,
    registry_url: str,
    warehouse_path: str | os.PathLike[str],
    *,
    connect_warehouse: ConnectWarehouse = _duckdb_connect,
    progress: Progress | None = None,
    now: dt.datetime | None = None,
) -> Manifest:
    """Back up the registry database and the warehouse to ``destination``; returns the manifest.

    A warehouse that does not exist yet (nothing materialized) is left out and the manifest says
    so by having no warehouse file; a missing registry database is an error."""
    tick = progress or (lambda _label: None)
    backend = registry_backend(registry_url)
    backup_id = new_backup_id(now)
    created = (now or dt.datetime.now(dt.timezone.utc)).isoformat()
    with tempfile.TemporaryDirectory(prefix="autotrader-backup-") as tmp:
        folder = Path(tmp)
        parts: list[tuple[str, Path]] = [("registry", _dump_registry(registry_url, folder))]
        tick("registry dumped")
        warehouse = Path(warehouse_path)
        if warehouse.is_file():
            parts += [("warehouse", p) for p in _copy_warehouse(warehouse, folder, connect_warehouse)]
        tick("warehouse copied")
        files = tuple(BackupFile(p.name, component, p.stat().st_size, sha256_file(p)) for component, p in parts)
        for f in files:
            destination.put(backup_id, f.name, folder / f.name)
        tick("files uploaded")
        manifest = Manifest(backup_id=backup_id, created_at=created, registry_backend=backend, files=files)
        (folder / MANIFEST).write_text(manifest.to_json())
        destination.put(backup_id, MANIFEST, folder / MANIFEST)
        tick("manifest written")
    return manifest


CREATE_STEPS = 4


# ------------------------------------------------------------------------------ list / verify


@dataclasses.dataclass(frozen=True)
class Listed:
    backup_id: str
    manifest: Manifest | None
    problem: str = ""


def read_manifest(destination: Destination, backup_id: str, folder: Path) -> Manifest:
    where = f"backup {backup_id} at {destination.uri}"
    if not destination.exists(backup_id, MANIFEST):
        raise BackupNotFoundError(f"no complete backup {backup_id!r} at {destination.uri} (no {MANIFEST})")
    destination.get(backup_id, MANIFEST, folder / MANIFEST)
    manifest = Manifest.from_json((folder / MANIFEST).read_text(errors="replace"), where)
    if manifest.backup_id != backup_id:
        raise BackupInvalidError(f"{where}: its manifest belongs to backup {manifest.backup_id}")
    return manifest


def list_backups(destination: Destination) -> list[Listed]:
    """Every backup folder at the destination, oldest first; unreadable or incomplete ones carry
    their problem instead of a manifest (they are never restored)."""
    out = []
    with tempfile.TemporaryDirectory(prefix="autotrader-backup-") as tmp:
        for backup_id in destination.ids():
            try:
                out.append(Listed(backup_id, read_manifest(destination, backup_id, Path(tmp))))
            except BackupError as exc:
                out.append(Listed(backup_id, None, str(exc)))
    return out


def latest_backup_id(destination: Destination) -> str:
    complete = [b.backup_id for b in list_backups(destination) if b.manifest is not None]
    if not complete:
        raise BackupNotFoundError(f"no complete backup at {destination.uri}")
    return complete[-1]


def fetch_verified(
    destination: Destination, backup_id: str, folder: Path, progress: Progress | None = None
) -> Manifest:
    """Download the backup into ``folder`` and check every file's size and sha256 against the manifest."""
    tick = progress or (lambda _label: None)
    manifest = read_manifest(destination, backup_id, folder)
    if not any(f.component == "registry" for f in manifest.files):
        raise BackupInvalidError(f"backup {backup_id} has no registry file")
    problems = []
    for f in manifest.files:
        target = folder / f.name
        try:
            destination.get(backup_id, f.name, target)
        except BackupInvalidError as exc:
            problems.append(str(exc))
            tick(f"{f.name} missing")
            continue
        size = target.stat().st_size
        if size != f.size:
            problems.append(f"{f.name}: {size} bytes, the manifest says {f.size} (truncated?)")
        elif sha256_file(target) != f.sha256:
            problems.append(f"{f.name}: sha256 does not match the manifest (corrupt)")
        tick(f"{f.name} checked")
    if problems:
        raise BackupInvalidError(f"backup {backup_id} at {destination.uri} fails verification: " + "; ".join(problems))
    return manifest


def verify_backup(destination: Destination, backup_id: str, progress: Progress | None = None) -> Manifest:
    with tempfile.TemporaryDirectory(prefix="autotrader-verify-") as tmp:
        return fetch_verified(destination, backup_id, Path(tmp), progress)


# ------------------------------------------------------------------------------ restore


def _registry_has_data(url: str) -> bool:
    import sqlalchemy as sa

    if registry_backend(url) == "sqlite":
        path = _sqlite_path(url)
        if not path.is_file():
            return False
    from deploy_ops.db import make_engine

    return bool(sa.inspect(make_engine(url)).get_table_names())


def _existing(url: str, warehouse: Path, manifest: Manifest) -> list[str]:
    found = []
    if _registry_has_data(url):
        found.append(f"the registry database ({make_url(normalize_url(url)).render_as_string(hide_password=True)})")
    if "warehouse" in manifest.components and warehouse.exists():
        found.append(f"the warehouse {warehouse}")
    return found


def _restore_registry(url: str, folder: Path, manifest: Manifest) -> None:
    backend = registry_backend(url)
    if backend != manifest.registry_backend:
        raise BackupError(
            f"backup {manifest.backup_id} holds a {manifest.registry_backend} registry; the target is {backend}"
        )
    if backend == "sqlite":
        target = _sqlite_path(url)
        target.parent.mkdir(parents=True, exist_ok=True)
        src = sqlite3.connect(folder / REGISTRY_SQLITE)
        dst = sqlite3.connect(target, timeout=30)
        try:
            # The backup API replaces the target's pages in one step, also under open connections.
            src.backup(dst)
        finally:
            dst.close()
            src.close()
        return
    args, env = _pg_args(url)
    # One transaction: a pg_restore that fails part way leaves the database as it was.
    _run_pg(
        "pg_restore",
        [
            "--clean",
            "--if-exists",
            "--no-owner",
            "--no-privileges",
            "--single-transaction",
            "--exit-on-error",
            *args,
            str(folder / REGISTRY_PGDUMP),
        ],
        env,
    )


def _restore_warehouse(path: Path, folder: Path, connect: ConnectWarehouse) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.restore")
    shutil.copyfile(folder / WAREHOUSE, staged)
    wal = Path(f"{path}.wal")
    if path.exists():
        # Wait until no run holds the warehouse (the same wait a writer does), then swap the files.
        connect(str(path), read_only=False).close()
    if wal.exists():
        wal.unlink()
    if (folder / WAREHOUSE_WAL).is_file():
        shutil.copyfile(folder / WAREHOUSE_WAL, wal)
    os.replace(staged, path)


def restore_backup(
    destination: Destination,
    backup_id: str,
    registry_url: str,
    warehouse_path: str | os.PathLike[str],
    *,
    force: bool = False,
    connect_warehouse: ConnectWarehouse = _duckdb_connect,
    progress: Progress | None = None,
) -> Manifest:
    """Verify ``backup_id``, then restore the registry database and the warehouse from it.

    Refuses (nothing changed) a backup that fails verification, and existing stores unless ``force``."""
    tick = progress or (lambda _label: None)
    warehouse = Path(warehouse_path)
    with tempfile.TemporaryDirectory(prefix="autotrader-restore-") as tmp:
        folder = Path(tmp)
        manifest = fetch_verified(destination, backup_id, folder, tick)
        if manifest.registry_backend != registry_backend(registry_url):
            raise BackupError(
                f"backup {backup_id} holds a {manifest.registry_backend} registry; the target is "
                f"{registry_backend(registry_url)}: restore it into a database of the same kind"
            )
        existing = _existing(registry_url, warehouse, manifest)
        if existing and not force:
            raise RestoreConflictError(
                f"restore would overwrite {' and '.join(existing)}; nothing was changed. "
                "Back them up first (autotrader backup create) and pass --force to overwrite"
            )
        _restore_registry(registry_url, folder, manifest)
        tick("registry restored")
        if "warehouse" in manifest.components:
            _restore_warehouse(warehouse, folder, connect_warehouse)
        tick("warehouse restored")
    return manifest


def describe_backup(destination: Destination, backup_id: str) -> Manifest:
    """The manifest of ``backup_id`` alone (no file is downloaded or checked)."""
    with tempfile.TemporaryDirectory(prefix="autotrader-backup-") as tmp:
        return read_manifest(destination, backup_id, Path(tmp))


def restore_steps(manifest: Manifest) -> int:
    """How many ``progress`` calls a restore of ``manifest`` makes: one per file checked, plus two."""
    return len(manifest.files) + 2
