"""One day's feature drift against the reference of the model that served it. No Dagster here.

Which model served a date is what paper trading recorded (``model_confidence``: date x
instrument -> model version), not the registry's current production: a date is judged against
the training rows of the version that actually traded it. The day's rows are that date's
``bar_features`` rows of the instruments it traded. Results go to the warehouse table
``feature_drift`` (one transaction per date: a date is replaced whole or not at all).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import duckdb
import numpy as np
import pandas as pd

from autotrader_assets.defs.monitoring.psi import DriftResult, drift_against

FEATURE_TABLE = "bar_features"
DRIFT_TABLE = "feature_drift"
DRIFT_DDL = f"""
create table if not exists {DRIFT_TABLE} (
    date date not null,
    model_version varchar not null,
    feature varchar not null,
    psi double,
    level varchar not null,
    n_current integer not null,
    n_nan integer not null,
    constant_reference boolean not null,
    note varchar,
    instruments varchar not null,
    reference varchar not null,
    run_id varchar,
    computed_at timestamp not null,
    primary key (date, model_version, feature)
)"""


class DriftError(ValueError):
    """A date whose drift cannot be computed; the message says why and what to do."""


class NotInProductionError(DriftError):
    """No model served the date (nothing paper-traded it, or orders were blocked all day)."""


class NoFeaturesError(DriftError):
    """The date has no feature rows for the instruments traded."""


class MissingFeatureColumnsError(DriftError):
    """The model needs feature columns the warehouse table does not have."""


#: (feature names, feature_reference or None) of a registry version.
ReferenceLoader = Callable[[int], tuple[list[str], Mapping[str, Any] | None]]


def _tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {r[0] for r in con.execute("select table_name from information_schema.tables").fetchall()}


def served_versions(con: duckdb.DuckDBPyConnection, date: dt.date) -> dict[str, int]:
    """instrument -> the model version that served it on ``date`` (paper trading's record).

    A day on which a rollout switched an instrument's route holds two versions ("2,3"); the
    later one, which serves from then on, is the one the day is judged against."""
    if "model_confidence" not in _tables(con):
        raise NotInProductionError(
            f"no model was in production on {date}: nothing has been paper-traded yet "
            "(materialize paper_trading for that date first)"
        )
    rows = con.execute(
        "select instrument, model_version from model_confidence where date = ? order by instrument", [date]
    ).fetchall()
    if not rows:
        raise NotInProductionError(
            f"no model was in production on {date}: paper_trading has no record of that date "
            "(materialize paper_trading for it first)"
        )
    out = {name: int(str(v).split(",")[-1]) for name, v in rows if v}
    if not out:
        raise NotInProductionError(
            f"no model served on {date}: paper trading placed no orders that day (circuit breaker), "
            "so no prediction was made to judge"
        )
    return out


def read_features(
    con: duckdb.DuckDBPyConnection, date: dt.date, instruments: Sequence[str], features: Sequence[str]
) -> pd.DataFrame:
    """The date's feature rows of ``instruments``: instrument + ``features`` (NULL -> NaN)."""
    if FEATURE_TABLE not in _tables(con):
        raise NoFeaturesError(f"the warehouse has no {FEATURE_TABLE} table: run the data pipeline first")
    columns = {
        r[0]
        for r in con.execute(
            "select column_name from information_schema.columns where table_name = ?", [FEATURE_TABLE]
        ).fetchall()
    }
    missing = [f for f in features if f not in columns]
    if missing:
        raise MissingFeatureColumnsError(
            f"{FEATURE_TABLE} lacks column(s) {missing} that the model was trained on: the feature models "
            "changed since; retrain, or restore the columns in dbt_project/models/features"
        )
    cols = ", ".join(f'"{c}"' for c in ("instrument", *features))
    frame = con.execute(
        f"select {cols} from {FEATURE_TABLE} where date = ? and instrument in (select unnest(?)) order by instrument, ts",
        [date, list(instruments)],
    ).df()
    if frame.empty:
        raise NoFeaturesError(
            f"{FEATURE_TABLE} has no rows for {date} and {sorted(instruments)}: run the data pipeline for that date"
        )
    return frame


@dataclass
class VersionDrift:
    """The instruments one version served on the date, against that version's reference."""

    version: int
    instruments: list[str]
    n_rows: int
    feature_names: list[str]
    result: DriftResult | None
    reference: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None


@dataclass
class DayDrift:
    """Every version that served ``date``, and what its reference says about the day's rows."""

    date: dt.date
    versions: list[VersionDrift]

    def frame(self, warn: float, critical: float) -> pd.DataFrame:
        """One row per (version, feature), worst first."""
        rows = []
        for v in self.versions:
            if v.result is None:
                continue
            for f in v.result.features:
                rows.append(
                    {
                        "model_version": str(v.version),
                        **f.row(),
                        "level": f.level(warn, critical),
                        "instruments": ",".join(v.instruments),
                    }
                )
        frame = pd.DataFrame(
            rows,
            columns=[
                "model_version",
                "feature",
                "psi",
                "level",
                "n_current",
                "n_nan",
                "constant_reference",
                "note",
                "instruments",
            ],
        )
        return frame.sort_values("psi", ascending=False, na_position="last", kind="stable").reset_index(drop=True)

    def worst(self) -> tuple[VersionDrift, Any] | None:
        best = None
        for v in self.versions:
            w = v.result.worst() if v.result is not None else None
            if w is not None and (best is None or w.psi > best[1].psi):
                best = (v, w)
        return best

    def max_psi(self) -> float | None:
        w = self.worst()
        return w[1].psi if w is not None else None

    def level(self, warn: float, critical: float) -> str:
        """critical / warning / ok, or no_reference when no served version carries one."""
        psi = self.max_psi()
        if psi is None:
            return "no_reference"
        return "critical" if psi > critical else "warning" if psi > warn else "ok"

    def problems(self) -> list[str]:
        return [v.problem for v in self.versions if v.problem]


def reference_summary(reference: Mapping[str, Any]) -> dict[str, Any]:
    """What a stored reference is (for lineage): rows it was fitted on, bins, whether it stores proportions."""
    return {
        "n_rows": reference.get("n_rows"),
        "n_bins": reference.get("n_bins"),
        "proportions": "stored" if reference.get("proportions") else "from quantile levels (older bundle)",
    }


def drift_of_rows(
    frame: pd.DataFrame, feature_names: Sequence[str], reference: Mapping[str, Any], version: int
) -> DriftResult:
    """PSI of ``frame``'s feature columns against one reference."""
    columns = {name: frame[name].to_numpy(dtype=np.float64) for name in feature_names if name in frame.columns}
    return drift_against(reference, columns, feature_names, version=str(version))


def compute_day_drift(con: duckdb.DuckDBPyConnection, date: dt.date, load: ReferenceLoader) -> DayDrift:
    """The date's drift for every version that served it (see the module docstring)."""
    served = served_versions(con, date)
    by_version: dict[int, list[str]] = {}
    for name, version in served.items():
        by_version.setdefault(version, []).append(name)
    out = []
    for version, instruments in sorted(by_version.items()):
        names, reference = load(version)
        frame = read_features(con, date, instruments, names)
        if not reference or not reference.get("quantile_edges"):
            out.append(
                VersionDrift(
                    version,
                    instruments,
                    len(frame),
                    list(names),
                    None,
                    problem=f"model version {version} was trained before bundles stored a feature reference: "
                    "no drift can be computed for it (retrain to get one)",
                )
            )
            continue
        out.append(
            VersionDrift(
                version,
                instruments,
                len(frame),
                list(names),
                drift_of_rows(frame, names, reference, version),
                reference_summary(reference),
            )
        )
    return DayDrift(date, out)


def write_day_drift(
    con: duckdb.DuckDBPyConnection, day: DayDrift, warn: float, critical: float, run_id: str | None = None
) -> int:
    """Replace the date's rows of ``feature_drift`` in one transaction; returns rows written."""
    frame = day.frame(warn, critical)
    refs = {str(v.version): json.dumps(v.reference, sort_keys=True) for v in day.versions}
    frame = frame.assign(
        date=day.date,
        reference=frame["model_version"].map(refs),
        run_id=run_id,
        computed_at=dt.datetime.now(dt.timezone.utc).replace(tzinfo=None),
    )
    con.execute(DRIFT_DDL)
    con.execute("begin transaction")
    try:
        con.execute(f"delete from {DRIFT_TABLE} where date = ?", [day.date])
        if len(frame):
            con.register("drift_rows", frame)
            con.execute(
                f"insert into {DRIFT_TABLE} select date, model_version, feature, psi, level, n_current, n_nan, "
                "constant_reference, note, instruments, reference, run_id, computed_at from drift_rows"
            )
            con.unregister("drift_rows")
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        raise
    return len(frame)


def read_day_drift(con: duckdb.DuckDBPyConnection, date: dt.date) -> pd.DataFrame:
    """The stored drift rows of ``date`` (empty when it was never computed)."""
    if DRIFT_TABLE not in _tables(con):
        return pd.DataFrame(columns=["model_version", "feature", "psi", "level"])
    return con.execute(
        f"select model_version, feature, psi, level, n_nan, note from {DRIFT_TABLE} where date = ? "
        "order by psi desc nulls last",
        [date],
    ).df()


__all__ = [
    "DRIFT_TABLE",
    "DayDrift",
    "DriftError",
    "MissingFeatureColumnsError",
    "NoFeaturesError",
    "NotInProductionError",
    "ReferenceLoader",
    "VersionDrift",
    "compute_day_drift",
    "drift_of_rows",
    "read_day_drift",
    "read_features",
    "served_versions",
    "write_day_drift",
]
