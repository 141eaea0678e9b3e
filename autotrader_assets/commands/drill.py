"""``autotrader drill``: fire drills against the running platform (``autotrader_assets/drills.py``).

``autotrader drill breaker`` trips the circuit breaker of the configured stores (the embedded
default unless configured otherwise) while a Dagster daemon runs on ``DAGSTER_HOME`` (``make ui``
starts one), and prints the timeline of the platform's answer in seconds after the fault. It
refuses to start, injecting nothing (exit 1), when no daemon runs, the breaker is already tripped
or there is no known-good version to fall back to. Exit 1 too when a step was not observed within
``--timeout``. Runbook: ``docs/runbooks/fire-drill.md``.
"""
from __future__ import annotations

import click

from autotrader_assets.commands._common import default_actor, nonblank


@click.group("drill")
def group() -> None:
    """Fire drills: inject a fault with a daemon running and time the platform's answer."""


@group.command("breaker")
@click.option("--approved-by", default=None, callback=nonblank,
              help="Who approves the drill's breaker reset at the end (default: your login name).")
@click.option("--timeout", type=click.FloatRange(min=1.0), default=180.0, show_default=True,
              help="Seconds to wait for the whole answer before calling a step not observed.")
def breaker_cmd(approved_by: str | None, timeout: float) -> None:
    """Trip the breaker; time event, sensor, alert, emergency rollback, known-good traffic, resolution."""
    from autotrader_assets.drills import BreakerDrill, DrillError, open_instance
    from autotrader_assets.settings import SettingsError, get_settings

    try:
        settings = get_settings()
        actor = approved_by or default_actor()
        if not actor:
            raise click.UsageError("no login name is known: pass --approved-by NAME")
        with open_instance(settings) as instance:
            timeline = BreakerDrill(settings, instance, approved_by=actor).run(timeout=timeout, echo=click.echo)
    except (DrillError, SettingsError) as exc:
        raise click.ClickException(str(exc)) from exc
    for line in timeline.lines():
        click.echo(line)
    serving = timeline.seconds("traffic on known-good")
    if serving is not None:
        click.echo(f"measured: breaker trip -> known-good serving in {serving:.1f} s")
    if not timeline.succeeded:
        raise click.ClickException("the drill did not see every step: see the timeline above")
