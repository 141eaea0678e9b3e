"""run_launch_failure_sensor: a run that failed to launch is requested again with a critical event,
at most 3 times, then a last critical event gives up; a run that started is not its business,
and emergency_rollback is circuit_breaker_sensor's.

Launch failures are made the way Dagster makes them: ``instance.launch_run`` with a launcher that
raises (the default launcher without a workspace), which records RUN_STARTING, an engine event with
the launcher's error and RUN_FAILURE, and never a start time."""

from __future__ import annotations

import dagster as dg
import pytest
from dagster._core.errors import DagsterInvariantViolationError

from autotrader_assets.defs.deployment.jobs import emergency_rollback_job
from autotrader_assets.defs.operations.jobs import backup_job
from autotrader_assets.defs.operations.sensors import (
    ATTEMPT_TAG,
    EVENT_KIND,
    RETRY_OF_TAG,
    run_launch_failure_sensor,
)
from autotrader_assets.resources import RegistryResource
from deploy_ops import events
from deploy_ops.state import DeploymentStateStore


@pytest.fixture
def env(tmp_path):
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    registry = RegistryResource(url=url, artifacts_uri=str(tmp_path / "artifacts"))
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        yield instance, registry, DeploymentStateStore(url)


def _launch_failed(
    instance: dg.DagsterInstance, job: dg.JobDefinition, tags: dict[str, str], run_config: dict | None = None
) -> dg.DagsterRun:
    run = instance.create_run_for_job(job_def=job, run_config=run_config, tags=tags)
    with pytest.raises(DagsterInvariantViolationError, match="requires a workspace"):
        instance.launch_run(run.run_id, workspace=None)
    return instance.get_run_by_id(run.run_id)


def _evaluate(instance, registry, run: dg.DagsterRun):
    failure = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)[-1].dagster_event
    ctx = dg.build_run_status_sensor_context(
        sensor_name="run_launch_failure_sensor",
        dagster_instance=instance,
        dagster_run=run,
        dagster_event=failure,
        resources={"registry": registry},
    ).for_run_failure()
    return run_launch_failure_sensor(ctx)


def _launch_events(state: DeploymentStateStore) -> list[events.OpsEvent]:
    return [events.shape(e) for e in state.events_since(0) if e.kind == EVENT_KIND]


def test_a_run_that_failed_to_launch_is_requested_again_with_a_critical_event(env):
    instance, registry, state = env
    config = {"loggers": {"console": {"config": {"log_level": "DEBUG"}}}}
    run = _launch_failed(
        instance,
        backup_job,
        {
            "dagster/partition": "2024-03-02",
            "team": "ops",
            "dagster/run_key": "sched-1",
            "dagster/schedule_name": "hourly_backup",
        },
        run_config=config,
    )
    assert instance.get_run_record_by_id(run.run_id).start_time is None  # what the sensor goes by

    request = _evaluate(instance, registry, run)

    assert isinstance(request, dg.RunRequest)
    assert request.job_name == "backup_job"
    assert request.run_key == f"{run.run_id}-retry-1"
    assert request.partition_key == "2024-03-02"
    assert request.run_config == config
    assert request.tags["team"] == "ops" and request.tags["dagster/partition"] == "2024-03-02"
    assert request.tags[RETRY_OF_TAG] == run.run_id and request.tags[ATTEMPT_TAG] == "2"
    # The schedule's request tags belong to the first run, not to this sensor's request.
    assert "dagster/run_key" not in request.tags and "dagster/schedule_name" not in request.tags
    [event] = _launch_events(state)
    assert event.severity == "critical"
    assert event.details["run_id"] == run.run_id and event.details["gave_up"] is False
    assert event.details["next_run_key"] == request.run_key
    assert "requires a workspace" in event.details["error"]  # the launcher's own error
    assert event.runbook == "docs/runbooks/alerts.md#runlaunchfailed"


def test_the_relaunch_keeps_counting_from_the_first_run(env):
    instance, registry, state = env
    tags = {RETRY_OF_TAG: "first-run", ATTEMPT_TAG: "2", "team": "ops"}
    request = _evaluate(instance, registry, _launch_failed(instance, backup_job, tags))
    assert request.run_key == "first-run-retry-2"
    assert request.tags[ATTEMPT_TAG] == "3" and request.tags[RETRY_OF_TAG] == "first-run"
    assert _launch_events(state)[0].details["first_run_id"] == "first-run"


def test_a_run_that_started_and_failed_is_left_alone(env):
    instance, registry, state = env

    @dg.op
    def boom() -> None:
        raise ValueError("the step broke")

    @dg.job(name="backup_job")
    def started() -> None:
        boom()

    result = started.execute_in_process(instance=instance, raise_on_error=False)
    assert instance.get_run_record_by_id(result.run_id).start_time is not None
    outcome = _evaluate(instance, registry, result.dagster_run)
    assert isinstance(outcome, dg.SkipReason) and "not a launch failure" in outcome.skip_message
    assert _launch_events(state) == []


def test_the_fourth_launch_failing_gives_up_with_an_event(env):
    instance, registry, state = env
    run = _launch_failed(instance, backup_job, {RETRY_OF_TAG: "first-run", ATTEMPT_TAG: "4"})
    outcome = _evaluate(instance, registry, run)
    assert isinstance(outcome, dg.SkipReason) and "gave up" in outcome.skip_message
    [event] = _launch_events(state)
    assert event.severity == "critical" and event.details["gave_up"] is True
    assert event.details["attempt"] == 4 and "after 4 launches" in event.summary
    assert "launch backup_job again by hand" in event.summary


def test_emergency_rollback_is_left_to_the_circuit_breaker_sensor(env):
    instance, registry, state = env
    run = _launch_failed(instance, emergency_rollback_job, {"autotrader/trip_id": "7"})
    outcome = _evaluate(instance, registry, run)
    assert isinstance(outcome, dg.SkipReason) and "circuit_breaker_sensor" in outcome.skip_message
    assert _launch_events(state) == []


def test_a_run_of_a_job_it_cannot_request_is_given_up_loudly(env):
    instance, registry, state = env

    @dg.op
    def noop() -> None:
        return None

    @dg.job(name="__ASSET_JOB")
    def ad_hoc() -> None:
        noop()

    outcome = _evaluate(instance, registry, _launch_failed(instance, ad_hoc, {}))
    assert isinstance(outcome, dg.SkipReason)
    [event] = _launch_events(state)
    assert event.details["gave_up"] is True and "not a job this sensor can request" in event.summary
