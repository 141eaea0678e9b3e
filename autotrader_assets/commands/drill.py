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
@click.option(
    "--approved-by",
    default=None,
    callback=nonblank,
    help="Who approves the drill's breaker reset at the end (default: your login name).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1.0),
    default=180.0,
    show_default=True,
    help="Seconds to wait for the whole answer before calling a step not observed.",
)
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


def _print(timeline, measured: str | None, seconds: float | None) -> None:
    for line in timeline.lines():
        click.echo(line)
    if measured and seconds is not None:
        click.echo(f"measured: {measured} in {seconds:.1f} s")
    if not timeline.succeeded:
        raise click.ClickException("the drill did not see every step: see the timeline above")


def _timeout_option(default: float):
    return click.option(
        "--timeout",
        type=click.FloatRange(min=1.0),
        default=default,
        show_default=True,
        help="Seconds to wait for the whole answer before calling a step not observed.",
    )


@group.command("drift")
@click.option(
    "--date",
    "day",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    required=True,
    help="A date paper trading served (model_confidence has it) whose features the drill moves.",
)
@click.option(
    "--shift",
    type=float,
    default=5.0,
    show_default=True,
    help="Standard deviations every feature of that date moves (negative: down); not 0.",
)
@click.option(
    "--restore",
    is_flag=True,
    help="Only put back the rows a drift drill left in its backup (after an interrupted drill).",
)
@_timeout_option(600.0)
def drift_cmd(day, shift: float, restore: bool, timeout: float) -> None:
    """Move a served date's features, materialize feature_drift; time event, sensor, alert,
    rollback or retrain run, known-good traffic; then put the rows back so the drift clears."""
    from autotrader_assets.drills import DriftDrill, DrillError, open_instance
    from autotrader_assets.settings import SettingsError, get_settings

    if shift == 0 and not restore:
        raise click.BadParameter("a shift of 0 injects no drift", param_hint="--shift")
    try:
        settings = get_settings()
        with open_instance(settings) as instance:
            drill = DriftDrill(settings, instance, date=day.date(), shift=shift)
            if restore:
                click.echo(f"restored {drill.restore()} row(s) of {day.date()} from the drill's backup")
                return
            timeline = drill.run(timeout=timeout, echo=click.echo)
    except (DrillError, SettingsError) as exc:
        raise click.ClickException(str(exc)) from exc
    _print(timeline, "drift -> rollback/retrain run", timeline.seconds("rollback/retrain run"))


@group.command("slot-crash")
@_timeout_option(300.0)
def slot_crash_cmd(timeout: float) -> None:
    """SIGKILL the live slot's process (local profile); time who notices and what restores traffic."""
    from autotrader_assets.drills import DrillError, SlotCrashDrill, open_instance
    from autotrader_assets.settings import SettingsError, get_settings

    try:
        settings = get_settings()
        with open_instance(settings) as instance:
            timeline = SlotCrashDrill(settings, instance).run(timeout=timeout, echo=click.echo)
    except (DrillError, SettingsError) as exc:
        raise click.ClickException(str(exc)) from exc
    _print(timeline, "slot crash -> healthy serving", timeline.seconds("traffic on known-good"))


@group.command("error-rate")
@click.option(
    "--error-rate",
    type=click.FloatRange(min=0.0, max=1.0, min_open=True),
    default=0.2,
    show_default=True,
    help="Share of /predict the faulty slot answers with 500 (0 < r <= 1).",
)
@click.option(
    "--fault-seconds",
    type=click.FloatRange(min=1.0),
    default=120.0,
    show_default=True,
    help="Longest the fault stays in (it is removed earlier once its alert fired).",
)
@_timeout_option(600.0)
def error_rate_cmd(error_rate: float, fault_seconds: float, timeout: float) -> None:
    """Restart the live slot answering 5xx, send it traffic; time /metrics, alert, rollback; fault off."""
    from autotrader_assets.drills import DrillError, ErrorRateDrill, open_instance
    from autotrader_assets.settings import SettingsError, get_settings

    if fault_seconds > timeout:
        raise click.BadParameter("must not exceed --timeout", param_hint="--fault-seconds")
    try:
        settings = get_settings()
        with open_instance(settings) as instance:
            drill = ErrorRateDrill(settings, instance, error_rate=error_rate, fault_seconds=fault_seconds)
            timeline = drill.run(timeout=timeout, echo=click.echo)
    except (DrillError, SettingsError) as exc:
        raise click.ClickException(str(exc)) from exc
    _print(timeline, "fault -> error rate visible", timeline.seconds("error rate visible"))
