"""One warehouse writer at a time, enforced by the run queue.

The production warehouse is one DuckDB file on a shared file system (EFS,
``AUTOTRADER_WAREHOUSE_SHARED_DIR``): every run is its own ECS task, and the next task must find
what the last one wrote. DuckDB lets one process write a file at a time; a second writer waits on
the file lock (``resources.connect_waiting``) and fails after ``AUTOTRADER_WAREHOUSE_LOCK_TIMEOUT``.
So runs that write the warehouse carry the run tag ``autotrader/warehouse: write`` and the
production instance's queue (``infra/dagster/dagster.yaml``, ``tag_concurrency_limits``) starts at
most one of them at a time: the others wait in the queue (costing no ECS task), not on the lock.

Runs that only read the warehouse (a rollout replaying ``bar_features``, the backup, the
freshness check) and runs that do not touch it (rollbacks) carry no tag and are never queued
behind a writer; they take DuckDB's lock only for the moment they read.

The local instance needs none of this: it starts one run at a time anyway
(``instance.py``, ``max_concurrent_runs: 1``).
"""

from __future__ import annotations

#: The run tag the production queue limits to one run at a time.
WAREHOUSE_TAG = "autotrader/warehouse"
WAREHOUSE_WRITE = "write"
WAREHOUSE_WRITE_TAGS: dict[str, str] = {WAREHOUSE_TAG: WAREHOUSE_WRITE}

#: Assets whose materialization writes the DuckDB warehouse (tables named in docs/architecture.md,
#: "The stores"). A job that selects any of them carries ``WAREHOUSE_WRITE_TAGS``
#: (tests/unit/test_warehouse_concurrency.py holds every job to it). Not here, because they only
#: read it or never touch it: ``candidate_model`` (reads ``training_dataset``), ``registered_model``
#: (registry), ``production_deployment`` (reads ``bar_features`` as rollout traffic).
WAREHOUSE_WRITERS: tuple[str, ...] = (
    "market_bars",  # market_bars, published_partitions, quarantine tables
    "stg_market_bars",  # dbt view
    "bar_features",  # dbt audit relation, bar_features, quarantine
    "training_dataset",  # training_dataset table
    "paper_trading",  # paper_* tables, model_confidence
    "trading_performance",  # trading_performance_daily
    "feature_drift",  # feature_drift
    "model_health",  # model_health
)
