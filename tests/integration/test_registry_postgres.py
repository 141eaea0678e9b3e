"""The registry's behaviour on PostgreSQL: the SQLite unit tests, re-run against a throwaway
database, plus concurrency through separate engines (as separate processes would have)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from deploy_ops.db import normalize_url
from deploy_ops.models.artifacts import LocalArtifactStore
from deploy_ops.models.registry import IllegalTransitionError, ModelRegistry, open_registry
from tests.unit.test_registry import (  # noqa: F401  (collected here against PostgreSQL)
    _race,
    _register,
    test_concurrent_promotes_of_different_versions_serialise,
    test_concurrent_promotes_of_one_version_have_one_winner,
    test_database_refuses_a_second_production_row,
    test_every_mutation_writes_one_audit_row,
    test_illegal_promotions_are_refused_and_change_nothing,
    test_last_known_good,
    test_legal_promotions_walk_the_lifecycle,
    test_load_bundle_round_trips_predictions,
    test_mark_failed_is_terminal,
    test_mark_failed_refuses_production_and_names_the_fallback,
    test_promoting_archives_previous_production_in_the_same_operation,
    test_register_as_candidate_and_list_by_stage,
    test_register_records_metadata_artifact_history_and_audit,
    test_register_rejects_bad_input_and_writes_nothing,
    test_rollback_needs_a_production_version_and_a_reason,
    test_rollback_refusals,
    test_rollback_restores_previous_version_and_records_why,
    test_rollback_to_staging_version_and_mark_outgoing_failed,
    test_tampered_artifact_is_refused_on_load,
    test_unknown_versions_raise,
    test_versions_are_monotonic_and_listed_in_order,
)

pytestmark = pytest.mark.postgres


@pytest.fixture
def registry(pg_url: str, tmp_path: Path) -> ModelRegistry:
    """The registry under test, on its own PostgreSQL database (shadows the SQLite fixture)."""
    return open_registry(pg_url, str(tmp_path / "artifacts"))


def test_tables_live_in_postgres(registry):
    assert registry.engine.dialect.name == "postgresql"
    tables = set(sa.inspect(registry.engine).get_table_names())
    assert {"registry_model_versions", "registry_stage_history", "registry_audit"} <= tables


def test_concurrent_promotes_through_separate_engines(pg_url, tmp_path, make_bundle):
    """Two writers with their own connection pools, as two processes would have."""
    store = LocalArtifactStore(tmp_path / "artifacts")
    engines = [sa.create_engine(normalize_url(pg_url)) for _ in range(2)]
    try:
        registries = [ModelRegistry(e, store) for e in engines]
        for seed in range(3):
            _register(registries[0], make_bundle, seed=seed)
        for version in (1, 2, 3):
            results = _race(
                2, lambda i, version=version: registries[i].promote(version, actor=f"proc{i}", reason="race")
            )
            errors = [r for r in results if isinstance(r, BaseException)]
            assert len(errors) == 1 and isinstance(errors[0], IllegalTransitionError), results
        assert [v.version for v in registries[1].list_versions("production")] == [3]
        assert [p.version for p in registries[0].production_history()] == [1, 2, 3]
    finally:
        for e in engines:
            e.dispose()
