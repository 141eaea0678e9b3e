"""``autotrader drill breaker`` against a real ``dagster-daemon`` on a temporary instance (the local
instance config, ``autotrader_assets/instance.py``), with the default 30 s sensor intervals: v2 serves
on blue, v1 is known-good; the drill trips the breaker and prints every step's seconds. Alertmanager is
an HTTP recorder on loopback (``AUTOTRADER_ALERTMANAGER_URL`` for the daemon and the drill), so the
alert and its resolution are delivered for real by ``alert_delivery_sensor``. Printed: breaker trip ->
known-good serving (aim: under 60 s)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from autotrader_assets.instance import LOCAL_DAGSTER_YAML
from deploy_ops.procs import pid_running
from tests.support.alerting import Recorder

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTOTRADER_", "DAGSTER_"))}
    env.update(AUTOTRADER_HOME=str(home), DAGSTER_HOME=str(home / "dagster_home"), PYTHONPATH=str(ROOT), **extra)
    return env


def _drill(env: dict[str, str], *args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "autotrader"), "drill", "breaker", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_drill_refuses_without_a_daemon_and_injects_nothing(tmp_path):
    (tmp_path / "dagster_home").mkdir()
    (tmp_path / "dagster_home" / "dagster.yaml").write_text(LOCAL_DAGSTER_YAML)
    done = _drill(_env(tmp_path), "--approved-by", "test", timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "no dagster-daemon is running" in done.stderr and "make ui" in done.stderr
    from deploy_ops.trading.breaker import BreakerStore

    assert not BreakerStore(f"sqlite:///{tmp_path / 'registry.db'}").status().tripped


@pytest.mark.slow
def test_drill_breaker_times_trip_to_known_good_serving_with_a_real_daemon(tmp_path):
    from deploy_ops.models.registry import open_registry
    from deploy_ops.slots.local import LocalBackend, LocalDeployer
    from deploy_ops.state import DeploymentStateStore
    from deploy_ops.trading.breaker import BreakerStore
    from tests.support.deployment import feature_bundle, register

    home = tmp_path
    (home / "dagster_home").mkdir()
    (home / "dagster_home" / "dagster.yaml").write_text(LOCAL_DAGSTER_YAML)
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
    alertmanager = Recorder()
    env = _env(home, AUTOTRADER_ALERTMANAGER_URL=alertmanager.url)
    log = open(home / "daemon.log", "w")
    daemon = subprocess.Popen(
        [str(BIN / "dagster-daemon"), "run", "-m", "autotrader_assets.definitions"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        instance = dg.DagsterInstance.from_config(str(home / "dagster_home"))
        deadline = time.time() + 240
        while not instance.get_daemon_heartbeats():
            assert time.time() < deadline and daemon.poll() is None, (home / "daemon.log").read_text()[-3000:]
            time.sleep(0.5)
        done = _drill(env, "--approved-by", "drill test", "--timeout", "240")
        print("\n" + done.stdout)
        assert done.returncode == 0, done.stdout + done.stderr + (home / "daemon.log").read_text()[-3000:]
        for step in (
            "fault",
            "event",
            "sensor tick",
            "alert delivered",
            "rollback run",
            "traffic on known-good",
            "alert resolved",
        ):
            assert re.search(rf"\+\s*[\d.]+ s\s+{step}\b", done.stdout), f"{step} not timed:\n{done.stdout}"
        seconds = float(re.search(r"known-good serving in ([\d.]+) s", done.stdout).group(1))
        assert registry.get_production().version == v1.version
        assert not BreakerStore(url).status().tripped  # the drill's approved reset
        posted = [a for body in alertmanager.bodies("/api/v2/alerts") for a in body]
        assert any(a["labels"]["alertname"] == "CircuitBreakerTripped" for a in posted)
        print(f"breaker trip -> known-good serving: {seconds:.1f} s (aim < 60 s with the 30 s sensor interval)")
        # The bound leaves room for a loaded 2-core machine (most of it is the run worker's imports).
        assert seconds < 120
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()
        log.close()
        alertmanager.close()
        for slot, info in state.slots().items():
            if info.pid and pid_running(info.pid):
                deployer.stop_slot(slot, force=True)


@pytest.mark.parametrize(
    "args", [["drift", "--date", "2024-03-05"], ["slot-crash"], ["error-rate", "--fault-seconds", "2"]]
)
def test_every_drill_refuses_without_a_daemon_and_injects_nothing(tmp_path, args):
    (tmp_path / "dagster_home").mkdir()
    (tmp_path / "dagster_home" / "dagster.yaml").write_text(LOCAL_DAGSTER_YAML)
    done = subprocess.run(
        [str(BIN / "autotrader"), "drill", *args, "--timeout", "5"],
        cwd=ROOT,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "no dagster-daemon is running" in done.stderr and "make ui" in done.stderr
    assert "injected" not in done.stdout
    assert not (tmp_path / "drills").exists()  # the drift drill's backup: no row was moved
