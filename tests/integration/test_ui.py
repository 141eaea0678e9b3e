"""`make ui`'s code location loads in the Dagster webserver and lists the whole graph."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_webserver_serves_the_asset_graph(tmp_path):
    port = _free_port()
    env = {
        **os.environ,
        "AUTOTRADER_HOME": str(tmp_path),
        "DAGSTER_HOME": str(tmp_path / "dh"),
        "DAGSTER_DISABLE_TELEMETRY": "1",
    }
    (tmp_path / "dh").mkdir()
    web = Path(sys.executable).parent / "dagster-webserver"
    proc = subprocess.Popen(
        [str(web), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        query = {
            "query": "{ assetNodes { assetKey { path } } repositoriesOrError { ... on RepositoryConnection "
            "{ nodes { name jobs { name } sensors { name } schedules { name } } } } }"
        }
        deadline = time.monotonic() + 120
        data = None
        while time.monotonic() < deadline:
            try:
                resp = requests.post(f"http://127.0.0.1:{port}/graphql", json=query, timeout=5)
                data = resp.json()["data"]
                if data["assetNodes"]:
                    break
            except (requests.RequestException, KeyError, TypeError, ValueError):
                data = None  # still starting up
            assert proc.poll() is None, "dagster-webserver exited"
            time.sleep(1)
        assert data and data["assetNodes"], "the webserver never listed the assets"
        assets = {"/".join(n["assetKey"]["path"]) for n in data["assetNodes"]}
        assert {"market_bars", "bar_features", "candidate_model", "production_deployment", "paper_trading"} <= assets
        (repo,) = data["repositoriesOrError"]["nodes"]
        assert {"data_pipeline", "training_job", "deployment_pipeline", "paper_trading_job"} <= {
            j["name"] for j in repo["jobs"]
        }
        assert "circuit_breaker_sensor" in {s["name"] for s in repo["sensors"]}
        assert "weekly_training" in {s["name"] for s in repo["schedules"]}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
