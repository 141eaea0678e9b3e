"""A real ``dagster-daemon`` acts on critical drift: the sensor launches the rollback, the run succeeds.

The embedded default on a temporary AUTOTRADER_HOME: a registry where v1 (trained on N(0,1)) is
known-good and v2 (trained on N(3,1)) in production, a warehouse day whose features look like
v1's data (drift injected against v2), paper trading's record that v2 served it. The drift is
materialized with the Dagster CLI (a real run in the instance), then a daemon process on the same
instance ticks ``feature_drift_sensor``, which must launch ``model_rollback`` to v1 through the
run queue; the run starts v1 in a local serving slot. Prints the seconds from the drift result
to the run's success.
"""

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
from tests.support.monitoring import DAY, make_world, write_day

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CHECK = dg.AssetCheckKey(dg.AssetKey("feature_drift"), "feature_drift_psi")
TIMEOUT_S = 240


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTOTRADER_", "DAGSTER_"))}
    env.update(AUTOTRADER_HOME=str(home), DAGSTER_HOME=str(home / "dagster_home"), PYTHONPATH=str(ROOT))
    return env


@pytest.mark.slow
def test_daemon_rolls_back_on_critical_drift(tmp_path):
    home = tmp_path
    (home / "dagster_home").mkdir()
    (home / "dagster_home" / "dagster.yaml").write_text(LOCAL_DAGSTER_YAML)
    world = make_world(home)  # registry.db, artifacts/ and warehouse.duckdb: the settings' defaults
    write_day(world.warehouse, DAY, center=0.0)
    env = _env(home)

    materialize = subprocess.run(
        [
            str(BIN / "dagster"),
            "asset",
            "materialize",
            "-m",
            "autotrader_assets.definitions",
            "--select",
            "feature_drift",
            "--partition",
            DAY,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert materialize.returncode == 0, materialize.stderr[-3000:]

    daemon_log = open(home / "daemon.log", "w")
    daemon = subprocess.Popen(
        [str(BIN / "dagster-daemon"), "run", "-m", "autotrader_assets.definitions"],
        cwd=ROOT,
        env=env,
        stdout=daemon_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    started = time.time()
    try:
        instance = dg.DagsterInstance.from_config(str(home / "dagster_home"))
        records = instance.event_log_storage.get_asset_check_execution_history(CHECK, limit=5)
        (record,) = [r for r in records if r.status.value != "PLANNED"]
        evaluation = record.event.dagster_event.event_specific_data
        assert evaluation.severity == dg.AssetCheckSeverity.ERROR
        drift_at = record.event.timestamp
        run = None
        while time.time() - started < TIMEOUT_S:
            runs = instance.get_runs(filters=dg.RunsFilter(job_name="model_rollback"))
            if runs and runs[0].is_finished:
                run = runs[0]
                break
            time.sleep(1.0)
        assert run is not None, (
            f"no finished model_rollback run in {TIMEOUT_S} s; daemon log:\n"
            + (home / "daemon.log").read_text()[-4000:]
        )
        assert run.status == dg.DagsterRunStatus.SUCCESS, (home / "daemon.log").read_text()[-4000:]
        assert run.tags["dagster/run_key"] == f"feature-drift-{DAY}-v{world.v2.version}"
        assert run.tags["autotrader/drift_action"] == "rollback"
        stats = instance.get_run_stats(run.run_id)
        assert world.registry.get_production().version == world.v1.version
        from deploy_ops.state import DeploymentStateStore

        state = DeploymentStateStore(world.url)
        serving = {s.slot: s for s in state.slots().values() if s.is_ready}
        assert {s.version for s in serving.values()} == {str(world.v1.version)}
        assert set(state.routing_table().values()) <= set(serving)
        print(
            f"\ndrift result -> model_rollback success: {stats.end_time - drift_at:.1f} s "
            f"(daemon started {started - drift_at:.1f} s after the result; run queued -> started "
            f"{stats.start_time - stats.launch_time:.1f} s, ran {stats.end_time - stats.start_time:.1f} s)"
        )
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()
        daemon_log.close()
        _stop_slots(home)


def _stop_slots(home: Path) -> None:
    """Stop the serving process the rollback started (it outlives the run by design)."""
    from deploy_ops.procs import pid_running
    from deploy_ops.slots.local import LocalDeployer
    from deploy_ops.state import DeploymentStateStore

    state = DeploymentStateStore(f"sqlite:///{home / 'registry.db'}")
    deployer = LocalDeployer(state, home / "slots", ready_timeout=60, stop_grace=3)
    for slot, info in state.slots().items():
        if info.pid and pid_running(info.pid):
            deployer.stop_slot(slot, force=True)
