"""A failed rollout is closed out even when its reason quotes a multi-line error: the registry
refuses control characters from people, so composed text is escaped before it is stored."""

from __future__ import annotations

from deploy_ops.models.registry import open_registry
from deploy_ops.rollout.closeout import close_out
from deploy_ops.state import DeploymentStateStore


def test_a_multi_line_reason_still_marks_the_version_failed_on_one_line(tmp_path, make_bundle):
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    registry = open_registry(url, str(tmp_path / "artifacts"))
    v = registry.register(
        make_bundle(0), metrics={}, params={}, lineage={}, stage="staging", actor="trainer", reason="trained"
    )
    state = DeploymentStateStore(url)
    reason = "slot green did not start:\nTraceback (most recent call last):\n  OSError: port in use"
    result = close_out(
        state,
        backend=None,
        deployment_id=None,
        status="failed",
        reason=reason,
        event="rollout_failed",
        message="rollout failed",
        details={},
        registry=registry,
        mark_failed=v.version,
        actor="tester",
    )
    assert result.problems == [] and registry.get(v.version).stage == "failed"
    (change,) = [h for h in registry.history(v.version) if h.to_stage == "failed"]
    assert "\n" not in change.reason
    assert change.reason == "slot green did not start:\\nTraceback (most recent call last):\\n  OSError: port in use"
