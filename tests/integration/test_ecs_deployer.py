"""The ECS/ALB blue/green deployer against moto's ECS, ELBv2 and EC2.

moto does not start tasks for services and does not register them in target groups, so
tests that need healthy targets register the tasks' IPs themselves, which is what ECS does
for a service with a load balancer. Real-ECS deployment shapes moto never produces (two
deployments, a FAILED rollout) are covered by ``assess_service_stability`` and a stubbed
client below.
"""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from deploy_ops.serving.faults import FaultConfig
from deploy_ops.slots.ecs.backend import EcsBackend
from deploy_ops.slots.ecs.config import EcsDeployerConfig
from deploy_ops.slots.ecs.deployer import EcsDeployer
from deploy_ops.slots.ecs.errors import DeploymentError
from deploy_ops.slots.ecs.status import assess_service_stability

REGION = "us-east-1"
ACCOUNT = "123456789012"
TOKEN_ARN = f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/autotrader/serving-token"
EXEC_ROLE = f"arn:aws:iam::{ACCOUNT}:role/autotrader-task-execution"
SHA_V1 = "a" * 64
SHA_V2 = "b" * 64
PLAINTEXT_TOKEN = "plaintext-serving-token-must-not-leak"


class FakeClock:
    """A monotonic clock that only moves when the deployer sleeps."""

    def __init__(self, on_sleep=None):
        self.now = 1000.0
        self.sleeps: list[float] = []
        self._on_sleep = on_sleep

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self._on_sleep is not None:
            self._on_sleep(len(self.sleeps))


@pytest.fixture
def aws_env(monkeypatch):
    """Fake credentials and region so boto3 never looks for real ones."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SECURITY_TOKEN": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_CONFIG_FILE": "/nonexistent/aws-config",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    # moto reads this to fake running tasks at service creation; our tests need its default.
    monkeypatch.delenv("MOTO_ECS_SERVICE_RUNNING", raising=False)
    # The deployer must never copy the token value from its own environment.
    monkeypatch.setenv("AUTOTRADER_SERVING_TOKEN", PLAINTEXT_TOKEN)


@pytest.fixture
def infra(aws_env):
    """VPC (DNS hostnames on), 3 subnets in 3 AZs, SG, ALB + listener, two target groups, cluster."""
    with mock_aws():
        ec2 = boto3.client("ec2", region_name=REGION)
        ecs = boto3.client("ecs", region_name=REGION)
        elbv2 = boto3.client("elbv2", region_name=REGION)
        vpc_id = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
        ec2.modify_vpc_attribute(VpcId=vpc_id, EnableDnsSupport={"Value": True})
        ec2.modify_vpc_attribute(VpcId=vpc_id, EnableDnsHostnames={"Value": True})
        subnets = [
            ec2.create_subnet(VpcId=vpc_id, CidrBlock=f"10.20.{i}.0/24", AvailabilityZone=f"{REGION}{az}")["Subnet"][
                "SubnetId"
            ]
            for i, az in enumerate("abc")
        ]
        sg = ec2.create_security_group(GroupName="autotrader-serving", Description="serving", VpcId=vpc_id)["GroupId"]
        lb_arn = elbv2.create_load_balancer(
            Name="autotrader-serving", Subnets=subnets, SecurityGroups=[sg], Scheme="internal", Type="application"
        )["LoadBalancers"][0]["LoadBalancerArn"]
        tg = {
            slot: elbv2.create_target_group(
                Name=f"autotrader-{slot}",
                Protocol="HTTP",
                Port=8080,
                VpcId=vpc_id,
                TargetType="ip",
                HealthCheckPath="/health",
            )["TargetGroups"][0]["TargetGroupArn"]
            for slot in ("blue", "green")
        }
        listener_arn = elbv2.create_listener(
            LoadBalancerArn=lb_arn,
            Protocol="HTTP",
            Port=80,
            DefaultActions=[{"Type": "forward", "TargetGroupArn": tg["blue"]}],
        )["Listeners"][0]["ListenerArn"]
        ecs.create_cluster(clusterName="autotrader")
        config = EcsDeployerConfig(
            cluster="autotrader",
            service_prefix="autotrader-serving",
            task_family="autotrader-serving",
            container_name="serving",
            image=f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/autotrader-serving:1.0.0",
            cpu=512,
            memory=1024,
            subnets=subnets,
            security_groups=[sg],
            listener_arn=listener_arn,
            blue_target_group_arn=tg["blue"],
            green_target_group_arn=tg["green"],
            region=REGION,
            execution_role_arn=EXEC_ROLE,
            serving_token_secret_arn=TOKEN_ARN,
            extra_environment={"AUTOTRADER_ENV": "production"},
            stable_timeout_seconds=60.0,
            poll_interval_seconds=10.0,
        )
        yield SimpleNamespace(
            ec2=ec2, ecs=ecs, elbv2=elbv2, subnets=subnets, sg=sg, tg=tg, listener_arn=listener_arn, config=config
        )


def make_deployer(config: EcsDeployerConfig, clock: FakeClock | None = None, infra=None) -> EcsDeployer:
    """A deployer on the fake clock; reusing the fixture's clients saves building new ones per test."""
    clock = clock or FakeClock()
    clients = {"ecs_client": infra.ecs, "elbv2_client": infra.elbv2} if infra is not None else {}
    return EcsDeployer(config, sleep=clock.sleep, clock=clock, **clients)


_next_ip = iter(range(10, 250))


def register_task_ips(infra, slot: str, count: int = 1) -> None:
    """Do what ECS does for a load-balanced service and moto does not: register task IPs."""
    targets = [{"Id": f"10.20.0.{next(_next_ip)}", "Port": 8080} for _ in range(count)]
    infra.elbv2.register_targets(TargetGroupArn=infra.tg[slot], Targets=targets)


def deregister_all(infra, slot: str) -> None:
    described = infra.elbv2.describe_target_health(TargetGroupArn=infra.tg[slot])["TargetHealthDescriptions"]
    targets = [d["Target"] for d in described]
    if targets:
        infra.elbv2.deregister_targets(TargetGroupArn=infra.tg[slot], Targets=targets)


def service(infra, slot: str) -> dict:
    return infra.ecs.describe_services(cluster="autotrader", services=[f"autotrader-serving-{slot}"])["services"][0]


def raw_listener_weights(infra) -> dict[str, int]:
    action = infra.elbv2.describe_listeners(ListenerArns=[infra.listener_arn])["Listeners"][0]["DefaultActions"][0]
    by_arn = {arn: slot for slot, arn in infra.tg.items()}
    return {by_arn[g["TargetGroupArn"]]: g["Weight"] for g in action["ForwardConfig"]["TargetGroups"]}


@pytest.fixture
def live_blue(infra):
    """Services exist, blue serves v1 with all traffic, green is idle."""
    deployer = make_deployer(infra.config, infra=infra)
    first_td = deployer.register_task_definition("v1", "s3://autotrader-artifacts/models/v1.pt", SHA_V1, "blue")
    deployer.ensure_services(first_td)
    register_task_ips(infra, "blue")
    deployer.start_slot("blue", "v1", "s3://autotrader-artifacts/models/v1.pt", SHA_V1)
    deployer.switch_all("blue")
    return deployer


def start_green_v2(infra, deployer: EcsDeployer):
    register_task_ips(infra, "green")
    return deployer.start_slot("green", "v2", "s3://autotrader-artifacts/models/v2.pt", SHA_V2)


# ---------------------------------------------------------------------------- configuration


def _config_kwargs(**overrides):
    kwargs = dict(
        cluster="c",
        service_prefix="svc",
        task_family="fam",
        container_name="serving",
        image="img:1",
        cpu=256,
        memory=512,
        subnets=["subnet-1"],
        security_groups=["sg-1"],
        listener_arn="arn:aws:elasticloadbalancing:us-east-1:123456789012:listener/app/x/1/2",
        blue_target_group_arn="arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/b/1",
        green_target_group_arn="arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/g/2",
        region=REGION,
        execution_role_arn=EXEC_ROLE,
        serving_token_secret_arn=TOKEN_ARN,
    )
    kwargs.update(overrides)
    return kwargs


def test_config_accepts_a_valid_description_and_freezes_lists():
    config = EcsDeployerConfig(**_config_kwargs())
    assert config.subnets == ("subnet-1",)
    assert config.service_name("green") == "svc-green"
    assert config.target_group_arn("blue").endswith("targetgroup/b/1")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"serving_token_secret_arn": PLAINTEXT_TOKEN}, "secret value itself is never accepted"),
        ({"extra_secrets": {"DB_PASSWORD": "hunter2-plaintext"}}, "secret value itself is never accepted"),
        ({"green_target_group_arn": "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/b/1"}, "distinct"),
        ({"subnets": []}, "subnets"),
        ({"subnets": "subnet-1"}, "single string"),
        ({"cpu": 0}, "positive"),
        ({"service_prefix": "bad name"}, "service_prefix"),
        ({"extra_environment": {"AUTOTRADER_MODEL_URI": "x"}}, "more than once"),
        ({"execution_role_arn": "autotrader-role"}, "execution_role_arn"),
    ],
)
def test_config_rejects_bad_values_without_echoing_secrets(overrides, message):
    with pytest.raises(ValueError, match=message) as excinfo:
        EcsDeployerConfig(**_config_kwargs(**overrides))
    assert PLAINTEXT_TOKEN not in str(excinfo.value)
    assert "hunter2" not in str(excinfo.value)


# ---------------------------------------------------------------------------- services


def test_ensure_services_creates_both_slots_on_their_target_groups(infra):
    deployer = make_deployer(infra.config, infra=infra)
    td = deployer.register_task_definition("v1", "s3://autotrader-artifacts/models/v1.pt", SHA_V1, "blue")
    arns = deployer.ensure_services()  # defaults to the family's latest revision

    assert set(arns) == {"blue", "green"}
    for slot in ("blue", "green"):
        svc = service(infra, slot)
        assert svc["serviceArn"] == arns[slot]
        assert svc["taskDefinition"] == td
        assert svc["desiredCount"] == 0
        assert svc["launchType"] == "FARGATE"
        assert [lb["targetGroupArn"] for lb in svc["loadBalancers"]] == [infra.tg[slot]]
        assert svc["loadBalancers"][0]["containerName"] == "serving"
        assert svc["loadBalancers"][0]["containerPort"] == 8080
        awsvpc = svc["networkConfiguration"]["awsvpcConfiguration"]
        assert sorted(awsvpc["subnets"]) == sorted(infra.subnets)
        assert awsvpc["securityGroups"] == [infra.sg]
        assert awsvpc["assignPublicIp"] == "DISABLED"

    # Idempotent: a second call finds the same services instead of creating new ones.
    assert deployer.ensure_services() == arns
    assert len(infra.ecs.list_services(cluster="autotrader")["serviceArns"]) == 2


def test_ensure_services_without_any_task_definition_says_what_to_do(infra):
    with pytest.raises(DeploymentError, match="register_task_definition first") as excinfo:
        make_deployer(infra.config, infra=infra).ensure_services()
    assert excinfo.value.operation == "ensure_services"
    assert excinfo.value.code == "ClientException"
    assert infra.ecs.list_services(cluster="autotrader")["serviceArns"] == []


def test_ensure_services_refuses_a_slot_attached_to_the_wrong_target_group(infra):
    deployer = make_deployer(infra.config, infra=infra)
    td = deployer.register_task_definition("v1", "s3://autotrader-artifacts/models/v1.pt", SHA_V1, "blue")
    infra.ecs.create_service(
        cluster="autotrader",
        serviceName="autotrader-serving-blue",
        taskDefinition=td,
        desiredCount=0,
        launchType="FARGATE",
        loadBalancers=[{"targetGroupArn": infra.tg["green"], "containerName": "serving", "containerPort": 8080}],
        networkConfiguration={"awsvpcConfiguration": {"subnets": infra.subnets, "securityGroups": [infra.sg]}},
    )
    with pytest.raises(DeploymentError) as excinfo:
        deployer.ensure_services(td)
    assert excinfo.value.code == "TargetGroupMismatch"
    assert infra.tg["green"] in str(excinfo.value)


def test_start_green_puts_model_in_env_and_token_only_as_secret_reference(infra, live_blue):
    info = start_green_v2(infra, live_blue)

    assert info.slot == "green"
    assert info.version == "v2"
    assert info.desired_count == 1 and info.running_count == 1
    assert info.healthy_targets == 1
    assert info.serving
    svc = service(infra, "green")
    assert svc["taskDefinition"] == info.task_definition_arn

    td = infra.ecs.describe_task_definition(taskDefinition=info.task_definition_arn)["taskDefinition"]
    assert td["networkMode"] == "awsvpc"
    assert td["requiresCompatibilities"] == ["FARGATE"]
    assert td["executionRoleArn"] == EXEC_ROLE
    (container,) = td["containerDefinitions"]
    assert container["cpu"] == 512 and container["memory"] == 1024
    env = {e["name"]: e["value"] for e in container["environment"]}
    assert env == {
        "AUTOTRADER_MODEL_URI": "s3://autotrader-artifacts/models/v2.pt",
        "AUTOTRADER_MODEL_SHA256": SHA_V2,
        "AUTOTRADER_MODEL_VERSION": "v2",
        "AUTOTRADER_SLOT": "green",
        "AUTOTRADER_ENV": "production",
    }
    assert container["secrets"] == [{"name": "AUTOTRADER_SERVING_TOKEN", "valueFrom": TOKEN_ARN}]
    assert PLAINTEXT_TOKEN not in json.dumps(td, default=str)

    # Blue keeps serving v1 untouched while green comes up.
    blue = live_blue.slot_health("blue")
    assert blue.version == "v1" and blue.running_count == 1
    assert live_blue.current_weights() == {"blue": 100, "green": 0}


def test_start_slot_rejects_bad_model_input_before_touching_aws(infra, live_blue):
    before = service(infra, "green")
    revisions = infra.ecs.list_task_definitions(familyPrefix="autotrader-serving")["taskDefinitionArns"]
    with pytest.raises(ValueError, match="sha256"):
        live_blue.start_slot("green", "v2", "s3://autotrader-artifacts/models/v2.pt", "not-a-digest")
    with pytest.raises(ValueError, match="not reachable from ECS"):
        live_blue.start_slot("green", "v2", "/home/me/models/v2.pt", SHA_V2)
    with pytest.raises(ValueError, match="desired_count"):
        live_blue.start_slot("green", "v2", "s3://autotrader-artifacts/models/v2.pt", SHA_V2, desired_count=0)
    with pytest.raises(ValueError, match="slot"):
        live_blue.start_slot("purple", "v2", "s3://autotrader-artifacts/models/v2.pt", SHA_V2)
    assert infra.ecs.list_task_definitions(familyPrefix="autotrader-serving")["taskDefinitionArns"] == revisions
    after = service(infra, "green")
    assert (after["taskDefinition"], after["desiredCount"]) == (before["taskDefinition"], before["desiredCount"])


# ---------------------------------------------------------------------------- traffic


def test_weights_walk_read_back_from_listener_then_finalize(infra, live_blue):
    start_green_v2(infra, live_blue)

    for blue_w, green_w in [(0, 100), (75, 25), (50, 50), (0, 100)]:
        returned = live_blue.set_traffic_weights(blue_w, green_w)
        assert returned == {"blue": blue_w, "green": green_w}
        assert live_blue.current_weights() == {"blue": blue_w, "green": green_w}
        assert raw_listener_weights(infra) == {"blue": blue_w, "green": green_w}

    result = live_blue.finalize("green")

    assert live_blue.current_weights() == {"blue": 0, "green": 100}
    assert service(infra, "blue")["desiredCount"] == 0
    assert service(infra, "green")["desiredCount"] == 1
    assert result["blue"].desired_count == 0
    assert result["green"].version == "v2" and result["green"].running_count == 1


def test_relative_weights_are_reported_as_percent(infra, live_blue):
    start_green_v2(infra, live_blue)
    assert live_blue.set_traffic_weights(3, 1) == {"blue": 75, "green": 25}
    assert raw_listener_weights(infra) == {"blue": 3, "green": 1}


def test_rollback_switches_all_traffic_to_blue_and_stops_green(infra, live_blue):
    start_green_v2(infra, live_blue)
    live_blue.set_traffic_weights(75, 25)

    assert live_blue.switch_all("blue") == {"blue": 100, "green": 0}
    stopped = live_blue.stop_slot("green")

    assert stopped.desired_count == 0
    assert service(infra, "green")["desiredCount"] == 0
    blue = live_blue.slot_health("blue")
    assert blue.running_count == 1 and blue.version == "v1" and blue.serving
    assert raw_listener_weights(infra) == {"blue": 100, "green": 0}


def test_live_slot_is_not_stopped_or_replaced_without_force(infra, live_blue):
    with pytest.raises(DeploymentError) as excinfo:
        live_blue.stop_slot("blue")
    assert excinfo.value.code == "SlotIsLive"
    with pytest.raises(DeploymentError, match="SlotIsLive"):
        live_blue.start_slot("blue", "v2", "s3://autotrader-artifacts/models/v2.pt", SHA_V2)
    blue = service(infra, "blue")
    assert blue["desiredCount"] == 1
    assert live_blue.slot_health("blue").version == "v1"

    assert live_blue.stop_slot("blue", force=True).desired_count == 0


def test_bad_weights_leave_the_listener_untouched(infra, live_blue):
    before = infra.elbv2.describe_listeners(ListenerArns=[infra.listener_arn])["Listeners"][0]["DefaultActions"]
    for blue_w, green_w in [(-1, 50), (1000, 0), (0, 0), (True, 0), (50.0, 50)]:
        with pytest.raises(ValueError):
            live_blue.set_traffic_weights(blue_w, green_w)
    # Green has no running tasks: giving it a share would 503 those requests.
    with pytest.raises(DeploymentError) as excinfo:
        live_blue.set_traffic_weights(75, 25)
    assert excinfo.value.code == "SlotNotRunning"
    with pytest.raises(DeploymentError, match="SlotNotRunning"):
        live_blue.finalize("green")
    after = infra.elbv2.describe_listeners(ListenerArns=[infra.listener_arn])["Listeners"][0]["DefaultActions"]
    assert after == before
    assert service(infra, "blue")["desiredCount"] == 1


# ---------------------------------------------------------------------------- errors and waiting


def test_unknown_cluster_is_a_deployment_error_with_the_aws_code(infra):
    config = dataclasses.replace(infra.config, cluster="no-such-cluster")
    deployer = make_deployer(config)
    with pytest.raises(DeploymentError) as excinfo:
        deployer.slot_health("blue")
    error = excinfo.value
    assert error.code == "ClusterNotFoundException"
    assert error.operation == "slot_health"
    assert error.api == "DescribeServices"
    assert "slot_health (DescribeServices) failed [ClusterNotFoundException]" in str(error)

    td = deployer.register_task_definition("v1", "s3://autotrader-artifacts/models/v1.pt", SHA_V1, "blue")
    with pytest.raises(DeploymentError) as excinfo:
        deployer.ensure_services(td)
    assert excinfo.value.code == "ClusterNotFoundException"


def test_missing_service_names_ensure_services(infra):
    with pytest.raises(DeploymentError, match="ensure_services") as excinfo:
        make_deployer(infra.config, infra=infra).slot_health("green")
    assert excinfo.value.code == "ServiceNotFoundException"


def test_stability_wait_times_out_cleanly_with_injected_sleep(infra, live_blue):
    # Nothing registers green's tasks in its target group, so the ALB never sees them healthy.
    deregister_all(infra, "green")
    clock = FakeClock()
    deployer = make_deployer(infra.config, clock, infra)

    with pytest.raises(DeploymentError) as excinfo:
        deployer.start_slot("green", "v2", "s3://autotrader-artifacts/models/v2.pt", SHA_V2)

    error = excinfo.value
    assert error.code == "StabilityTimeout"
    assert error.operation == "start_slot"
    assert "0/1 healthy targets" in str(error)
    assert clock.sleeps == [10.0] * 6  # 60 s timeout / 10 s polls, all on the fake clock
    # The listener never moved: a slot that did not come up gets no traffic.
    assert deployer.current_weights() == {"blue": 100, "green": 0}


def test_stability_wait_polls_until_targets_turn_healthy(infra, live_blue):
    clock = FakeClock(on_sleep=lambda n: register_task_ips(infra, "green", 2) if n == 2 else None)
    deployer = make_deployer(infra.config, clock, infra)

    info = deployer.start_slot("green", "v2", "s3://autotrader-artifacts/models/v2.pt", SHA_V2, desired_count=2)

    assert clock.sleeps == [10.0, 10.0]
    assert info.running_count == 2 and info.healthy_targets == 2 and info.serving


def test_without_target_health_wait_ecs_counts_alone_decide(infra, live_blue):
    config = dataclasses.replace(infra.config, wait_for_healthy_targets=False)
    clock = FakeClock()
    info = make_deployer(config, clock, infra).start_slot(
        "green", "v2", "s3://autotrader-artifacts/models/v2.pt", SHA_V2
    )
    assert clock.sleeps == []
    assert info.stable and info.healthy_targets == 0 and not info.serving


# ---------------------------------------------------------------------------- real-ECS semantics


TD_NEW = f"arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/autotrader-serving:7"
TD_OLD = f"arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/autotrader-serving:6"


def _svc(deployments, running=1, desired=1, td=TD_NEW, status="ACTIVE"):
    return {
        "status": status,
        "taskDefinition": td,
        "desiredCount": desired,
        "runningCount": running,
        "deployments": deployments,
    }


def _dep(td, status="PRIMARY", running=1, rollout="COMPLETED", reason=""):
    return {
        "taskDefinition": td,
        "status": status,
        "runningCount": running,
        "rolloutState": rollout,
        "rolloutStateReason": reason,
    }


@pytest.mark.parametrize(
    "svc, state, fragment",
    [
        (_svc([_dep(TD_NEW)]), "stable", "running 1/1"),
        (_svc([_dep(TD_NEW, rollout="IN_PROGRESS"), _dep(TD_OLD, status="ACTIVE")], running=2), "waiting", "draining"),
        (_svc([_dep(TD_NEW, running=0, rollout="IN_PROGRESS")], running=0), "waiting", "0/1"),
        (_svc([_dep(TD_NEW, rollout="IN_PROGRESS")]), "waiting", "IN_PROGRESS"),
        (
            _svc([_dep(TD_NEW, running=0, rollout="FAILED", reason="tasks failed to start")], running=0),
            "failed",
            "tasks failed to start",
        ),
        (_svc([_dep(TD_OLD)], td=TD_OLD), "failed", "superseded"),
        (_svc([_dep(TD_NEW)], desired=3), "failed", "another actor"),
        (_svc([_dep(TD_NEW)], status="DRAINING"), "failed", "DRAINING"),
        # moto's shape: the only deployment still names the creation-time task definition.
        (_svc([_dep(TD_OLD, running=0)]), "stable", "running 1/1"),
        (_svc([_dep(TD_OLD, running=0)], running=0), "waiting", "running 0/1"),
    ],
)
def test_assess_service_stability_follows_ecs_deployment_semantics(svc, state, fragment):
    verdict = assess_service_stability(svc, TD_NEW, 1)
    assert verdict.state == state
    assert fragment in verdict.reason


def test_failed_rollout_stops_the_wait_without_sleeping(aws_env):
    config = EcsDeployerConfig(**_config_kwargs())
    ecs = boto3.client("ecs", region_name=REGION)
    elbv2 = boto3.client("elbv2", region_name=REGION)
    clock = FakeClock()
    deployer = EcsDeployer(config, ecs_client=ecs, elbv2_client=elbv2, sleep=clock.sleep, clock=clock)
    failed = {
        "serviceName": "svc-green",
        "status": "ACTIVE",
        "taskDefinition": TD_NEW,
        "desiredCount": 1,
        "runningCount": 0,
        "deployments": [
            {
                "id": "ecs-svc/1",
                "status": "PRIMARY",
                "taskDefinition": TD_NEW,
                "runningCount": 0,
                "rolloutState": "FAILED",
                "rolloutStateReason": "ECS deployment circuit breaker: tasks failed to start.",
            }
        ],
    }
    with Stubber(ecs) as stub:
        stub.add_response(
            "describe_services", {"services": [failed], "failures": []}, {"cluster": "c", "services": ["svc-green"]}
        )
        with pytest.raises(DeploymentError) as excinfo:
            deployer.wait_until_stable("green", TD_NEW, 1)
        stub.assert_no_pending_responses()
    assert excinfo.value.code == "DeploymentFailed"
    assert "circuit breaker" in str(excinfo.value)
    assert clock.sleeps == []


def test_the_ecs_backend_refuses_fault_injection_before_touching_aws():
    # The deployer and the state are never reached: the refusal comes first.
    backend = EcsBackend(deployer=None, state=None, endpoints={"blue": "http://blue", "green": "http://green"})
    with pytest.raises(ValueError, match="fault injection is local-only"):
        backend.start("green", None, faults=FaultConfig(error_rate=0.3))
