"""The local Dagster instance: ``DAGSTER_HOME`` with SQLite storage, one run at a time."""
from __future__ import annotations

from pathlib import Path

import dagster as dg

from autotrader_assets.settings import Settings

#: DuckDB allows one writer, so the local instance runs queued runs one after another.
LOCAL_DAGSTER_YAML = """\
# Written by autotrader on first use; edit freely.
run_queue:
  max_concurrent_runs: 1
telemetry:
  enabled: false
"""


def ensure_local_instance(settings: Settings) -> Path:
    """Create DAGSTER_HOME with its dagster.yaml if missing; return the folder."""
    settings.ensure_dirs()
    cfg = settings.dagster_home / "dagster.yaml"
    if not cfg.exists():
        cfg.write_text(LOCAL_DAGSTER_YAML)
    return settings.dagster_home


def local_instance(settings: Settings) -> dg.DagsterInstance:
    """A persistent instance in the settings' DAGSTER_HOME (what `make ui` browses)."""
    home = ensure_local_instance(settings)
    return dg.DagsterInstance.from_config(str(home))
