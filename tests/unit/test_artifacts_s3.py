"""The S3 artifact store against moto: layout, idempotence, checksum verification, tampering,
and a registry whose artifacts live on S3."""

from __future__ import annotations

import boto3
import numpy as np
import pytest
from moto import mock_aws

from deploy_ops.db import make_engine
from deploy_ops.models.artifacts import ArtifactNotFoundError, S3ArtifactStore, open_artifact_store
from deploy_ops.models.bundle import ArtifactIntegrityError, sha256_bytes
from deploy_ops.models.registry import open_registry

BUCKET = "autotrader-artifacts-test"
REGION = "eu-west-1"


@pytest.fixture
def s3(monkeypatch):
    # moto intercepts botocore, but fake credentials keep boto3 from looking for real ones.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        client = boto3.client("s3", region_name=REGION)
        client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        yield client


def test_put_writes_content_addressed_key_and_get_verifies(s3):
    store = open_artifact_store(f"s3://{BUCKET}/models", aws_region=REGION)
    assert isinstance(store, S3ArtifactStore)
    uri, sha = store.put(b"weights")
    assert sha == sha256_bytes(b"weights")
    assert uri == f"s3://{BUCKET}/models/sha256/{sha[:2]}/{sha}.pt"
    head = s3.head_object(Bucket=BUCKET, Key=f"models/sha256/{sha[:2]}/{sha}.pt")
    assert head["Metadata"]["sha256"] == sha
    assert store.get(uri, sha) == b"weights"


def test_put_is_idempotent(s3):
    store = S3ArtifactStore(BUCKET, "", REGION)
    first = store.put(b"same bytes")
    assert store.put(b"same bytes") == first
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert keys == [f"sha256/{first[1][:2]}/{first[1]}.pt"]


def test_tampered_object_is_refused(s3):
    store = S3ArtifactStore(BUCKET, "p", REGION)
    uri, sha = store.put(b"original")
    s3.put_object(Bucket=BUCKET, Key=store.key_for(sha), Body=b"evil")
    with pytest.raises(ArtifactIntegrityError) as info:
        store.get(uri, sha)
    assert sha in str(info.value) and sha256_bytes(b"evil") in str(info.value)


def test_missing_object_and_bad_uri_are_clear_errors(s3):
    store = S3ArtifactStore(BUCKET, "p", REGION)
    sha = sha256_bytes(b"never written")
    with pytest.raises(ArtifactNotFoundError, match="artifact not found"):
        store.get(store.uri_for(sha), sha)
    with pytest.raises(ValueError, match="not an s3://bucket/key URI"):
        store.get("/local/path.pt", sha)


def test_registry_with_s3_artifacts_loads_and_refuses_tampering(s3, tmp_path, make_bundle):
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    registry = open_registry(url, f"s3://{BUCKET}/registry", aws_region=REGION)
    try:
        bundle = make_bundle(1)
        mv = registry.register(bundle, metrics={}, params={}, lineage={}, actor="trainer")
        assert mv.artifact_uri.startswith(f"s3://{BUCKET}/registry/sha256/")
        x = np.zeros((2, 3))
        np.testing.assert_allclose(registry.load_bundle(mv.version).predict_proba(x), bundle.predict_proba(x))
        s3.put_object(Bucket=BUCKET, Key=mv.artifact_uri.split(f"{BUCKET}/", 1)[1], Body=b"tampered")
        with pytest.raises(ArtifactIntegrityError, match=mv.sha256):
            registry.load_bundle(mv.version)
    finally:
        make_engine(url).dispose()
