"""Write-audit-publish: the one step that makes audited partitions visible downstream.

A layer (``market_bars``, ``bar_features``) has one table that everything downstream reads.
New data is audited before it gets there; :class:`Publisher` then, in ONE commit per batch,

- replaces the partitions that passed in the layer's table and records them in
  ``published_partitions`` (layer, date, instrument, batch id, rows, bar interval, time), and
- keeps the partitions that failed aside: their rows in ``<layer>_quarantine`` with the batch id
  and the reasons, one row each in ``quarantined_partitions``; the published version of a
  failed partition is left untouched.

The interface is small on purpose (``publish`` + ``status``): this module holds the DuckDB
implementation for the local warehouse file; production will need one that commits published
partitions to shared durable storage for parallel runs, and only this piece changes.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Protocol

import duckdb
import numpy as np
import pandas as pd

from autotrader_assets.defs.market_data.schema import detect_interval_seconds
from autotrader_assets.defs.market_data.warehouse import ensure_market_bars, to_warehouse_frame

__all__ = [
    "DuckDBPublisher",
    "PublishBatch",
    "PublishResult",
    "Publisher",
    "detect_interval_seconds",
    "partition_status",
]

#: The bar interval every feature definition assumes (features refuse other intervals).
FEATURE_INTERVAL_S = 60

PUBLICATION_DDL = [
    """
    create table if not exists published_partitions (
        layer varchar not null,
        date date not null,
        instrument varchar not null,
        batch_id varchar not null,
        rows bigint not null,
        interval_s integer,              -- median spacing of the bars; NULL with fewer than 2 bars
        published_at timestamp not null,
        primary key (layer, date, instrument)
    )
    """,
    """
    create table if not exists quarantined_partitions (
        layer varchar not null,
        date date not null,
        instrument varchar not null,
        batch_id varchar not null,
        rows bigint not null,
        reasons varchar not null,
        quarantined_at timestamp not null
    )
    """,
]

MARKET_BARS_QUARANTINE_DDL = """
create table if not exists market_bars_quarantine (
    batch_id varchar not null,
    ts timestamp, date date not null, instrument varchar not null,
    open double, high double, low double, close double, volume double,
    source varchar,
    reasons varchar not null,
    quarantined_at timestamp not null
)
"""


def new_batch_id() -> str:
    """A sortable, unique id for one publish batch (the archive's incoming objects share it)."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ") + "-" + uuid.uuid4().hex[:6]


@dataclass
class PublishBatch:
    """One chunk of audited partitions of a layer.

    For ``market_bars`` the rows travel as frames (``passed`` / ``failed``, keyed by
    ``(date, instrument)``); for a dbt layer they already sit in the warehouse in
    ``audit_relation`` and only the keys are given (``passed_keys`` / ``failed_reasons``).
    """

    layer: str
    batch_id: str
    passed: dict[tuple[str, str], pd.DataFrame] = field(default_factory=dict)
    failed: dict[tuple[str, str], pd.DataFrame] = field(default_factory=dict)
    reasons: dict[tuple[str, str], str] = field(default_factory=dict)
    intervals: dict[tuple[str, str], int | None] = field(default_factory=dict)
    audit_relation: str | None = None
    passed_keys: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class PublishResult:
    published: list[tuple[str, str]]
    quarantined: list[tuple[str, str]]
    rows_published: int


class Publisher(Protocol):
    def publish(self, batch: PublishBatch) -> PublishResult: ...

    def status(self, layer: str, parts: list[tuple[str, str]]) -> pd.DataFrame: ...


def ensure_publication_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create the publication tables; a warehouse from before write-audit-publish has its
    existing ``market_bars`` partitions recorded as published (they are what downstream read)."""
    existed = con.execute(
        "select count(*) from information_schema.tables where table_name = 'published_partitions'"
    ).fetchone()[0]
    for ddl in PUBLICATION_DDL:
        con.execute(ddl)
    con.execute(MARKET_BARS_QUARANTINE_DDL)
    if not existed:
        ensure_market_bars(con)
        con.execute(
            "insert into published_partitions "
            "select 'market_bars', date, instrument, 'pre-publication', count(*), "
            "cast(round(median(step)) as integer), now() from ("
            "  select date, instrument, epoch(ts) - epoch(lag(ts) over (partition by date, instrument order by ts)) as step"
            "  from market_bars) group by date, instrument"
        )


def _keys_frame(keys) -> pd.DataFrame:
    out = pd.DataFrame(list(keys), columns=["date", "instrument"])
    out["date"] = pd.to_datetime(out["date"]).dt.date
    return out


class DuckDBPublisher:
    """Publishes into tables of one DuckDB connection (the caller owns the connection)."""

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self.con = con

    def publish(self, batch: PublishBatch) -> PublishResult:
        con = self.con
        ensure_publication_tables(con)
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        passed = list(batch.passed) if batch.audit_relation is None else list(batch.passed_keys)
        failed = list(batch.reasons)
        registered: list[str] = []

        def register(name: str, frame: pd.DataFrame) -> None:
            con.register(name, frame)
            registered.append(name)

        rows_published = 0
        register("_pub_keys", _keys_frame(passed))
        con.execute("begin transaction")
        try:
            # The published table exists once a layer ran, even when nothing passed (readers rely on it).
            if batch.audit_relation is None:
                ensure_market_bars(con)
            else:
                con.execute(f"create table if not exists {batch.layer} as select * from {batch.audit_relation} limit 0")
                # A column added to the dbt model appears in the published table too (NULL in
                # partitions published before it, until they are rebuilt).
                have = {r[0] for r in con.execute(f"describe {batch.layer}").fetchall()}
                for name, dtype, *_ in con.execute(f"describe {batch.audit_relation}").fetchall():
                    if name not in have:
                        con.execute(f'alter table {batch.layer} add column "{name}" {dtype}')
            if passed:
                if batch.audit_relation is None:
                    incoming = pd.concat(
                        [to_warehouse_frame(df, d) for (d, _), df in batch.passed.items()], ignore_index=True
                    )
                    register("_pub_rows", incoming)
                    source = "_pub_rows"
                else:
                    # The published table has the audit relation's shape (dbt owns the columns).
                    source = batch.audit_relation
                con.execute(
                    f"delete from {batch.layer} where (date, instrument) in (select (date, instrument) from _pub_keys)"
                )
                con.execute(
                    f"insert into {batch.layer} by name select s.* from {source} s "
                    "semi join _pub_keys k on s.date = k.date and s.instrument = k.instrument"
                )
                counts = con.execute(
                    f"select cast(k.date as varchar), k.instrument, count(s.date) from _pub_keys k "
                    f"left join {source} s on s.date = k.date and s.instrument = k.instrument group by all"
                ).fetchall()
                rows_by_key = {(d, i): n for d, i, n in counts}
                rows_published = sum(rows_by_key.values())
                pubs = pd.DataFrame(
                    [
                        (
                            batch.layer,
                            d,
                            i,
                            batch.batch_id,
                            rows_by_key.get((d, i), 0),
                            batch.intervals.get((d, i)),
                            now,
                        )
                        for d, i in passed
                    ],
                    columns=["layer", "date", "instrument", "batch_id", "rows", "interval_s", "published_at"],
                )
                pubs["date"] = pd.to_datetime(pubs["date"]).dt.date
                pubs["interval_s"] = pubs["interval_s"].astype("Int64")
                register("_pub_rows_meta", pubs)
                con.execute("insert or replace into published_partitions by name select * from _pub_rows_meta")
            if failed:
                self._quarantine(batch, failed, now, register)
            con.execute("commit")
        except BaseException:
            con.execute("rollback")
            raise
        finally:
            for name in registered:
                con.unregister(name)
        return PublishResult(published=passed, quarantined=failed, rows_published=rows_published)

    def _quarantine(self, batch: PublishBatch, failed, now, register) -> None:
        con = self.con
        meta = []
        if batch.audit_relation is None:
            frames = []
            for key in failed:
                df = batch.failed.get(key)
                if df is None or not len(df):
                    meta.append((key, 0))
                    continue
                rows = df.copy()
                if "ts" in rows and pd.api.types.is_datetime64tz_dtype(rows["ts"]):
                    rows["ts"] = rows["ts"].dt.tz_convert("UTC").dt.tz_localize(None)
                rows = rows.reindex(columns=["ts", "instrument", "open", "high", "low", "close", "volume", "source"])
                rows.insert(0, "batch_id", batch.batch_id)
                rows.insert(2, "date", pd.Timestamp(key[0]).date())
                rows["instrument"] = key[1]
                rows["reasons"] = batch.reasons[key]
                rows["quarantined_at"] = now
                frames.append(rows)
                meta.append((key, len(rows)))
            if frames:
                register("_q_rows", pd.concat(frames, ignore_index=True))
                con.execute("insert into market_bars_quarantine by name select * from _q_rows")
        else:
            register("_q_keys", _keys_frame(failed))
            qtable = f"{batch.layer}_quarantine"
            con.execute(
                f"create table if not exists {qtable} as select '' as batch_id, '' as reasons, "
                f"now()::timestamp as quarantined_at, * from {batch.audit_relation} limit 0"
            )
            keyed = pd.DataFrame(
                [(pd.Timestamp(d).date(), i, batch.reasons[(d, i)]) for d, i in failed],
                columns=["date", "instrument", "reasons"],
            )
            register("_q_reasons", keyed)
            con.execute(
                f"insert into {qtable} by name select ? as batch_id, r.reasons, ?::timestamp as quarantined_at, s.* "
                f"from {batch.audit_relation} s join _q_reasons r on s.date = r.date and s.instrument = r.instrument",
                [batch.batch_id, now],
            )
            counts = dict(
                ((str(d), i), n)
                for d, i, n in con.execute(
                    f"select k.date, k.instrument, count(s.date) from _q_keys k left join {batch.audit_relation} s "
                    "on s.date = k.date and s.instrument = k.instrument group by all"
                ).fetchall()
            )
            meta = [(key, counts.get(key, 0)) for key in failed]
        qmeta = pd.DataFrame(
            [(batch.layer, key[0], key[1], batch.batch_id, n, batch.reasons[key], now) for key, n in meta],
            columns=["layer", "date", "instrument", "batch_id", "rows", "reasons", "quarantined_at"],
        )
        qmeta["date"] = pd.to_datetime(qmeta["date"]).dt.date
        register("_q_meta", qmeta)
        con.execute("insert into quarantined_partitions by name select * from _q_meta")

    def status(self, layer: str, parts: list[tuple[str, str]]) -> pd.DataFrame:
        """Per partition: published rows/batch/interval and the newest quarantine, with a
        ``state``: ``published``, ``quarantined`` (nothing published), ``published; newer
        version quarantined``, or ``missing``."""
        return partition_status(self.con, layer, parts)


def partition_status(con: duckdb.DuckDBPyConnection, layer: str, parts: list[tuple[str, str]]) -> pd.DataFrame:
    """See :meth:`DuckDBPublisher.status`; works on a read-only connection."""
    cols = ["date", "instrument", "state", "published_rows", "published_batch", "interval_s", "quarantine_reasons"]
    tables = {r[0] for r in con.execute("select table_name from information_schema.tables").fetchall()}
    wanted = _keys_frame(parts)
    if "published_partitions" not in tables or wanted.empty:
        out = wanted.assign(
            date=wanted["date"].astype(str),
            state="missing",
            published_rows=None,
            published_batch=None,
            interval_s=None,
            quarantine_reasons=None,
        )
        return out[cols]
    con.register("_status_keys", wanted)
    try:
        df = con.execute(
            """
            with q as (
                select date, instrument, arg_max(reasons, quarantined_at) as reasons, max(quarantined_at) as at
                from quarantined_partitions where layer = $layer group by all
            )
            select cast(k.date as varchar) as date, k.instrument,
                   p.rows as published_rows, p.batch_id as published_batch, p.interval_s,
                   p.published_at, q.reasons as quarantine_reasons, q.at as quarantined_at
            from _status_keys k
            left join published_partitions p on p.layer = $layer and p.date = k.date and p.instrument = k.instrument
            left join q on q.date = k.date and q.instrument = k.instrument
            """,
            {"layer": layer},
        ).df()
    finally:
        con.unregister("_status_keys")
    published = df["published_batch"].notna()
    newer_q = df["quarantined_at"].notna() & (~published | (df["quarantined_at"] > df["published_at"]))
    df["state"] = np.select(
        [published & newer_q, published, newer_q],
        ["published; newer version quarantined", "published", "quarantined"],
        default="missing",
    )
    df.loc[~newer_q, "quarantine_reasons"] = None
    return df[cols]
