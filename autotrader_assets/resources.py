"""Dagster resources: thin handles on the stores that ``settings`` chooses.

Assets receive these instead of reading the environment, so tests point a whole run at a
temporary warehouse / archive / registry by building the resources with other paths.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import dagster as dg
import duckdb

from autotrader_assets.settings import Settings, get_settings


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB warehouse file (one writer at a time; runs use the in-process executor)."""

    path: str

    @contextlib.contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        con = duckdb.connect(self.path, read_only=read_only)
        try:
            yield con
        finally:
            con.close()

    def table_exists(self, name: str) -> bool:
        with self.connect() as con:
            return bool(
                con.execute(
                    "select count(*) from information_schema.tables where table_name = ?", [name]
                ).fetchone()[0]
            )


class RegistryResource(dg.ConfigurableResource):
    """The model registry and its artifact store (SQLite + local disk, or PostgreSQL + S3)."""

    url: str
    artifacts_uri: str
    aws_region: str = "us-east-1"

    def open(self):
        from deploy_ops.models.registry import open_registry

        return open_registry(self.url, self.artifacts_uri, aws_region=self.aws_region)


def default_resources(settings: Settings | None = None) -> dict[str, dg.ConfigurableResource]:
    """Resources for the given settings; the archive and dbt resources are added by their domains."""
    s = settings or get_settings()
    return {
        "warehouse": WarehouseResource(path=str(s.warehouse_path)),
        "registry": RegistryResource(url=s.registry_url, artifacts_uri=s.artifacts_uri, aws_region=s.aws_region),
    }
