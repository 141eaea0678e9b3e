"""``autotrader deploy``: serving status, gated rollouts, traffic switches and rollbacks.

Every command opens the same stack the Dagster assets use (``defs/deployment/stack.py``):
registry and deployment state from settings, local slot processes or ECS by profile. Usage
mistakes exit with code 2; refusals and failed rollouts exit with code 1 and say why.
"""

from __future__ import annotations

import json
from typing import Any

import click

from autotrader_assets.commands._common import domain_errors, nonblank, one_line, print_table
from autotrader_assets.commands._common import resolve_actor as _actor
from autotrader_assets.settings import get_settings
from deploy_ops.slots.names import SLOTS
from deploy_ops.text import truncate

#: Column widths of `deploy status` (one terminal line per row; `deploy status --json` has the full texts).
HEALTH_WIDTH, REASON_WIDTH, MESSAGE_WIDTH = 60, 80, 100


def _positive(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not value > 0:
        raise click.BadParameter("must be a positive number of seconds", ctx=ctx, param=param)
    return value


def _refusals() -> tuple[type[BaseException], ...]:
    """Refusals and infrastructure failures of the deployment stack (imported on failure only)."""
    from deploy_ops.models.artifacts import ArtifactNotFoundError
    from deploy_ops.models.bundle import ArtifactIntegrityError
    from deploy_ops.models.registry import RegistryError
    from deploy_ops.rollback import RollbackError
    from deploy_ops.rollout.errors import RolloutError
    from deploy_ops.slots.ecs.errors import DeploymentError
    from deploy_ops.slots.local import MissingTokenError, SlotInUseError, SlotStartError
    from deploy_ops.state import DeploymentInProgressError, StateError

    return (
        RegistryError,
        RollbackError,
        RolloutError,
        DeploymentInProgressError,
        StateError,
        SlotStartError,
        SlotInUseError,
        MissingTokenError,
        DeploymentError,
        ArtifactIntegrityError,
        ArtifactNotFoundError,
        LookupError,
        ValueError,
    )


_domain_errors = domain_errors("state", _refusals)


def _stack(stage_seconds: float | None = None):
    from autotrader_assets.defs.deployment.stack import stack_from_settings

    return stack_from_settings(get_settings(), stage_seconds=stage_seconds)


@click.group(name="deploy")
def group() -> None:
    """Serving slots and model rollouts: status, rollout, traffic switch, rollbacks."""


@group.command(name="status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option(
    "--events",
    "n_events",
    default=10,
    show_default=True,
    type=click.IntRange(0, 1000),
    help="How many recent warning/critical events to show.",
)
@_domain_errors
def status_cmd(as_json: bool, n_events: int) -> None:
    """Production version, slots (with a live health probe), routing, deployments and recent events."""
    from autotrader_assets.defs.deployment.stack import (
        ECS_CONFIG_ENV,
        event_rows,
        status_stack_from_settings,
        summarize_slots,
    )
    from deploy_ops.rollout.recovery import WATCH_INTERVAL_SECONDS
    from deploy_ops.state import DEFAULT_ROUTE

    # Status only reads the shared state: it works without the ECS document (slots then not probed).
    stack = status_stack_from_settings(get_settings())
    backend = stack.backend.kind if stack.backend is not None else f"ecs (not probed: {ECS_CONFIG_ENV} is not set)"
    production = stack.registry.get_production()
    slots = summarize_slots(stack)
    routes = stack.state.routing_table()
    default = routes.get(DEFAULT_ROUTE)
    per_slot = {s: sorted(i for i in stack.policy.instruments if routes.get(i, default) == s) for s in SLOTS}
    active = stack.state.active_deployment()
    owner_json = _owner(stack, active) if active is not None else None
    deployments = stack.state.deployments(limit=5)
    # The log pages oldest-first; looking back over the last 500 ids finds the recent ones cheaply.
    events = (
        stack.state.events_since(max(0, stack.state.last_event_id() - 500), min_severity="warning", limit=1000)[
            -n_events:
        ]
        if n_events
        else []
    )
    if as_json:
        click.echo(
            json.dumps(
                {
                    "backend": backend,
                    "production_version": production.version if production else None,
                    "slots": slots,
                    "routing": routes,
                    "instruments_by_slot": per_slot,
                    "active_deployment": {**_deployment_dict(active), "owner": owner_json} if active else None,
                    "recent_deployments": [_deployment_dict(d) for d in deployments],
                    "events": event_rows(events),
                },
                indent=2,
                sort_keys=True,
                default=str,
            )
        )
        return
    click.echo(f"backend:    {backend}")
    click.echo(
        f"production: {'version ' + str(production.version) if production else 'none (the first rollout bootstraps)'}"
    )
    click.echo(
        f"routing:    default -> {default or '(none)'}; "
        + "; ".join(f"{s}: {len(per_slot[s])} instrument(s)" for s in SLOTS)
    )
    if active is not None:
        owner = owner_json["owner"] or "unknown"
        if owner_json["alive"]:
            click.echo(
                f"RUNNING:    deployment {active.id} of version {active.version}, stage {active.stage}, "
                f"owner {owner} ({owner_json['detail']})"
            )
        else:
            click.echo(
                f"INTERRUPTED: deployment {active.id} of version {active.version} at stage {active.stage}: "
                f"its owner {owner} is DEAD ({owner_json['detail']}). interrupted_deployment_sensor "
                f"recovers it within {WATCH_INTERVAL_SECONDS} s when the Dagster daemon runs; "
                f"now: autotrader deploy recover"
            )
    click.echo("")
    if slots:
        print_table(
            ["SLOT", "STATUS", "VERSION", "HEALTH", "URL", "PID", "INSTRUMENTS"],
            [
                [
                    s["slot"],
                    s["status"],
                    s["version"] or "-",
                    "ok"
                    if s["healthy"]
                    else truncate(s["detail"], HEALTH_WIDTH)
                    if s["healthy"] is None
                    else f"DOWN ({truncate(s['detail'], HEALTH_WIDTH)})",
                    s["url"] or "-",
                    str(s["pid"] or "-"),
                    ",".join(per_slot.get(s["slot"], [])) or "-",
                ]
                for s in slots
            ],
        )
    else:
        click.echo("no slot has ever been started")
    if deployments:
        click.echo("")
        print_table(
            ["DEPLOYMENT", "VERSION", "SLOT", "STATUS", "STAGE", "STARTED", "REASON"],
            [
                [
                    str(d.id),
                    d.version,
                    d.slot or "-",
                    d.status,
                    d.stage,
                    d.started_at.strftime("%Y-%m-%d %H:%M:%S"),
                    truncate(one_line(d.reason or "-"), REASON_WIDTH),
                ]
                for d in deployments
            ],
        )
    if events:
        click.echo("")
        print_table(
            ["EVENT", "AT", "SEVERITY", "KIND", "MESSAGE"],
            [
                [
                    str(e.id),
                    e.at.strftime("%Y-%m-%d %H:%M:%S"),
                    e.severity,
                    e.kind,
                    truncate(one_line(e.message), MESSAGE_WIDTH),
                ]
                for e in events
            ],
        )


def _owner(stack: Any, active: Any) -> dict[str, Any]:
    """Who runs the active deployment and whether they are still alive (lease and pid)."""
    from deploy_ops.rollout.leases import LeaseStore, owner_liveness

    lease = LeaseStore(stack.state).get(active.id)
    alive, detail = owner_liveness(lease, active.started_at, stack.policy.lease_timeout_seconds)
    return {
        "owner": lease.owner if lease else None,
        "alive": alive,
        "detail": detail,
        "heartbeat_at": lease.heartbeat_at.isoformat() if lease else None,
    }


def _record(stack: Any, *, change: str, outcome: str, summary: str, extra: dict[str, Any] | None = None) -> None:
    """Leave the production_deployment asset's record of what serves now on the Dagster instance
    (DAGSTER_HOME), as the Dagster jobs do; production already changed, so a failure here is a
    warning on stderr, not a failed command."""
    try:
        from autotrader_assets.defs.deployment.record import production_materialization, report_outside_a_run
        from autotrader_assets.instance import cli_instance

        instance = cli_instance(get_settings())
        if instance is None:
            click.echo(
                "warning: no Dagster instance (DAGSTER_HOME has no dagster.yaml): the production_deployment "
                "asset does not show this change",
                err=True,
            )
            return
        with instance:
            report_outside_a_run(
                instance,
                production_materialization(
                    stack.registry, stack.state, change=change, outcome=outcome, summary=summary, extra=extra
                ),
            )
    except Exception as exc:  # the change itself succeeded; say what was not recorded
        click.echo(f"warning: the production_deployment asset was not updated: {type(exc).__name__}: {exc}", err=True)


def _rollback_record(stack: Any, report: Any, change: str) -> None:
    _record(
        stack,
        change=change,
        outcome="rolled_back",
        summary=f"{change.replace('_', ' ')} by {report.actor}: version {report.to_version} serves from slot "
        f"{report.slot} (was {report.from_version}): {report.reason}",
        extra={"from_version": report.from_version if report.from_version is not None else "-"},
    )


def _deployment_dict(d: Any) -> dict[str, Any]:
    return {
        "id": d.id,
        "version": d.version,
        "slot": d.slot,
        "status": d.status,
        "stage": d.stage,
        "started_at": d.started_at.isoformat(),
        "finished_at": d.finished_at.isoformat() if d.finished_at else None,
        "reason": d.reason,
    }


@group.command(name="list-versions")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_domain_errors
def list_versions_cmd(as_json: bool) -> None:
    """Model versions with their stage and the slot serving each, newest first."""
    stack = _stack()
    slots = stack.state.slots()
    serving = {}
    for slot, info in slots.items():
        if info.is_ready and info.version is not None:
            serving.setdefault(info.version, []).append(slot)
    versions = list(reversed(stack.registry.list_versions()))
    rows = [
        {
            "version": v.version,
            "stage": v.stage,
            "name": v.name,
            "created_at": v.created_at.isoformat(),
            "sha256": v.sha256,
            "serving_slots": sorted(serving.get(str(v.version), [])),
        }
        for v in versions
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2, sort_keys=True))
        return
    if not rows:
        click.echo("no model versions registered")
        return
    print_table(
        ["VERSION", "STAGE", "NAME", "CREATED", "SHA256", "SERVING"],
        [
            [
                str(r["version"]),
                r["stage"],
                r["name"],
                r["created_at"][:19].replace("T", " "),
                r["sha256"][:12],
                ",".join(r["serving_slots"]) or "-",
            ]
            for r in rows
        ],
    )


@group.command(name="rollout")
@click.argument("version", type=int)
@click.option(
    "--stage-seconds",
    type=float,
    default=None,
    callback=_positive,
    help="Seconds each traffic stage watches live traffic (default: settings, AUTOTRADER_STAGE_SECONDS).",
)
@click.option(
    "--traffic-rows",
    type=click.IntRange(2, 100_000),
    default=240,
    show_default=True,
    help="Newest bar_features rows per instrument replayed through the slots.",
)
@click.option("--actor", default=None, callback=nonblank, help="Who runs it (default: $USER).")
@click.option(
    "--drill-error-rate",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    help="Drill: the candidate answers this fraction of /predict calls with 500 (local slots only).",
)
@click.option(
    "--drill-latency-ms",
    type=click.FloatRange(0.0, 600_000.0),
    default=None,
    help="Drill: the candidate adds this many milliseconds to every /predict (local slots only).",
)
@_domain_errors
def rollout_cmd(
    version: int,
    stage_seconds: float | None,
    traffic_rows: int,
    actor: str | None,
    drill_error_rate: float | None,
    drill_latency_ms: float | None,
) -> None:
    """Roll VERSION (a staging version) out: canary, 25%, 50%, 100%, gated; rolled back on any gate."""
    from autotrader_assets.defs.deployment.report import GATE_HEADERS, gate_rows, rollout_title
    from autotrader_assets.defs.deployment.stack import WarehouseTrafficSource
    from deploy_ops.rollout.policy import plan_stages
    from deploy_ops.serving.faults import FaultConfig

    actor = _actor(actor)
    settings = get_settings()
    stack = _stack(stage_seconds)
    bootstrap = stack.registry.get_production() is None
    names = [
        "pre_deploy_checks",
        "deploy",
        "smoke_test",
        *[p.name for p in plan_stages(stack.policy, bootstrap=bootstrap)],
        "finalize",
    ]
    traffic = WarehouseTrafficSource(settings.warehouse_path, stack.policy.instruments, rows=traffic_rows)
    failures: list[str] = []
    with click.progressbar(
        length=len(names),
        label=f"rollout of version {version}",
        show_pos=True,
        item_show_func=lambda s: s,
        file=click.get_text_stream("stderr"),
    ) as bar:

        def progress(stage: str, report: Any) -> None:
            if report is None:
                bar.update(0, stage)
                return
            bar.update(1, stage)
            if not report.passed:
                failures.append(f"{stage}: {report.reason}")

        drill = FaultConfig(error_rate=drill_error_rate or 0.0, latency_ms=drill_latency_ms or 0.0)
        report = stack.controller(actor=actor, progress=progress).run(
            version, traffic, candidate_faults=drill if drill.active else None
        )
    # A terminal table, not the Markdown of the asset's metadata: aligned columns, no pipes.
    click.echo(rollout_title(report))
    print_table([h.upper() for h in GATE_HEADERS], gate_rows(report))
    if report.reason:
        click.echo(f"Reason: {report.reason}")
    if report.outcome != "refused":
        _record(
            stack,
            change="rollout" if report.succeeded else "automatic_rollback",
            outcome=report.outcome,
            summary=f"rollout of version {version} by {actor}: {report.outcome}"
            + (f" at {report.failed_stage}: {one_line(report.reason or '')}" if not report.succeeded else ""),
            extra={"candidate_version": report.version, "failed_stage": report.failed_stage or "-"},
        )
    if not report.succeeded:
        raise click.ClickException(f"rollout of version {version} {report.outcome}: {one_line(report.reason or '')}")
    click.echo(f"version {version} serves 100% of traffic from slot {report.candidate_slot}")


@group.command(name="switch-traffic")
@click.option("--to", "to_slot", type=click.Choice(SLOTS), required=True, help="Slot to receive every instrument.")
@click.option("--reason", default="manual traffic switch", show_default=True, callback=nonblank)
@click.option("--force", is_flag=True, help="Switch even if the slot does not serve the production version.")
@click.option("--actor", default=None, callback=nonblank, help="Who asks (default: $USER).")
@_domain_errors
def switch_traffic_cmd(to_slot: str, reason: str, force: bool, actor: str | None) -> None:
    """Send every instrument to one slot now (it must be ready and healthy)."""
    from deploy_ops.rollback import switch_traffic

    stack = _stack()
    table = switch_traffic(
        stack.registry, stack.state, stack.backend, to_slot, actor=_actor(actor), reason=reason, force=force
    )
    _record(
        stack,
        change="traffic_switch",
        outcome="switched",
        summary=f"all traffic to slot {to_slot} by {_actor(actor)}: {reason}",
    )
    click.echo(f"all traffic -> {to_slot} ({len(table)} route(s))")


@group.command(name="recover")
@click.option("--actor", default=None, callback=nonblank, help="Who asks (default: $USER).")
@_domain_errors
def recover_cmd(actor: str | None) -> None:
    """Recover a deployment whose owner died (traffic back on the live slot) and make sure every
    route is on a healthy slot serving the production version; refuses while the owner is alive."""
    from deploy_ops.rollback import ensure_production_serving
    from deploy_ops.rollout.recovery import find_orphaned

    stack = _stack()
    who = _actor(actor)
    active = stack.state.active_deployment()
    orphan = find_orphaned(stack.state, lease_timeout_seconds=stack.policy.lease_timeout_seconds)
    if active is not None and orphan is None:
        raise click.ClickException(
            f"deployment {active.id} of version {active.version} is running and its owner is "
            f"alive; it gates and rolls back on its own (emergency-rollback preempts it)"
        )
    why = (
        f"deployment {orphan.deployment_id} of version {orphan.version} left at stage {orphan.stage} by "
        f"{orphan.owner or 'an unknown owner'} ({orphan.why})"
        if orphan
        else "serving verified by hand"
    )
    report = ensure_production_serving(
        stack.registry,
        stack.state,
        stack.backend,
        actor=who,
        reason=why,
        lease_timeout_seconds=stack.policy.lease_timeout_seconds,
    )
    for action in report.actions:
        click.echo(f"- {action}")
    if report.to_version is None:
        click.echo("no production version: nothing to serve")
        return
    _record(
        stack,
        change="interrupted_rollout_recovered" if orphan else "restore_serving",
        outcome="restored",
        summary=f"{why}; version {report.to_version} serves from slot {report.slot}",
    )
    click.echo(f"production is version {report.to_version}, served from slot {report.slot}")


@group.command(name="rollback")
@click.option("--to", "to_version", type=int, required=True, help="Version to return production to.")
@click.option("--reason", required=True, callback=nonblank, help="Why (recorded in the audit trail).")
@click.option("--mark-failed", is_flag=True, help="Also mark the version leaving production as failed.")
@click.option("--actor", default=None, callback=nonblank, help="Who asks (default: $USER).")
@_domain_errors
def rollback_cmd(to_version: int, reason: str, mark_failed: bool, actor: str | None) -> None:
    """Return production to a named version, served from a freshly started slot."""
    from deploy_ops.rollback import manual_rollback

    stack = _stack()
    report = manual_rollback(
        stack.registry,
        stack.state,
        stack.backend,
        to_version,
        reason=reason,
        actor=_actor(actor),
        mark_current_failed=mark_failed,
    )
    for action in report.actions:
        click.echo(f"- {action}")
    _rollback_record(stack, report, "manual_rollback")
    click.echo(f"production is version {report.to_version}, served from slot {report.slot}")


@group.command(name="emergency-rollback")
@click.option(
    "--reason", default="emergency rollback to the last known-good version", show_default=True, callback=nonblank
)
@click.option("--keep-current", is_flag=True, help="Archive the current production version instead of failing it.")
@click.option("--actor", default=None, callback=nonblank, help="Who asks (default: $USER).")
@_domain_errors
def emergency_rollback_cmd(reason: str, keep_current: bool, actor: str | None) -> None:
    """Everything to the last known-good version, now (minimal checks)."""
    from deploy_ops.rollback import emergency_rollback

    stack = _stack()
    report = emergency_rollback(
        stack.registry,
        stack.state,
        stack.backend,
        reason=reason,
        actor=_actor(actor),
        mark_current_failed=not keep_current,
    )
    for action in report.actions:
        click.echo(f"- {action}")
    _rollback_record(stack, report, "emergency_rollback")
    click.echo(f"production is version {report.to_version}, served from slot {report.slot}")


@group.command(name="stop")
@click.option("--slot", "slots", type=click.Choice([*SLOTS, "all"]), default="all", show_default=True)
@click.option("--reason", required=True, callback=nonblank, help="Why serving stops (recorded as an event).")
@click.option("--actor", default=None, callback=nonblank, help="Who asks (default: $USER).")
@_domain_errors
def stop_cmd(slots: str, reason: str, actor: str | None) -> None:
    """Stop local serving processes (e.g. after `make run`); the routing table is left as it is.

    Predictions for instruments routed to a stopped slot fail until a slot is started again
    (`autotrader deploy rollback --to VERSION` or a new rollout).
    """
    stack = _stack()
    deployer = getattr(stack.backend, "deployer", None)
    if getattr(stack.backend, "kind", "") != "local" or deployer is None:
        raise click.ClickException("`deploy stop` manages local slot processes; on ECS scale the services instead")
    who = _actor(actor)
    for slot in SLOTS if slots == "all" else (slots,):
        info = stack.state.get_slot(slot)
        if info is None or info.status == "stopped":
            click.echo(f"{slot}: not running")
            continue
        deployer.stop_slot(slot, force=True)
        stack.state.record_event(
            "slot_stopped",
            f"{slot} stopped by {who}: {reason}",
            severity="warning",
            details={"slot": slot, "actor": who, "reason": reason},
        )
        click.echo(f"{slot}: stopped")
