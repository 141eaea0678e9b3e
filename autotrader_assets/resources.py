"""Dagster resources: thin handles on the stores that ``settings`` chooses.

Assets receive these instead of reading the environment, so tests point a whole run at a
temporary warehouse / archive / registry by building the resources with other paths.
"""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path
from typing import Iterator

import dagster as dg
import duckdb

from autotrader_assets.settings import Settings, get_settings
from deploy_ops.text import DETAIL, truncate


class WarehouseBusyError(RuntimeError):
    """The warehouse file stayed locked by another process for longer than the lock timeout."""


def _lock_holder(message: str) -> str:
    """Who holds the DuckDB file lock, from DuckDB's error text (PID) and /proc (command line)."""
    found = re.search(r"PID (\d+)", message)
    if not found:
        return "another process"
    pid = int(found.group(1))
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmd = ""
    return f"PID {pid}" + (f" ({truncate(cmd, DETAIL)})" if cmd else "")


def connect_waiting(path: str, read_only: bool = False, timeout_s: float = 300.0) -> duckdb.DuckDBPyConnection:
    """Open the DuckDB file, waiting with backoff while another process holds its lock.

    DuckDB allows one process to write (and then nobody else to read); a CLI materialization,
    a restore, ``make run`` and a daemon run take turns instead of failing at once. After
    ``timeout_s`` a :class:`WarehouseBusyError` names the holder.
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while True:
        try:
            return duckdb.connect(path, read_only=read_only)
        except duckdb.IOException as exc:
            text = str(exc)
            if "lock" not in text.lower():
                raise
            if time.monotonic() >= deadline:
                raise WarehouseBusyError(
                    f"the warehouse {path} is locked by {_lock_holder(text)}; waited {timeout_s:g} s "
                    "(AUTOTRADER_WAREHOUSE_LOCK_TIMEOUT). Let that run finish, or stop it, and try again."
                ) from exc
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 2.0)


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB warehouse file: one writer at a time, others wait up to ``lock_timeout_s``."""

    path: str
    lock_timeout_s: float = 300.0

    @contextlib.contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        con = connect_waiting(self.path, read_only=read_only, timeout_s=self.lock_timeout_s)
        try:
            yield con
        finally:
            con.close()

    def table_exists(self, name: str) -> bool:
        with self.connect() as con:
            return bool(
                con.execute("select count(*) from information_schema.tables where table_name = ?", [name]).fetchone()[0]
            )


class RegistryResource(dg.ConfigurableResource):
    """The model registry and its artifact store (SQLite + local disk, or PostgreSQL + S3)."""

    url: str
    artifacts_uri: str
    aws_region: str = "us-east-1"
    s3_endpoint_url: str | None = None

    def open(self):
        from deploy_ops.models.registry import open_registry

        return open_registry(
            self.url, self.artifacts_uri, aws_region=self.aws_region, s3_endpoint_url=self.s3_endpoint_url
        )


def default_resources(settings: Settings | None = None) -> dict[str, dg.ConfigurableResource]:
    """Resources for the given settings; the archive and dbt resources are added by their domains."""
    s = settings or get_settings()
    resources = {
        "warehouse": WarehouseResource(path=str(s.warehouse_path), lock_timeout_s=s.warehouse_lock_timeout_s),
        "registry": RegistryResource(
            url=s.registry_url,
            artifacts_uri=s.artifacts_uri,
            aws_region=s.aws_region,
            s3_endpoint_url=s.s3_endpoint_url or None,
        ),
    }
    if s.io_uri:
        resources["io_manager"] = s3_io_manager(s.io_uri, region=s.aws_region, endpoint_url=s.s3_endpoint_url or None)
    return resources


def s3_io_manager(uri: str, *, region: str, endpoint_url: str | None = None) -> dg.ConfigurableIOManager:
    """Dagster's pickling IO manager on S3 at ``uri`` (``s3://bucket/prefix``).

    In production a run is an ECS task with its own disk: a lone ``registered_model`` run must find
    the ``candidate_model`` value another task stored, so the values go to S3, not to the default
    filesystem IO manager under DAGSTER_HOME/storage. They are small references (table and
    fingerprint, artifact URI and checksum, the gate report); the model itself is in the artifact store.
    """
    from dagster_aws.s3 import S3PickleIOManager, S3Resource  # lazy: only the production profile uses S3 here

    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    return S3PickleIOManager(
        s3_resource=S3Resource(region_name=region, endpoint_url=endpoint_url),
        s3_bucket=bucket,
        s3_prefix=prefix.strip("/") or "dagster-io",
    )
