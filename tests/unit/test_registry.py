"""Model registry behaviour on SQLite (the PostgreSQL module reuses these tests)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from deploy_ops.db import make_engine
from deploy_ops.models.artifacts import (
    ArtifactNotFoundError,
    LocalArtifactStore,
    S3ArtifactStore,
    open_artifact_store,
)
from deploy_ops.models.bundle import ArtifactIntegrityError, sha256_bytes
from deploy_ops.models.registry import (
    TRANSITIONS,
    IllegalTransitionError,
    ModelRegistry,
    UnknownVersionError,
    allowed_transitions,
    model_versions,
    open_registry,
)

LINEAGE = {
    "training_partitions": ["2024-01-01|BTCUSDT", "2024-01-02|BTCUSDT"],
    "dbt": {"manifest_sha256": "ab" * 32, "feature_models": {"bar_features": "cd" * 32}},
    "code_version": "2ec2152",
}


@pytest.fixture
def registry(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    reg = open_registry(url, str(tmp_path / "artifacts"))
    yield reg
    make_engine(url).dispose()


def _register(registry: ModelRegistry, make_bundle, seed: int = 0, **overrides):
    kwargs = dict(
        metrics={"auc": 0.55 + seed / 100, "sharpe": 1.2},
        params={"lr": 1e-3, "hidden": [8]},
        lineage=LINEAGE,
        actor="trainer",
        reason=f"weekly training seed {seed}",
    )
    kwargs.update(overrides)
    return registry.register(make_bundle(seed), **kwargs)


# -- register / read --------------------------------------------------------------------------
def test_register_records_metadata_artifact_history_and_audit(registry, make_bundle):
    mv = _register(registry, make_bundle, description="first model")
    assert mv.version == 1
    assert mv.stage == "staging"
    assert mv.name == "mlp"
    assert mv.metrics == {"auc": 0.55, "sharpe": 1.2}
    assert mv.params == {"lr": 1e-3, "hidden": [8]}
    assert mv.lineage == LINEAGE
    assert mv.description == "first model"
    assert mv.created_at.tzinfo is not None

    path = Path(mv.artifact_uri)
    assert path == registry.artifacts.root / "sha256" / mv.sha256[:2] / f"{mv.sha256}.pt"
    assert sha256_bytes(path.read_bytes()) == mv.sha256

    [change] = registry.history(mv.version)
    assert (change.from_stage, change.to_stage, change.action, change.actor) == (None, "staging", "register", "trainer")
    [entry] = registry.audit(mv.version)
    assert entry.action == "register"
    assert entry.details["sha256"] == mv.sha256
    assert registry.get(1) == mv


def test_versions_are_monotonic_and_listed_in_order(registry, make_bundle):
    versions = [_register(registry, make_bundle, seed=i).version for i in range(4)]
    assert versions == [1, 2, 3, 4]
    assert [v.version for v in registry.list_versions()] == versions
    # a second handle on the same database continues the sequence
    again = open_registry(str(registry.engine.url), str(registry.artifacts.root))
    assert _register(again, make_bundle, seed=9).version == 5


def test_register_as_candidate_and_list_by_stage(registry, make_bundle):
    _register(registry, make_bundle, seed=0, stage="candidate")
    _register(registry, make_bundle, seed=1)
    _register(registry, make_bundle, seed=2)
    assert [v.version for v in registry.list_versions("candidate")] == [1]
    assert [v.version for v in registry.list_versions("staging")] == [2, 3]
    assert registry.get_by_stage("staging").version == 3
    assert registry.get_by_stage("production") is None
    assert registry.get_production() is None
    with pytest.raises(ValueError, match="unknown stage"):
        registry.list_versions("live")


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        ({"stage": "production"}, ValueError, "production is reached by promotion"),
        ({"metrics": {"auc": float("nan")}}, ValueError, "non-finite.*auc"),
        ({"lineage": {"x": object()}}, TypeError, "JSON-serialisable"),
        ({"actor": "  "}, ValueError, "actor is required and must be a non-blank string"),
        ({"params": ["not", "a", "mapping"]}, TypeError, "params must be a mapping"),
    ],
)
def test_register_rejects_bad_input_and_writes_nothing(registry, make_bundle, overrides, error, message):
    with pytest.raises(error, match=message):
        _register(registry, make_bundle, **overrides)
    assert registry.list_versions() == []
    assert registry.audit() == []
    assert not registry.artifacts.root.exists() or not any(registry.artifacts.root.rglob("*.pt"))


def test_register_rejects_non_bundle(registry):
    with pytest.raises(TypeError, match="ModelBundle"):
        registry.register(b"bytes", metrics={}, params={}, lineage={}, actor="x")


def test_numpy_values_in_metrics_are_stored_as_plain_json(registry, make_bundle):
    mv = _register(registry, make_bundle, metrics={"auc": np.float32(0.5), "n": np.int64(7), "curve": np.arange(3)})
    assert mv.metrics == {"auc": 0.5, "n": 7, "curve": [0, 1, 2]}


def test_load_bundle_round_trips_predictions(registry, make_bundle):
    bundle = make_bundle(3)
    mv = registry.register(bundle, metrics={}, params={}, lineage={}, actor="t")
    loaded = registry.load_bundle(mv.version)
    x = np.random.default_rng(1).normal(size=(5, 3))
    np.testing.assert_allclose(loaded.predict_proba(x), bundle.predict_proba(x))
    assert loaded.feature_names == bundle.feature_names


# -- transitions ------------------------------------------------------------------------------
def test_transition_table_is_documented_shape():
    assert allowed_transitions("candidate") == ["archived", "failed", "staging"]
    assert allowed_transitions("staging") == ["archived", "failed", "production"]
    assert allowed_transitions("production") == ["archived", "failed"]
    assert allowed_transitions("archived") == ["failed", "production", "staging"]
    assert allowed_transitions("failed") == []
    assert set(TRANSITIONS) == {"candidate", "staging", "production", "archived", "failed"}


def test_legal_promotions_walk_the_lifecycle(registry, make_bundle):
    v = _register(registry, make_bundle, stage="candidate").version
    assert registry.promote(v, to="staging", actor="a", reason="passed gates").stage == "staging"
    assert registry.promote(v, actor="a", reason="go live").stage == "production"
    w = _register(registry, make_bundle, seed=1).version
    registry.promote(w, actor="a", reason="better")
    assert registry.get(v).stage == "archived"
    assert registry.promote(v, to="staging", actor="a", reason="re-evaluate").stage == "staging"
    assert registry.promote(v, to="archived", actor="a", reason="shelve").stage == "archived"


@pytest.mark.parametrize(
    "setup, version, to, message",
    [
        ("candidate", 1, "production", "candidate -> production"),
        ("staging", 1, "candidate", "staging -> candidate"),
        ("staging", 1, "staging", "already staging"),
        ("production", 1, "archived", "holds production"),
        ("production", 1, "production", "already production"),
        ("failed", 1, "staging", "failed -> staging.*nothing"),
        ("failed", 1, "archived", "failed -> archived"),
        ("staging", 1, "failed", "use mark_failed"),
    ],
)
def test_illegal_promotions_are_refused_and_change_nothing(registry, make_bundle, setup, version, to, message):
    _register(registry, make_bundle, stage="candidate" if setup == "candidate" else "staging")
    if setup == "production":
        registry.promote(1, actor="a")
    if setup == "failed":
        registry.mark_failed(1, actor="a", reason="bad")
    audit_before = registry.audit()
    with pytest.raises(IllegalTransitionError, match=message):
        registry.promote(version, to=to, actor="a", reason="try")
    assert registry.get(1).stage == setup
    assert registry.audit() == audit_before


def test_promote_to_unknown_stage_is_a_value_error(registry, make_bundle):
    _register(registry, make_bundle)
    with pytest.raises(ValueError, match="unknown stage 'live'"):
        registry.promote(1, to="live", actor="a")


def test_unknown_versions_raise(registry, make_bundle):
    _register(registry, make_bundle)
    for call in (
        lambda: registry.get(42),
        lambda: registry.promote(42, actor="a"),
        lambda: registry.mark_failed(42, actor="a", reason="r"),
        lambda: registry.load_bundle(42),
        lambda: registry.history(42),
    ):
        with pytest.raises(UnknownVersionError, match="unknown model version 42"):
            call()
    registry.promote(1, actor="a")
    with pytest.raises(UnknownVersionError, match="42"):
        registry.rollback(42, actor="a", reason="r")


# -- one production at a time -----------------------------------------------------------------
def test_promoting_archives_previous_production_in_the_same_operation(registry, make_bundle):
    for seed in range(3):
        _register(registry, make_bundle, seed=seed)
    registry.promote(1, actor="alice", reason="first")
    registry.promote(2, actor="bob", reason="higher sharpe")
    assert registry.get_production().version == 2
    assert registry.get(1).stage == "archived"
    assert [v.version for v in registry.list_versions("production")] == [2]

    promote_rows = [c for c in registry.history() if c.reason == "higher sharpe"]
    assert [(c.version, c.from_stage, c.to_stage) for c in promote_rows] == [
        (1, "production", "archived"),
        (2, "staging", "production"),
    ]
    assert {c.actor for c in promote_rows} == {"bob"}
    assert registry.audit(2)[-1].details["replaced_production"] == 1


def test_database_refuses_a_second_production_row(registry, make_bundle):
    _register(registry, make_bundle, seed=0)
    _register(registry, make_bundle, seed=1)
    registry.promote(1, actor="a")
    with pytest.raises(sa.exc.IntegrityError):
        with registry.engine.begin() as conn:
            conn.execute(model_versions.update().where(model_versions.c.version == 2).values(stage="production"))
    assert [v.version for v in registry.list_versions("production")] == [1]


# -- rollback ---------------------------------------------------------------------------------
def test_rollback_restores_previous_version_and_records_why(registry, make_bundle):
    for seed in range(2):
        _register(registry, make_bundle, seed=seed)
    registry.promote(1, actor="a", reason="first")
    registry.promote(2, actor="a", reason="second")
    mv = registry.rollback(1, actor="oncall", reason="p99 latency regression")
    assert mv.stage == "production"
    assert registry.get(2).stage == "archived"
    assert registry.audit()[-1].action == "rollback"
    assert registry.audit()[-1].details["from_version"] == 2

    periods = registry.production_history()
    assert [(p.version, p.reason) for p in periods] == [(1, "first"), (2, "second"), (1, "p99 latency regression")]
    assert periods[0].until == periods[1].since
    assert periods[1].until == periods[2].since
    assert periods[1].ended_by_action == "rollback"
    assert periods[1].ended_reason == "p99 latency regression"
    assert periods[1].ended_to_stage == "archived"
    assert periods[2].until is None


def test_rollback_to_staging_version_and_mark_outgoing_failed(registry, make_bundle):
    for seed in range(2):
        _register(registry, make_bundle, seed=seed)
    registry.promote(1, actor="a")
    registry.rollback(2, actor="oncall", reason="v1 loses money", mark_failed=True)
    assert registry.get(1).stage == "failed"
    assert registry.get_production().version == 2


@pytest.mark.parametrize(
    "target, message",
    [
        (2, "already holds production"),
        (3, "marked failed"),
        (4, "stage candidate"),
    ],
)
def test_rollback_refusals(registry, make_bundle, target, message):
    _register(registry, make_bundle, seed=0)
    _register(registry, make_bundle, seed=1)
    _register(registry, make_bundle, seed=2)
    _register(registry, make_bundle, seed=3, stage="candidate")
    registry.promote(1, actor="a")
    registry.promote(2, actor="a")
    registry.mark_failed(3, actor="a", reason="bad backtest")
    with pytest.raises(IllegalTransitionError, match=message):
        registry.rollback(target, actor="a", reason="try")
    assert registry.get_production().version == 2


def test_rollback_needs_a_production_version_and_a_reason(registry, make_bundle):
    _register(registry, make_bundle)
    with pytest.raises(IllegalTransitionError, match="nothing to roll back"):
        registry.rollback(1, actor="a", reason="r")
    with pytest.raises(ValueError, match="reason is required and must be a non-blank string"):
        registry.rollback(1, actor="a", reason=" ")


# -- mark_failed ------------------------------------------------------------------------------
def test_mark_failed_is_terminal(registry, make_bundle):
    _register(registry, make_bundle)
    mv = registry.mark_failed(1, actor="qa", reason="leaks future data")
    assert mv.stage == "failed"
    assert registry.audit(1)[-1].action == "mark_failed"
    assert registry.history(1)[-1].reason == "leaks future data"
    with pytest.raises(IllegalTransitionError, match="already failed"):
        registry.mark_failed(1, actor="qa", reason="again")
    with pytest.raises(IllegalTransitionError):
        registry.promote(1, actor="qa")


def test_mark_failed_refuses_production_and_names_the_fallback(registry, make_bundle):
    _register(registry, make_bundle, seed=0)
    _register(registry, make_bundle, seed=1)
    registry.promote(1, actor="a")
    registry.promote(2, actor="a")
    with pytest.raises(IllegalTransitionError, match=r"in production.*rollback.*last known good: version 1"):
        registry.mark_failed(2, actor="a", reason="bad")
    assert registry.get(2).stage == "production"
    # an archived former production version may be failed
    assert registry.mark_failed(1, actor="a", reason="found a bug").stage == "failed"


# -- last known good --------------------------------------------------------------------------
def test_last_known_good(registry, make_bundle):
    for seed in range(4):
        _register(registry, make_bundle, seed=seed)
    assert registry.last_known_good() is None
    registry.promote(1, actor="a")
    assert registry.last_known_good() is None  # the current one does not count
    registry.promote(2, actor="a")
    assert registry.last_known_good().version == 1
    registry.promote(3, actor="a")
    assert registry.last_known_good().version == 2
    registry.mark_failed(2, actor="a", reason="bug")
    assert registry.last_known_good().version == 1
    # version 4 never held production, so it is never "known good"
    registry.mark_failed(1, actor="a", reason="bug")
    assert registry.last_known_good() is None


def test_every_mutation_writes_one_audit_row(registry, make_bundle):
    for seed in range(3):
        _register(registry, make_bundle, seed=seed)
    registry.promote(1, actor="a")
    registry.promote(2, actor="a")
    registry.rollback(1, actor="a", reason="r")
    registry.mark_failed(3, actor="a", reason="r")
    assert [e.action for e in registry.audit()] == [
        "register",
        "register",
        "register",
        "promote",
        "promote",
        "rollback",
        "mark_failed",
    ]
    assert [c.to_stage for c in registry.history(2)] == ["staging", "production", "archived"]


# -- artifacts --------------------------------------------------------------------------------
def test_tampered_artifact_is_refused_on_load(registry, make_bundle):
    mv = _register(registry, make_bundle)
    path = Path(mv.artifact_uri)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError) as info:
        registry.load_bundle(mv.version)
    assert mv.sha256 in str(info.value)
    assert sha256_bytes(bytes(data)) in str(info.value)


def test_missing_artifact_is_a_clear_error(registry, make_bundle):
    mv = _register(registry, make_bundle)
    Path(mv.artifact_uri).unlink()
    with pytest.raises(ArtifactNotFoundError, match="artifact not found"):
        registry.load_bundle(mv.version)


def test_local_store_put_is_idempotent_atomic_and_heals_damage(tmp_path):
    store = LocalArtifactStore(tmp_path / "a")
    uri, sha = store.put(b"model bytes")
    assert (uri, sha) == store.put(b"model bytes")
    files = [p for p in (tmp_path / "a").rglob("*") if p.is_file()]
    assert files == [Path(uri)]  # no temp files left behind
    assert Path(uri).relative_to(tmp_path / "a").parts == ("sha256", sha[:2], f"{sha}.pt")
    Path(uri).write_bytes(b"corrupted")
    with pytest.raises(ArtifactIntegrityError):
        store.get(uri, sha)
    store.put(b"model bytes")  # re-putting the real bytes repairs the object
    assert store.get(uri, sha) == b"model bytes"
    with pytest.raises(ValueError, match="not a lowercase hex sha256"):
        store.get(uri, "abc")


def test_open_artifact_store_chooses_by_scheme(tmp_path):
    assert isinstance(open_artifact_store(str(tmp_path)), LocalArtifactStore)
    assert open_artifact_store(f"file://{tmp_path}").root == tmp_path.resolve()
    s3 = open_artifact_store("s3://bucket/models/v1/", aws_region="eu-west-1")
    assert isinstance(s3, S3ArtifactStore)
    assert (s3.bucket, s3.prefix, s3.region) == ("bucket", "models/v1", "eu-west-1")
    with pytest.raises(ValueError, match="no bucket"):
        open_artifact_store("s3:///x")


# -- concurrency ------------------------------------------------------------------------------
def _race(n: int, fn) -> list[BaseException | object]:
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = fn(i)
        except BaseException as exc:  # collected and asserted on by the caller
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def test_concurrent_promotes_of_one_version_have_one_winner(registry, make_bundle):
    for round_ in range(3):
        v = _register(registry, make_bundle, seed=round_).version
        results = _race(2, lambda i, v=v: registry.promote(v, actor=f"thread{i}", reason="race"))
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == 1, results
        assert isinstance(errors[0], IllegalTransitionError)
        assert [c.to_stage for c in registry.history(v)] == ["staging", "production"]
    assert [v.version for v in registry.list_versions("production")] == [3]


def test_concurrent_promotes_of_different_versions_serialise(registry, make_bundle):
    for seed in range(4):
        _register(registry, make_bundle, seed=seed)
    registry.promote(1, actor="a")
    results = _race(3, lambda i: registry.promote(i + 2, actor=f"thread{i}", reason="race"))
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert len(registry.list_versions("production")) == 1
    periods = registry.production_history()
    assert len(periods) == 4
    # each promotion archived exactly the version the previous one installed: no lost update
    for before, after in zip(periods, periods[1:]):
        assert before.until == after.since
        assert before.ended_to_stage == "archived"
    assert periods[-1].until is None
    assert json.loads(json.dumps([p.to_dict() for p in periods]))  # JSON-ready
