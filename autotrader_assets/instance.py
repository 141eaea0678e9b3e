"""The local Dagster instance: ``DAGSTER_HOME`` with SQLite storage, one run at a time, run
monitoring on, the emergency path first in the queue."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from autotrader_assets.settings import Settings

#: DuckDB allows one writer, so the local instance runs queued runs one after another. The
#: rest keeps that single lane moving:
#: * ``dequeue_interval_seconds: 1``: the queue is looked at every second, not every 5 s, so an
#:   emergency rollback (run tag ``dagster/priority`` 100, dequeued before every ordinary run)
#:   starts as soon as the lane is free.
#: * run monitoring: a run whose worker died (``kill -9``, OOM) is marked failed within
#:   ``poll_interval_seconds`` instead of holding the only lane STARTED forever; a run stuck
#:   starting or canceling for 3 minutes is failed too. ``LocalRunLauncher`` is Dagster's
#:   default launcher plus the worker health check run monitoring needs; it cannot resume a
#:   run, hence ``max_resume_run_attempts: 0``.
LOCAL_DAGSTER_YAML = """\
# Written by autotrader on first use; edit freely (autotrader_assets/instance.py explains each value).
run_queue:
  max_concurrent_runs: 1
  dequeue_interval_seconds: 1
run_launcher:
  module: autotrader_assets.run_launcher
  class: LocalRunLauncher
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  cancel_timeout_seconds: 180
  max_resume_run_attempts: 0
  poll_interval_seconds: 5
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


def cli_instance(settings: Settings) -> dg.DagsterInstance | None:
    """The instance the `autotrader` CLI records on: the local one (created if missing) in the
    local profile; in production the DAGSTER_HOME the deployment provides (infra/dagster/
    dagster.yaml), or None when it has no dagster.yaml (never a SQLite one written over it)."""
    if not settings.is_production:
        return local_instance(settings)
    if not (settings.dagster_home / "dagster.yaml").is_file():
        return None
    return dg.DagsterInstance.from_config(str(settings.dagster_home))
