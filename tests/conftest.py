"""Shared fixtures: a throwaway PostgreSQL database and a tiny model bundle."""

from __future__ import annotations

import os
import uuid
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import pytest
import sqlalchemy as sa

if TYPE_CHECKING:
    from deploy_ops.models.bundle import ModelBundle

#: Server the PostgreSQL tests use; override with AUTOTRADER_TEST_PG_ADMIN_URL.
PG_ADMIN_URL = os.environ.get("AUTOTRADER_TEST_PG_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """URL of a freshly created, uniquely named PostgreSQL database, dropped after the test
    (also when it fails). Skips the test when the server is unreachable."""
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    name = f"autotrader_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sa.exc.OperationalError as exc:
        admin.dispose()
        pytest.skip(f"PostgreSQL unreachable at {PG_ADMIN_URL}: {str(exc.orig).strip().splitlines()[0]}")
    url = sa.engine.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        # Engines are cached per URL by deploy_ops.db; close their pooled connections first,
        # then FORCE terminates anything a crashed test left open.
        from deploy_ops.db import make_engine

        make_engine(url).dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture
def make_bundle() -> Callable[..., ModelBundle]:
    """Factory for small untrained MLP bundles; different seeds give different weights (and
    therefore different artifact checksums)."""
    import torch

    from deploy_ops.models.bundle import MLPClassifier, ModelBundle, StandardScaler

    def _make(seed: int = 0, n_features: int = 3) -> ModelBundle:
        torch.manual_seed(seed)
        x = np.random.default_rng(seed).normal(size=(32, n_features))
        return ModelBundle(
            model=MLPClassifier(n_features, hidden=(8,)),
            model_class="mlp",
            model_kwargs={"hidden": [8]},
            scaler=StandardScaler.fit(x),
            feature_names=[f"f{i}" for i in range(n_features)],
            metadata={"seed": seed},
        )

    return _make


@pytest.fixture
def mocked():
    """``responses`` intercepting every HTTP call of the test (nothing reaches the network)."""
    import responses

    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps
