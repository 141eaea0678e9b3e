"""The rollout controller against real serving processes on loopback (and ECS/ALB on moto).

Models are logistic bundles on synthetic bars where feature ``f0`` predicts the next bar's
return: a positive weight on ``f0`` trades profitably, a negative one loses, so the Sharpe gate
has a real difference to see. The helpers here are shared by ``test_rollback.py`` and by the
controller subprocess of the interrupted-rollout test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from autotrader_assets.defs.deployment.report import rollout_markdown
from deploy_ops.models.registry import open_registry
from deploy_ops.procs import pid_running
from deploy_ops.rollout.controller import RolloutController
from deploy_ops.rollout.measurement import (
    histogram_quantile,
    parse_serving_metrics,
    server_delta,
    sharpe_gate,
)
from deploy_ops.rollout.policy import RolloutPolicy, plan_stages
from deploy_ops.serving.faults import FaultConfig
from deploy_ops.slots.local import LocalDeployer
from deploy_ops.state import DEFAULT_ROUTE, DeploymentInProgressError, DeploymentStateStore
from tests.support.deployment import (
    CANARY,
    GATES,
    INSTRUMENTS,
    logistic_bundle,
    make_stack,
    predict_5xx,
    predict_everywhere,
    register,
    rollout_policy,
    serve_production,
    synthetic_market,
    teardown_stack,
    traffic_source,
    wait_dead,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TRAFFIC_STAGES = ["canary", "pct_25", "pct_50", "pct_100"]


@pytest.fixture
def stack(tmp_path):
    s = make_stack(tmp_path)
    yield s
    teardown_stack(s)


def controller_for(stack, policy=None, **kwargs) -> RolloutController:
    return RolloutController(
        stack.registry, stack.state, stack.backend, policy or rollout_policy(), actor="tester", **kwargs
    )


# ------------------------------------------------------------------------------- pure functions


def test_plan_stages_grows_from_canaries_to_everything():
    policy = RolloutPolicy(
        instruments=("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT", "AVAXUSDT"),
        canary_instruments=("BTCUSDT", "ETHUSDT"),
        stage_seconds=1.0,
        **GATES,
    )
    plans = plan_stages(policy)
    assert [p.name for p in plans] == TRAFFIC_STAGES
    assert [len(p.candidate_instruments) for p in plans] == [2, 2, 4, 8]
    assert [p.weight_percent for p in plans] == [10, 25, 50, 100]
    assert [p.all_traffic for p in plans] == [False, False, False, True]
    for earlier, later in zip(plans, plans[1:]):
        assert set(earlier.candidate_instruments) <= set(later.candidate_instruments)
    boot = plan_stages(policy, bootstrap=True)
    assert [(p.name, p.all_traffic, p.compare_sharpe) for p in boot] == [("bootstrap", True, False)]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(canary_instruments=("DOGEUSDT",)), "not among the instruments"),
        (dict(percentages=(50, 25, 100)), "must rise strictly"),
        (dict(percentages=(25, 50)), "end at 100"),
        (dict(stage_seconds=0), "stage_seconds must be a positive"),
        (dict(max_error_rate=1.5), "max_error_rate must be within"),
    ],
)
def test_policy_rejects_bad_settings(kwargs, message):
    base = dict(GATES, instruments=INSTRUMENTS, canary_instruments=CANARY, stage_seconds=1.0)
    base.update(kwargs)
    with pytest.raises(ValueError, match=message):
        RolloutPolicy(**base)


def test_sharpe_gate_floor_follows_the_sign_of_the_live_sharpe():
    n = dict(n_returns=200, min_returns=30, periods_per_year=525_600)
    assert sharpe_gate(2.0, 1.7, 0.2, **n).passed  # 15% below
    assert not sharpe_gate(2.0, 1.5, 0.2, **n).passed  # 25% below
    assert sharpe_gate(-1.0, -1.1, 0.2, **n).passed  # floor -1.2
    assert not sharpe_gate(-1.0, -1.3, 0.2, **n).passed
    assert not sharpe_gate(1.0, None, 0.2, **n).passed  # a candidate that never trades earns nothing
    assert sharpe_gate(None, None, 0.2, **n).passed


def test_sharpe_gate_says_how_far_below_and_from_how_many_returns_and_fails_on_too_few():
    reading = sharpe_gate(64.0, 28.0, 0.2, n_returns=480, min_returns=30, periods_per_year=525_600)
    assert not reading.passed
    assert reading.detail == (
        "candidate 28.0 vs live 64.0: 56% below live, more than the 20% allowed (floor 51.2); "
        "annualised from 480 1-minute returns each"
    )
    assert (
        "within the 20% allowed"
        in sharpe_gate(64.0, 60.0, 0.2, n_returns=480, min_returns=30, periods_per_year=525_600).detail
    )
    # Below the minimum the stage fails, even for a candidate that looks better.
    few = sharpe_gate(1.0, 5.0, 0.2, n_returns=12, min_returns=30, periods_per_year=105_120)
    assert not few.passed and few.detail.startswith("insufficient data: annualised from 12 5-minute returns each")


def test_server_metrics_parsing_and_quantiles():
    text = (
        "\n".join(
            [
                "# TYPE autotrader_serving_requests_total counter",
                'autotrader_serving_requests_total{slot="green",model_version="2",endpoint="/predict",status="200"} 98.0',
                'autotrader_serving_requests_total{slot="green",model_version="2",endpoint="/predict",status="500"} 2.0',
                'autotrader_serving_requests_total{slot="green",model_version="2",endpoint="/health",status="200"} 7.0',
                "# TYPE autotrader_serving_request_duration_seconds histogram",
                'autotrader_serving_request_duration_seconds_bucket{slot="green",model_version="2",endpoint="/predict",le="0.001"} 50.0',
                'autotrader_serving_request_duration_seconds_bucket{slot="green",model_version="2",endpoint="/predict",le="0.01"} 90.0',
                'autotrader_serving_request_duration_seconds_bucket{slot="green",model_version="2",endpoint="/predict",le="0.3"} 100.0',
                'autotrader_serving_request_duration_seconds_bucket{slot="green",model_version="2",endpoint="/predict",le="+Inf"} 100.0',
                'autotrader_serving_request_duration_seconds_sum{slot="green",model_version="2",endpoint="/predict"} 1.0',
                'autotrader_serving_request_duration_seconds_count{slot="green",model_version="2",endpoint="/predict"} 100.0',
            ]
        )
        + "\n"
    )
    after = parse_serving_metrics(text)
    assert after["by_status"] == {"200": 98.0, "500": 2.0}
    assert histogram_quantile(0.5, after["buckets"]) == pytest.approx(0.001)
    assert histogram_quantile(0.99, after["buckets"]) == pytest.approx(0.01 + 0.29 * 0.9)
    delta = server_delta(
        {"by_status": {"200": 48.0}, "buckets": {0.001: 20.0, 0.01: 40.0, 0.3: 48.0, float("inf"): 48.0}}, after
    )
    assert (delta["requests"], delta["errors_5xx"]) == (52, 2)
    assert delta["error_rate"] == pytest.approx(2 / 52)


# ------------------------------------------------------------------------- refusals (no process)


def test_pre_deploy_checks_refuse_without_touching_anything(stack):
    candidate = register(stack.registry, logistic_bundle(3.0), stage="candidate")
    controller = controller_for(stack)
    report = controller.run(candidate.version, traffic_source)
    assert report.outcome == "refused"
    gates = {g.gate: g for g in report.stages[0].gates}
    assert not gates["stage_is_staging"].passed and "only staging versions" in gates["stage_is_staging"].detail
    assert gates["artifact_verifies"].passed and gates["traffic_available"].passed

    unknown = controller.run(99, traffic_source)
    assert not {g.gate: g for g in unknown.stages[0].gates}["version_exists"].passed

    # production exists, but nothing serves it: the rollout refuses and says how to restore
    prod = register(stack.registry, logistic_bundle(3.0, bias=0.1))
    stack.registry.promote(prod.version, actor="test", reason="setup")
    staged = register(stack.registry, logistic_bundle(3.0, bias=0.2))
    report = controller.run(staged.version, traffic_source)
    health = {g.gate: g for g in report.stages[0].gates}["system_healthy"]
    assert report.outcome == "refused" and not health.passed
    assert f"deploy rollback --to {prod.version}" in health.detail

    def broken_source(instrument):
        features, bars = synthetic_market(instrument)
        return features.iloc[:10], bars

    refused = controller.run(staged.version, broken_source)
    assert "10 feature rows but 240 bars" in {g.gate: g for g in refused.stages[0].gates}["traffic_available"].detail

    assert stack.state.slots() == {}  # nothing was started
    assert stack.registry.get(staged.version).stage == "staging"  # a refusal does not fail the model
    deployments = stack.state.deployments()
    assert [d.status for d in deployments] == ["failed"] * 4
    refusals = stack.state.events_since(0, kinds=["rollout_refused"])
    assert len(refusals) == 4 and all(e.severity == "warning" for e in refusals)


# ------------------------------------------------------------------------------ real processes


@pytest.mark.slow
def test_clean_rollout_to_100_percent(stack):
    v1 = serve_production(stack, logistic_bundle(3.0))
    blue_pid = stack.state.get_slot("blue").pid
    v2 = register(stack.registry, logistic_bundle(3.0, bias=0.02))
    seen: list[tuple[str, bool | None]] = []
    controller = controller_for(
        stack, progress=lambda stage, rep: seen.append((stage, None if rep is None else rep.passed))
    )

    report = controller.run(v2.version, traffic_source)

    assert report.outcome == "succeeded", rollout_markdown(report)
    assert (report.mode, report.live_slot, report.candidate_slot) == ("blue_green", "blue", "green")
    assert [s.stage for s in report.stages] == [
        "pre_deploy_checks",
        "deploy",
        "smoke_test",
        *TRAFFIC_STAGES,
        "finalize",
    ]
    assert [s for s, passed in seen if passed] == [s.stage for s in report.stages]
    plans = {p.name: p for p in plan_stages(controller.policy)}
    for name in TRAFFIC_STAGES:
        stage = report.stage(name)
        assert stage.candidate_instruments == list(plans[name].candidate_instruments)
        cand, live = stage.traffic["candidate"], stage.traffic["live"]
        assert cand["requests"] >= 10 and cand["errors"] == 0 and live["errors"] == 0
        assert cand["p99_ms"] < 200
        assert stage.server["candidate"]["requests"] >= cand["requests"]  # the slot saw what we sent
        assert stage.sharpe["coverage"] == 1.0 and stage.sharpe["live"] > 0
        assert abs(stage.sharpe["candidate"] - stage.sharpe["live"]) <= 0.2 * stage.sharpe["live"]
        assert {g.gate for g in stage.gates} >= {"health", "error_rate", "p99_latency_ms", "sharpe"}
    assert report.stage("smoke_test").gate("known_answer").value < 1e-5
    assert "| canary | pass |" in rollout_markdown(report)
    assert json.loads(report.to_json())["outcome"] == "succeeded"

    assert stack.registry.get_production().version == v2.version
    assert stack.registry.get(v1.version).stage == "archived"
    assert "gates passed at" in stack.registry.history(v2.version)[-1].reason
    assert set(stack.state.routing_table().values()) == {"green"}
    assert stack.state.get_slot("blue").status == "stopped" and wait_dead(blue_pid)
    assert predict_everywhere(stack.state) == {i: str(v2.version) for i in INSTRUMENTS}
    assert stack.state.deployments()[0].status == "succeeded"
    kinds = [e.kind for e in stack.state.events_since(0)]
    assert kinds.count("rollout_stage_passed") >= 6 and kinds[-1] == "rollout_succeeded"
    assert controller.live_slot() == "green"  # roles swap: the next rollout goes to blue


@pytest.mark.slow
def test_bootstrap_then_next_rollout_goes_to_the_other_slot(stack):
    v1 = register(stack.registry, logistic_bundle(3.0))
    controller = controller_for(stack)
    first = controller.run(v1.version, traffic_source)
    assert first.outcome == "succeeded", rollout_markdown(first)
    assert (first.mode, first.candidate_slot, first.live_slot) == ("bootstrap", "blue", None)
    assert [s.stage for s in first.stages] == ["pre_deploy_checks", "deploy", "smoke_test", "bootstrap", "finalize"]
    boot = first.stage("bootstrap")
    assert boot.candidate_instruments == list(INSTRUMENTS)
    assert boot.gate("sharpe").passed and "bootstrap" in boot.gate("sharpe").detail
    assert boot.gate("error_rate").passed and boot.traffic["candidate"]["requests"] >= 10
    assert stack.registry.get_production().version == v1.version
    assert stack.state.routing_table()[DEFAULT_ROUTE] == "blue"

    v2 = register(stack.registry, logistic_bundle(3.0, bias=-0.02))
    second = controller.run(v2.version, traffic_source)
    assert second.outcome == "succeeded", rollout_markdown(second)
    assert (second.live_slot, second.candidate_slot) == ("blue", "green")
    assert stack.state.get_slot("blue").status == "stopped"
    assert controller.live_slot() == "green"


@pytest.mark.slow
def test_green_returning_errors_rolls_back_at_the_canary(stack):
    v1 = serve_production(stack, logistic_bundle(3.0))
    v2 = register(stack.registry, logistic_bundle(3.0, bias=0.02))
    report = controller_for(stack).run(v2.version, traffic_source, candidate_faults=FaultConfig(error_rate=0.25))

    assert report.outcome == "rolled_back", rollout_markdown(report)
    assert report.failed_stage == "canary"
    gate = report.stage("canary").gate("error_rate")
    assert not gate.passed and gate.value > 0.01 and "injected fault" in gate.detail
    assert report.stage("canary").traffic["live"]["errors"] == 0
    failed = stack.registry.get(v2.version)
    assert failed.stage == "failed" and "error_rate" in stack.registry.history(v2.version)[-1].reason
    assert stack.registry.get_production().version == v1.version
    assert set(stack.state.routing_table().values()) == {"blue"}
    assert stack.state.get_slot("green").status == "stopped"
    assert not pid_running(stack.state.get_slot("green").pid)
    event = stack.state.events_since(0, kinds=["rollout_rolled_back"])[-1]
    assert event.severity == "critical" and event.details["stage"] == "canary"
    assert stack.state.deployments()[0].status == "rolled_back"
    assert predict_everywhere(stack.state) == {i: str(v1.version) for i in INSTRUMENTS}


@pytest.mark.slow
def test_green_killed_mid_rollout_rolls_back_and_blue_never_fails(stack):
    v1 = serve_production(stack, logistic_bundle(3.0))
    v2 = register(stack.registry, logistic_bundle(3.0, bias=0.02))
    killed: list[int] = []

    def kill_green_at_25(stage, rep):
        if stage == "pct_25" and rep is None:
            pid = stack.state.get_slot("green").pid
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    report = controller_for(stack, progress=kill_green_at_25).run(v2.version, traffic_source)

    assert killed and report.outcome == "rolled_back", rollout_markdown(report)
    assert report.failed_stage == "pct_25"
    assert [s.stage for s in report.stages if s.passed][-1] == "canary"
    health = report.stage("pct_25").gate("health")
    assert not health.passed and "not running" in health.detail
    for stage in report.stages:
        if "live" in stage.traffic:
            assert stage.traffic["live"]["errors"] == 0, stage.traffic["live"]
    assert predict_5xx(stack.state.get_slot("blue").url) == 0
    assert stack.registry.get(v2.version).stage == "failed"
    assert set(stack.state.routing_table().values()) == {"blue"}
    assert stack.state.get_slot("green").status == "stopped"
    assert predict_everywhere(stack.state) == {i: str(v1.version) for i in INSTRUMENTS}


@pytest.mark.slow
def test_slow_green_trips_the_p99_gate(stack):
    serve_production(stack, logistic_bundle(3.0))
    v2 = register(stack.registry, logistic_bundle(3.0, bias=0.02))
    report = controller_for(stack).run(v2.version, traffic_source, candidate_faults=FaultConfig(latency_ms=260))
    assert report.outcome == "rolled_back", rollout_markdown(report)
    assert report.failed_stage == "canary"
    gate = report.stage("canary").gate("p99_latency_ms")
    assert not gate.passed and gate.value > 250 and gate.threshold == 200
    assert report.stage("canary").gate("error_rate").passed  # slow, not failing
    assert report.stage("canary").server["candidate"]["p99_ms"] > 200  # the slot's own histogram agrees
    assert stack.registry.get(v2.version).stage == "failed"
    assert set(stack.state.routing_table().values()) == {"blue"}


@pytest.mark.slow
def test_worse_model_trips_the_sharpe_gate(stack):
    v1 = serve_production(stack, logistic_bundle(3.0))
    anti = register(stack.registry, logistic_bundle(-3.0))
    report = controller_for(stack).run(anti.version, traffic_source)
    assert report.outcome == "rolled_back", rollout_markdown(report)
    assert report.failed_stage == "canary"
    canary = report.stage("canary")
    assert canary.gate("error_rate").passed and canary.gate("p99_latency_ms").passed
    gate = canary.gate("sharpe")
    assert not gate.passed
    assert canary.sharpe["live"] > 0 > canary.sharpe["candidate"]
    assert canary.sharpe["instruments"] == list(CANARY)
    assert canary.sharpe["live_backtest"]["n_fills"] > 0  # costs were paid on real fills
    assert stack.registry.get(anti.version).stage == "failed"
    assert stack.registry.get_production().version == v1.version
    assert set(stack.state.routing_table().values()) == {"blue"}


_CONTROLLER_SCRIPT = """
import json, sys
from pathlib import Path
from tests.support.deployment import make_stack, rollout_policy, traffic_source
from deploy_ops.rollout.controller import RolloutController
args = json.loads(sys.argv[1])
stack = make_stack(Path(args["tmp"]))
controller = RolloutController(stack.registry, stack.state, stack.backend,
                               rollout_policy(stage_seconds=60.0, stage_timeout_seconds=120.0), actor="doomed")
controller.run(args["version"], traffic_source)
"""


@pytest.mark.slow
def test_interrupted_rollout_is_recovered_by_the_next_controller(stack):
    v1 = serve_production(stack, logistic_bundle(3.0))
    v2 = register(stack.registry, logistic_bundle(3.0, bias=0.02))
    log = open(stack.tmp / "controller.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", _CONTROLLER_SCRIPT, json.dumps({"tmp": str(stack.tmp), "version": v2.version})],
        cwd=str(PROJECT_ROOT),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            dep = stack.state.active_deployment()
            # the stage is recorded a moment before its routes: wait for both
            if dep is not None and dep.stage == "canary" and stack.state.routing_table().get("BTCUSDT") == "green":
                break
            assert proc.poll() is None, (stack.tmp / "controller.log").read_text()
            time.sleep(0.1)
        else:
            pytest.fail("the controller never reached the canary: " + (stack.tmp / "controller.log").read_text())
        controller = controller_for(stack)
        with pytest.raises(DeploymentInProgressError, match="owner"):
            controller.recover_interrupted()  # its owner is alive: hands off
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()
    green_pid = stack.state.get_slot("green").pid
    assert pid_running(green_pid)  # the half-deployed slot outlived its controller

    recovery = controller.recover_interrupted()

    assert recovery is not None and recovery.outcome == "rolled_back" and recovery.stage == "canary"
    assert recovery.live_slot == "blue"
    assert set(stack.state.routing_table().values()) == {"blue"}
    assert wait_dead(green_pid) and stack.state.get_slot("green").status == "stopped"
    dep = stack.state.deployments()[0]
    assert dep.status == "failed" and "interrupted at stage canary" in dep.reason
    event = stack.state.events_since(0, kinds=["rollout_interrupted"])[-1]
    assert event.severity == "critical" and event.details["owner"].endswith(f":{proc.pid}")
    assert stack.registry.get(v2.version).stage == "staging"  # interrupted, never judged
    assert stack.registry.get_production().version == v1.version
    assert predict_everywhere(stack.state) == {i: str(v1.version) for i in INSTRUMENTS}
    assert controller.recover_interrupted() is None  # nothing left to recover


# ------------------------------------------------------------------------------ ECS on moto


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


@pytest.fixture
def aws(monkeypatch):
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("MOTO_ECS_SERVICE_RUNNING", raising=False)
    import boto3
    from moto import mock_aws

    from deploy_ops.slots.ecs.config import EcsDeployerConfig
    from deploy_ops.slots.ecs.deployer import EcsDeployer

    with mock_aws():
        region = "us-east-1"
        ec2, ecs, elbv2 = (boto3.client(n, region_name=region) for n in ("ec2", "ecs", "elbv2"))
        boto3.client("s3", region_name=region).create_bucket(Bucket="autotrader-models")
        vpc = ec2.create_vpc(CidrBlock="10.30.0.0/16")["Vpc"]["VpcId"]
        ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
        subnets = [
            ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.30.{i}.0/24", AvailabilityZone=f"{region}{az}")["Subnet"][
                "SubnetId"
            ]
            for i, az in enumerate("ab")
        ]
        sg = ec2.create_security_group(GroupName="serving", Description="serving", VpcId=vpc)["GroupId"]
        lb = elbv2.create_load_balancer(
            Name="serving", Subnets=subnets, SecurityGroups=[sg], Scheme="internal", Type="application"
        )["LoadBalancers"][0]["LoadBalancerArn"]
        tg = {
            slot: elbv2.create_target_group(
                Name=f"serving-{slot}",
                Protocol="HTTP",
                Port=8080,
                VpcId=vpc,
                TargetType="ip",
                HealthCheckPath="/health",
            )["TargetGroups"][0]["TargetGroupArn"]
            for slot in ("blue", "green")
        }
        listener = elbv2.create_listener(
            LoadBalancerArn=lb,
            Protocol="HTTP",
            Port=80,
            DefaultActions=[{"Type": "forward", "TargetGroupArn": tg["blue"]}],
        )["Listeners"][0]["ListenerArn"]
        ecs.create_cluster(clusterName="autotrader")
        for i, slot in enumerate(("blue", "green")):
            # What ECS does for a load-balanced service and moto does not: register the task IP.
            elbv2.register_targets(TargetGroupArn=tg[slot], Targets=[{"Id": f"10.30.0.{10 + i}", "Port": 8080}])
        config = EcsDeployerConfig(
            cluster="autotrader",
            service_prefix="serving",
            task_family="serving",
            container_name="serving",
            image="123456789012.dkr.ecr.us-east-1.amazonaws.com/serving:1",
            cpu=256,
            memory=512,
            subnets=subnets,
            security_groups=[sg],
            listener_arn=listener,
            blue_target_group_arn=tg["blue"],
            green_target_group_arn=tg["green"],
            region=region,
            execution_role_arn="arn:aws:iam::123456789012:role/exec",
            serving_token_secret_arn="arn:aws:ssm:us-east-1:123456789012:parameter/serving-token",
            stable_timeout_seconds=60,
            poll_interval_seconds=5,
        )
        clock = _Clock()
        deployer = EcsDeployer(config, ecs_client=ecs, elbv2_client=elbv2, sleep=clock.sleep, clock=clock)
        yield SimpleNamespace(deployer=deployer, ecs=ecs)


def _ecs_stack(tmp_path, aws, green_faults=None):
    """Registry artifacts on (moto) S3; ECS services on moto; the containers' serving app runs as
    local processes behind the per-slot endpoints, since moto runs no containers."""
    from deploy_ops.slots.ecs.backend import EcsBackend

    url = f"sqlite:///{tmp_path / 'registry.db'}"
    registry = open_registry(url, "s3://autotrader-models/models")
    state = DeploymentStateStore(url)
    v1 = register(registry, logistic_bundle(3.0))
    registry.promote(v1.version, actor="test", reason="initial production")
    v2 = register(registry, logistic_bundle(3.0, bias=0.02))
    tasks_state = DeploymentStateStore(f"sqlite:///{tmp_path / 'tasks.db'}")
    tasks = LocalDeployer(tasks_state, tmp_path / "tasks", ready_timeout=60, stop_grace=3)
    endpoints = {}
    for slot, mv, faults in (("blue", v1, None), ("green", v2, green_faults)):
        path = tmp_path / f"task-{slot}.pt"
        path.write_bytes(registry.artifacts.get(mv.artifact_uri, mv.sha256))
        endpoints[slot] = tasks.start_slot(slot, path, mv.sha256, str(mv.version), faults=faults).url
    backend = EcsBackend(aws.deployer, state, endpoints)
    backend.start("blue", v1)
    state.switch_all("blue")
    backend.set_weights({"blue": 100, "green": 0})
    return SimpleNamespace(registry=registry, state=state, backend=backend, tasks=tasks, v1=v1, v2=v2)


def _desired(aws, slot):
    return aws.ecs.describe_services(cluster="autotrader", services=[f"serving-{slot}"])["services"][0]["desiredCount"]


@pytest.mark.slow
def test_ecs_rollout_walks_the_alb_weights_and_scales_blue_to_zero(tmp_path, aws):
    s = _ecs_stack(tmp_path, aws)
    try:
        weights: dict[str, dict] = {}

        def record(stage, rep):
            if rep is not None and stage in TRAFFIC_STAGES:
                weights[stage] = aws.deployer.current_weights()

        report = RolloutController(s.registry, s.state, s.backend, rollout_policy(), progress=record).run(
            s.v2.version, traffic_source
        )
        assert report.outcome == "succeeded", rollout_markdown(report)
        assert {k: v["green"] for k, v in weights.items()} == {"canary": 10, "pct_25": 25, "pct_50": 50, "pct_100": 100}
        assert report.stage("canary").server["alb_weights"] == {"blue": 90, "green": 10}
        assert aws.deployer.current_weights() == {"blue": 0, "green": 100}
        assert (_desired(aws, "blue"), _desired(aws, "green")) == (0, 1)
        assert aws.deployer.slot_health("green").version == str(s.v2.version)
        assert s.registry.get_production().version == s.v2.version
        assert s.state.get_slot("blue").status == "stopped"
    finally:
        s.tasks.stop_all()


@pytest.mark.slow
def test_ecs_rollback_returns_weights_to_blue_and_scales_green_to_zero(tmp_path, aws):
    s = _ecs_stack(tmp_path, aws, green_faults=FaultConfig(error_rate=0.3))
    try:
        report = RolloutController(s.registry, s.state, s.backend, rollout_policy()).run(s.v2.version, traffic_source)
        assert report.outcome == "rolled_back", rollout_markdown(report)
        assert report.failed_stage == "canary"
        assert aws.deployer.current_weights() == {"blue": 100, "green": 0}
        assert (_desired(aws, "blue"), _desired(aws, "green")) == (1, 0)
        assert s.registry.get(s.v2.version).stage == "failed"
        assert s.registry.get_production().version == s.v1.version
        assert set(s.state.routing_table().values()) == {"blue"}
    finally:
        s.tasks.stop_all()
