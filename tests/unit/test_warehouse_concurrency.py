"""One warehouse writer at a time in production: every job that writes the DuckDB warehouse carries the
run tag the shipped instance's queue limits to 1; readers carry no tag and are not held behind a writer."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.remote_origin import GrpcServerCodeLocationOrigin, RemoteRepositoryOrigin
from dagster._core.test_utils import create_run_for_test
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

from autotrader_assets.concurrency import WAREHOUSE_TAG, WAREHOUSE_WRITE, WAREHOUSE_WRITE_TAGS, WAREHOUSE_WRITERS
from autotrader_assets.definitions import defs
from autotrader_assets.instance import LOCAL_DAGSTER_YAML

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "infra" / "dagster" / "dagster.yaml"
#: The jobs that write (docs/architecture.md, "Profiles"); the rest only read or never touch it.
WRITING_JOBS = {
    "data_pipeline",
    "data_rollback",
    "training_job",
    "paper_trading_job",
    "performance_report",
    "health_check",
}


@pytest.fixture(scope="module")
def repo():
    return defs.get_repository_def()


def _selected_assets(job: dg.JobDefinition) -> set[str]:
    return {key.to_user_string() for key in job.asset_layer.executable_asset_keys}


def test_every_writer_named_is_an_asset_of_the_code_location(repo):
    keys = {key.to_user_string() for key in repo.asset_graph.get_all_asset_keys()}
    assert set(WAREHOUSE_WRITERS) <= keys


def test_every_job_that_selects_a_warehouse_writer_carries_the_tag_and_no_other_does(repo):
    jobs = [j for j in repo.get_all_jobs() if not j.name.startswith("__")]
    writing = {j.name for j in jobs if _selected_assets(j) & set(WAREHOUSE_WRITERS)}
    assert writing == WRITING_JOBS
    for job in jobs:
        if job.name in writing:
            assert job.tags.get(WAREHOUSE_TAG) == WAREHOUSE_WRITE, f"{job.name} writes the warehouse but is not tagged"
        else:
            # A reader or a rollback must never wait behind a writer in the queue.
            assert WAREHOUSE_TAG not in job.tags, f"{job.name} does not write the warehouse but is tagged"


def test_scheduled_runs_inherit_the_tag(repo):
    schedule = next(s for s in repo.schedule_defs if s.name == "daily_paper_trading")
    job = repo.get_job(schedule.job_name)
    # The daemon merges the job's tags into every run it creates from the request.
    assert job.tags[WAREHOUSE_TAG] == WAREHOUSE_WRITE


def test_the_shipped_queue_limits_warehouse_writers_to_one():
    config = yaml.safe_load(SHIPPED.read_text())["run_coordinator"]["config"]
    assert {"key": WAREHOUSE_TAG, "value": WAREHOUSE_WRITE, "limit": 1} in config["tag_concurrency_limits"]


def test_the_local_instance_runs_one_run_at_a_time():
    assert yaml.safe_load(LOCAL_DAGSTER_YAML)["run_queue"]["max_concurrent_runs"] == 1


def test_the_daemon_queue_holds_a_second_writer_but_not_a_reader(tmp_path):
    """The queue daemon's own selection, on an instance with the shipped run_coordinator section: with
    one writer running, a queued writer stays queued and a queued reader is dequeued."""
    shipped = yaml.safe_load(SHIPPED.read_text())
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        yaml.safe_dump({"run_coordinator": shipped["run_coordinator"], "telemetry": {"enabled": False}})
    )
    with dg.DagsterInstance.from_config(str(home)) as instance:
        # Queued runs name the code location they come from (the daemon launches from it).
        repository = RemoteRepositoryOrigin(
            GrpcServerCodeLocationOrigin(host="code", port=4000, location_name="autotrader"), "__repository__"
        )

        def run(job: str, status: dg.DagsterRunStatus, tags: dict[str, str] | None = None):
            return create_run_for_test(
                instance, job_name=job, status=status, tags=tags, remote_job_origin=repository.get_job_origin(job)
            )

        run("data_pipeline", dg.DagsterRunStatus.STARTED, WAREHOUSE_WRITE_TAGS)
        writer = run("paper_trading_job", dg.DagsterRunStatus.QUEUED, WAREHOUSE_WRITE_TAGS)
        reader = run("deployment_pipeline", dg.DagsterRunStatus.QUEUED)
        rollback = run("emergency_rollback", dg.DagsterRunStatus.QUEUED, {"dagster/priority": "100"})
        daemon = QueuedRunCoordinatorDaemon(interval_seconds=1)
        chosen = {run.run_id for run in daemon._get_runs_to_dequeue(instance, instance.get_concurrency_config(), None)}
        assert chosen == {reader.run_id, rollback.run_id}
        assert writer.run_id not in chosen

        # The running writer finishes: the queued writer is next.
        instance.report_run_failed(
            instance.get_run_by_id(next(r.run_id for r in instance.get_runs() if r.job_name == "data_pipeline"))
        )
        chosen = {run.run_id for run in daemon._get_runs_to_dequeue(instance, instance.get_concurrency_config(), None)}
        assert writer.run_id in chosen
