"""Values runs hand each other go through S3 in production: ``registered_model`` materialized in a task
of its own (another process, another DAGSTER_HOME and AUTOTRADER_HOME) finds the ``candidate_model``
value another task stored. PostgreSQL registry, moto S3 server on loopback, warehouse on a shared folder."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import boto3
import duckdb
import pytest

from deploy_ops.models.registry import open_registry
from deploy_ops.slots.local import free_port
from tests.support.production import INSTANCE_ENV, INSTANCE_YAML
from tests.support.synthetic import bar_features_frame, random_walk_bars

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "autotrader-artifacts"
RUN_CONFIG = {
    "ops": {
        "training_dataset": {"config": {"horizon": 5}},
        "candidate_model": {
            "config": {
                "hidden": [16],
                "max_epochs": 4,
                "patience": 2,
                "learning_rate": 0.01,
                "n_folds": 2,
                "test_fraction": 0.4,
                "long_threshold": 0.52,
                "short_threshold": 0.48,
                "torch_threads": 1,
            }
        },
    }
}


@pytest.fixture(scope="module")
def s3_server():
    pytest.importorskip("flask", reason="moto's server mode needs moto[server] (flask)")
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def _s3(endpoint: str):
    return boto3.client(
        "s3", region_name="us-east-1", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test"
    )


@pytest.fixture
def shared(pg_url, s3_server, tmp_path):
    """The stores every task shares: the registry database, the bucket, the EFS folder with features."""
    _s3(s3_server).create_bucket(Bucket=BUCKET)
    efs = tmp_path / "efs"
    efs.mkdir()
    frame = bar_features_frame(
        random_walk_bars(instruments=("BTCUSDT", "ETHUSDT"), days=5, seed=3, ar1=0.3, vol=0.0005)
    )
    con = duckdb.connect(str(efs / "warehouse.duckdb"))
    try:
        con.register("_f", frame)
        con.execute("create table bar_features as select * replace (ts::timestamp as ts, date::date as date) from _f")
    finally:
        con.close()
    yield {"registry": pg_url, "s3": s3_server, "efs": efs}
    for key in _s3(s3_server).list_objects_v2(Bucket=BUCKET).get("Contents", []):
        _s3(s3_server).delete_object(Bucket=BUCKET, Key=key["Key"])
    _s3(s3_server).delete_bucket(Bucket=BUCKET)


def _task(shared: dict, root: Path, *args: str) -> dict:
    """Run one step as its own process with empty local folders of its own under ``root``."""
    home, dagster_home = root / "home", root / "dagster_home"
    home.mkdir(parents=True)
    dagster_home.mkdir(parents=True)
    shutil.copy(INSTANCE_YAML, dagster_home / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTOTRADER_", "AWS_", "DAGSTER_"))}
    env.update(INSTANCE_ENV)
    env.update(
        {
            "AUTOTRADER_ENV": "production",
            "AUTOTRADER_HOME": str(home),
            "DAGSTER_HOME": str(dagster_home),
            "AUTOTRADER_REGISTRY_URL": shared["registry"],
            "AUTOTRADER_ARCHIVE_URI": f"s3://{BUCKET}/archive",
            "AUTOTRADER_ARTIFACTS_URI": f"s3://{BUCKET}/artifacts",
            "AUTOTRADER_WAREHOUSE_SHARED_DIR": str(shared["efs"]),
            "AUTOTRADER_SERVING_TOKEN": "t",
            "AUTOTRADER_S3_ENDPOINT_URL": shared["s3"],
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            # The synthetic market's edge is smaller than real costs; the gates must pass here.
            "AUTOTRADER_FEE_BPS": "0",
            "AUTOTRADER_SLIPPAGE_BPS": "0",
            "PYTHONPATH": str(ROOT),
        }
    )
    proc = subprocess.run(
        [sys.executable, "-m", "tests.support.production_step", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"step printed no result (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1])


def test_registered_model_in_its_own_task_finds_the_candidate_of_another(shared, tmp_path, monkeypatch):
    for name, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    first = _task(shared, tmp_path / "task-a", "training_dataset,candidate_model", json.dumps(RUN_CONFIG))
    assert first["success"], first["errors"]
    assert first["materialized"] == ["candidate_model", "training_dataset"]
    keys = {o["Key"] for o in _s3(shared["s3"]).list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert {"artifacts/dagster-io/training_dataset", "artifacts/dagster-io/candidate_model"} <= keys

    # The case: a lone registered_model on another disk with the filesystem IO manager.
    lost = _task(shared, tmp_path / "task-b", "registered_model", "--filesystem-io")
    assert not lost["success"]
    assert "FileNotFoundError" in lost["errors"][0] or "No such file" in lost["errors"][0]

    second = _task(shared, tmp_path / "task-c", "registered_model")
    assert second["success"], second["errors"]
    assert second["materialized"] == ["registered_model"]
    stored = pickle.loads(
        _s3(shared["s3"]).get_object(Bucket=BUCKET, Key="artifacts/dagster-io/candidate_model")["Body"].read()
    )
    (version,) = registry_in(shared).list_versions()
    assert version.stage == "staging" and version.sha256 == stored["sha256"]


def registry_in(shared: dict):
    return open_registry(shared["registry"], f"s3://{BUCKET}/artifacts", s3_endpoint_url=shared["s3"])
