"""The paper account in the DuckDB warehouse: its tables, reading features, writing whole dates.

Tables (every timestamp naive UTC, like the rest of the warehouse; every row keyed by ``date``):

* ``paper_account_state``   one row per date: the account at the day's end (equity, cash, peak,
                            halt) plus the day's breaker outcome.
* ``paper_instrument_state`` one row per date x instrument: the engine's carried state
                            (``BacktestState``), exactly what the next date continues from.
* ``paper_positions``       one row per bar x instrument: probability, target, units, cash, equity.
* ``paper_equity``          one row per bar: the account curve with peak, drawdown, day loss, halt.
* ``paper_fills``           one row per execution.
* ``paper_trades``          one row per closed round trip (for win rate and profit factor).
* ``model_confidence``      one row per date x instrument: mean |p - 0.5| * 2, n, model version.

:func:`replace_dates` rewrites a set of dates in ONE transaction, so a run either leaves every
recomputed date in place or none of them.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any, Mapping, Sequence

import duckdb
import pandas as pd

from autotrader_assets.defs.trading.paper import AccountState, DayResult, PaperParams, confidence
from deploy_ops.trading.backtest import BacktestState

FEATURE_TABLE = "bar_features"

DDL: dict[str, str] = {
    "paper_account_state": """
        create table if not exists paper_account_state (
            date date primary key,
            day_open_equity double not null,
            end_equity double not null,
            end_cash double not null,
            peak_equity double not null,
            day_pnl double not null,
            max_day_loss double not null,
            max_drawdown double not null,
            blocked_at_start boolean not null,
            block_reason varchar,
            halted_since timestamp,
            trip_at timestamp,
            trip_reason varchar,
            n_bars integer not null,
            n_fills integer not null,
            params varchar not null,
            run_id varchar,
            computed_at timestamp not null
        )""",
    "paper_instrument_state": """
        create table if not exists paper_instrument_state (
            date date not null,
            instrument varchar not null,
            cash double not null,
            units double not null,
            held_target double,
            pending_target double,
            last_ts timestamp,
            last_close double,
            open_trade_entry_ts timestamp,
            open_trade_entry_price double,
            open_trade_cash_flow double not null,
            halted boolean not null,
            ruined boolean not null,
            slot varchar,
            model_version varchar,
            primary key (date, instrument)
        )""",
    "paper_positions": """
        create table if not exists paper_positions (
            date date not null,
            instrument varchar not null,
            ts timestamp not null,
            close double not null,
            proba double,
            target double not null,
            units double not null,
            notional double not null,
            cash double not null,
            equity double not null
        )""",
    "paper_equity": """
        create table if not exists paper_equity (
            date date not null,
            ts timestamp not null,
            equity double not null,
            cash double not null,
            peak_equity double not null,
            drawdown double not null,
            day_loss double not null,
            halted boolean not null
        )""",
    "paper_fills": """
        create table if not exists paper_fills (
            date date not null,
            instrument varchar not null,
            ts timestamp not null,
            side varchar not null,
            units double not null,
            price double not null,
            notional double not null,
            fee double not null,
            slippage_cost double not null,
            target double not null,
            slot varchar,
            model_version varchar
        )""",
    "paper_trades": """
        create table if not exists paper_trades (
            date date not null,
            instrument varchar not null,
            entry_ts timestamp,
            exit_ts timestamp not null,
            side varchar not null,
            entry_price double,
            exit_price double not null,
            pnl double not null
        )""",
    "model_confidence": """
        create table if not exists model_confidence (
            date date not null,
            instrument varchar not null,
            mean_confidence double,
            n integer not null,
            model_version varchar,
            slot varchar,
            computed_at timestamp not null,
            primary key (date, instrument)
        )""",
}
TABLES: tuple[str, ...] = tuple(DDL)


def ensure_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create the paper-trading tables if absent."""
    for ddl in DDL.values():
        con.execute(ddl)


def _naive(ts: Any) -> pd.Timestamp | None:
    if ts is None or (not isinstance(ts, str) and pd.isna(ts)):
        return None
    ts = pd.Timestamp(ts)
    return ts.tz_convert("UTC").tz_localize(None) if ts.tz is not None else ts


def _aware(ts: Any) -> pd.Timestamp | None:
    if ts is None or pd.isna(ts):
        return None
    ts = pd.Timestamp(ts)
    return ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")


def _opt_float(value: Any) -> float | None:
    # DuckDB hands NULL doubles back as NaN in a DataFrame; the engine never stores NaN itself.
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _naive_index(index: pd.DatetimeIndex) -> pd.DatetimeIndex:
    return index.tz_convert("UTC").tz_localize(None) if index.tz is not None else index


# -- reading -------------------------------------------------------------------------------------


def computed_dates(con: duckdb.DuckDBPyConnection) -> list[dt.date]:
    """Dates the paper account has been computed for, ascending."""
    ensure_tables(con)
    return [row[0] for row in con.execute("select date from paper_account_state order by date").fetchall()]


def load_account(con: duckdb.DuckDBPyConnection, date: dt.date) -> AccountState:
    """The account at the end of ``date`` (LookupError if that date was never computed)."""
    ensure_tables(con)
    acct = con.execute(
        "select end_equity, peak_equity, halted_since from paper_account_state where date = ?", [date]
    ).fetchone()
    if acct is None:
        raise LookupError(f"paper account has no state for {date}")
    rows = con.execute("select * from paper_instrument_state where date = ? order by instrument", [date]).df()
    if rows.empty:
        raise LookupError(f"paper account state of {date} has no instruments")
    states = {}
    for r in rows.itertuples(index=False):
        states[r.instrument] = BacktestState(
            cash=float(r.cash),
            units=float(r.units),
            held_target=_opt_float(r.held_target),
            pending_target=_opt_float(r.pending_target),
            last_ts=_aware(r.last_ts),
            last_close=_opt_float(r.last_close),
            open_trade_entry_ts=_aware(r.open_trade_entry_ts),
            open_trade_entry_price=_opt_float(r.open_trade_entry_price),
            open_trade_cash_flow=float(r.open_trade_cash_flow),
            halted=bool(r.halted),
            ruined=bool(r.ruined),
        )
    return AccountState(
        date=date, states=states, equity=float(acct[0]), peak_equity=float(acct[1]), halted_since=_aware(acct[2])
    )


def feature_columns(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Columns of ``bar_features`` (LookupError when the table does not exist yet)."""
    cols = [
        r[0]
        for r in con.execute(
            "select column_name from information_schema.columns where table_name = ? order by ordinal_position",
            [FEATURE_TABLE],
        ).fetchall()
    ]
    if not cols:
        raise LookupError(f"the warehouse has no {FEATURE_TABLE} table: materialize the feature models first")
    return cols


def read_day_features(
    con: duckdb.DuckDBPyConnection, date: dt.date, instruments: Sequence[str], features: Sequence[str]
) -> dict[str, pd.DataFrame]:
    """Each instrument's bars of ``date`` with ts (UTC), open, close and ``features`` (NULL -> NaN).

    Raises LookupError naming the instruments that have no rows, and ValueError when a model
    feature is not a column of ``bar_features``."""
    available = set(feature_columns(con))
    missing_cols = [c for c in ("ts", "open", "close", *features) if c not in available]
    if missing_cols:
        raise ValueError(f"{FEATURE_TABLE} lacks column(s) {missing_cols} that the served model needs")
    cols = ", ".join(f'"{c}"' for c in ("instrument", "ts", "open", "close", *features))
    frame = con.execute(
        f"select {cols} from {FEATURE_TABLE} where date = ? and instrument in (select unnest(?)) "
        "order by instrument, ts",
        [date, list(instruments)],
    ).df()
    out = {}
    for name in instruments:
        part = frame[frame["instrument"] == name].drop(columns="instrument").reset_index(drop=True)
        if part.empty:
            continue
        part["ts"] = pd.to_datetime(part["ts"]).dt.tz_localize("UTC")
        out[name] = part
    missing = [i for i in instruments if i not in out]
    if missing:
        raise LookupError(f"{FEATURE_TABLE} has no rows for {date} and instrument(s) {missing}")
    return out


# -- writing -------------------------------------------------------------------------------------


def _params_json(params: PaperParams) -> str:
    return json.dumps(
        {
            "fee_bps": params.fee_bps,
            "slippage_bps": params.slippage_bps,
            "initial_equity": params.initial_equity,
            "daily_loss_limit": params.daily_loss_limit,
            "drawdown_limit": params.drawdown_limit,
            **{f"signal_{k}": v for k, v in params.signal.__dict__.items()},
        },
        sort_keys=True,
    )


def frames_for(
    result: DayResult,
    params: PaperParams,
    serving: Mapping[str, Mapping[str, Any]],
    run_id: str | None,
    computed_at: dt.datetime,
) -> dict[str, pd.DataFrame]:
    """The warehouse rows of one paper-traded date, table name -> frame.

    ``serving[instrument]`` holds the ``slot`` and ``model_version`` that answered."""
    date = result.date
    pf = result.portfolio
    names = sorted(pf.results)
    computed_at = _naive(computed_at)
    curve = result.account_curve()
    trip = result.trip

    account = pd.DataFrame(
        [
            {
                "date": date,
                "day_open_equity": result.day_open_equity,
                "end_equity": result.end.equity,
                "end_cash": float(curve["cash"].iloc[-1]),
                "peak_equity": result.end.peak_equity,
                "day_pnl": result.end.equity - result.day_open_equity,
                "max_day_loss": float(curve["day_loss"].max()),
                "max_drawdown": float(curve["drawdown"].max()),
                "blocked_at_start": result.blocked_at_start,
                "block_reason": result.block_reason,
                "halted_since": _naive(result.end.halted_since),
                "trip_at": _naive(trip.at) if trip else None,
                "trip_reason": trip.reason if trip else None,
                "n_bars": int(len(curve)),
                "n_fills": int(len(pf.fills)),
                "params": _params_json(params),
                "run_id": run_id,
                "computed_at": computed_at,
            }
        ]
    )

    state_rows, position_frames, confidence_rows = [], [], []
    for name in names:
        s = pf.final_states[name]
        info = serving.get(name, {})
        state_rows.append(
            {
                "date": date,
                "instrument": name,
                "cash": s.cash,
                "units": s.units,
                "held_target": s.held_target,
                "pending_target": s.pending_target,
                "last_ts": _naive(s.last_ts),
                "last_close": s.last_close,
                "open_trade_entry_ts": _naive(s.open_trade_entry_ts),
                "open_trade_entry_price": s.open_trade_entry_price,
                "open_trade_cash_flow": s.open_trade_cash_flow,
                "halted": s.halted,
                "ruined": s.ruined,
                "slot": info.get("slot"),
                "model_version": info.get("model_version"),
            }
        )
        r = pf.results[name]
        position_frames.append(
            pd.DataFrame(
                {
                    "date": date,
                    "instrument": name,
                    "ts": _naive_index(r.equity.index),
                    "close": result.closes[name],
                    "proba": result.proba[name],
                    "target": r.targets.to_numpy(),
                    "units": r.positions.to_numpy(),
                    "notional": (r.equity - r.cash).to_numpy(),
                    "cash": r.cash.to_numpy(),
                    "equity": r.equity.to_numpy(),
                }
            )
        )
        mean_conf, n = confidence(result.proba[name])
        confidence_rows.append(
            {
                "date": date,
                "instrument": name,
                "mean_confidence": mean_conf,
                "n": n,
                "model_version": info.get("model_version"),
                "slot": info.get("slot"),
                "computed_at": computed_at,
            }
        )

    fills = pf.fills.copy()
    fills["ts"] = _naive_index(pd.DatetimeIndex(fills["ts"]))
    fills["side"] = fills["side"].astype(str)
    fills.insert(0, "date", date)
    fills["slot"] = [serving.get(i, {}).get("slot") for i in fills["instrument"]]
    fills["model_version"] = [serving.get(i, {}).get("model_version") for i in fills["instrument"]]
    trades = pf.trades.copy()
    trades["entry_ts"] = _naive_index(pd.DatetimeIndex(trades["entry_ts"]))
    trades["exit_ts"] = _naive_index(pd.DatetimeIndex(trades["exit_ts"]))
    trades["side"] = trades["side"].astype(str)
    trades.insert(0, "date", date)

    equity = curve.copy()
    equity["ts"] = _naive_index(pd.DatetimeIndex(equity["ts"]))
    equity.insert(0, "date", date)
    return {
        "paper_account_state": account,
        "paper_instrument_state": pd.DataFrame(state_rows),
        "paper_positions": pd.concat(position_frames, ignore_index=True),
        "paper_equity": equity,
        "paper_fills": fills,
        "paper_trades": trades,
        "model_confidence": pd.DataFrame(confidence_rows),
    }


_COLUMNS = {
    "paper_fills": [
        "date",
        "instrument",
        "ts",
        "side",
        "units",
        "price",
        "notional",
        "fee",
        "slippage_cost",
        "target",
        "slot",
        "model_version",
    ],
    "paper_trades": ["date", "instrument", "entry_ts", "exit_ts", "side", "entry_price", "exit_price", "pnl"],
    "paper_equity": ["date", "ts", "equity", "cash", "peak_equity", "drawdown", "day_loss", "halted"],
}


class ConcurrentUpdateError(RuntimeError):
    """The account changed between a run's read and its write (another run wrote it)."""


def account_fingerprint(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    """Which dates are computed and by which run: changes whenever any run writes the account."""
    ensure_tables(con)
    return [
        tuple(r)
        for r in con.execute("select date, run_id, computed_at from paper_account_state order by date").fetchall()
    ]


def replace_dates(
    con: duckdb.DuckDBPyConnection,
    dates: Sequence[dt.date],
    frames: Sequence[Mapping[str, pd.DataFrame]],
    expected: list[tuple] | None = None,
) -> int:
    """Delete every paper-trading row of ``dates`` and insert ``frames``, in one transaction.

    ``expected`` (an :func:`account_fingerprint` taken when the run read the account) makes the
    write refuse, changing nothing, if another run wrote the account in the meantime: its
    chain and this run's would otherwise interleave. Returns the number of rows inserted."""
    ensure_tables(con)
    for per_date in frames:
        unknown = set(per_date) - set(TABLES)
        if unknown:
            raise ValueError(f"unknown paper-trading table(s) {sorted(unknown)}")
    rows = 0
    con.execute("begin transaction")
    try:
        if expected is not None and account_fingerprint(con) != expected:
            raise ConcurrentUpdateError(
                "another paper-trading run wrote the account while this one was computing; nothing was written: "
                "run this selection again"
            )
        for table in TABLES:
            con.execute(f"delete from {table} where date in (select unnest(?))", [list(dates)])
        # One insert per date and table: concatenating first would have pandas guess the dtype of
        # columns that are all NULL on some dates.
        for per_date in frames:
            for table, frame in per_date.items():
                if not len(frame):
                    continue
                cols = _COLUMNS.get(table, list(frame.columns))
                con.register("_paper_incoming", frame[cols])
                con.execute(f"insert into {table} ({', '.join(cols)}) select {', '.join(cols)} from _paper_incoming")
                con.unregister("_paper_incoming")
                rows += len(frame)
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        raise
    return rows


__all__ = [
    "ConcurrentUpdateError",
    "DDL",
    "account_fingerprint",
    "FEATURE_TABLE",
    "TABLES",
    "computed_dates",
    "ensure_tables",
    "feature_columns",
    "frames_for",
    "load_account",
    "read_day_features",
    "replace_dates",
]
