"""``autotrader backup``: back up, list, verify and restore the registry/deployment-state database
and the warehouse (``deploy_ops/backup.py``).

Backups go to ``AUTOTRADER_BACKUP_URI`` (a folder, or ``s3://bucket/prefix``) unless ``--to`` /
``--from`` names another place. ``restore`` verifies every checksum first and refuses a backup
that fails, and never overwrites an existing database or warehouse without ``--force``.
Refusals exit 1 with a one-line message; usage mistakes exit 2.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Callable

import click

from autotrader_assets.commands._common import domain_errors, print_table
from autotrader_assets.settings import Settings, SettingsError, get_settings


def _refusals() -> tuple[type[BaseException], ...]:
    from autotrader_assets.resources import WarehouseBusyError
    from deploy_ops.backup import BackupError

    return BackupError, SettingsError, WarehouseBusyError


_domain_errors = domain_errors("registry", _refusals)


def _destination(settings: Settings, uri: str | None):
    from deploy_ops.backup import open_destination

    return open_destination(uri or settings.backup_uri, region=settings.aws_region)


def _connect(settings: Settings) -> Callable[..., Any]:
    # The code location's own wait: a backup or restore queues behind a writing run instead of failing.
    from autotrader_assets.resources import connect_waiting

    return functools.partial(connect_waiting, timeout_s=settings.warehouse_lock_timeout_s)


class _Bar:
    """A click progress bar on stderr, advanced by the domain's ``progress(label)`` callback."""

    def __init__(self, length: int, label: str):
        self._bar = click.progressbar(
            length=length, label=label, file=click.get_text_stream("stderr"), item_show_func=lambda item: item
        )

    def __enter__(self) -> Callable[[str], None]:
        bar = self._bar.__enter__()

        def tick(label: str) -> None:
            bar.update(1, label)

        return tick

    def __exit__(self, *exc: Any) -> None:
        self._bar.__exit__(*exc)


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


@click.group(name="backup")
def group() -> None:
    """Backups of the registry/deployment-state database and the warehouse (RPO 1 h)."""


@group.command("create")
@click.option("--to", "to_uri", metavar="URI", help="Folder or s3://bucket/prefix (default: AUTOTRADER_BACKUP_URI).")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@_domain_errors
def create_cmd(to_uri: str | None, as_json: bool) -> None:
    """Back up the registry database (SQLite online backup or pg_dump) and the warehouse."""
    from deploy_ops.backup import CREATE_STEPS, create_backup

    s = get_settings()
    destination = _destination(s, to_uri)
    with _Bar(CREATE_STEPS, "backing up") as tick:
        manifest = create_backup(
            destination, s.registry_url, s.warehouse_path, connect_warehouse=_connect(s), progress=tick
        )
    if as_json:
        click.echo(manifest.to_json().rstrip())
        return
    click.echo(
        f"backup {manifest.backup_id} written to {destination.uri} "
        f"({', '.join(manifest.components)}; {_human(manifest.size)})"
    )
    if "warehouse" not in manifest.components:
        click.echo(f"note: no warehouse at {s.warehouse_path} yet, so none was backed up")


@group.command("list")
@click.option(
    "--from", "from_uri", metavar="URI", help="Folder or s3://bucket/prefix (default: AUTOTRADER_BACKUP_URI)."
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_domain_errors
def list_cmd(from_uri: str | None, as_json: bool) -> None:
    """Backups at the destination, oldest first; incomplete or unreadable ones say why."""
    from deploy_ops.backup import list_backups

    listed = list_backups(_destination(get_settings(), from_uri))
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "backup_id": b.backup_id,
                        "problem": b.problem or None,
                        "manifest": json.loads(b.manifest.to_json()) if b.manifest else None,
                    }
                    for b in listed
                ],
                indent=2,
                sort_keys=True,
            )
        )
        return
    if not listed:
        click.echo("no backups")
        return
    rows = [
        [b.backup_id, b.manifest.created_at, ",".join(b.manifest.components), _human(b.manifest.size), "ok"]
        if b.manifest
        else [b.backup_id, "-", "-", "-", f"UNUSABLE: {b.problem}"]
        for b in listed
    ]
    print_table(["BACKUP", "CREATED", "COMPONENTS", "SIZE", "STATUS"], rows)


def _resolve_id(destination, backup_id: str) -> str:
    from deploy_ops.backup import latest_backup_id

    return latest_backup_id(destination) if backup_id == "latest" else backup_id


@group.command("verify")
@click.argument("backup_id")
@click.option(
    "--from", "from_uri", metavar="URI", help="Folder or s3://bucket/prefix (default: AUTOTRADER_BACKUP_URI)."
)
@_domain_errors
def verify_cmd(backup_id: str, from_uri: str | None) -> None:
    """Re-read every file of BACKUP_ID (or `latest`) and check its size and sha256."""
    from deploy_ops.backup import describe_backup, verify_backup

    destination = _destination(get_settings(), from_uri)
    backup_id = _resolve_id(destination, backup_id)
    manifest = describe_backup(destination, backup_id)
    with _Bar(len(manifest.files), f"verifying {backup_id}") as tick:
        verify_backup(destination, backup_id, progress=tick)
    click.echo(f"backup {backup_id} verified: {len(manifest.files)} files, every sha256 matches")


@group.command("restore")
@click.argument("backup_id")
@click.option(
    "--from", "from_uri", metavar="URI", help="Folder or s3://bucket/prefix (default: AUTOTRADER_BACKUP_URI)."
)
@click.option("--force", is_flag=True, help="Overwrite an existing registry database and warehouse.")
@_domain_errors
def restore_cmd(backup_id: str, from_uri: str | None, force: bool) -> None:
    """Verify BACKUP_ID (or `latest`), then restore the registry database and the warehouse from it."""
    from deploy_ops.backup import describe_backup, restore_backup, restore_steps

    s = get_settings()
    destination = _destination(s, from_uri)
    backup_id = _resolve_id(destination, backup_id)
    manifest = describe_backup(destination, backup_id)
    with _Bar(restore_steps(manifest), f"restoring {backup_id}") as tick:
        restore_backup(
            destination,
            backup_id,
            s.registry_url,
            s.warehouse_path,
            force=force,
            connect_warehouse=_connect(s),
            progress=tick,
        )
    click.echo(f"restored backup {backup_id} ({', '.join(manifest.components)}) from {destination.uri}")
    click.echo("next: autotrader deploy status; autotrader breaker status (see docs/runbooks/disaster-recovery.md)")
