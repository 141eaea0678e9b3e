"""``autotrader breaker``: show the trading circuit breaker, reset it with approval, read its audit.

The breaker lives in the deployment-state database (the registry URL of the settings). A reset
is the only way to re-enable trading after a trip: it needs ``--approved-by`` and ``--reason``
and writes an audit row. Usage mistakes exit 2 (click's convention); refusals (nothing to reset)
and database errors exit 1 with a one-line message.
"""

from __future__ import annotations

import json
from typing import Any

import click

from autotrader_assets.commands._common import domain_errors, nonblank
from autotrader_assets.settings import SettingsError, get_settings
from deploy_ops import metrics_push
from deploy_ops.trading.breaker import BreakerError, BreakerNotTrippedError, BreakerStatus, BreakerStore


def _open() -> BreakerStore:
    return BreakerStore(get_settings().registry_url)


#: Refusals (nothing to reset) and bad settings become one-line ``Error: ...`` messages, exit 1.
_domain_errors = domain_errors("breaker", lambda: (BreakerNotTrippedError, BreakerError, SettingsError))


def _pct(value: Any) -> str:
    return f"{float(value):.2%}" if isinstance(value, (int, float)) else "-"


def _money(value: Any) -> str:
    return f"{float(value):,.2f}" if isinstance(value, (int, float)) else "-"


def describe(status: BreakerStatus) -> str:
    """The status as operators read it."""
    lines = []
    if status.tripped:
        d = status.details or {}
        lines += [
            f"circuit breaker: TRIPPED (trip {status.trip_id}) -- trading is halted",
            f"  tripped at:  {status.tripped_at.isoformat() if status.tripped_at else '-'} (market time of the bar)",
            f"  recorded:    {status.recorded_at.isoformat() if status.recorded_at else '-'}",
            f"  reason:      {status.reason}",
            f"  equity:      {_money(d.get('equity'))}   day loss {_pct(d.get('day_loss'))}"
            f"   drawdown {_pct(d.get('drawdown'))}",
            "  re-enable:   autotrader breaker reset --approved-by NAME --reason TEXT",
        ]
    else:
        lines.append("circuit breaker: armed (not tripped) -- trading enabled")
        if status.trip_id is not None:
            lines += [
                f"  last trip:   {status.trip_id} at {status.tripped_at.isoformat() if status.tripped_at else '-'}: "
                f"{status.reason}",
                f"  reset:       {status.reset_at.isoformat() if status.reset_at else '-'} by {status.reset_by}: "
                f"{status.reset_reason}",
            ]
    return "\n".join(lines)


@click.group(name="breaker")
def group() -> None:
    """The trading circuit breaker: status, approved reset, audit history."""


@group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_domain_errors
def status_cmd(as_json: bool) -> None:
    """Show whether the breaker is tripped, why, and its last reset."""
    status = _open().status()
    if as_json:
        click.echo(json.dumps(status.to_dict(), indent=2, sort_keys=True))
    else:
        click.echo(describe(status))


@group.command("reset")
@click.option("--approved-by", required=True, callback=nonblank, help="Who approved re-enabling trading.")
@click.option("--reason", required=True, callback=nonblank, help="Why trading may resume.")
@_domain_errors
def reset_cmd(approved_by: str, reason: str) -> None:
    """Re-enable trading after a trip (writes an audit row)."""
    status = _open().reset(approved_by=approved_by, reason=reason)
    click.echo(
        f"circuit breaker reset: trip {status.trip_id} ({status.reason}) cleared by {status.reset_by}; "
        f"trading resumes from the next paper-trading date"
    )
    # The breaker's one group (paper_trading pushes there too), so the CircuitBreakerTripped alert resolves now rather
    # than at the next paper-trading run; a Pushgateway that is down only costs a warning.
    outcome = metrics_push.push_breaker(get_settings().pushgateway_url, status.tripped)
    if outcome.warning:
        click.echo(f"warning: {outcome.warning}", err=True)


@group.command("history")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_domain_errors
def history_cmd(limit: int, as_json: bool) -> None:
    """Trips and approved resets, newest first (the audit trail)."""
    records = _open().history(limit=limit)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in records], indent=2, sort_keys=True))
        return
    if not records:
        click.echo("no trips recorded")
        return
    for r in records:
        who = f" approved by {r.approved_by}" if r.approved_by else ""
        click.echo(
            f"{r.id:>5}  {r.recorded_at.isoformat()}  {r.action:<5}  market {r.market_at.isoformat()}{who}: {r.reason}"
        )
