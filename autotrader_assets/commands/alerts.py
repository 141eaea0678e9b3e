"""``autotrader alerts``: what the platform sends to Alertmanager, delivering it now, a test alert.

Alerts come from the deployment-state event log through the outbox
(``deploy_ops/alerting/outbox.py``). With ``AUTOTRADER_ALERTMANAGER_URL`` set they are delivered
(the ``alert_delivery_sensor`` does it every 30 s; ``flush`` does it now); without it they wait
in the outbox, and ``list`` shows what would have been sent.
"""

from __future__ import annotations

import json

import click

from autotrader_assets.commands._common import default_actor, domain_errors, print_table
from autotrader_assets.settings import SettingsError, get_settings
from deploy_ops import events
from deploy_ops.alerting import AlertmanagerClient, AlertmanagerError, Outbox
from deploy_ops.alerting.catalog import alert_section
from deploy_ops.state import SEVERITIES, DeploymentStateStore
from deploy_ops.text import truncate

_domain_errors = domain_errors("deployment-state", lambda: (AlertmanagerError, SettingsError, ValueError))


def _outbox() -> Outbox:
    s = get_settings()
    return Outbox(DeploymentStateStore(s.registry_url), runbook_base_url=s.runbook_base_url)


def _client() -> AlertmanagerClient | None:
    url = get_settings().alertmanager_url
    return AlertmanagerClient(url) if url else None


_NO_URL = (
    "AUTOTRADER_ALERTMANAGER_URL is not set: alerts wait in the outbox "
    "(`autotrader alerts list` shows what would be sent)"
)


@click.group(name="alerts")
def group() -> None:
    """Alerts to Alertmanager: list the outbox, deliver it now, send a test alert."""


@group.command("list")
@click.option("--status", type=click.Choice(["pending", "delivered", "all"]), default="all", show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (the payload Alertmanager gets).")
@_domain_errors
def list_cmd(status: str, limit: int, as_json: bool) -> None:
    """Alerts queued from the event log (new events are queued first), newest first."""
    outbox = _outbox()
    outbox.flush(None)  # queue only: listing never sends
    rows = outbox.rows(status=None if status == "all" else status, limit=limit)
    if as_json:
        from deploy_ops.db import utcnow

        now = utcnow()
        click.echo(
            json.dumps(
                [{**r.to_dict(), "payload": r.payload(now, outbox.runbook_base_url)} for r in rows],
                indent=2,
                sort_keys=True,
                default=str,
            )
        )
        return
    url = get_settings().alertmanager_url
    click.echo(f"Alertmanager: {url}" if url else _NO_URL)
    if not rows:
        click.echo("no alerts in the outbox")
        return
    print_table(
        ["id", "event", "action", "severity", "alertname", "dedup_key", "status", "tries", "summary"],
        [
            [
                str(r.id),
                str(r.event_id),
                r.action + ("" if not r.is_open else " (open)"),
                r.severity,
                r.alertname,
                truncate(r.dedup_key, 40),
                r.status,
                str(r.attempts),
                truncate(r.summary, 70)
                + (f" [last error: {truncate(r.last_error, 60)}]" if r.last_error and r.status == "pending" else ""),
            ]
            for r in rows
        ],
    )


@group.command("flush")
@click.option("--force", is_flag=True, help="Retry failed rows now instead of after their backoff.")
@_domain_errors
def flush_cmd(force: bool) -> None:
    """Queue new events' alerts and deliver every due one to Alertmanager now."""
    client = _client()
    result = _outbox().flush(client, force=force)
    click.echo(result.describe())
    if client is None:
        click.echo(_NO_URL)
    elif result.error:
        raise click.ClickException(f"Alertmanager did not take the alerts; they stay queued: {result.error}")


@group.command("test")
@click.option(
    "--severity",
    type=click.Choice(list(SEVERITIES)),
    required=True,
    help="Route to test: critical -> PagerDuty, warning -> Slack, info -> email.",
)
@_domain_errors
def test_cmd(severity: str) -> None:
    """Send a test alert of SEVERITY through the configured route (an AlertTest alert)."""
    s = get_settings()
    outbox = _outbox()
    who = default_actor() or "unknown"
    event = events.record(
        outbox.state,
        "alert_test",
        severity,
        f"test alert ({severity}) sent by {who} with `autotrader alerts test`",
        {"actor": who},
        runbook=alert_section("AlertTest"),
    )
    client = _client()
    result = outbox.flush(client, force=True)
    sent = [r for r in result.delivered_rows if r.event_id == event.id]
    if client is None:
        click.echo(f"test alert queued (event {event.id}, severity {severity}). {_NO_URL}")
        return
    if result.error or not sent:
        raise click.ClickException(
            f"test alert (event {event.id}) not delivered, it stays queued: {result.error or 'not due yet'}"
        )
    click.echo(
        f"test alert AlertTest ({severity}, dedup_key {sent[0].dedup_key}) delivered to {s.alertmanager_url}; "
        f"Alertmanager routes severity={severity} to its receiver"
    )
