"""The emergency path when it goes wrong, through Dagster: an emergency rollback with no
known-good version is a critical event of its own; ``circuit_breaker_sensor`` retries a failed or
never-launched emergency rollback within a bound, a critical event per failure; and a CLI
rollout killed with ``kill -9`` mid-canary is shown as owned by a dead process and recovered by
``interrupted_deployment_sensor`` (traffic back on the known-good slot), with the
``production_deployment`` record saying what serves afterwards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from click.testing import CliRunner

from autotrader_assets.commands.deploy import group as deploy_group
from autotrader_assets.defs.deployment import DeploymentStackResource, deployment_jobs, interrupted_deployment_sensor
from autotrader_assets.defs.deployment.record import latest_record
from autotrader_assets.defs.deployment.resources import deployment_resource
from autotrader_assets.defs.trading.rollback_decision import RETRY_FAILED_EVENT, RetryPolicy
from autotrader_assets.defs.trading.sensors import build_circuit_breaker_sensor, parse_cursor
from autotrader_assets.resources import RegistryResource
from autotrader_assets.settings import get_settings
from deploy_ops.db import make_engine
from deploy_ops.procs import pid_running
from deploy_ops.rollback import RollbackError, emergency_rollback
from deploy_ops.trading.breaker import BreakerStore
from tests.support.deployment import (
    CANARY,
    INSTRUMENTS,
    feature_bundle,
    logistic_bundle,
    make_stack,
    predict_everywhere,
    register,
    teardown_stack,
    wait_dead,
    write_bar_features,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def stack(tmp_path):
    s = make_stack(tmp_path)
    yield s
    teardown_stack(s)


def _resources(stack) -> dict:
    return {
        "registry": RegistryResource(url=stack.url, artifacts_uri=str(stack.tmp / "artifacts")),
        "deployment": DeploymentStackResource(
            state_url=stack.url,
            backend="local",
            workdir=str(stack.tmp / "slots"),
            instruments=list(INSTRUMENTS),
            canary_instruments=list(CANARY),
            stage_seconds=1.0,
            fee_bps=4.0,
            slippage_bps=2.0,
        ),
    }


def test_an_emergency_rollback_with_no_known_good_version_is_a_critical_event(stack):
    only = register(stack.registry, logistic_bundle(3.0))
    stack.registry.promote(only.version, actor="test", reason="the only version")

    with pytest.raises(RollbackError, match="no known-good version"):
        emergency_rollback(stack.registry, stack.state, stack.backend, reason="breaker tripped", actor="sensor")

    (event,) = stack.state.events_since(0, kinds=["emergency_rollback_failed"])
    assert event.severity == "critical" and "no known-good version" in event.message
    assert event.details["production_version"] == only.version
    assert any("autotrader deploy rollback --to VERSION" in a for a in event.details["operator_actions"])
    assert event.details["runbook"].startswith("docs/runbooks/rollback.md#")
    assert stack.state.deployments() == []  # refused before anything was touched


def _tick(sensor, instance, resources, cursor):
    return sensor.evaluate_tick(
        dg.build_sensor_context(instance=instance, cursor=cursor, resources={"registry": resources["registry"]})
    )


def test_the_breaker_sensor_retries_a_failed_emergency_rollback_within_a_bound(stack):
    # No known-good version: every attempt at the emergency rollback really fails.
    only = register(stack.registry, logistic_bundle(3.0))
    stack.registry.promote(only.version, actor="test", reason="the only version")
    resources = _resources(stack)
    defs = dg.Definitions(jobs=deployment_jobs, resources=resources)
    instance = dg.DagsterInstance.ephemeral()
    sensor = build_circuit_breaker_sensor(retry=RetryPolicy(max_attempts=2, backoff_seconds=0.0))
    breaker = BreakerStore(stack.url)
    breaker.trip("daily loss 6% > 5%", {}, at=pd.Timestamp("2024-03-02 10:00", tz="UTC"))
    trip_id = breaker.status().trip_id

    first = _tick(sensor, instance, resources, None)
    (request,) = first.run_requests
    assert request.run_key == f"circuit-breaker-trip-{trip_id}"
    run = defs.resolve_job_def("emergency_rollback").execute_in_process(
        instance=instance, tags=request.tags, raise_on_error=False
    )
    assert not run.success
    assert run.dagster_run.tags["dagster/priority"] == "100"  # ahead of every ordinary queued run

    second = _tick(sensor, instance, resources, first.cursor)
    (retry,) = second.run_requests
    assert retry.run_key == f"circuit-breaker-trip-{trip_id}-attempt-2" and retry.tags["autotrader/attempt"] == "2"
    (failed,) = stack.state.events_since(0, kinds=[RETRY_FAILED_EVENT])
    assert failed.severity == "critical" and failed.details["attempt"] == 1 and not failed.details["final"]
    assert "no known-good version" in failed.details["error"] and failed.details["run_id"] == run.run_id

    again = defs.resolve_job_def("emergency_rollback").execute_in_process(
        instance=instance, tags=retry.tags, raise_on_error=False
    )
    assert not again.success
    third = _tick(sensor, instance, resources, second.cursor)
    assert third.run_requests == []  # the bound: two attempts
    last = stack.state.events_since(0, kinds=[RETRY_FAILED_EVENT])[-1]
    assert last.details["attempt"] == 2 and last.details["final"] and "roll back by hand" in last.message
    assert parse_cursor(third.cursor)[1] == {}  # no longer followed
    fourth = _tick(sensor, instance, resources, third.cursor)
    assert fourth.run_requests == [] and len(stack.state.events_since(0, kinds=[RETRY_FAILED_EVENT])) == 2
    # each failed run also recorded the emergency path's own failure
    assert len(stack.state.events_since(0, kinds=["emergency_rollback_failed"])) == 2


def test_a_rollback_that_never_launches_counts_as_failed_and_is_requested_again(stack):
    resources = _resources(stack)
    instance = dg.DagsterInstance.ephemeral()
    clock = [1_000.0]
    sensor = build_circuit_breaker_sensor(
        retry=RetryPolicy(max_attempts=3, backoff_seconds=10.0, launch_grace_seconds=60.0), clock=lambda: clock[0]
    )
    breaker = BreakerStore(stack.url)
    breaker.trip("drawdown 16% > 15%", {}, at=pd.Timestamp("2024-03-02 10:00", tz="UTC"))

    first = _tick(sensor, instance, resources, None)
    assert len(first.run_requests) == 1
    clock[0] += 30
    waiting = _tick(sensor, instance, resources, first.cursor)
    assert waiting.run_requests == [] and stack.state.events_since(0, kinds=[RETRY_FAILED_EVENT]) == []
    clock[0] += 31  # past the launch grace: the run never appeared
    late = _tick(sensor, instance, resources, waiting.cursor)
    assert late.run_requests == []  # first the back-off of 10 s
    (event,) = stack.state.events_since(0, kinds=[RETRY_FAILED_EVENT])
    assert "no run was launched" in event.message and event.details["retry_in_seconds"] == 10.0
    clock[0] += 10
    retry = _tick(sensor, instance, resources, late.cursor)
    assert [r.tags["autotrader/attempt"] for r in retry.run_requests] == ["2"]

    breaker.reset(approved_by="alice", reason="handled by hand")
    clock[0] += 1000
    after_reset = _tick(sensor, instance, resources, retry.cursor)
    assert after_reset.run_requests == [] and parse_cursor(after_reset.cursor)[1] == {}


# ---------------------------------------------------------------- a CLI rollout killed mid-canary


@pytest.fixture
def home(tmp_path, monkeypatch):
    for name in [k for k in os.environ if k.startswith(("AUTOTRADER_", "DAGSTER_"))]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AUTOTRADER_HOME", str(tmp_path))
    monkeypatch.setenv("AUTOTRADER_INSTRUMENTS", ",".join(INSTRUMENTS))
    get_settings.cache_clear()
    s = make_stack(tmp_path)  # the settings' default registry, state and slots under AUTOTRADER_HOME
    yield s
    teardown_stack(s)
    make_engine(s.url).dispose()
    get_settings.cache_clear()


@pytest.mark.slow
def test_a_killed_cli_rollout_is_shown_dead_and_recovered_by_the_sensor(home, monkeypatch):
    settings = get_settings()
    write_bar_features(settings.warehouse_path)
    v1 = register(home.registry, feature_bundle(3.0))
    home.registry.promote(v1.version, actor="test", reason="initial production")
    home.backend.start("blue", home.registry.get(v1.version))
    home.state.switch_all("blue")
    v2 = register(home.registry, feature_bundle(3.0, bias=0.02))

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = open(home.tmp / "rollout.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "autotrader_assets.cli", "deploy", "rollout", str(v2.version), "--stage-seconds", "120"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            dep = home.state.active_deployment()
            if dep is not None and dep.stage == "canary" and home.state.routing_table().get("BTCUSDT") == "green":
                break
            assert proc.poll() is None, (home.tmp / "rollout.log").read_text()
            time.sleep(0.2)
        else:
            pytest.fail("the CLI rollout never reached the canary: " + (home.tmp / "rollout.log").read_text())
        alive = CliRunner().invoke(deploy_group, ["status"], catch_exceptions=False).output
        assert f"RUNNING:    deployment {dep.id} of version {v2.version}, stage canary" in alive and "alive" in alive
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()
    green_pid = home.state.get_slot("green").pid
    assert pid_running(green_pid) and home.state.routing_table()["BTCUSDT"] == "green"

    status = CliRunner().invoke(deploy_group, ["status"], catch_exceptions=False).output
    assert f"INTERRUPTED: deployment {dep.id} of version {v2.version} at stage canary" in status
    assert f"is DEAD (process {proc.pid} is gone" in status
    as_json = json.loads(CliRunner().invoke(deploy_group, ["status", "--json"], catch_exceptions=False).output)
    assert as_json["active_deployment"]["owner"]["alive"] is False

    instance = dg.DagsterInstance.ephemeral()
    resources = {
        "registry": RegistryResource(url=settings.registry_url, artifacts_uri=settings.artifacts_uri),
        "deployment": deployment_resource(settings),
    }
    killed_at = time.monotonic()
    tick = interrupted_deployment_sensor.evaluate_tick(dg.build_sensor_context(instance=instance, resources=resources))
    recovered_in = time.monotonic() - killed_at

    assert "recovered" in tick.skip_message and f"process {proc.pid} is gone" in tick.skip_message
    assert home.state.active_deployment() is None
    assert set(home.state.routing_table().values()) == {"blue"}
    assert wait_dead(green_pid)
    event = home.state.events_since(0, kinds=["rollout_interrupted"])[-1]
    assert event.severity == "critical" and event.details["owner"].endswith(f":{proc.pid}")
    assert home.registry.get_production().version == v1.version
    assert home.registry.get(v2.version).stage == "staging"  # never judged
    from autotrader_assets.settings import FEATURE_COLUMNS

    assert predict_everywhere(home.state, len(FEATURE_COLUMNS)) == {i: str(v1.version) for i in INSTRUMENTS}
    record = latest_record(instance)
    assert record.metadata["version"].value == v1.version
    assert record.metadata["change"].value == "interrupted_rollout_recovered"
    # nothing left: the next tick skips
    quiet = interrupted_deployment_sensor.evaluate_tick(dg.build_sensor_context(instance=instance, resources=resources))
    assert quiet.skip_message == "no deployment is running"
    print(
        f"\nkilled CLI rollout -> traffic back on blue: one sensor tick of {recovered_in:.1f} s "
        f"(the sensor runs every {interrupted_deployment_sensor.minimum_interval_seconds} s)"
    )
