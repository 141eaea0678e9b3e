"""Backups and restores (deploy_ops/backup.py, ``autotrader backup``, the hourly_backup schedule).

The round trip runs on both profiles' databases: SQLite (local) and a throwaway PostgreSQL
database (pg_dump/pg_restore against the real server): back up, destroy the stores, restore,
and the registry, routing, breaker state and warehouse tables equal what they were."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import boto3
import dagster as dg
import duckdb
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from moto import mock_aws

from autotrader_assets.settings import get_settings
from deploy_ops.backup import (
    MANIFEST,
    WAREHOUSE,
    BackupInvalidError,
    BackupNotFoundError,
    LocalDestination,
    RestoreConflictError,
    S3Destination,
    create_backup,
    list_backups,
    restore_backup,
    verify_backup,
)
from deploy_ops.db import make_engine
from deploy_ops.models.registry import open_registry
from deploy_ops.state import DeploymentStateStore
from deploy_ops.trading.breaker import BreakerStore


def _populate(url: str, artifacts: Path, warehouse: Path, make_bundle) -> None:
    registry = open_registry(url, str(artifacts))
    for seed in (1, 2):
        registry.register(
            make_bundle(seed),
            metrics={"auc": 0.6 + seed / 100},
            params={"seed": seed},
            lineage={"partitions": ["2024-01-01"]},
            actor="test",
            reason="backup test",
        )
    registry.promote(1, actor="test", reason="first production")
    state = DeploymentStateStore(url)
    state.set_slot("blue", status="ready", version="1", url="http://127.0.0.1:1/", host="127.0.0.1", port=1, pid=1)
    state.set_slot("green", status="ready", version="2", url="http://127.0.0.1:2/", host="127.0.0.1", port=2, pid=2)
    state.set_routes({"BTCUSDT": "green", "ETHUSDT": "blue"})
    BreakerStore(url).trip("daily loss 6% > 5%", details={"equity": 94_000.0, "day_loss": 0.06})
    with duckdb.connect(str(warehouse)) as con:
        con.execute("CREATE SCHEMA IF NOT EXISTS main")
        con.execute("CREATE TABLE bars AS SELECT range AS i, range * 1.5 AS close FROM range(1000)")
        con.execute("CREATE TABLE trades (ts TIMESTAMP, pnl DOUBLE)")
        con.execute("INSERT INTO trades VALUES ('2024-01-01 00:00:00', 1.25), ('2024-01-01 00:01:00', -0.5)")


def _snapshot(url: str, warehouse: Path) -> dict:
    """Every row of every table of the registry database, the API views operators use, and every
    warehouse table."""
    engine = make_engine(url)
    tables = {}
    with engine.connect() as conn:
        for name in sorted(sa.inspect(engine).get_table_names()):
            rows = conn.execute(sa.text(f'SELECT * FROM "{name}"')).fetchall()
            tables[name] = sorted(repr(tuple(r)) for r in rows)
    state = DeploymentStateStore(url)
    with duckdb.connect(str(warehouse), read_only=True) as con:
        wh = {
            t: con.execute(f'SELECT * FROM "{t}" ORDER BY ALL').fetchall()
            for (t,) in con.execute("SELECT table_name FROM information_schema.tables ORDER BY 1").fetchall()
        }
    return {
        "tables": tables,
        "routing": state.routing_table(),
        "slots": {k: (v.status, v.version, v.url) for k, v in state.slots().items()},
        "breaker": BreakerStore(url).status().to_dict(),
        "production": open_registry(url, "/nonexistent").get_production().version,
        "warehouse": wh,
    }


def _destroy(url: str, warehouse: Path) -> None:
    engine = make_engine(url)
    meta = sa.MetaData()
    meta.reflect(engine)
    meta.drop_all(engine)
    warehouse.unlink()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'registry.db'}"


@pytest.mark.parametrize("profile", ["sqlite", "postgresql"])
def test_round_trip_restores_registry_routing_breaker_and_warehouse(profile, request, tmp_path, make_bundle):
    url = request.getfixturevalue("sqlite_url" if profile == "sqlite" else "pg_url")
    warehouse = tmp_path / "warehouse.duckdb"
    _populate(url, tmp_path / "artifacts", warehouse, make_bundle)
    before = _snapshot(url, warehouse)
    assert before["routing"]["BTCUSDT"] == "green" and before["breaker"]["tripped"]

    destination = LocalDestination(tmp_path / "backups")
    steps: list[str] = []
    manifest = create_backup(destination, url, warehouse, progress=steps.append)
    assert manifest.registry_backend == profile and manifest.components == ["registry", "warehouse"]
    assert steps == ["registry dumped", "warehouse copied", "files uploaded", "manifest written"]

    _destroy(url, warehouse)
    assert not sa.inspect(make_engine(url)).get_table_names()
    restore_backup(destination, manifest.backup_id, url, warehouse)
    assert _snapshot(url, warehouse) == before


def test_restore_refuses_to_overwrite_without_force(tmp_path, sqlite_url, make_bundle):
    warehouse = tmp_path / "warehouse.duckdb"
    _populate(sqlite_url, tmp_path / "artifacts", warehouse, make_bundle)
    destination = LocalDestination(tmp_path / "backups")
    manifest = create_backup(destination, sqlite_url, warehouse)
    # Change the live stores after the backup: a refused restore must leave these changes alone.
    DeploymentStateStore(sqlite_url).set_routes({"BTCUSDT": "blue"})
    with duckdb.connect(str(warehouse)) as con:
        con.execute("CREATE TABLE after_backup AS SELECT 1 AS x")
    changed = _snapshot(sqlite_url, warehouse)
    with pytest.raises(RestoreConflictError, match="--force"):
        restore_backup(destination, manifest.backup_id, sqlite_url, warehouse)
    assert _snapshot(sqlite_url, warehouse) == changed

    restore_backup(destination, manifest.backup_id, sqlite_url, warehouse, force=True)
    after = _snapshot(sqlite_url, warehouse)
    assert after["routing"]["BTCUSDT"] == "green" and "after_backup" not in after["warehouse"]


@pytest.mark.parametrize("damage", ["corrupt", "truncate", "delete", "manifest"])
def test_a_damaged_backup_fails_verification_and_restore_changes_nothing(damage, tmp_path, sqlite_url, make_bundle):
    warehouse = tmp_path / "warehouse.duckdb"
    _populate(sqlite_url, tmp_path / "artifacts", warehouse, make_bundle)
    destination = LocalDestination(tmp_path / "backups")
    manifest = create_backup(destination, sqlite_url, warehouse)
    verify_backup(destination, manifest.backup_id)  # intact: passes
    folder = tmp_path / "backups" / manifest.backup_id
    target = folder / WAREHOUSE
    if damage == "corrupt":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
        message = "sha256 does not match"
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 3])
        message = "truncated"
    elif damage == "delete":
        target.unlink()
        message = "missing its file"
    else:
        text = (folder / MANIFEST).read_text()
        (folder / MANIFEST).write_text(text[: len(text) // 2])
        message = "manifest .* unreadable"
    with pytest.raises(BackupInvalidError, match=message):
        verify_backup(destination, manifest.backup_id)

    # Even with --force, a backup that fails verification never touches the stores.
    _destroy(sqlite_url, warehouse)
    with pytest.raises(BackupInvalidError, match=message):
        restore_backup(destination, manifest.backup_id, sqlite_url, warehouse, force=True)
    assert not warehouse.exists()
    assert not sa.inspect(make_engine(sqlite_url)).get_table_names()
    listed = {b.backup_id: b for b in list_backups(destination)}
    assert (listed[manifest.backup_id].manifest is None) == (damage == "manifest")


def test_unknown_and_incomplete_backups_are_not_found(tmp_path):
    destination = LocalDestination(tmp_path / "backups")
    (tmp_path / "backups" / "20240101T000000Z-abcdef").mkdir(parents=True)  # upload died before the manifest
    with pytest.raises(BackupNotFoundError, match="no complete backup"):
        verify_backup(destination, "20240101T000000Z-abcdef")
    (problem,) = list_backups(destination)
    assert problem.manifest is None and "no manifest.json" in problem.problem


def test_s3_destination_round_trip_with_moto(tmp_path, sqlite_url, make_bundle, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    warehouse = tmp_path / "warehouse.duckdb"
    _populate(sqlite_url, tmp_path / "artifacts", warehouse, make_bundle)
    before = _snapshot(sqlite_url, warehouse)
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="autotrader-backups")
        destination = S3Destination("autotrader-backups", "prod/hourly", client=s3)
        manifest = create_backup(destination, sqlite_url, warehouse)
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket="autotrader-backups")["Contents"]}
        assert f"prod/hourly/{manifest.backup_id}/{MANIFEST}" in keys
        head = s3.head_object(Bucket="autotrader-backups", Key=f"prod/hourly/{manifest.backup_id}/{WAREHOUSE}")
        assert head["ServerSideEncryption"] == "AES256"
        assert [b.backup_id for b in list_backups(destination)] == [manifest.backup_id]
        _destroy(sqlite_url, warehouse)
        restore_backup(destination, manifest.backup_id, sqlite_url, warehouse)
        assert _snapshot(sqlite_url, warehouse) == before

        s3.put_object(Bucket="autotrader-backups", Key=f"prod/hourly/{manifest.backup_id}/{WAREHOUSE}", Body=b"x")
        with pytest.raises(BackupInvalidError, match="truncated"):
            verify_backup(destination, manifest.backup_id)


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOTRADER_HOME", str(tmp_path / "home"))
    for name in ("AUTOTRADER_REGISTRY_URL", "AUTOTRADER_WAREHOUSE", "AUTOTRADER_BACKUP_URI", "AUTOTRADER_ENV"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def test_cli_create_list_verify_restore(cli_env, make_bundle, tmp_path):
    from autotrader_assets.cli import main

    s = cli_env
    _populate(s.registry_url, tmp_path / "artifacts", s.warehouse_path, make_bundle)
    runner = CliRunner()
    created = runner.invoke(main, ["backup", "create", "--json"])
    assert created.exit_code == 0, created.output
    backup_id = json.loads(created.stdout)["backup_id"]
    assert (s.home / "backups" / backup_id / MANIFEST).is_file()  # AUTOTRADER_BACKUP_URI's local default
    listed = runner.invoke(main, ["backup", "list"])
    assert listed.exit_code == 0 and backup_id in listed.output and "registry,warehouse" in listed.output
    verified = runner.invoke(main, ["backup", "verify", "latest"])
    assert verified.exit_code == 0 and "every sha256 matches" in verified.output

    refused = runner.invoke(main, ["backup", "restore", backup_id])
    assert refused.exit_code == 1 and "nothing was changed" in refused.output and "--force" in refused.output
    restored = runner.invoke(main, ["backup", "restore", backup_id, "--force"])
    assert restored.exit_code == 0, restored.output

    data = bytearray((s.home / "backups" / backup_id / WAREHOUSE).read_bytes())
    data[100] ^= 0x01
    (s.home / "backups" / backup_id / WAREHOUSE).write_bytes(bytes(data))
    bad = runner.invoke(main, ["backup", "restore", backup_id, "--force"])
    assert bad.exit_code == 1 and "fails verification" in bad.output
    missing = runner.invoke(main, ["backup", "verify", "20000101T000000Z-000000"])
    assert missing.exit_code == 1 and "no complete backup" in missing.output


def test_cli_without_a_backup_uri_says_what_to_set(cli_env, monkeypatch):
    from autotrader_assets.cli import main

    # The production profile leaves backup_uri empty: it never defaults onto the task's own disk.
    monkeypatch.setattr(
        "autotrader_assets.commands.backup.get_settings", lambda: dataclasses.replace(cli_env, backup_uri="")
    )
    result = CliRunner().invoke(main, ["backup", "create"])
    assert result.exit_code == 1 and "AUTOTRADER_BACKUP_URI" in result.output


def test_backup_job_and_hourly_schedule(tmp_path, sqlite_url, make_bundle):
    from autotrader_assets.defs.operations import backup_job, hourly_backup
    from autotrader_assets.resources import RegistryResource, WarehouseResource

    warehouse = tmp_path / "warehouse.duckdb"
    _populate(sqlite_url, tmp_path / "artifacts", warehouse, make_bundle)
    settings = dataclasses.replace(get_settings(), backup_uri=str(tmp_path / "backups"))
    result = backup_job.execute_in_process(
        resources={
            "settings": settings,
            "registry": RegistryResource(url=sqlite_url, artifacts_uri=str(tmp_path / "artifacts")),
            "warehouse": WarehouseResource(path=str(warehouse), lock_timeout_s=5),
        }
    )
    assert result.success
    backup_id = result.output_for_node("create_backup_op")
    verify_backup(LocalDestination(tmp_path / "backups"), backup_id)
    # RPO 1 h: one run per hour, created stopped (an operator starts it once the destination is durable).
    assert hourly_backup.cron_schedule == "50 * * * *"
    assert hourly_backup.default_status == dg.DefaultScheduleStatus.STOPPED
