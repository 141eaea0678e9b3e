"""LocalRunLauncher tells Dagster's run monitoring whether a run's worker lives, from the pid the
worker recorded: a dead pid, or a pid reused by a younger process, is a failed worker (what lets
the daemon fail a kill -9'd run when no code server is left to notice); no recorded pid (a run
executed in-process) is not a failure."""

from __future__ import annotations

import os
import subprocess
import time

import dagster as dg
from dagster._core.events import EngineEventData
from dagster._core.launcher import WorkerStatus

from autotrader_assets.run_launcher import LocalRunLauncher, process_start_time, worker_pid


@dg.op
def _noop() -> None:
    return None


@dg.job
def _tiny():
    _noop()


def _launcher_and_run():
    instance = dg.DagsterInstance.ephemeral()
    run = _tiny.execute_in_process(instance=instance).dagster_run
    launcher = LocalRunLauncher()
    launcher.register_instance(instance)
    return instance, launcher, run


def test_a_run_executed_in_process_is_checked_on_its_own_live_process():
    _, launcher, run = _launcher_and_run()
    assert launcher.supports_check_run_worker_health
    assert launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING


def test_a_dead_worker_pid_fails_the_check_and_a_live_one_passes():
    instance, launcher, run = _launcher_and_run()
    gone = subprocess.Popen(["true"])
    gone.wait()
    instance.report_engine_event(
        f"Started process for run (pid: {gone.pid}).", run, EngineEventData.in_process(gone.pid)
    )
    assert worker_pid(instance, run.run_id)[0] == gone.pid
    result = launcher.check_run_worker_health(run)
    assert result.status == WorkerStatus.FAILED and f"process {gone.pid} is gone" in result.msg

    instance2, launcher2, run2 = _launcher_and_run()
    instance2.report_engine_event(
        f"Started process for run (pid: {os.getpid()}).", run2, EngineEventData.in_process(os.getpid())
    )
    assert launcher2.check_run_worker_health(run2).status == WorkerStatus.RUNNING


def test_a_pid_reused_by_a_younger_process_is_a_dead_worker():
    instance, launcher, run = _launcher_and_run()
    young = subprocess.Popen(["sleep", "30"])
    try:
        # The event says the worker started well before this process did.
        instance.report_engine_event(
            f"Started process for run (pid: {young.pid}).",
            run,
            EngineEventData.in_process(young.pid),
        )
        started = process_start_time(young.pid)
        assert started is not None and abs(started - time.time()) < 60
        record = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)[-1]
        assert record.timestamp >= started - 5  # the event is newer here, so it is the same process
        assert launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
    finally:
        young.kill()
        young.wait()
