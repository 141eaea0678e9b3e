"""The EcsRunLauncher as infra/dagster/dagster.yaml configures it, built by a real Dagster instance
against moto: its image comes from the run task definition named by the environment."""

from __future__ import annotations

from pathlib import Path

import boto3
import dagster as dg
import pytest
import yaml
from moto import mock_aws

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "infra" / "dagster" / "dagster.yaml"


@pytest.fixture
def aws(monkeypatch):
    for name, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        yield boto3.client("ecs", region_name="us-east-1")


def test_the_shipped_launcher_takes_its_task_definition_and_cluster_from_the_environment(aws, monkeypatch, tmp_path):
    aws.create_cluster(clusterName="autotrader")
    arn = aws.register_task_definition(
        family="autotrader-run",
        networkMode="awsvpc",
        requiresCompatibilities=["FARGATE"],
        cpu="512",
        memory="1024",
        containerDefinitions=[
            {
                "name": "run",
                "image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/autotrader-code:abc",
                "cpu": 512,
                "memory": 1024,
                "essential": True,
            }
        ],
    )["taskDefinition"]["taskDefinitionArn"]
    monkeypatch.setenv("DAGSTER_RUN_TASK_DEFINITION", arn)
    monkeypatch.setenv("DAGSTER_RUN_CONTAINER_NAME", "run")
    monkeypatch.setenv("DAGSTER_ECS_CLUSTER", "autotrader")
    launcher_config = yaml.safe_load(CONFIG.read_text())["run_launcher"]
    home = tmp_path / "dh"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        yaml.safe_dump({"run_launcher": launcher_config, "telemetry": {"enabled": False}})
    )
    with dg.DagsterInstance.from_config(str(home)) as instance:
        launcher = instance.run_launcher
        assert type(launcher).__name__ == "EcsRunLauncher"
        assert launcher.task_definition == arn
        assert launcher.container_name == "run"
        assert launcher.run_task_kwargs["cluster"] == "autotrader"
        assert launcher.run_task_kwargs["launchType"] == "FARGATE"
        assert launcher.include_sidecars is False
        # the image the runs get is the run task definition's, as registered
        image = aws.describe_task_definition(taskDefinition=launcher.task_definition)["taskDefinition"][
            "containerDefinitions"
        ][0]["image"]
        assert image.endswith("autotrader-code:abc")


def test_the_launcher_config_reads_only_environment_references():
    config = yaml.safe_load(CONFIG.read_text())["run_launcher"]["config"]
    assert config["task_definition"] == {"env": "DAGSTER_RUN_TASK_DEFINITION"}
    assert config["container_name"] == {"env": "DAGSTER_RUN_CONTAINER_NAME"}
    assert config["run_task_kwargs"]["cluster"] == {"env": "DAGSTER_ECS_CLUSTER"}
    readme = (ROOT / "infra" / "README.md").read_text()
    for name in ("DAGSTER_RUN_TASK_DEFINITION", "DAGSTER_RUN_CONTAINER_NAME", "DAGSTER_ECS_CLUSTER"):
        assert name in readme, f"infra/README.md does not document {name}"
