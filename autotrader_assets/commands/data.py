"""`autotrader data`: validate warehouse partitions and inspect the archive."""

from __future__ import annotations

import datetime as dt
import json

import click
import duckdb

from autotrader_assets.commands._common import nonblank, one_line
from autotrader_assets.settings import get_settings


def _date_range(start: str, end: str) -> list[str]:
    from autotrader_assets.defs.market_data.archive import validate_date

    a, b = dt.date.fromisoformat(validate_date(start)), dt.date.fromisoformat(validate_date(end))
    if b < a:
        raise click.BadParameter(f"--end {end} is before --start {start}")
    return [(a + dt.timedelta(days=i)).isoformat() for i in range((b - a).days + 1)]


#: Partitions validated per warehouse read.
VALIDATE_CHUNK = 64


@click.group(name="data")
def group() -> None:
    """Market data: validate partitions, list the archive."""


#: Exit codes of `autotrader data validate`.
EXIT_OK, EXIT_INVALID, EXIT_UNREADABLE = 0, 1, 2


@group.command("validate")
@click.option("--start", required=True, help="First date, YYYY-MM-DD.")
@click.option("--end", default=None, help="Last date (default: --start).")
@click.option("--instrument", "instruments", multiple=True, help="Instrument (repeatable; default: all configured).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
def validate(start: str, end: str | None, instruments: tuple[str, ...], as_json: bool) -> None:
    """Run the pandera schema and completeness rules on the published warehouse partitions,
    and show each partition's publication state (published, quarantined, missing).

    Exit codes: 0 every partition is published and valid; 1 validation failed (a partition
    fails the schema, is missing, or its newest fetch was quarantined); 2 the warehouse could
    not be read (absent, or locked by a writer for longer than AUTOTRADER_WAREHOUSE_LOCK_TIMEOUT),
    or the arguments are wrong.
    """
    from autotrader_assets.defs.market_data.archive import validate_instrument
    from autotrader_assets.defs.market_data.publish import partition_status
    from autotrader_assets.defs.market_data.validation import missing_fractions, partition_failures
    from autotrader_assets.defs.market_data.warehouse import read_partitions
    from autotrader_assets.resources import WarehouseBusyError, connect_waiting

    settings = get_settings()
    try:
        dates = _date_range(start, end or start)
        insts = [validate_instrument(i) for i in (instruments or settings.instruments)]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc

    def unreadable(message: str) -> None:
        click.echo(f"Error: could not read the warehouse: {message}", err=True)
        raise SystemExit(EXIT_UNREADABLE)

    if not settings.warehouse_path.exists():
        unreadable(f"no warehouse at {settings.warehouse_path}: run `make run` first")
    pairs = [(d, i) for d in dates for i in insts]
    report, bad = [], 0
    try:
        con = connect_waiting(str(settings.warehouse_path), read_only=True, timeout_s=settings.warehouse_lock_timeout_s)
    except WarehouseBusyError as exc:
        unreadable(str(exc))
    except duckdb.Error as exc:
        unreadable(str(exc).splitlines()[0])
    try:
        with click.progressbar(length=len(pairs), label="validating", file=click.get_text_stream("stderr")) as bar:
            for k in range(0, len(pairs), VALIDATE_CHUNK):
                chunk = pairs[k : k + VALIDATE_CHUNK]
                df = read_partitions(con, chunk)
                _rows, failed, cases = partition_failures(chunk, df, calendar=settings.calendar_for)
                per_part_cases = cases.groupby("partition").size() if not cases.empty else {}
                per_part_rows = df.groupby(["date", "instrument"]).size() if len(df) else {}
                fractions = missing_fractions(df, chunk, calendar=settings.calendar_for)
                bars_state = partition_status(con, "market_bars", chunk).set_index(["date", "instrument"])
                feat_state = partition_status(con, "bar_features", chunk).set_index(["date", "instrument"])
                for date, inst in chunk:
                    key = f"{date}|{inst}"
                    rows = int(per_part_rows.get((date, inst), 0))
                    state = bars_state.loc[(date, inst)]
                    quarantined = state["state"] in ("quarantined", "published; newer version quarantined")
                    bad += key in failed or quarantined
                    report.append(
                        {
                            "date": date,
                            "instrument": inst,
                            "rows": rows,
                            "schema_passed": key not in failed,
                            "failures": int(per_part_cases.get(key, 0)) if rows else "partition missing",
                            "missing_fraction": fractions[key],
                            "bars": state["state"],
                            "features": feat_state.loc[(date, inst)]["state"],
                            "quarantine_reasons": state["quarantine_reasons"] if quarantined else None,
                        }
                    )
                bar.update(len(chunk))
    except duckdb.Error as exc:
        unreadable(str(exc).splitlines()[0])
    finally:
        con.close()
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        for r in report:
            flag = "ok  " if r["schema_passed"] and not r["quarantine_reasons"] else "FAIL"
            click.echo(
                f"{flag} {r['date']} {r['instrument']:<10} rows={r['rows']:>5} missing={r['missing_fraction']:.2%} "
                f"failures={r['failures']} bars={r['bars']} features={r['features']}"
                + (f" quarantined: {r['quarantine_reasons']}" if r["quarantine_reasons"] else "")
            )
    if bad:
        click.echo(f"Error: {bad} partition(s) failed validation", err=True)
        raise SystemExit(EXIT_INVALID)


def failure_cause(result) -> str:
    """What made a run fail, for the last line a terminal shows: the innermost error of the first
    failed step (Dagster wraps the user's exception: its own message only says the step failed),
    as ``ErrorClass: first line``."""
    failure = next((e for e in result.all_events if e.is_step_failure), None)
    if failure is None:
        return "see the run in the Dagster UI"
    error = failure.step_failure_data.error if failure.step_failure_data else None
    if error is None:
        return one_line(failure.message or "see the run in the Dagster UI")
    while error.cause is not None:
        error = error.cause
    return f"{error.cls_name}: {one_line(error.message)}" if error.cls_name else one_line(error.message)


@group.command("restore")
@click.option("--date", "date", required=True, help="Date to restore, YYYY-MM-DD.")
@click.option("--end", default=None, help="Last date of a range (default: --date).")
@click.option("--instrument", default=None, help="One instrument (default: every configured instrument).")
@click.option(
    "--reason", required=True, callback=nonblank, help="Why the data is being rolled back (kept in the run tags)."
)
@click.option(
    "--version",
    "archive_version",
    default="latest",
    show_default=True,
    help="Archive version: latest, previous (the file a re-fetch replaced), or a stamp from `data archive-versions`.",
)
def restore(date: str, end: str | None, instrument: str | None, reason: str, archive_version: str) -> None:
    """Data rollback: restore archived partitions over the warehouse and rebuild features.

    Runs the Dagster `data_rollback` job on the local instance. Nothing is overwritten unless
    every selected partition has an archive.
    """
    from autotrader_assets.defs.market_data.archive import validate_date, validate_instrument
    from autotrader_assets.defs.market_data.partitions import range_tags
    from autotrader_assets.instance import local_instance

    settings = get_settings()
    try:
        first = validate_date(date)
        last = validate_date(end or date)
        insts = [validate_instrument(instrument)] if instrument else None
        tags = range_tags(first, last, insts)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    if not reason.strip():
        raise click.BadParameter("--reason must not be empty")
    from autotrader_assets.definitions import defs
    from autotrader_assets.defs.market_data.archive import is_version_stamp

    if archive_version not in ("latest", "previous") and not is_version_stamp(archive_version):
        raise click.BadParameter(f"--version {archive_version!r}: use latest, previous or a stamp")
    tags["autotrader/reason"] = reason.strip()
    tags["autotrader/archive_version"] = archive_version
    click.echo(f"restoring {first}..{last} {instrument or 'all instruments'} from {settings.archive_uri}")
    result = defs.resolve_job_def("data_rollback").execute_in_process(
        instance=local_instance(settings), tags=tags, raise_on_error=False
    )
    if not result.success:
        raise click.ClickException(f"data rollback failed (run {result.run_id}): {failure_cause(result)}")
    click.echo(f"restored; features rebuilt (run {result.run_id})")


@group.command("archive-versions")
@click.option("--date", "date", required=True, help="Partition date, YYYY-MM-DD.")
@click.option("--instrument", required=True, help="Instrument, e.g. BTCUSDT.")
def archive_versions(date: str, instrument: str) -> None:
    """List the superseded archive files of a partition (oldest first), for `data restore --version`."""
    from autotrader_assets.defs.market_data.archive import open_archive, validate_date, validate_instrument

    try:
        validate_date(date)
        validate_instrument(instrument)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    settings = get_settings()
    client = None
    if settings.archive_is_s3:
        import boto3  # the same region and endpoint override as the code location's archive

        client = boto3.client("s3", region_name=settings.aws_region, endpoint_url=settings.s3_endpoint_url or None)
    store = open_archive(settings.archive_uri, s3_client=client)
    if not store.exists(date, instrument):
        raise click.ClickException(f"no archive for {date} {instrument} in {store.uri}")
    click.echo(f"latest    {store.location(date, instrument)}")
    for stamp in store.versions(date, instrument):
        click.echo(f"{stamp}")
