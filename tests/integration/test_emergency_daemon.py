"""The emergency path and dead runs with a real ``dagster-daemon`` on the local instance config
(``autotrader_assets/instance.py``): a breaker trip reaches traffic on the known-good slot within
a bound (printed: trip -> known-good serving), and a run whose worker is killed with ``kill -9``
is marked failed and the next queued run starts within a bound (the case where the code server
that watched the worker is gone too is LocalRunLauncher's health check, tests/unit/test_run_launcher.py). Lean on purpose: the second test uses a two-job code location (tests/support/
daemon_jobs.py) so no torch or dbt is imported by its runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from autotrader_assets.instance import LOCAL_DAGSTER_YAML
from deploy_ops.procs import pid_running

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TIMEOUT_S = 240


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTOTRADER_", "DAGSTER_"))}
    env.update(AUTOTRADER_HOME=str(home), DAGSTER_HOME=str(home / "dagster_home"), PYTHONPATH=str(ROOT), **extra)
    return env


def _instance_home(home: Path) -> None:
    (home / "dagster_home").mkdir(parents=True)
    (home / "dagster_home" / "dagster.yaml").write_text(LOCAL_DAGSTER_YAML)


def _start_daemon(home: Path, module: str, env: dict[str, str]) -> subprocess.Popen:
    log = open(home / "daemon.log", "w")
    return subprocess.Popen(
        [str(BIN / "dagster-daemon"), "run", "-m", module],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop_daemon(daemon: subprocess.Popen) -> None:
    os.killpg(daemon.pid, signal.SIGTERM)
    try:
        daemon.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(daemon.pid, signal.SIGKILL)
        daemon.wait()


def _log(home: Path) -> str:
    return (home / "daemon.log").read_text()[-4000:]


@pytest.mark.slow
def test_a_breaker_trip_reaches_the_known_good_slot_within_the_bound(tmp_path):
    from deploy_ops.models.registry import open_registry
    from deploy_ops.slots.local import LocalBackend, LocalDeployer
    from deploy_ops.state import DeploymentStateStore
    from deploy_ops.trading.breaker import BreakerStore
    from tests.support.deployment import feature_bundle, register

    home = tmp_path
    _instance_home(home)
    url = f"sqlite:///{home / 'registry.db'}"  # the settings' defaults under AUTOTRADER_HOME
    registry = open_registry(url, str(home / "artifacts"))
    state = DeploymentStateStore(url)
    deployer = LocalDeployer(state, home / "slots", ready_timeout=60, stop_grace=3)
    v1 = register(registry, feature_bundle(3.0))
    registry.promote(v1.version, actor="test", reason="first production")
    v2 = register(registry, feature_bundle(3.0, bias=0.05))
    registry.promote(v2.version, actor="test", reason="second production")  # v1: known-good
    LocalBackend(deployer, registry).start("blue", registry.get(v2.version))
    state.switch_all("blue")
    daemon = _start_daemon(home, "autotrader_assets.definitions", _env(home))
    try:
        instance = dg.DagsterInstance.from_config(str(home / "dagster_home"))
        # Trip once the breaker sensor ticks: the bound is about the path, not the daemon's start.
        deadline = time.time() + TIMEOUT_S
        while not _ticked(instance, "circuit_breaker_sensor"):
            assert time.time() < deadline and daemon.poll() is None, _log(home)
            time.sleep(0.5)
        BreakerStore(url).trip("daily loss 6% > 5% (test)", {}, at=None)
        tripped = time.time()
        serving_at = None
        while time.time() - tripped < TIMEOUT_S:
            slots = state.slots()
            routes = set(state.routing_table().values())
            if routes and all(r in slots and slots[r].is_ready and slots[r].version == str(v1.version) for r in routes):
                serving_at = time.time()
                break
            assert daemon.poll() is None, _log(home)
            time.sleep(0.1)
        assert serving_at is not None, f"v1 not serving {TIMEOUT_S} s after the trip; daemon log:\n{_log(home)}"
        runs = instance.get_runs(filters=dg.RunsFilter(job_name="emergency_rollback"))
        run = runs[0]  # the attempt that switched traffic (an earlier one may have failed and been retried)
        while not instance.get_run_by_id(run.run_id).is_finished and time.time() - tripped < TIMEOUT_S:
            time.sleep(0.5)  # let it retire the other slot before the daemon stops
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.SUCCESS, _log(home)
        assert run.tags["dagster/priority"] == "100"
        stats = instance.get_run_stats(run.run_id)
        assert registry.get_production().version == v1.version
        seconds = serving_at - tripped
        print(
            f"\nbreaker trip -> known-good v{v1.version} serving every route: {seconds:.1f} s, "
            f"{len(runs)} emergency_rollback run(s) "
            f"(sensor tick + request {stats.launch_time - tripped:.1f} s, queued -> started "
            f"{stats.start_time - stats.launch_time:.1f} s, run start -> serving {serving_at - stats.start_time:.1f} s)"
        )
        # The aim is 30 s; the bound leaves room for a loaded 2-core machine, where most of the
        # time is the run worker importing the code location (printed as queued -> started).
        assert seconds < 120, f"trip -> known-good serving took {seconds:.1f} s"
    finally:
        _stop_daemon(daemon)
        for slot, info in state.slots().items():
            if info.pid and pid_running(info.pid):
                deployer.stop_slot(slot, force=True)


def _ticked(instance: dg.DagsterInstance, sensor: str) -> bool:
    from dagster._core.scheduler.instigation import InstigatorType

    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        if state.name == sensor and instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1):
            return True
    return False


@pytest.mark.slow
def test_run_monitoring_fails_a_killed_run_and_the_next_queued_run_starts(tmp_path):
    home = tmp_path
    _instance_home(home)
    env = _env(home)
    daemon = _start_daemon(home, "tests.support.daemon_jobs", env)
    try:
        instance = dg.DagsterInstance.from_config(str(home / "dagster_home"))
        for job in ("sleepy_job", "quick_job"):  # one lane: quick_job queues behind sleepy_job
            launched = subprocess.run(
                [str(BIN / "dagster"), "job", "launch", "-m", "tests.support.daemon_jobs", "-j", job],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert launched.returncode == 0, launched.stderr[-3000:]
        sleepy = instance.get_runs(filters=dg.RunsFilter(job_name="sleepy_job"))[0]
        deadline = time.time() + TIMEOUT_S
        pid = None
        while pid is None:
            assert time.time() < deadline and daemon.poll() is None, _log(home)
            from autotrader_assets.run_launcher import worker_pid

            found = worker_pid(instance, sleepy.run_id)
            pid = (
                found[0]
                if found and instance.get_run_by_id(sleepy.run_id).status == dg.DagsterRunStatus.STARTED
                else None
            )
            time.sleep(0.5)
        quick = instance.get_runs(filters=dg.RunsFilter(job_name="quick_job"))[0]
        assert instance.get_run_by_id(quick.run_id).status == dg.DagsterRunStatus.QUEUED
        # kill -9 of the run's worker (with the code server gone too, only run monitoring and
        # LocalRunLauncher's health check see it: tests/unit/test_run_launcher.py).
        os.kill(pid, signal.SIGKILL)
        killed = time.time()
        while time.time() - killed < TIMEOUT_S:
            run = instance.get_run_by_id(quick.run_id)
            if run.status in (dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.SUCCESS):
                break
            time.sleep(0.5)
        failed = instance.get_run_by_id(sleepy.run_id)
        assert failed.status == dg.DagsterRunStatus.FAILURE, f"killed run is {failed.status}:\n{_log(home)}"
        assert instance.get_run_by_id(quick.run_id).status in (
            dg.DagsterRunStatus.STARTED,
            dg.DagsterRunStatus.SUCCESS,
        ), _log(home)
        started = instance.get_run_stats(quick.run_id).start_time or time.time()
        print(f"\nkill -9 of a run -> marked failed, next queued run started after {started - killed:.1f} s")
        assert started - killed < 120
    finally:
        _stop_daemon(daemon)
