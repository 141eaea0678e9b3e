"""The serving container started exactly as ECS starts it: ``python -m deploy_ops.serving`` with no
arguments and the task definition's environment, the model fetched from S3 (a moto server on
loopback) and verified, then ``/ready``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
import requests

from deploy_ops.serving.container import ContainerConfigError, plan_from_environment
from deploy_ops.slots.ecs.config import EcsDeployerConfig
from deploy_ops.slots.local import free_port

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "ecs-secret-token-5d1"
BUCKET = "autotrader-artifacts"


@pytest.fixture(scope="module")
def s3_server():
    pytest.importorskip("flask", reason="moto's server mode needs moto[server] (flask)")
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def artifact(s3_server, make_bundle, tmp_path):
    """A bundle uploaded to the moto bucket: (uri, sha256, bytes)."""
    from deploy_ops.models.artifacts import S3ArtifactStore

    client = boto3.client(
        "s3", region_name="us-east-1", endpoint_url=s3_server, aws_access_key_id="test", aws_secret_access_key="test"
    )
    try:
        client.create_bucket(Bucket=BUCKET)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    data = make_bundle(seed=3, n_features=4).to_bytes()
    uri, sha = S3ArtifactStore(BUCKET, "artifacts", client=client).put(data)
    return uri, sha, data


def task_environment(s3_server: str, uri: str, sha: str, port: int, tmp_path: Path) -> dict[str, str]:
    """The task definition's environment (names from EcsDeployerConfig) plus what the deployer's
    extra_environment and the task role give a real task: region, credentials, the endpoint."""
    names = EcsDeployerConfig.__dataclass_fields__
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTOTRADER_", "AWS_"))}
    env.update(
        {
            names["model_uri_env_var"].default: uri,
            names["model_sha256_env_var"].default: sha,
            names["model_version_env_var"].default: "7",
            names["slot_env_var"].default: "green",
            names["serving_token_env_var"].default: TOKEN,
            "AUTOTRADER_SERVING_PORT": str(port),
            "AUTOTRADER_MODEL_DIR": str(tmp_path / "model"),
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AUTOTRADER_S3_ENDPOINT_URL": s3_server,
            "PYTHONPATH": str(ROOT),
        }
    )
    return env


def test_the_container_fetches_verifies_and_serves(s3_server, artifact, tmp_path):
    uri, sha, _ = artifact
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "deploy_ops.serving"],
        cwd=tmp_path,
        env=task_environment(s3_server, uri, sha, port, tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline, ready = time.monotonic() + 60, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = requests.get(f"http://127.0.0.1:{port}/ready", timeout=1)
                if ready.status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.3)
        assert ready is not None and ready.status_code == 200, proc.stdout.read() if proc.poll() is not None else ready
        body = ready.json()
        assert (body["slot"], body["model_version"], body["sha256"]) == ("green", "7", sha)
        assert (tmp_path / "model" / f"{sha}.pt").is_file()
        rows = {"instrument": "BTCUSDT", "rows": [[0.1, 0.2, 50.0, 0.0]]}
        assert requests.post(f"http://127.0.0.1:{port}/predict", json=rows, timeout=5).status_code == 401
        answer = requests.post(
            f"http://127.0.0.1:{port}/predict", json=rows, timeout=5, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert answer.status_code == 200 and answer.json()["model_version"] == "7"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert TOKEN not in (proc.stdout.read() or "")


def test_a_model_that_fails_its_checksum_stops_the_task_at_start(s3_server, artifact, tmp_path):
    uri, sha, _ = artifact
    wrong = "0" * 64
    result = subprocess.run(
        [sys.executable, "-m", "deploy_ops.serving"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=task_environment(s3_server, uri, wrong, free_port(), tmp_path),
        timeout=120,
    )
    assert result.returncode == 2
    assert "failed its checksum" in result.stderr
    assert not (tmp_path / "model").exists() or not any((tmp_path / "model").iterdir())


def test_a_missing_object_stops_the_task_at_start(s3_server, artifact, tmp_path):
    _, sha, _ = artifact
    result = subprocess.run(
        [sys.executable, "-m", "deploy_ops.serving"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=task_environment(s3_server, f"s3://{BUCKET}/nope.pt", sha, free_port(), tmp_path),
        timeout=120,
    )
    assert result.returncode == 2 and "artifact not found" in result.stderr


def test_the_plan_lists_every_missing_or_bad_variable():
    with pytest.raises(ContainerConfigError) as exc:
        plan_from_environment(
            {"AUTOTRADER_SLOT": "purple", "AUTOTRADER_MODEL_SHA256": "abc", "AUTOTRADER_SERVING_PORT": "http"}
        )
    message = str(exc.value)
    for part in (
        "AUTOTRADER_MODEL_URI is not set",
        "AUTOTRADER_MODEL_VERSION is not set",
        "AUTOTRADER_SERVING_TOKEN is not set",
        "AUTOTRADER_SLOT='purple'",
        "not a sha256",
        "AUTOTRADER_SERVING_PORT='http'",
    ):
        assert part in message
    plan = plan_from_environment(
        {
            "AUTOTRADER_MODEL_URI": "s3://b/k.pt",
            "AUTOTRADER_MODEL_SHA256": "A" * 64,
            "AUTOTRADER_MODEL_VERSION": "3",
            "AUTOTRADER_SLOT": "blue",
            "AUTOTRADER_SERVING_TOKEN": "t",
        }
    )
    assert plan.port == 8080 and plan.sha256 == "a" * 64
    argv = plan.argv("/m.pt")
    assert "--require-token" in argv and argv[argv.index("--host") + 1] == "0.0.0.0"
    assert "t" not in argv  # the token never reaches the command line
