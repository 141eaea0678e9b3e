"""A queued run launched by the daemon through the shipped EcsRunLauncher, against moto.

The daemon's task is a Fargate task in moto (its subnet and security group are what the run task
inherits, ``use_current_ecs_task_config: true``); a loopback HTTP server stands in for the ECS task
metadata endpoint v4 (``ECS_CONTAINER_METADATA_URI_V4``: ``/task`` and ``/``, shaped like AWS's),
which ECS injects into every real task. Where moto stops: ``run_task`` records the task (its
definition, overrides, network configuration), but no container runs, so the Dagster run stays
STARTING; on AWS the task's container would run ``dagster api execute_run`` and report back.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import dagster as dg
import pytest
import yaml
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.test_utils import create_test_daemon_workspace_context
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon
from moto import mock_aws

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "infra" / "dagster" / "dagster.yaml"
REGION = "us-east-1"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/autotrader-code:abc"


class _Metadata(BaseHTTPRequestHandler):
    """The task metadata endpoint v4 of the daemon's container: GET {uri}/task and GET {uri}."""

    task: dict = {}

    def do_GET(self):  # noqa: N802 (http.server's name)
        if self.path.endswith("/task"):
            body = {
                "Cluster": self.task["clusterArn"],
                "TaskARN": self.task["taskArn"],
                "Family": "autotrader-daemon",
                "Revision": "1",
                "DesiredStatus": "RUNNING",
                "KnownStatus": "RUNNING",
                "LaunchType": "FARGATE",
                "AvailabilityZone": f"{REGION}a",
                "Containers": [{"Name": "daemon", "Image": IMAGE}],
            }
        else:
            body = {
                "Name": "daemon",
                "Image": IMAGE,
                "DesiredStatus": "RUNNING",
                "KnownStatus": "RUNNING",
                "Labels": {
                    "com.amazonaws.ecs.cluster": self.task["clusterArn"],
                    "com.amazonaws.ecs.task-arn": self.task["taskArn"],
                },
            }
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture
def aws(monkeypatch):
    for name, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        yield boto3.client("ecs", region_name=REGION), boto3.client("ec2", region_name=REGION)


@pytest.fixture
def cluster(aws, monkeypatch):
    """What Terraform creates: a VPC, a private subnet, the tasks' security group, the cluster, the run
    task definition (naming the code-location image), and the daemon's running task."""
    ecs, ec2 = aws
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24", AvailabilityZone=f"{REGION}a")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="autotrader-tasks", Description="tasks", VpcId=vpc)["GroupId"]
    ecs.create_cluster(clusterName="autotrader")
    container = {"cpu": 512, "memory": 1024, "essential": True, "image": IMAGE}
    run_definition = ecs.register_task_definition(
        family="autotrader-run",
        networkMode="awsvpc",
        requiresCompatibilities=["FARGATE"],
        cpu="512",
        memory="1024",
        containerDefinitions=[{"name": "run", **container}],
    )["taskDefinition"]["taskDefinitionArn"]
    ecs.register_task_definition(
        family="autotrader-daemon",
        networkMode="awsvpc",
        requiresCompatibilities=["FARGATE"],
        cpu="512",
        memory="1024",
        containerDefinitions=[{"name": "daemon", **container}],
    )
    (daemon,) = ecs.run_task(
        cluster="autotrader",
        taskDefinition="autotrader-daemon",
        launchType="FARGATE",
        networkConfiguration={
            "awsvpcConfiguration": {"subnets": [subnet], "securityGroups": [group], "assignPublicIp": "DISABLED"}
        },
    )["tasks"]
    _Metadata.task = daemon
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Metadata)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("ECS_CONTAINER_METADATA_URI_V4", f"http://127.0.0.1:{server.server_address[1]}/v4/daemon")
    monkeypatch.setenv("DAGSTER_RUN_TASK_DEFINITION", run_definition)
    monkeypatch.setenv("DAGSTER_RUN_CONTAINER_NAME", "run")
    monkeypatch.setenv("DAGSTER_ECS_CLUSTER", "autotrader")
    yield {"ecs": ecs, "ec2": ec2, "subnet": subnet, "group": group, "run_definition": run_definition, "daemon": daemon}
    server.shutdown()


def _instance_home(tmp_path: Path) -> Path:
    """The shipped queue and launcher sections; SQLite storage (PostgreSQL storage is tested elsewhere)."""
    shipped = yaml.safe_load(SHIPPED.read_text())
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        yaml.safe_dump(
            {
                "run_coordinator": shipped["run_coordinator"],
                "run_launcher": shipped["run_launcher"],
                "telemetry": {"enabled": False},
            }
        )
    )
    return home


def test_the_daemon_launches_a_queued_run_as_an_ecs_task_of_the_run_task_definition(cluster, tmp_path):
    ecs = cluster["ecs"]
    families_before = set(ecs.list_task_definition_families()["families"])
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(module_name="autotrader_assets.definitions", attribute="defs"), location_name="autotrader"
    )
    with (
        dg.DagsterInstance.from_config(str(_instance_home(tmp_path))) as instance,
        create_test_daemon_workspace_context(InProcessWorkspaceLoadTarget(origin), instance) as workspace,
    ):
        location = workspace.create_request_context().get_code_location("autotrader")
        remote_job = location.get_repository("__repository__").get_full_job("emergency_rollback")
        run = instance.create_run(
            job_name="emergency_rollback",
            run_id=None,
            run_config={},
            status=dg.DagsterRunStatus.NOT_STARTED,
            tags=dict(remote_job.tags),
            root_run_id=None,
            parent_run_id=None,
            step_keys_to_execute=None,
            execution_plan_snapshot=None,
            job_snapshot=remote_job.job_snapshot,
            parent_job_snapshot=None,
            remote_job_origin=remote_job.get_remote_origin(),
            job_code_origin=remote_job.get_python_origin(),
            asset_selection=None,
            asset_check_selection=None,
            op_selection=None,
            resolved_op_selection=None,
            asset_graph=location.get_repository("__repository__").asset_graph,
        )
        instance.submit_run(run.run_id, workspace.create_request_context())
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.QUEUED

        list(QueuedRunCoordinatorDaemon(interval_seconds=1).run_iteration(workspace))

        launched = instance.get_run_by_id(run.run_id)
        assert launched.status == dg.DagsterRunStatus.STARTING, launched.status
        task_arn = launched.tags["ecs/task_arn"]
        (task,) = ecs.describe_tasks(cluster="autotrader", tasks=[task_arn])["tasks"]

    # the run's task is of the run task definition Terraform registered: no other definition is made
    assert task["taskDefinitionArn"] == cluster["run_definition"]
    assert set(ecs.list_task_definition_families()["families"]) == families_before
    assert task["launchType"] == "FARGATE"
    # its network is the daemon task's own (subnet and security group), through the metadata endpoint
    details = {d["name"]: d["value"] for a in task["attachments"] for d in a["details"]}
    assert details["subnetId"] == cluster["subnet"]
    (eni,) = cluster["ec2"].describe_network_interfaces(NetworkInterfaceIds=[details["networkInterfaceId"]])[
        "NetworkInterfaces"
    ]
    assert [g["GroupId"] for g in eni["Groups"]] == [cluster["group"]]
    # the container runs this run: `dagster api execute_run` with the run's id in its arguments
    (override,) = task["overrides"]["containerOverrides"]
    assert override["name"] == "run"
    assert override["command"][:3] == ["dagster", "api", "execute_run"]
    assert run.run_id in override["command"][3]
    # moto stops here: the task is recorded but no container runs, so the run never leaves STARTING
