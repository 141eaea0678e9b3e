"""Reading and writing ``market_bars`` partitions in the DuckDB warehouse."""

from __future__ import annotations

import duckdb
import pandas as pd

from autotrader_assets.defs.market_data.schema import BAR_COLUMNS, empty_bars

MARKET_BARS_DDL = """
create table if not exists market_bars (
    ts timestamp not null,          -- bar open time, UTC
    date date not null,
    instrument varchar not null,
    open double, high double, low double, close double, volume double,
    source varchar not null,
    ingested_at timestamp not null default current_timestamp
)
"""


def ensure_market_bars(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(MARKET_BARS_DDL)


def to_warehouse_frame(df: pd.DataFrame, date: str) -> pd.DataFrame:
    """Normalized bars -> warehouse rows (naive UTC timestamps, a date column)."""
    out = df[BAR_COLUMNS].copy()
    out["ts"] = out["ts"].dt.tz_convert("UTC").dt.tz_localize(None)
    out.insert(1, "date", pd.Timestamp(date).date())
    return out


def replace_partitions(con: duckdb.DuckDBPyConnection, frames: dict[tuple[str, str], pd.DataFrame]) -> int:
    """Replace each (date, instrument) partition with its frame, all in one transaction.

    Re-running a partition therefore never leaves duplicates or a half-written day behind.
    One delete and one insert cover every partition, so a large backfill is not a loop of
    small statements. Returns the number of rows written.
    """
    ensure_market_bars(con)
    if not frames:
        return 0
    keys = pd.DataFrame(list(frames.keys()), columns=["date", "instrument"])
    keys["date"] = pd.to_datetime(keys["date"]).dt.date
    incoming = pd.concat([to_warehouse_frame(df, date) for (date, _), df in frames.items()], ignore_index=True)
    con.register("_incoming_keys", keys)
    con.register("_incoming_bars", incoming)
    con.execute("begin transaction")
    try:
        con.execute(
            "delete from market_bars where (date, instrument) in (select (date, instrument) from _incoming_keys)"
        )
        con.execute(
            "insert into market_bars (ts, date, instrument, open, high, low, close, volume, source) "
            "select ts, date, instrument, open, high, low, close, volume, source from _incoming_bars"
        )
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        raise
    finally:
        con.unregister("_incoming_keys")
        con.unregister("_incoming_bars")
    return len(incoming)


def read_partition(con: duckdb.DuckDBPyConnection, date: str, instrument: str, ordered: bool = True) -> pd.DataFrame:
    """One partition as a normalized bar frame (tz-aware UTC ``ts``).

    ``ordered=False`` keeps the stored (insertion) order, which is what the schema check must
    see to catch out-of-order rows.
    """
    exists = con.execute("select count(*) from information_schema.tables where table_name = 'market_bars'").fetchall()[
        0
    ][0]
    if not exists:
        return empty_bars()
    order = " order by ts" if ordered else ""
    df = con.execute(
        "select ts, instrument, open, high, low, close, volume, source from market_bars "
        "where date = ? and instrument = ?" + order,
        [date, instrument],
    ).df()
    df["ts"] = pd.to_datetime(df["ts"]).dt.tz_localize("UTC").astype("datetime64[ns, UTC]")
    return df[BAR_COLUMNS]


def read_partitions(con: duckdb.DuckDBPyConnection, parts: list[tuple[str, str]]) -> pd.DataFrame:
    """Rows of many (date, instrument) partitions in one query, in stored order, with a
    ``date`` column (YYYY-MM-DD) so checks can tell the partitions apart."""
    exists = con.execute("select count(*) from information_schema.tables where table_name = 'market_bars'").fetchall()[
        0
    ][0]
    if not exists or not parts:
        return empty_bars().assign(date=pd.Series([], dtype="object"))
    wanted = pd.DataFrame(parts, columns=["date", "instrument"])
    wanted["date"] = pd.to_datetime(wanted["date"]).dt.date
    con.register("_wanted_parts", wanted)
    try:
        df = con.execute(
            "select m.ts, m.instrument, m.open, m.high, m.low, m.close, m.volume, m.source, "
            "strftime(m.date, '%Y-%m-%d') as date from market_bars m "
            "semi join _wanted_parts w on m.date = w.date and m.instrument = w.instrument"
        ).df()
    finally:
        con.unregister("_wanted_parts")
    df["ts"] = pd.to_datetime(df["ts"]).dt.tz_localize("UTC").astype("datetime64[ns, UTC]")
    return df[[*BAR_COLUMNS, "date"]]
