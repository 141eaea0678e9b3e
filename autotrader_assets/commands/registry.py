"""``autotrader registry``: inspect model versions and move them between stages.

Every mutating command goes through ``deploy_ops.models.registry.ModelRegistry``, which writes the
audit and stage-history rows in the same transaction as the change. Usage mistakes exit with
code 2 (click's convention); domain refusals (unknown version, illegal transition, damaged
artifact) exit with code 1 and a one-line message.
"""

from __future__ import annotations

import json
from typing import Any

import click

from autotrader_assets.commands._common import domain_errors, nonblank, print_table, printable
from autotrader_assets.commands._common import resolve_actor as _actor
from autotrader_assets.settings import SettingsError, get_settings
from deploy_ops.models.artifacts import ArtifactNotFoundError
from deploy_ops.models.bundle import ArtifactIntegrityError
from deploy_ops.models.registry import (
    STAGES,
    ModelRegistry,
    ModelVersion,
    RegistryError,
    StageChange,
    open_registry,
)

_PROMOTE_TARGETS = tuple(s for s in STAGES if s != "failed")


def _open() -> ModelRegistry:
    settings = get_settings()
    return open_registry(
        settings.registry_url,
        settings.artifacts_uri,
        aws_region=settings.aws_region,
        s3_endpoint_url=settings.s3_endpoint_url or None,
    )


#: Registry and configuration errors become one-line ``Error: ...`` messages, exit code 1.
_domain_errors = domain_errors(
    "registry", lambda: (RegistryError, ArtifactIntegrityError, ArtifactNotFoundError, SettingsError, ValueError)
)


def _fmt_metrics(metrics: dict[str, Any], limit: int = 4) -> str:
    parts = []
    for key in sorted(metrics)[:limit]:
        value = metrics[key]
        parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    if len(metrics) > limit:
        parts.append("...")
    return " ".join(parts) or "-"


def _describe(mv: ModelVersion) -> None:
    click.echo(f"version:      {mv.version}")
    click.echo(f"name:         {mv.name}")
    click.echo(f"stage:        {mv.stage}")
    click.echo(f"created_at:   {mv.created_at.isoformat()}")
    click.echo(f"description:  {mv.description or '-'}")
    click.echo(f"artifact_uri: {mv.artifact_uri}")
    click.echo(f"sha256:       {mv.sha256}")
    for label, data in (("metrics", mv.metrics), ("params", mv.params), ("lineage", mv.lineage)):
        click.echo(f"{label + ':':<13} {json.dumps(data, sort_keys=True) if data else '-'}")


def _history_rows(changes: list[StageChange]) -> list[list[str]]:
    return [
        [
            c.at.strftime("%Y-%m-%d %H:%M:%S"),
            str(c.version),
            f"{c.from_stage or '(new)'} -> {c.to_stage}",
            c.action,
            c.actor,
            c.reason or "-",
        ]
        for c in changes
    ]


@click.group(name="registry")
def group() -> None:
    """Model registry: list versions, promote, roll back, mark failed, show history."""


@group.command(name="list")
@click.option("--stage", type=click.Choice(STAGES), default=None, help="Only versions in this stage.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_domain_errors
def list_cmd(stage: str | None, as_json: bool) -> None:
    """List model versions, oldest first."""
    versions = _open().list_versions(stage)
    if as_json:
        click.echo(json.dumps([v.to_dict() for v in versions], indent=2, sort_keys=True))
        return
    if not versions:
        click.echo("no model versions" + (f" in stage {stage}" if stage else ""))
        return
    print_table(
        ["VERSION", "NAME", "STAGE", "CREATED", "SHA256", "METRICS"],
        [
            [
                str(v.version),
                v.name,
                v.stage,
                v.created_at.strftime("%Y-%m-%d %H:%M"),
                v.sha256[:12],
                _fmt_metrics(v.metrics),
            ]
            for v in versions
        ],
    )


@group.command(name="get")
@click.argument("version", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@_domain_errors
def get_cmd(version: int, as_json: bool) -> None:
    """Show one model version: stage, metrics, params, lineage and artifact."""
    mv = _open().get(version)
    if as_json:
        click.echo(json.dumps(mv.to_dict(), indent=2, sort_keys=True))
    else:
        _describe(mv)


@group.command(name="promote")
@click.argument("version", type=int)
@click.option("--to", "to", type=click.Choice(_PROMOTE_TARGETS), required=True, help="Target stage.")
@click.option("--reason", default="", callback=printable, help="Why (recorded in the audit trail).")
@click.option("--actor", default=None, callback=nonblank, help="Who is doing this (default: $USER).")
@_domain_errors
def promote_cmd(version: int, to: str, reason: str, actor: str | None) -> None:
    """Move VERSION to another stage; promoting to production archives the current one."""
    registry = _open()
    before = registry.get(version)
    previous = registry.get_production() if to == "production" else None
    mv = registry.promote(version, to=to, actor=_actor(actor), reason=reason)
    click.echo(f"version {mv.version}: {before.stage} -> {mv.stage}")
    if previous is not None and previous.version != mv.version:
        click.echo(f"version {previous.version}: production -> archived")


@group.command(name="rollback")
@click.option("--to", "to_version", type=int, required=True, help="Version to put back in production.")
@click.option("--reason", required=True, callback=nonblank, help="Why (recorded in the audit trail).")
@click.option("--actor", default=None, callback=nonblank, help="Who is doing this (default: $USER).")
@click.option(
    "--mark-failed",
    is_flag=True,
    help="Mark the outgoing production version failed instead of archived.",
)
@_domain_errors
def rollback_cmd(to_version: int, reason: str, actor: str | None, mark_failed: bool) -> None:
    """Return production to an earlier (archived or staging) version."""
    registry = _open()
    previous = registry.get_production()
    mv = registry.rollback(to_version, actor=_actor(actor), reason=reason, mark_failed=mark_failed)
    if previous is not None:
        click.echo(f"version {previous.version}: production -> {'failed' if mark_failed else 'archived'}")
    click.echo(f"version {mv.version}: now production")


@group.command(name="mark-failed")
@click.argument("version", type=int)
@click.option("--reason", required=True, callback=nonblank, help="Why (recorded in the audit trail).")
@click.option("--actor", default=None, callback=nonblank, help="Who is doing this (default: $USER).")
@_domain_errors
def mark_failed_cmd(version: int, reason: str, actor: str | None) -> None:
    """Mark VERSION failed so it can never be promoted or rolled back to."""
    registry = _open()
    before = registry.get(version)
    mv = registry.mark_failed(version, actor=_actor(actor), reason=reason)
    click.echo(f"version {mv.version}: {before.stage} -> {mv.stage}")


@group.command(name="history")
@click.argument("version", type=int, required=False)
@click.option(
    "--production", "production_only", is_flag=True, help="Show which version held production, when, and why."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_domain_errors
def history_cmd(version: int | None, production_only: bool, as_json: bool) -> None:
    """Show stage changes (of VERSION, or of all versions), oldest first."""
    registry = _open()
    if production_only:
        if version is not None:
            raise click.UsageError("--production shows all versions; do not pass VERSION")
        periods = registry.production_history()
        if as_json:
            click.echo(json.dumps([p.to_dict() for p in periods], indent=2, sort_keys=True))
            return
        if not periods:
            click.echo("no version has held production yet")
            return
        print_table(
            ["VERSION", "SINCE", "UNTIL", "BY", "REASON", "ENDED"],
            [
                [
                    str(p.version),
                    p.since.strftime("%Y-%m-%d %H:%M:%S"),
                    p.until.strftime("%Y-%m-%d %H:%M:%S") if p.until else "(current)",
                    f"{p.action}/{p.actor}",
                    p.reason or "-",
                    f"{p.ended_by_action}/{p.ended_by_actor}: {p.ended_reason or '-'}" if p.until else "-",
                ]
                for p in periods
            ],
        )
        return
    changes = registry.history(version)
    if as_json:
        click.echo(json.dumps([c.to_dict() for c in changes], indent=2, sort_keys=True))
        return
    if not changes:
        click.echo("no stage changes recorded")
        return
    print_table(["AT", "VERSION", "CHANGE", "ACTION", "ACTOR", "REASON"], _history_rows(changes))
