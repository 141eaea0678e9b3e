"""`make run`: materialize the whole asset graph on the embedded default and summarise it.

Each stage is an ordinary Dagster run on the persistent local instance, so everything it
built can be browsed afterwards with `make ui`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from dataclasses import dataclass, field

import dagster as dg

from autotrader_assets.defs.training import TRAINING_RECIPE
from autotrader_assets.instance import local_instance
from autotrader_assets.settings import Settings, get_settings


@dataclass
class StageReport:
    name: str
    run_id: str
    success: bool
    seconds: float
    checks_passed: int = 0
    checks_failed: list[str] = field(default_factory=list)
    materializations: int = 0
    #: check name -> the partitions whose result failed (partitioned checks only).
    failed_partitions: dict[str, list[str]] = field(default_factory=dict)
    #: "step: why" of each failed step (a rolled-back rollout says which gate, with its numbers).
    step_failures: list[str] = field(default_factory=list)


#: The embedded replay source's demo window: the 8 days the end-to-end test
#: (tests/integration/test_end_to_end.py) proves clear every promotion and rollout gate. The replay
#: bars of a date are deterministic, but whether a 30% test period of 2-3 days ends in profit depends
#: on the date, so a window that moved with the calendar made `make run` pass or stop at the gates
#: by the day of the month. A fixed window makes every `make run` the same run.
REPLAY_WINDOW_END = dt.date(2024, 3, 14)
REPLAY_WINDOW_DAYS = 8
REPLAY_PAPER_DAYS = 2
#: Days `make run` takes from a real source when AUTOTRADER_RUN_DAYS is not set.
OTHER_SOURCE_DAYS = 14


def default_dates(days: int, today: dt.date | None = None, end: dt.date | None = None) -> list[str]:
    """``days`` complete UTC days ending at ``end`` (default yesterday), oldest first."""
    last = end or (today or dt.datetime.now(dt.timezone.utc).date()) - dt.timedelta(days=1)
    return [(last - dt.timedelta(days=d)).isoformat() for d in range(days - 1, -1, -1)]


def _why(evaluation) -> str | None:
    """Why a check result failed: its description, else its ``reason`` metadata (the promotion
    gates put their reason there)."""
    reason = evaluation.metadata.get("reason")
    return evaluation.description or (str(reason.value) if reason is not None else None)


def _report(name: str, result: dg.ExecuteInProcessResult, seconds: float) -> StageReport:
    """The run's outcome; a check counts once, failed if any of its partitions' results failed
    (partitioned checks record one result per partition: the failed ones are named)."""
    rep = StageReport(name, result.run_id, result.success, seconds)
    judged: dict[tuple[str, str, str], list] = {}
    for ev in result.all_events:
        if ev.event_type_value == "ASSET_CHECK_EVALUATION":
            data = ev.event_specific_data
            key = (data.asset_key.to_user_string(), data.check_name, data.severity.value)
            judged.setdefault(key, []).append(data)
        elif ev.event_type_value == "ASSET_MATERIALIZATION":
            rep.materializations += 1
    for (asset, check, severity), results in judged.items():
        failed = [r for r in results if not r.passed]
        if not failed:
            rep.checks_passed += 1
            continue
        line = f"{asset}:{check} ({severity})"
        if any(r.partition for r in results):
            rep.failed_partitions.setdefault(check, []).extend(r.partition for r in failed)
        if len({r.partition for r in results}) > 1:
            names = [r.partition for r in failed]
            line += f" on {len(failed)} of {len(results)} partitions: {', '.join(names[:5])}" + (
                f" and {len(names) - 5} more" if len(names) > 5 else ""
            )
            if len(failed) == 1 and failed[0].description:
                line += f" ({failed[0].description})"
        elif _why(failed[0]):
            line += f": {_why(failed[0])}"
        rep.checks_failed.append(line)
    for ev in result.all_events:
        if ev.event_type_value != "STEP_FAILURE":
            continue
        data = ev.event_specific_data
        if data.user_failure_data is not None and data.user_failure_data.description:
            why = data.user_failure_data.description
        elif data.error is not None and data.error.cls_name != "DagsterAssetCheckFailedError":
            why = f"{data.error.cls_name}: {data.error.message.strip()}"
        else:
            continue  # a blocking check failed: its line above says which and why
        rep.step_failures.append(f"{ev.step_key}: {why}")
    return rep


def run_data_pipeline(
    defs: dg.Definitions, instance: dg.DagsterInstance, dates: list[str], instruments: list[str]
) -> StageReport:
    """Market bars and dbt features for dates x instruments in one single-run backfill."""
    from autotrader_assets.defs.market_data.partitions import range_tags

    job = defs.resolve_job_def("data_pipeline")
    tags = range_tags(dates[0], dates[-1], instruments)
    t0 = time.perf_counter()
    result = job.execute_in_process(instance=instance, tags=tags, raise_on_error=False)
    return _report("data_pipeline", result, time.perf_counter() - t0)


#: Training run config of `make run`: the platform's training recipe.
TRAINING_RUN_CONFIG = TRAINING_RECIPE


def run_training(defs: dg.Definitions, instance: dg.DagsterInstance) -> StageReport:
    """training_dataset -> candidate_model (+ promotion gates) -> registered_model."""
    job = defs.resolve_job_def("training_job")
    t0 = time.perf_counter()
    result = job.execute_in_process(instance=instance, run_config=TRAINING_RUN_CONFIG, raise_on_error=False)
    return _report("training", result, time.perf_counter() - t0)


def run_deployment(defs: dg.Definitions, instance: dg.DagsterInstance) -> StageReport:
    """production_deployment: blue/green rollout of the newest staging model, gated stage by stage."""
    job = defs.resolve_job_def("deployment_pipeline")
    t0 = time.perf_counter()
    result = job.execute_in_process(instance=instance, raise_on_error=False)
    return _report("deployment", result, time.perf_counter() - t0)


def run_paper_trading(defs: dg.Definitions, instance: dg.DagsterInstance, dates: list[str]) -> StageReport:
    """paper_trading over ``dates`` (one single-run backfill) and trading_performance."""
    from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

    job = defs.resolve_job_def("paper_trading_job")
    tags = {ASSET_PARTITION_RANGE_START_TAG: dates[0], ASSET_PARTITION_RANGE_END_TAG: dates[-1]}
    run_config = {"ops": {"paper_trading": {"config": PAPER_TRADING_CONFIG}}}
    t0 = time.perf_counter()
    result = job.execute_in_process(instance=instance, tags=tags, run_config=run_config, raise_on_error=False)
    return _report("paper_trading", result, time.perf_counter() - t0)


def run_health_check(defs: dg.Definitions, instance: dg.DagsterInstance, dates: list[str]) -> StageReport:
    """feature_drift (+ feature_drift_psi) and model_health for each paper-traded date, one run
    per date (the drift sensor reads one check result per date and model version)."""
    job = defs.resolve_job_def("health_check")
    total = StageReport("health_check", "", True, 0.0)
    for date in dates:
        t0 = time.perf_counter()
        result = job.execute_in_process(instance=instance, partition_key=date, raise_on_error=False)
        rep = _report("health_check", result, time.perf_counter() - t0)
        total.run_id = rep.run_id
        total.success &= rep.success
        total.seconds += rep.seconds
        total.checks_passed += rep.checks_passed
        total.checks_failed += [f"{date} {c}" for c in rep.checks_failed]
        total.materializations += rep.materializations
    return total


def health_summary(path: str, dates: list[str], lock_timeout_s: float = 300.0) -> list[str]:
    """The stored health findings of ``dates``, worst first within each date."""
    from autotrader_assets.defs.monitoring.health import read_findings
    from autotrader_assets.resources import connect_waiting

    con = connect_waiting(path, read_only=True, timeout_s=lock_timeout_s)
    try:
        frame = read_findings(con, dates)
    finally:
        con.close()
    return [f"  {r.date}  {r.severity:<8} {r.check:<12} {r.summary}  [{r.runbook}]" for r in frame.itertuples()]


#: Printed beside the paper account when the bars come from the embedded replay source.
SYNTHETIC_NOTE = (
    "  (replay data: synthetic prices with a planted momentum signal the model can learn; "
    "these returns say nothing about a real market)"
)


def paper_lines(paper: list[str], market_source: str) -> list[str]:
    """The paper account's days, with what they are worth when the bars are synthetic."""
    return ["paper account:", *([SYNTHETIC_NOTE] if market_source == "replay" else []), *paper]


def replay_check_notes(failed: dict[str, list[str]], seed: int) -> list[str]:
    """What the market_bars warnings on replay data mean. The replay source drops 20-90
    consecutive minutes on about 3% of days on purpose, so ``market_bars_completeness`` has
    something real to find: each failed partition is matched with its planted outage. It plants
    no bad prints, so an outlier it shows is not expected and is said to be so."""
    from autotrader_assets.defs.market_data.replay import ReplaySource

    source = ReplaySource(seed=seed)
    lines = []
    incomplete = failed.get("market_bars_completeness", [])
    if incomplete:
        lines.append(
            "    expected: the replay source plants outages (20-90 missing minutes on ~3% of days) "
            "so that this check has something to find; the check is working:"
        )
        for part in incomplete:
            date, instrument = part.split("|", 1)
            outage = source.planted_outage(instrument, date)
            lines.append(
                f"      {part}: planted outage of {outage[1]} minutes from {outage[0]:%H:%M} UTC"
                if outage
                else f"      {part}: not a planted outage: look at it "
                f"(`autotrader data validate --start {date} --instrument {instrument}`)"
            )
    if failed.get("market_bars_outliers"):
        lines.append(
            "    not expected: the replay source plants no bad prints; look at these partitions' "
            "market_bars_outliers results in the UI"
        )
    return lines


#: Paper trading takes its signal thresholds from the production model's registry params.
PAPER_TRADING_CONFIG: dict = {}


def freshness_note(checks_failed: list[str], last_date: str) -> list[str]:
    """Why ``market_bars_freshness`` warns after a run of a historical window (the replay demo)."""
    if not any("market_bars_freshness" in c for c in checks_failed):
        return []
    return [
        f"    expected: this run's window ends {last_date}, so yesterday's bars are not there; in operation "
        "`daily_data_pipeline` fetches yesterday and `market_data_freshness_hourly` runs this check"
    ]


def trading_summary(path: str, lock_timeout_s: float = 300.0) -> list[str]:
    from autotrader_assets.resources import connect_waiting

    con = connect_waiting(path, read_only=True, timeout_s=lock_timeout_s)
    try:
        tables = {r[0] for r in con.execute("select table_name from information_schema.tables").fetchall()}
        if "paper_account_state" not in tables:
            return []
        rows = con.execute(
            "select cast(date as varchar), day_open_equity, end_equity, n_fills, trip_reason "
            "from paper_account_state order by date"
        ).fetchall()
    finally:
        con.close()
    return [
        f"  {d}  equity {o:>12,.2f} -> {e:>12,.2f}  ({(e / o - 1):+.2%})  fills={n}"
        + (f"  BREAKER: {trip}" if trip else "")
        for d, o, e, n, trip in rows
    ]


def warehouse_summary(path: str, lock_timeout_s: float = 300.0) -> dict[str, object]:
    """Rows and partitions of the published tables, and the partitions whose newest version
    was quarantined (waits for a writer like every warehouse reader)."""
    from autotrader_assets.resources import connect_waiting

    con = connect_waiting(path, read_only=True, timeout_s=lock_timeout_s)
    try:
        out: dict[str, object] = {}
        tables = {r[0] for r in con.execute("select table_name from information_schema.tables").fetchall()}
        for table in ("market_bars", "bar_features"):
            if table in tables:
                rows, parts = con.execute(
                    f"select count(*), count(distinct (date, instrument)) from {table}"
                ).fetchone()
                out[table] = {"rows": rows, "partitions": parts}
                if "quarantined_partitions" in tables:
                    out[table]["quarantined"] = con.execute(
                        "select count(*) from (select date, instrument, max(quarantined_at) as q "
                        "from quarantined_partitions where layer = ? group by all) q "
                        "left join published_partitions p on p.layer = ? and p.date = q.date "
                        "and p.instrument = q.instrument where p.published_at is null or q.q > p.published_at",
                        [table, table],
                    ).fetchone()[0]
        return out
    finally:
        con.close()


def parse_args(argv: list[str] | None, settings: Settings) -> argparse.Namespace:
    """`make run`'s options; the number of days defaults to the settings' (AUTOTRADER_RUN_DAYS)."""
    parser = argparse.ArgumentParser(description="Materialize the autotrader asset graph on the embedded default.")
    replay = settings.market_source == "replay"
    parser.add_argument(
        "--days",
        type=int,
        default=settings.run_days
        if settings.run_days is not None
        else (REPLAY_WINDOW_DAYS if replay else OTHER_SOURCE_DAYS),
        help="Complete UTC days to materialize, ending at --end (default AUTOTRADER_RUN_DAYS, else the replay "
        f"source's fixed {REPLAY_WINDOW_DAYS}-day demo window, or {OTHER_SOURCE_DAYS} days for other sources).",
    )
    parser.add_argument(
        "--end",
        type=dt.date.fromisoformat,
        default=REPLAY_WINDOW_END if replay else None,
        help=f"Last day (YYYY-MM-DD); default {REPLAY_WINDOW_END} for the replay source, yesterday otherwise.",
    )
    parser.add_argument(
        "--paper-days",
        type=int,
        default=REPLAY_PAPER_DAYS if replay else 3,
        help="Most recent days to paper-trade (out of sample).",
    )
    args = parser.parse_args(argv)
    if args.days < 1:
        parser.error(f"--days (or AUTOTRADER_RUN_DAYS) must be at least 1, got {args.days}")
    if args.paper_days < 1:
        parser.error(f"--paper-days must be at least 1, got {args.paper_days}")
    return args


def main(argv: list[str] | None = None) -> int:
    settings = get_settings()
    args = parse_args(argv, settings)
    instance = local_instance(settings)
    from autotrader_assets.definitions import defs

    dates = default_dates(args.days, end=args.end)
    instruments = list(settings.instruments)
    print(
        f"autotrader: {len(dates)} day(s) {dates[0]}..{dates[-1]} x {len(instruments)} instrument(s), source={settings.market_source}"
    )
    reports = [run_data_pipeline(defs, instance, dates, instruments)]
    if reports[-1].success:
        reports.append(run_training(defs, instance))
    if reports[-1].success:
        reports.append(run_deployment(defs, instance))
    if reports[-1].success:
        paper_dates = dates[-args.paper_days :]
        reports.append(run_paper_trading(defs, instance, paper_dates))
    paper_traded = reports[-1].name == "paper_trading" and reports[-1].success
    if paper_traded:
        reports.append(run_health_check(defs, instance, paper_dates))

    print("\n=== summary ===")
    ok = True
    for r in reports:
        ok &= r.success
        status = "ok" if r.success else "FAILED"
        print(
            f"{r.name:<22} {status:<7} {r.seconds:6.1f}s  materializations={r.materializations}  "
            f"checks passed={r.checks_passed} failed={len(r.checks_failed)}  run={r.run_id}"
        )
        for failed in r.checks_failed:
            print(f"    check not passed: {failed}")
        for failed in r.step_failures:
            print(f"    step failed: {failed}")
        if r.name == "data_pipeline" and settings.market_source == "replay":
            for line in replay_check_notes(r.failed_partitions, settings.replay_seed):
                print(line)
            for line in freshness_note(r.checks_failed, dates[-1]):
                print(line)
    from autotrader_assets.resources import WarehouseBusyError

    try:
        tables = warehouse_summary(str(settings.warehouse_path), settings.warehouse_lock_timeout_s)
        paper = trading_summary(str(settings.warehouse_path), settings.warehouse_lock_timeout_s)
        health = (
            health_summary(str(settings.warehouse_path), paper_dates, settings.warehouse_lock_timeout_s)
            if paper_traded
            else []
        )
    except WarehouseBusyError as exc:
        # A reader never crashes: the runs above are reported, the tables are not.
        tables, paper, health = {}, [], []
        print(f"warehouse summary unavailable: {exc}")
    for table, info in tables.items():
        print(
            f"{table:<22} rows={info['rows']:,} partitions={info['partitions']}"
            + (
                f" quarantined={info['quarantined']} (see `autotrader data validate`)"
                if info.get("quarantined")
                else ""
            )
        )
    if paper:
        print("\n".join(paper_lines(paper, settings.market_source)))
    if health:
        print("model health (table model_health; what to do: docs/runbooks/feature-drift.md):")
        print("\n".join(health))
    print(f"warehouse:   {settings.warehouse_path}")
    print(f"archive:     {settings.archive_uri}")
    print(f"DAGSTER_HOME {settings.dagster_home}  (browse it with `make ui`)")
    print(
        "serving slots keep running: `autotrader deploy status`; stop them with `autotrader deploy stop --reason TEXT`"
        if ok
        else ""
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
