"""Data pipeline throughput: replay -> pandera -> archive -> warehouse -> dbt features.

Runs the real Dagster assets (one single-run backfill, in-process executor) over N bars and
prints bars/s beside the named baseline: the same feature set computed by ONE raw DuckDB SQL
statement over the same bars, in the same process. The ratio (pipeline time / raw SQL time) is
the figure; the target is <= 3x. Peak memory (this process and the dbt subprocess) is printed.

    .venv/bin/python benchmarks/data_pipeline.py                 # 1M and 5M bars
    .venv/bin/python benchmarks/data_pipeline.py --bars 200000   # a quick look
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import math
import os
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: The feature columns of bar_features; the equality check compares every one of them.
FEATURE_COLUMNS = [
    "ret_1",
    "ret_5",
    "ret_15",
    "ret_60",
    "rv_15",
    "rv_60",
    "rsi_14",
    "macd",
    "macd_signal",
    "macd_hist",
    "bb_pos_20",
    "volume_z_60",
    "range_hl",
    "range_co",
]

# The same definitions as dbt_project/models/features/bar_features.sql, as one statement:
# horizons in minutes (the last close at or before ts - k minutes, RANGE frames), segments of
# consecutive published days, 60-minute warm-up. Computed the way the model computes them:
# windows ordered by epoch_us(ts), the return's previous close as lag(close, bars in
# (ts - k min, ts]), narrow window stages with open/high/low/date joined back at the end.
RAW_FEATURES_SQL = """
create or replace table raw_features as
with seg_days as (
    select instrument, date, date - cast(row_number() over (partition by instrument order by date) as integer) as seg
    from published_partitions where layer = 'market_bars' and (interval_s is null or interval_s = 60)
), bars as (
    select m.*, s.seg from market_bars m join seg_days s using (instrument, date)
), counted as (
    select instrument, seg, ts, t_us, close, volume, first_value(ts) over w as seg_start,
        count(*) over (w range between 59999999 preceding and current row) as n1,
        count(*) over (w range between 299999999 preceding and current row) as n5,
        count(*) over (w range between 899999999 preceding and current row) as n15,
        count(*) over (w range between 3599999999 preceding and current row) as n60
    from (select *, epoch_us(ts) as t_us from bars)
    window w as (partition by instrument, seg order by t_us)
), prior as (
    select *, lag(close, n1) over w as c1, lag(close, n5) over w as c5, lag(close, n15) over w as c15,
        lag(close, n60) over w as c60
    from counted
    window w as (partition by instrument, seg order by t_us)
), base as (
    select *, ln(close / c1) as ret_1, ln(close / c5) as ret_5, ln(close / c15) as ret_15, ln(close / c60) as ret_60,
        greatest(close - c1, 0) as gain, greatest(c1 - close, 0) as loss
    from prior
), rolling as (
    select instrument, seg, ts, t_us, close, volume, seg_start, ret_1, ret_5, ret_15, ret_60,
        stddev_samp(ret_1) over (w range between 840000000 preceding and current row) as rv_15,
        stddev_samp(ret_1) over (w range between 3540000000 preceding and current row) as rv_60,
        greatest(avg(gain) over (w range between 780000000 preceding and current row), 0) as ag,
        greatest(avg(loss) over (w range between 780000000 preceding and current row), 0) as al,
        avg(close) over (w range between 660000000 preceding and current row) as s12,
        avg(close) over (w range between 1500000000 preceding and current row) as s26,
        avg(close) over (w range between 1140000000 preceding and current row) as s20,
        stddev_samp(close) over (w range between 1140000000 preceding and current row) as sd20,
        avg(volume) over (w range between 3540000000 preceding and current row) as vm,
        stddev_samp(volume) over (w range between 3540000000 preceding and current row) as vs
    from base
    window w as (partition by instrument, seg order by t_us)
), sig as (
    select *, (s12 - s26) / close as macd,
        avg((s12 - s26) / close) over (partition by instrument, seg order by t_us range between 480000000 preceding and current row) as macd_signal,
        ts >= seg_start + interval 60 minute as warm
    from rolling
)
select b.instrument, b.ts, b.date, b.open, b.high, b.low, b.close, b.volume,
    case when warm then ret_1 end as ret_1, case when warm then ret_5 end as ret_5,
    case when warm then ret_15 end as ret_15, case when warm then ret_60 end as ret_60,
    case when warm then rv_15 end as rv_15, case when warm then rv_60 end as rv_60,
    case when warm then (case when ag + al = 0 then 50.0 else 100.0 * (ag / (ag + al)) end) end as rsi_14,
    case when warm then macd end as macd, case when warm then macd_signal end as macd_signal,
    case when warm then macd - macd_signal end as macd_hist,
    case when warm then (case when sd20 > 0 then (s.close - s20) / (2 * sd20) else 0.0 end) end as bb_pos_20,
    case when warm then (case when vs > 0 then (s.volume - vm) / vs else 0.0 end) end as volume_z_60,
    case when warm then (b.high - b.low) / b.close end as range_hl,
    case when warm then (b.close - b.open) / b.open end as range_co
from sig s join bars b using (instrument, ts)
"""

#: Largest |difference| over every feature column, and the rows where only one side is NULL.
FEATURE_DIFF_SQL = (
    "select greatest(" + ", ".join(f"coalesce(max(abs(a.{c} - b.{c})), 0)" for c in FEATURE_COLUMNS) + "), "
    "sum("
    + " + ".join(f"case when (a.{c} is null) <> (b.{c} is null) then 1 else 0 end" for c in FEATURE_COLUMNS)
    + ") "
    "from bar_features a join raw_features b using (instrument, ts)"
)


def run_once(n_bars: int, workdir: Path) -> dict:
    import dagster as dg
    import duckdb

    from autotrader_assets.definitions import build_resources
    from autotrader_assets.defs.features import feature_assets
    from autotrader_assets.defs.market_data import market_data_assets, market_data_checks
    from autotrader_assets.defs.market_data.partitions import range_tags
    from autotrader_assets.settings import DEFAULT_INSTRUMENTS, get_settings

    instruments = list(DEFAULT_INSTRUMENTS)
    days = math.ceil(n_bars / (1440 * len(instruments)))
    first = dt.date(2020, 1, 1)
    last = first + dt.timedelta(days=days - 1)
    # The code location's own resources, built from the settings with every store in workdir.
    settings = dataclasses.replace(
        get_settings(),
        home=workdir,
        dagster_home=workdir / "dagster_home",
        warehouse_path=workdir / "warehouse.duckdb",
        archive_uri=str(workdir / "archive"),
        artifacts_uri=str(workdir / "artifacts"),
        registry_url=f"sqlite:///{workdir / 'registry.db'}",
        market_source="replay",
        replay_seed=11,
    )
    resources = build_resources(settings)
    print(f"\n--- {n_bars:,} bars requested: {days} days x {len(instruments)} instruments ---", flush=True)

    t0 = time.perf_counter()
    result = dg.materialize(
        [*market_data_assets, *feature_assets, *market_data_checks],
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
        tags=range_tags(first.isoformat(), last.isoformat(), instruments),
    )
    pipeline_s = time.perf_counter() - t0
    assert result.success
    steps = step_seconds(result)

    db = str(workdir / "warehouse.duckdb")
    con = duckdb.connect(db)
    bars = con.execute("select count(*) from market_bars").fetchall()[0][0]
    feats = con.execute("select count(*) from bar_features").fetchall()[0][0]
    # Baseline: one raw SQL statement over the same bars, best of 3 (warm file cache).
    raw = []
    for _ in range(3):
        t1 = time.perf_counter()
        con.execute(RAW_FEATURES_SQL)
        raw.append(time.perf_counter() - t1)
    raw_rows = con.execute("select count(*) from raw_features").fetchall()[0][0]
    # Same numbers: the pipeline's features equal the raw statement's (a benchmark of wrong work is worthless).
    diff, null_mismatches = con.execute(FEATURE_DIFF_SQL).fetchone()
    con.close()
    raw_s = min(raw)
    archive_files = sum(1 for _ in (workdir / "archive").rglob("*.parquet"))
    return {
        "bars": bars,
        "features": feats,
        "raw_rows": raw_rows,
        "pipeline_s": pipeline_s,
        "raw_s": raw_s,
        "archive_files": archive_files,
        "max_feature_diff": diff,
        "null_mismatches": null_mismatches,
        "steps": steps,
    }


def run_stages(n_bars: int, workdir: Path) -> dict:
    """The same work without the orchestrator: replay -> pandera (one lazy validation) ->
    archive (staged, then promoted) -> publish to the warehouse -> one `dbt build` -> publish the
    features. What is left of the Dagster figure is Dagster's per-partition bookkeeping."""
    import json
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    import duckdb
    import pandas as pd

    from autotrader_assets.defs.features.project import DBT_PROJECT_DIR, dbt_executable, write_profiles
    from autotrader_assets.defs.market_data.archive import LocalArchive
    from autotrader_assets.defs.market_data.publish import DuckDBPublisher, PublishBatch, detect_interval_seconds
    from autotrader_assets.defs.market_data.replay import ReplaySource
    from autotrader_assets.defs.market_data.validation import validate_bars
    from autotrader_assets.settings import DEFAULT_INSTRUMENTS

    instruments = list(DEFAULT_INSTRUMENTS)
    days = math.ceil(n_bars / (1440 * len(instruments)))
    dates = [(dt.date(2020, 1, 1) + dt.timedelta(days=d)).isoformat() for d in range(days)]
    source, archive = ReplaySource(seed=11), LocalArchive(workdir / "archive")
    db = workdir / "warehouse.duckdb"
    timings: dict[str, float] = {}

    t = time.perf_counter()
    frames = {(d, i): source.day_bars(i, d) for d in dates for i in instruments}
    timings["replay"] = time.perf_counter() - t

    t = time.perf_counter()
    report = validate_bars(pd.concat([f.assign(date=d) for (d, _), f in frames.items()], ignore_index=True))
    assert report.passed
    timings["pandera"] = time.perf_counter() - t

    t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2) as pool:
        staged = dict(
            zip(frames, pool.map(lambda kv: archive.stage(kv[0][0], kv[0][1], kv[1], "bench"), frames.items()))
        )
    timings["archive"] = time.perf_counter() - t

    t = time.perf_counter()
    con = duckdb.connect(str(db))
    items = list(frames.items())
    for k in range(0, len(items), 256):
        chunk = dict(items[k : k + 256])
        DuckDBPublisher(con).publish(
            PublishBatch(
                "market_bars",
                "bench",
                passed=chunk,
                intervals={key: detect_interval_seconds(df) for key, df in chunk.items()},
            )
        )
    con.close()
    timings["warehouse"] = time.perf_counter() - t

    t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda key: archive.promote(key[0], key[1], "bench", staged[key]), frames))
    timings["archive"] += time.perf_counter() - t

    t = time.perf_counter()
    profiles = write_profiles(db, workdir / "dbt_profiles")
    subprocess.run(
        [
            dbt_executable(),
            "build",
            "--quiet",
            "--profiles-dir",
            str(profiles),
            "--target-path",
            str(workdir / "dbt_target"),
            "--vars",
            json.dumps({"dates": dates, "instruments": instruments}),
        ],
        cwd=DBT_PROJECT_DIR,
        check=True,
        env={**os.environ, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"},
    )
    timings["dbt"] = time.perf_counter() - t

    t = time.perf_counter()
    con = duckdb.connect(str(db))
    DuckDBPublisher(con).publish(
        PublishBatch("bar_features", "bench", audit_relation="bar_features_audit", passed_keys=list(frames))
    )
    con.close()
    timings["publish features"] = time.perf_counter() - t

    con = duckdb.connect(str(db))
    bars = con.execute("select count(*) from market_bars").fetchall()[0][0]
    raw = []
    for _ in range(3):
        t = time.perf_counter()
        con.execute(RAW_FEATURES_SQL)
        raw.append(time.perf_counter() - t)
    con.close()
    return {"bars": bars, "total_s": sum(timings.values()), "raw_s": min(raw), "timings": timings}


def step_seconds(result) -> dict[str, float]:
    """Wall seconds per step of the run (from the STEP_SUCCESS events)."""
    return {
        ev.step_key: ev.event_specific_data.duration_ms / 1000
        for ev in result.all_events
        if ev.event_type_value == "STEP_SUCCESS"
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bars", type=int, nargs="+", default=[1_000_000, 5_000_000])
    args = parser.parse_args()
    print("baseline: the same features by one raw DuckDB SQL statement over the same bars (same process)")
    for n in args.bars:
        with tempfile.TemporaryDirectory(prefix="atbench-") as tmp:
            r = run_once(n, Path(tmp))
        self_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(
            f"bars in warehouse        {r['bars']:>12,}   (feature rows {r['features']:,}; raw SQL rows {r['raw_rows']:,}; archive files {r['archive_files']:,})"
        )
        print(
            f"pipeline (dagster)       {r['bars'] / r['pipeline_s']:>12,.0f} bars/s   {r['pipeline_s']:8.2f} s   replay -> pandera -> archive -> warehouse -> dbt"
        )
        print(f"raw duckdb sql           {r['bars'] / r['raw_s']:>12,.0f} bars/s   {r['raw_s']:8.2f} s")
        print(f"ratio pipeline/raw       {r['pipeline_s'] / r['raw_s']:>12.2f}x  (target <= 3x)")
        print(
            f"features match raw SQL   max |diff| over all {len(FEATURE_COLUMNS)} feature columns = "
            f"{r['max_feature_diff']:.3g}, rows NULL on one side only = {r['null_mismatches']}"
        )
        print(
            "steps: "
            + ", ".join(f"{k.replace('market_bars_market_bars_', 'check_')} {v:.1f}s" for k, v in r["steps"].items())
        )
        print(
            f"peak RSS                 {self_mb:,.0f} MiB this process, {child_mb:,.0f} MiB largest child (dbt)",
            flush=True,
        )
        with tempfile.TemporaryDirectory(prefix="atbench-") as tmp:
            s = run_stages(n, Path(tmp))
        print(
            f"stages without dagster   {s['bars'] / s['total_s']:>12,.0f} bars/s   {s['total_s']:8.2f} s   "
            + ", ".join(f"{k} {v:.1f}s" for k, v in s["timings"].items())
        )
        print(f"raw duckdb sql (again)   {s['bars'] / s['raw_s']:>12,.0f} bars/s   {s['raw_s']:8.2f} s")
        print(f"ratio stages/raw         {s['total_s'] / s['raw_s']:>12.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("DAGSTER_HOME", tempfile.mkdtemp(prefix="atbench-dh-"))
    sys.exit(main())
