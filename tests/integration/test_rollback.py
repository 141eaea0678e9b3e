"""Manual and emergency rollbacks, and restoring production serving, with real slot processes."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from deploy_ops.models.bundle import ArtifactIntegrityError
from deploy_ops.models.registry import UnknownVersionError
from deploy_ops.rollback import (
    RollbackError,
    emergency_rollback,
    ensure_production_serving,
    manual_rollback,
    switch_traffic,
)
from deploy_ops.rollout.closeout import close_out
from deploy_ops.slots.backend import SlotCheck
from deploy_ops.state import DEFAULT_ROUTE
from tests.support.deployment import (
    INSTRUMENTS,
    logistic_bundle,
    make_stack,
    pid_running,
    predict_everywhere,
    register,
    serve_production,
    teardown_stack,
    wait_dead,
)


@pytest.fixture
def stack(tmp_path):
    s = make_stack(tmp_path)
    yield s
    teardown_stack(s)


def v2_live_on_green(stack):
    """v1 served from blue, then v2 promoted and served from green; blue stopped. Returns (v1, v2)."""
    v1 = serve_production(stack, logistic_bundle(3.0))
    v2 = register(stack.registry, logistic_bundle(3.0, bias=0.05))
    stack.backend.start("green", v2)
    stack.registry.promote(v2.version, actor="test", reason="v2 rollout")
    stack.state.switch_all("green")
    stack.backend.stop("blue")
    return stack.registry.get(v1.version), stack.registry.get(v2.version)


def test_manual_rollback_refuses_bad_requests_before_touching_anything(stack):
    v1 = register(stack.registry, logistic_bundle(3.0))
    with pytest.raises(RollbackError, match="nothing to roll back"):
        manual_rollback(stack.registry, stack.state, stack.backend, v1.version, reason="why", actor="op")
    with pytest.raises(UnknownVersionError):
        manual_rollback(stack.registry, stack.state, stack.backend, 99, reason="why", actor="op")
    stack.registry.promote(v1.version, actor="test", reason="setup")
    cand = register(stack.registry, logistic_bundle(2.0), stage="candidate")
    bad = register(stack.registry, logistic_bundle(1.0))
    stack.registry.mark_failed(bad.version, actor="test", reason="setup")
    with pytest.raises(ValueError, match="reason is required and must be a non-blank string"):
        manual_rollback(stack.registry, stack.state, stack.backend, v1.version, reason="  ", actor="op")
    with pytest.raises(RollbackError, match="marked failed"):
        manual_rollback(stack.registry, stack.state, stack.backend, bad.version, reason="why", actor="op")
    with pytest.raises(RollbackError, match="stage candidate"):
        manual_rollback(stack.registry, stack.state, stack.backend, cand.version, reason="why", actor="op")
    with pytest.raises(RollbackError, match="no known-good version"):
        emergency_rollback(stack.registry, stack.state, stack.backend, reason="why", actor="op")
    assert stack.state.slots() == {} and stack.state.deployments() == []
    assert stack.registry.get_production().version == v1.version


@pytest.mark.slow
def test_manual_rollback_serves_the_named_version_and_retires_the_other_slot(stack):
    v1, v2 = v2_live_on_green(stack)
    green_pid = stack.state.get_slot("green").pid

    report = manual_rollback(
        stack.registry, stack.state, stack.backend, v1.version, reason="v2 overtrades in thin markets", actor="alice"
    )

    assert (report.kind, report.to_version, report.from_version) == ("manual", v1.version, v2.version)
    assert (report.slot, report.retired_slot) == ("blue", "green")
    assert any("known-answer prediction matches" in a for a in report.actions)
    assert stack.registry.get_production().version == v1.version
    assert stack.registry.get(v2.version).stage == "archived"
    audit = stack.registry.audit(v1.version)[-1]
    assert (audit.action, audit.actor, audit.reason) == ("rollback", "alice", "v2 overtrades in thin markets")
    assert set(stack.state.routing_table().values()) == {"blue"}
    assert wait_dead(green_pid) and stack.state.get_slot("green").status == "stopped"
    assert predict_everywhere(stack.state) == {i: str(v1.version) for i in INSTRUMENTS}
    dep = stack.state.deployments()[0]
    assert (dep.stage, dep.status, dep.version) == ("manual_rollback", "succeeded", str(v1.version))
    event = stack.state.events_since(0, kinds=["model_rollback"])[-1]
    assert event.severity == "warning" and event.details["actor"] == "alice"

    # a tampered artifact is refused before any process or route changes
    artifact = Path(stack.registry.get(v2.version).artifact_uri)
    artifact.write_bytes(artifact.read_bytes() + b"tampered")
    with pytest.raises(ArtifactIntegrityError):
        manual_rollback(stack.registry, stack.state, stack.backend, v2.version, reason="back", actor="alice")
    assert set(stack.state.routing_table().values()) == {"blue"}
    assert stack.state.get_slot("green").status == "stopped"
    assert stack.registry.get_production().version == v1.version

    # switching traffic to a stopped slot is refused, the table untouched
    with pytest.raises(RollbackError, match="slot green is stopped"):
        switch_traffic(stack.registry, stack.state, stack.backend, "green", actor="alice", reason="try")
    assert set(stack.state.routing_table().values()) == {"blue"}


@pytest.mark.slow
def test_emergency_rollback_preempts_a_rollout_and_fails_the_bad_version(stack):
    v1, v2 = v2_live_on_green(stack)
    in_flight = stack.state.start_deployment("9", slot="blue", stage="canary")

    report = emergency_rollback(stack.registry, stack.state, stack.backend, reason="PnL collapsing", actor="pager")

    assert (report.kind, report.to_version, report.slot, report.retired_slot) == (
        "emergency",
        v1.version,
        "blue",
        "green",
    )
    assert any("preempted deployment" in a for a in report.actions)
    assert stack.state.get_deployment(in_flight.id).status == "failed"
    assert "preempted by emergency rollback" in stack.state.get_deployment(in_flight.id).reason
    assert stack.registry.get_production().version == v1.version
    assert stack.registry.get(v2.version).stage == "failed"
    assert set(stack.state.routing_table().values()) == {"blue"}
    assert stack.state.get_slot("green").status == "stopped"
    assert predict_everywhere(stack.state) == {i: str(v1.version) for i in INSTRUMENTS}
    event = stack.state.events_since(0, kinds=["emergency_rollback"])[-1]
    assert event.severity == "critical" and "PnL collapsing" in event.message
    assert stack.state.deployments()[0].stage == "emergency_rollback"


@pytest.mark.slow
def test_ensure_production_serving_fixes_routes_and_restarts_a_lost_slot(stack):
    v1 = serve_production(stack, logistic_bundle(3.0))
    stack.state.set_routes({"BTCUSDT": "green"})  # a stray route to a slot that serves nothing

    fixed = ensure_production_serving(stack.registry, stack.state, stack.backend, actor="sensor", reason="run failed")
    assert fixed.slot == "blue" and "all routes -> blue" in fixed.actions
    assert set(stack.state.routing_table().values()) == {"blue"}

    untouched = ensure_production_serving(stack.registry, stack.state, stack.backend, actor="sensor", reason="again")
    assert untouched.actions == [f"all routes already on slot blue (version {v1.version}), healthy"]

    old_pid = stack.state.get_slot("blue").pid
    os.kill(old_pid, signal.SIGKILL)
    assert wait_dead(old_pid)
    restored = ensure_production_serving(stack.registry, stack.state, stack.backend, actor="sensor", reason="slot lost")
    assert restored.slot == "blue" and any("restarted with production version" in a for a in restored.actions)
    new_pid = stack.state.get_slot("blue").pid
    assert new_pid != old_pid and pid_running(new_pid)
    assert stack.state.routing_table()[DEFAULT_ROUTE] == "blue"
    assert predict_everywhere(stack.state) == {i: str(v1.version) for i in INSTRUMENTS}
    kinds = [(e.kind, e.severity) for e in stack.state.events_since(0, kinds=["production_serving_ensured"])]
    assert kinds == [
        ("production_serving_ensured", "warning"),
        ("production_serving_ensured", "info"),
        ("production_serving_ensured", "warning"),
    ]


@pytest.mark.slow
def test_a_manual_rollback_that_fails_its_smoke_test_closes_out_like_every_failure(stack, monkeypatch):
    v1, v2 = v2_live_on_green(stack)
    refused = SlotCheck("blue", False, "probe refused by the test")
    monkeypatch.setattr(stack.backend, "check", lambda slot, version: refused)

    with pytest.raises(RollbackError, match=r"failed before switching traffic.*slot blue stopped"):
        manual_rollback(stack.registry, stack.state, stack.backend, v1.version, reason="back", actor="alice")

    # nothing was switched: production and routes stay on v2, the started slot is gone again
    assert set(stack.state.routing_table().values()) == {"green"}
    assert stack.state.get_slot("blue").status == "stopped"
    assert stack.registry.get_production().version == v2.version
    dep = stack.state.deployments()[0]
    assert (dep.stage, dep.status) == ("manual_rollback", "failed") and "probe refused" in dep.reason
    event = stack.state.events_since(0, kinds=["model_rollback_failed"])[-1]
    assert event.severity == "critical"
    assert (event.details["actions"], event.details["problems"]) == (["slot blue stopped"], [])


@pytest.mark.slow
def test_close_out_attempts_every_step_and_records_the_ones_that_failed(stack, monkeypatch):
    v1 = serve_production(stack, logistic_bundle(3.0))
    v2 = register(stack.registry, logistic_bundle(3.0, bias=0.05))
    stack.backend.start("green", v2)
    stack.state.set_routes({"BTCUSDT": "green"})
    dep = stack.state.start_deployment(str(v2.version), slot="green", stage="canary")

    def stop_fails(slot, *, force=False):
        raise OSError(f"cannot signal slot {slot}")

    monkeypatch.setattr(stack.backend, "stop", stop_fails)
    result = close_out(
        stack.state,
        stack.backend,
        dep.id,
        status="rolled_back",
        reason="canary error rate",
        event="rollout_rolled_back",
        message=f"rollout of version {v2.version} rolled back",
        details={"test": True},
        route_to="blue",
        stop="green",
        registry=stack.registry,
        mark_failed=v2.version,
        actor="tester",
        check=("blue", str(v1.version)),
    )

    # the failed stop did not keep traffic on green, nor the version from being failed
    assert result.actions == [
        "all routes -> blue",
        "weights -> blue 100%",
        f"version {v2.version} marked failed",
        "slot blue healthy",
    ]
    assert result.problems == ["slot green stopped: OSError: cannot signal slot green"]
    assert set(stack.state.routing_table().values()) == {"blue"}
    assert stack.registry.get(v2.version).stage == "failed"
    closed = stack.state.get_deployment(dep.id)
    assert closed.status == "rolled_back" and "close-out failed: slot green stopped" in closed.reason
    event = stack.state.events_since(0, kinds=["rollout_rolled_back"])[-1]
    assert event.severity == "critical" and "FAILED slot green stopped" in event.message
    assert event.details["problems"] == result.problems and event.details["test"] is True
