"""The Terraform of infra/terraform, checked without a provider (none can be downloaded here).

Every ``.tf`` and ``.tfvars`` file parses with python-hcl2, and the architecture the issue asks
for is asserted on the parsed files: three zones with a NAT gateway each, the blue and green
target groups and the listener rules the deployer switches, encryption at rest and in transit,
nothing public, multi-AZ PostgreSQL in production only, typed and described variables that
validate what they can, every module output used. The root module's ``ecs_config`` output is
held equal, name for name, to EcsDeployerConfig and to what ``settings.parse_ecs_config`` reads;
the Dagster launcher's variables come from root outputs; the runbooks' ``terraform`` lines name
files and outputs that exist. checkov runs over ``infra/`` with zero failed checks.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from dataclasses import MISSING, fields
from functools import cache
from pathlib import Path

import hcl2
import pytest
import yaml
from hcl2.utils import SerializationOptions

from autotrader_assets import settings as settings_module
from autotrader_assets.settings import (
    ECS_CONFIG_SECTIONS,
    SHARED_DATABASE_SCHEMES,
    SettingsError,
    ecs_deployer_keys,
    parse_ecs_config,
)
from deploy_ops.slots.ecs.config import EcsDeployerConfig

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
TF = INFRA / "terraform"
ENVIRONMENTS = ("dev", "staging", "production")
CHECKOV = ROOT / ".tools" / "checkov" / "bin" / "checkov"
_OPTIONS = SerializationOptions(strip_string_quotes=True, with_comments=False, explicit_blocks=False)
_FENCE = re.compile(r"^[ \t]*```bash[^\n]*\n(.*?)^[ \t]*```", re.MULTILINE | re.DOTALL)


# ----------------------------------------------------------------------------- parsing helpers


def _load(path: Path) -> dict:
    with path.open() as handle:
        return hcl2.load(handle, serialization_options=_OPTIONS)


class Module:
    """The blocks of one Terraform module (every ``.tf`` file of a folder), by kind and name."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.text = "\n".join(p.read_text() for p in sorted(folder.glob("*.tf")))
        self.resources: dict[tuple[str, str], dict] = {}
        self.variables: dict[str, dict] = {}
        self.outputs: dict[str, dict] = {}
        self.modules: dict[str, dict] = {}
        self.locals: dict[str, object] = {}
        for path in sorted(folder.glob("*.tf")):
            parsed = _load(path)
            for block in parsed.get("resource", []):
                for rtype, named in block.items():
                    for name, body in named.items():
                        self.resources[(rtype, name)] = body
            for kind, target in (("variable", self.variables), ("output", self.outputs), ("module", self.modules)):
                for block in parsed.get(kind, []):
                    target.update(block)
            for block in parsed.get("locals", []):
                self.locals.update(block)

    def resource(self, rtype: str, name: str) -> dict:
        assert (rtype, name) in self.resources, f"{self.folder.relative_to(TF)} has no {rtype}.{name}"
        return self.resources[(rtype, name)]

    def of_type(self, rtype: str) -> dict[str, dict]:
        return {name: body for (t, name), body in self.resources.items() if t == rtype}


@cache
def _module_at(folder: Path) -> Module:
    return Module(folder)


def module(relative: str | Path = ".") -> Module:
    """The module in ``relative`` (under infra/terraform), parsed once per test session."""
    return _module_at((TF / relative).resolve())


def _module_folders() -> list[Path]:
    return sorted({p.parent for p in TF.rglob("*.tf")})


def _tfvars(environment: str) -> dict:
    return _load(TF / "environments" / f"{environment}.tfvars")


def _one(value):
    """A nested block parses as a list of one dict."""
    return value[0] if isinstance(value, list) else value


def _validation_regexes(variable: dict) -> list[re.Pattern]:
    """The regexes of ``can(regex("...", var.x))`` validation conditions, unescaped from HCL."""
    patterns = []
    for validation in variable.get("validation", []):
        for raw in re.findall(r'regex\("((?:[^"\\]|\\.)*)"', validation["condition"]):
            patterns.append(re.compile(raw.replace("\\\\", "\\").replace('\\"', '"')))
    return patterns


# ----------------------------------------------------------------------------------- parsing


def test_every_terraform_file_parses():
    files = sorted(TF.rglob("*.tf")) + sorted(TF.rglob("*.tfvars"))
    names = {p.relative_to(TF).as_posix() for p in files}
    # The layout the issue asks for: a root module, five modules, three environments.
    for required in (
        "main.tf",
        "variables.tf",
        "outputs.tf",
        "versions.tf",
        "environments/dev.tfvars",
        "environments/staging.tfvars",
        "environments/production.tfvars",
    ):
        assert required in names
    for name in ("networking", "compute", "storage", "dagster", "monitoring"):
        for part in ("main.tf", "variables.tf", "outputs.tf"):
            assert f"modules/{name}/{part}" in names
        assert (TF / "modules" / name / "README.md").is_file()
    for path in files:
        assert isinstance(_load(path), dict), path


def test_hcl_parser_would_catch_a_broken_file(tmp_path):
    broken = tmp_path / "broken.tf"
    broken.write_text('resource "aws_s3_bucket" "x" {\n  bucket = "a"\n')
    with pytest.raises(Exception) as info:
        _load(broken)
    assert type(info.value).__name__ in {"UnexpectedEOF", "UnexpectedToken", "UnexpectedCharacters", "UnexpectedInput"}


# ------------------------------------------------------------------------------ architecture


def test_three_availability_zones_with_a_public_and_a_private_subnet_and_a_nat_each():
    root = module()
    zones = root.variables["availability_zones"]
    assert any("length(var.availability_zones) == 3" in v["condition"] for v in zones["validation"])
    for env in ENVIRONMENTS:
        assert len(set(_tfvars(env)["availability_zones"])) == 3, env
    net = module("modules/networking")
    for name in ("public", "private"):
        subnet = net.resource("aws_subnet", name)
        assert subnet["count"] == 3
        assert subnet["availability_zone"] == "${var.availability_zones[count.index]}"
    assert net.resource("aws_subnet", "public")["map_public_ip_on_launch"] is False
    nat = net.resource("aws_nat_gateway", "this")
    assert nat["count"] == 3 and nat["subnet_id"] == "${aws_subnet.public[count.index].id}"
    assert net.resource("aws_eip", "nat")["count"] == 3
    # Each zone's private subnets leave through their own zone's NAT (a zone outage strands no other).
    private = net.resource("aws_route_table", "private")
    assert private["count"] == 3
    assert _one(private["route"])["nat_gateway_id"] == "${aws_nat_gateway.this[count.index].id}"
    association = net.resource("aws_route_table_association", "private")
    assert association["route_table_id"] == "${aws_route_table.private[count.index].id}"
    assert {"s3", "ecr"} <= set(net.of_type("aws_vpc_endpoint"))


def test_two_target_groups_and_the_listener_and_rules_the_deployer_switches():
    compute = module("modules/compute")
    groups = compute.resource("aws_lb_target_group", "slot")
    assert groups["for_each"] == '${toset(["blue", "green"])}'
    health = _one(groups["health_check"])
    assert health["path"] == "/ready" and groups["target_type"] == "ip"
    listener = compute.resource("aws_lb_listener", "https")
    assert listener["protocol"] == "HTTPS" and "TLS13" in listener["ssl_policy"]
    forward = _one(_one(listener["default_action"])["forward"])
    arns = [tg["arn"] for tg in forward["target_group"]]
    assert arns == ['${aws_lb_target_group.slot["blue"].arn}', '${aws_lb_target_group.slot["green"].arn}']
    # The deployer moves the weights; a later apply must not move them back.
    assert "default_action" in str(_one(listener["lifecycle"])["ignore_changes"])
    rules = compute.resource("aws_lb_listener_rule", "slot")
    assert set(rules["for_each"]) == {"blue", "green"}
    assert _one(rules["action"])["target_group_arn"] == "${aws_lb_target_group.slot[each.key].arn}"
    assert _one(_one(rules["condition"])["host_header"])["values"] == ["${each.key}.${var.serving_domain}"]
    # What the deployer is handed is this listener and these two groups.
    assert compute.outputs["listener_arn"]["value"] == "${aws_lb_listener.https.arn}"
    assert compute.outputs["blue_target_group_arn"]["value"] == '${aws_lb_target_group.slot["blue"].arn}'
    assert compute.outputs["green_target_group_arn"]["value"] == '${aws_lb_target_group.slot["green"].arn}'
    deployer = _ecs_deployer_block()
    assert deployer["listener_arn"] == "${module.compute.listener_arn}"
    assert deployer["blue_target_group_arn"] == "${module.compute.blue_target_group_arn}"
    assert deployer["green_target_group_arn"] == "${module.compute.green_target_group_arn}"
    assert deployer["container_port"] == "${module.compute.serving_port}"
    assert compute.outputs["serving_port"]["value"] == "${var.serving_port}"
    assert groups["port"] == "${var.serving_port}"
    # Autoscaling scales the services the deployer names <service_prefix>-<slot>.
    scaling = compute.resource("aws_appautoscaling_target", "slot")
    assert compute.outputs["service_prefix"]["value"] == "${var.name}-serving"
    assert scaling["resource_id"].endswith("/${var.name}-serving-${each.key}")
    assert _one(compute.resource("aws_ecs_cluster", "this")["setting"]) == {
        "name": "containerInsights",
        "value": "enabled",
    }


def _bucket_calls() -> dict[str, dict]:
    storage = module("modules/storage")
    return {name: call for name, call in storage.modules.items() if call["source"] == "./bucket"}


def test_every_bucket_is_encrypted_versioned_logged_private_and_has_a_lifecycle():
    storage = module("modules/storage")
    calls = _bucket_calls()
    assert set(calls) == {"archive", "artifacts", "backups"}
    for name, call in calls.items():
        assert call["kms_key_arn"] == "${var.kms_key_arn}", name
        assert call["logs_bucket"] == "${aws_s3_bucket.logs.id}", name
    bucket = module("modules/storage/bucket")
    assert "for_each" not in bucket.resource("aws_s3_bucket", "this")
    sse = _one(
        _one(bucket.resource("aws_s3_bucket_server_side_encryption_configuration", "this")["rule"])[
            "apply_server_side_encryption_by_default"
        ]
    )
    assert sse == {"sse_algorithm": "aws:kms", "kms_master_key_id": "${var.kms_key_arn}"}
    assert _one(bucket.resource("aws_s3_bucket_versioning", "this")["versioning_configuration"])["status"] == "Enabled"
    assert bucket.resource("aws_s3_bucket_logging", "this")["target_bucket"] == "${var.logs_bucket}"
    assert _one(bucket.resource("aws_s3_bucket_lifecycle_configuration", "this")["rule"])["status"] == "Enabled"
    # The logs bucket: SSE-S3 (ALB access logs accept nothing else), versioned, expiring.
    logs_sse = _one(
        _one(storage.resource("aws_s3_bucket_server_side_encryption_configuration", "logs")["rule"])[
            "apply_server_side_encryption_by_default"
        ]
    )
    assert logs_sse["sse_algorithm"] == "AES256"
    assert _one(storage.resource("aws_s3_bucket_versioning", "logs")["versioning_configuration"])["status"] == "Enabled"
    storage.resource("aws_s3_bucket_lifecycle_configuration", "logs")


def test_no_public_bucket_or_database():
    blocks = [
        module("modules/storage").resource("aws_s3_bucket_public_access_block", "logs"),
        module("modules/storage/bucket").resource("aws_s3_bucket_public_access_block", "this"),
    ]
    for block in blocks:
        for flag in ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets"):
            assert block[flag] is True
    for folder in _module_folders():
        found = module(folder)
        # No ACL or bucket policy that could open a bucket, anywhere.
        assert not found.of_type("aws_s3_bucket_acl") and not found.of_type("aws_s3_bucket_policy"), folder
        for name, db in found.of_type("aws_db_instance").items():
            assert db["publicly_accessible"] is False, name
        for name, service in found.of_type("aws_ecs_service").items():
            assert _one(service["network_configuration"])["assign_public_ip"] is False, (folder, name)
    assert _ecs_deployer_block()["assign_public_ip"] is False
    # The database and Redis are reachable only from the ECS tasks' security group.
    net = module("modules/networking")
    for name in ("rds", "redis", "efs"):
        group = net.resource("aws_security_group", name)
        for rule in group.get("ingress", []):
            assert "cidr_blocks" not in rule and rule["security_groups"] == ["${aws_security_group.ecs.id}"], name


def test_encryption_at_rest_and_in_transit_everywhere():
    storage = module("modules/storage")
    db = storage.resource("aws_db_instance", "this")
    assert db["storage_encrypted"] is True and db["kms_key_id"] == "${var.kms_key_arn}"
    params = {p["name"]: p["value"] for p in storage.resource("aws_db_parameter_group", "this")["parameter"]}
    assert params["rds.force_ssl"] == "1"
    redis = storage.resource("aws_elasticache_replication_group", "this")
    assert redis["at_rest_encryption_enabled"] is True and redis["transit_encryption_enabled"] is True
    assert redis["kms_key_id"] == "${var.kms_key_arn}" and redis["auth_token"]
    efs = storage.resource("aws_efs_file_system", "warehouse")
    assert efs["encrypted"] is True and efs["kms_key_id"] == "${var.kms_key_arn}"
    dagster = module("modules/dagster")
    volume = _one(dagster.resource("aws_ecs_task_definition", "this")["volume"])
    assert _one(volume["efs_volume_configuration"])["transit_encryption"] == "ENABLED"
    for folder in _module_folders():
        found = module(folder)
        for kind in ("aws_cloudwatch_log_group", "aws_secretsmanager_secret", "aws_sns_topic"):
            for name, body in found.of_type(kind).items():
                assert body.get("kms_key_id") or body.get("kms_master_key_id"), (folder, kind, name)
    assert module().resource("aws_kms_key", "this")["enable_key_rotation"] is True


def _production_flag(environment: str) -> bool:
    """storage's ``local.production`` for an environment, from its condition's literal."""
    condition = module("modules/storage").locals["production"]
    literal = re.fullmatch(r'\$\{var\.environment == "(\w+)"\}', condition)
    assert literal, condition
    return environment == literal.group(1)


def test_multi_az_database_and_deletion_protection_in_production_only():
    storage = module("modules/storage")
    db = storage.resource("aws_db_instance", "this")
    assert db["multi_az"] == "${local.production}" and db["deletion_protection"] == "${local.production}"
    assert db["backup_retention_period"] == "${var.db_backup_retention_days}"
    assert storage.resource("aws_elasticache_replication_group", "this")["multi_az_enabled"] == "${local.production}"
    assert module().modules["storage"]["environment"] == "${var.environment}"
    flags = {env: _production_flag(_tfvars(env)["environment"]) for env in ENVIRONMENTS}
    assert flags == {"dev": False, "staging": False, "production": True}
    for env in ENVIRONMENTS:
        assert _tfvars(env)["environment"] == env
        assert _tfvars(env)["db_backup_retention_days"] >= 1


def test_environments_set_every_required_variable_and_nothing_else():
    root = module()
    required = {name for name, v in root.variables.items() if "default" not in v}
    for env in ENVIRONMENTS:
        values = _tfvars(env)
        assert set(values) - set(root.variables) == set(), env
        assert required - set(values) == set(), env
    sizes = {env: _tfvars(env)["db_instance_class"] for env in ENVIRONMENTS}
    assert len(set(sizes.values())) > 1, "the environments are sized differently"


# --------------------------------------------------------------------------------- variables


def test_every_variable_has_a_type_and_a_description():
    for folder in _module_folders():
        for name, variable in module(folder).variables.items():
            where = f"{folder.relative_to(TF)}: variable {name}"
            assert variable.get("type"), f"{where} has no type"
            assert str(variable.get("description", "")).strip(), f"{where} has no description"


def test_variables_validate_cidrs_environment_names_and_instance_classes():
    root, net, storage = module(), module("modules/networking"), module("modules/storage")
    for owner, name in (
        (root, "vpc_cidr"),
        (net, "vpc_cidr"),
        (root, "alb_ingress_cidrs"),
        (net, "alb_ingress_cidrs"),
        (root, "environment"),
        (storage, "environment"),
        (root, "db_instance_class"),
        (storage, "db_instance_class"),
        (root, "redis_node_type"),
        (storage, "redis_node_type"),
    ):
        validations = owner.variables[name].get("validation", [])
        assert validations and all(v["condition"] and v["error_message"] for v in validations), (owner.folder, name)
    for owner in (root, net):
        assert "cidrhost(" in owner.variables["vpc_cidr"]["validation"][0]["condition"]
    assert (
        'contains(["dev", "staging", "production"], var.environment)'
        in root.variables["environment"]["validation"][0]["condition"]
    )
    # The instance-class patterns accept every environment's sizes and refuse a class of the wrong service.
    for owner in (root, storage):
        db = _validation_regexes(owner.variables["db_instance_class"])
        redis = _validation_regexes(owner.variables["redis_node_type"])
        assert db and redis
        for env in ENVIRONMENTS:
            values = _tfvars(env)
            assert all(p.match(values["db_instance_class"]) for p in db), (owner.folder, env)
            assert all(p.match(values["redis_node_type"]) for p in redis), (owner.folder, env)
        for wrong in ("cache.t4g.small", "t4g.medium", "db.t4g"):
            assert not all(p.match(wrong) for p in db), wrong
        assert not all(p.match("db.t4g.small") for p in redis)


def test_every_module_call_passes_its_required_variables_and_no_others():
    callers = [module(), module("modules/storage")]
    for caller in callers:
        for call_name, call in caller.modules.items():
            callee = module(caller.folder / call["source"])
            arguments = set(call) - {"source"}
            assert arguments - set(callee.variables) == set(), f"{call_name}: unknown arguments"
            required = {n for n, v in callee.variables.items() if "default" not in v}
            assert required - arguments == set(), f"{call_name}: missing arguments"


def test_every_module_output_is_used_or_exported_by_its_caller():
    callers = [module(), module("modules/storage")]
    called = set()
    for caller in callers:
        for call_name, call in caller.modules.items():
            folder = (caller.folder / call["source"]).resolve()
            called.add(folder)
            for output in module(folder).outputs:
                assert re.search(rf"\bmodule\.{call_name}\.{output}\b", caller.text), (
                    f"module.{call_name}.{output} ({folder.relative_to(TF)}) is neither used nor exported"
                )
    assert called == {f.resolve() for f in _module_folders()} - {TF.resolve()}, "every module is called"
    for name, output in module().outputs.items():
        assert output.get("description"), f"root output {name} has no description"


# ------------------------------------------------------------------- the production settings


def _ecs_output() -> dict:
    # The document is a root local: the output and the Dagster tasks' AUTOTRADER_ECS_CONFIG both use it.
    assert module().outputs["ecs_config"]["value"] == "${local.ecs_config}"
    return module().locals["ecs_config"]


def _ecs_deployer_block() -> dict:
    return _ecs_output()["deployer"]


def test_ecs_config_output_is_ecs_deployer_config_name_for_name():
    dataclass_fields = tuple(f.name for f in fields(EcsDeployerConfig))
    assert set(_ecs_output()) == set(ECS_CONFIG_SECTIONS)
    assert set(_ecs_deployer_block()) == set(dataclass_fields)
    assert ecs_deployer_keys() == dataclass_fields
    assert module("modules/compute").outputs["slot_endpoints"]["value"].startswith('${{for slot in ["blue", "green"]')


def _fake_value(key: str, expression):
    """A value of the right shape for an interpolated field (what terraform output would hold)."""
    if not (isinstance(expression, str) and "${" in expression) and not isinstance(expression, list):
        return expression
    if key in ("subnets", "security_groups"):
        return [f"{key}-1"]
    if key in ("cpu", "memory", "container_port"):
        return 1024 if key != "container_port" else 8080
    if key == "serving_token_secret_arn":
        return "arn:aws:secretsmanager:us-east-1:123456789012:secret:autotrader-production/serving-token"
    if key.endswith("_arn"):
        return f"arn:aws:elasticloadbalancing:us-east-1:123456789012:{key}"
    return f"autotrader-production-{key}".replace("_", "-")


def test_the_terraform_document_is_what_settings_parse(tmp_path):
    deployer = {key: _fake_value(key, value) for key, value in _ecs_deployer_block().items()}
    document = {
        "deployer": deployer,
        "endpoints": {"blue": "https://blue.example.com", "green": "https://green.example.com"},
    }
    path = tmp_path / "ecs_config.json"
    path.write_text(json.dumps(document))
    parsed = parse_ecs_config(f"@{path}")
    config = parsed.deployer_config()
    assert config.service_name("green") == "autotrader-production-service-prefix-green"
    # The literal values Terraform writes are the deployer's own defaults (nothing silently differs).
    for f in fields(EcsDeployerConfig):
        literal = _ecs_deployer_block()[f.name]
        if f.default is not MISSING and not (isinstance(literal, str) and "${" in literal):
            assert literal == f.default, f.name
        if f.default_factory is not MISSING:
            assert literal == f.default_factory(), f.name


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["deployer"].update(cluster_name="x"), "unknown ['cluster_name']"),
        (lambda d: d["deployer"].pop("listener_arn"), "missing ['listener_arn']"),
        (lambda d: d["endpoints"].pop("green"), "'endpoints' must map exactly ['blue', 'green']"),
        (lambda d: d.update(extra={}), "unknown sections ['extra']"),
        (lambda d: d["deployer"].update(cpu="lots"), "cpu must be an integer"),
    ],
)
def test_settings_refuse_a_document_that_is_not_the_terraform_output(change, message):
    deployer = {key: _fake_value(key, value) for key, value in _ecs_deployer_block().items()}
    document = {"deployer": deployer, "endpoints": {"blue": "https://b.example.com", "green": "https://g.example.com"}}
    change(document)
    with pytest.raises(SettingsError) as info:
        parse_ecs_config(json.dumps(document)).deployer_config()
    assert message in str(info.value)


def test_settings_read_the_ecs_document_from_the_environment(monkeypatch, tmp_path):
    deployer = {key: _fake_value(key, value) for key, value in _ecs_deployer_block().items()}
    document = {"deployer": deployer, "endpoints": {"blue": "https://b.example.com", "green": "https://g.example.com"}}
    monkeypatch.setenv("AUTOTRADER_HOME", str(tmp_path))
    monkeypatch.setenv(settings_module.ECS_CONFIG_ENV, json.dumps(document))
    assert settings_module.ECS_CONFIG_ENV == "AUTOTRADER_ECS_CONFIG"
    assert settings_module.load_settings().ecs().endpoints["green"] == "https://g.example.com"


def _dagster_yaml_env_vars() -> set[str]:
    names: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            if set(node) == {"env"}:
                names.add(node["env"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(yaml.safe_load((INFRA / "dagster" / "dagster.yaml").read_text()))
    return names


def test_dagster_launcher_variables_are_root_outputs_and_set_in_the_dagster_tasks():
    names = _dagster_yaml_env_vars()
    assert {"DAGSTER_RUN_TASK_DEFINITION", "DAGSTER_RUN_CONTAINER_NAME", "DAGSTER_ECS_CLUSTER"} <= names
    root, dagster = module(), module("modules/dagster")
    call = root.modules["dagster"]
    # Every variable dagster.yaml reads is in the Dagster tasks' environment or secrets.
    set_in_tasks = (
        set(call["environment_variables"]) | set(call["secret_arns"]) | set(dagster.locals["launcher_environment"])
    )
    assert names - set_in_tasks == set()
    launcher = dagster.locals["launcher_environment"]
    for variable, output, module_output in (
        ("DAGSTER_RUN_TASK_DEFINITION", "dagster_run_task_definition", "run_task_definition"),
        ("DAGSTER_RUN_CONTAINER_NAME", "dagster_run_container_name", "run_container_name"),
        ("DAGSTER_ECS_CLUSTER", "dagster_ecs_cluster", "ecs_cluster"),
    ):
        assert root.outputs[output]["value"] == f"${{module.dagster.{module_output}}}", output
        assert variable in root.outputs[output]["description"]
        assert variable in launcher
    # The outputs are the very values the daemon gets: the run family, its container, the cluster.
    assert dagster.outputs["run_task_definition"]["value"] == '${aws_ecs_task_definition.this["run"].family}'
    assert launcher["DAGSTER_RUN_TASK_DEFINITION"] == "${local.run_task_family}"
    assert dagster.locals["run_task_family"] == "${var.name}-dagster-run"
    assert dagster.resource("aws_ecs_task_definition", "this")["family"] == "${var.name}-dagster-${each.key}"
    assert dagster.outputs["run_container_name"]["value"] == "${local.launcher_environment.DAGSTER_RUN_CONTAINER_NAME}"
    assert dagster.outputs["ecs_cluster"]["value"] == "${local.launcher_environment.DAGSTER_ECS_CLUSTER}"
    assert launcher["DAGSTER_RUN_CONTAINER_NAME"] == "run"
    assert "name                   = each.key" in dagster.text  # the run container is named "run"
    assert root.outputs["compute_log_bucket"]["value"] == "${module.storage.logs_bucket}"
    assert "DAGSTER_COMPUTE_LOG_BUCKET" in root.outputs["compute_log_bucket"]["description"]
    # infra/README.md names each of these variables.
    readme = (INFRA / "README.md").read_text()
    for variable in ("DAGSTER_RUN_TASK_DEFINITION", "DAGSTER_RUN_CONTAINER_NAME", "DAGSTER_ECS_CLUSTER"):
        assert f"`{variable}`" in readme


# -------------------------------------------------- what the production profile needs in Dagster


_SETTING_NAME = re.compile(r"\b(?:AUTOTRADER|DAGSTER)_[A-Z0-9_]+\b")


def _production_refusal(monkeypatch, **env: str) -> str:
    """The SettingsError load_settings raises in production with only ``env`` set."""
    import os

    for name in list(os.environ):
        if name.startswith(("AUTOTRADER_", "DAGSTER_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AUTOTRADER_ENV", "production")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        settings_module.load_settings()
    return str(info.value)


def _production_required_names(monkeypatch, tmp_path) -> set[str]:
    """Every variable the production profile refuses to start without, as settings name them.

    First with nothing set (the stores, the serving token, DAGSTER_HOME), then with DAGSTER_HOME
    holding the shipped dagster.yaml (every variable the instance file reads).
    """
    names = set(_SETTING_NAME.findall(_production_refusal(monkeypatch, AUTOTRADER_HOME=str(tmp_path / "home"))))
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((INFRA / "dagster" / "dagster.yaml").read_text())
    names |= set(
        _SETTING_NAME.findall(
            _production_refusal(monkeypatch, AUTOTRADER_HOME=str(tmp_path / "home"), DAGSTER_HOME=str(home))
        )
    )
    return names | {"AUTOTRADER_ENV"}


def _dagster_task_names() -> tuple[set[str], set[str]]:
    """(environment, secrets) names every Dagster task definition (webserver, daemon, code, run) gets."""
    root, dagster = module(), module("modules/dagster")
    call = root.modules["dagster"]
    # Each task definition, the run's included, has the one container with the module's lists.
    task = dagster.resource("aws_ecs_task_definition", "this")
    assert (
        task["for_each"]
        == "${merge(local.services, {run = {command = null, cpu = var.run_cpu, memory = var.run_memory}})}"
    )
    assert set(dagster.locals["services"]) == {"webserver", "daemon", "code"}
    assert "environment            = local.environment" in dagster.text
    assert "secrets                = local.secrets" in dagster.text
    assert dagster.locals["environment"].startswith(
        "${[for k, v in merge(var.environment_variables, local.launcher_environment, local.task_environment)"
    )
    assert dagster.locals["secrets"].startswith("${[for k, v in var.secret_arns")
    environment = (
        set(call["environment_variables"])
        | set(dagster.locals["launcher_environment"])
        | set(dagster.locals["task_environment"])
    )
    return environment, set(call["secret_arns"])


def test_every_variable_the_production_profile_requires_is_set_in_the_dagster_tasks(monkeypatch, tmp_path):
    required = _production_required_names(monkeypatch, tmp_path)
    # The refusal names what the issue lists (a regex that found nothing would pass vacuously).
    assert {
        "AUTOTRADER_REGISTRY_URL",
        "AUTOTRADER_ARCHIVE_URI",
        "AUTOTRADER_ARTIFACTS_URI",
        "AUTOTRADER_WAREHOUSE_SHARED_DIR",
        "AUTOTRADER_SERVING_TOKEN",
        "DAGSTER_HOME",
        "DAGSTER_PG_PASSWORD",
        "DAGSTER_RUN_TASK_DEFINITION",
    } <= required
    environment, secrets = _dagster_task_names()
    assert required - (environment | secrets) == set()
    assert environment & secrets == set(), "a name both plain and secret"
    # Deployment jobs change the serving slots: the deployer's document is there too.
    assert "AUTOTRADER_ECS_CONFIG" in environment
    assert module().modules["dagster"]["environment_variables"]["AUTOTRADER_ENV"] == "production"
    # The secrets are secrets, never plain values: the URL carries the password.
    assert {"AUTOTRADER_REGISTRY_URL", "DAGSTER_PG_PASSWORD", "AUTOTRADER_SERVING_TOKEN"} <= secrets


def test_production_settings_refuse_the_tasks_without_the_registry_url(monkeypatch, tmp_path):
    # What the containers looked like before the registry URL was given to them: refused, by name.
    message = _production_refusal(
        monkeypatch,
        AUTOTRADER_HOME=str(tmp_path),
        AUTOTRADER_ARCHIVE_URI="s3://a/archive",
        AUTOTRADER_ARTIFACTS_URI="s3://a/artifacts",
    )
    assert "AUTOTRADER_REGISTRY_URL is not set" in message


def test_the_dagster_tasks_get_the_ecs_config_document_of_the_root_output():
    root, dagster = module(), module("modules/dagster")
    assert root.modules["dagster"]["ecs_config"] == "${jsonencode(local.ecs_config)}"
    assert dagster.locals["task_environment"]["AUTOTRADER_ECS_CONFIG"] == "${var.ecs_config}"
    # No cycle: the document reads only dagster outputs that depend on the roles and the log group,
    # never on the task definitions that take the document.
    used = set(re.findall(r"module\.dagster\.(\w+)", json.dumps(_ecs_output())))
    assert used == {"execution_role_arn", "task_role_arn", "log_group"}
    for output in used:
        value = dagster.outputs[output]["value"]
        assert re.fullmatch(r"\$\{aws_(iam_role\.(task|execution)\.arn|cloudwatch_log_group\.this\.name)\}", value), (
            value
        )


def test_the_registry_url_is_a_kms_encrypted_postgresql_secret_only_the_execution_role_reads():
    root, storage, dagster = module(), module("modules/storage"), module("modules/dagster")
    secrets = root.modules["dagster"]["secret_arns"]
    assert secrets["AUTOTRADER_REGISTRY_URL"] == "${module.storage.registry_url_secret_arn}"
    assert secrets["DAGSTER_PG_PASSWORD"] == "${module.storage.db_secret_arn}"
    assert (
        storage.outputs["registry_url_secret_arn"]["value"] == "${aws_secretsmanager_secret_version.registry_url.arn}"
    )
    assert storage.outputs["db_secret_arn"]["value"] == "${aws_secretsmanager_secret_version.db_password.arn}"
    for name in ("registry_url", "db_password"):
        assert storage.resource("aws_secretsmanager_secret", name)["kms_key_id"] == "${var.kms_key_arn}"
    # The URL is composed from the instance and the very password the instance was created with.
    db = storage.resource("aws_db_instance", "this")
    assert db["password"] == "${random_password.db_master.result}" and "manage_master_user_password" not in db
    assert storage.resource("random_password", "db_master")["special"] is False  # no URL escaping needed
    url = storage.resource("aws_secretsmanager_secret_version", "registry_url")["secret_string"]
    assert url == (
        "postgresql+psycopg2://${aws_db_instance.this.username}:${random_password.db_master.result}"
        "@${aws_db_instance.this.address}:${aws_db_instance.this.port}/${aws_db_instance.this.db_name}"
    )
    assert url.split(":", 1)[0].split("+", 1)[0] in SHARED_DATABASE_SCHEMES
    assert (
        storage.resource("aws_secretsmanager_secret_version", "db_password")["secret_string"]
        == "${random_password.db_master.result}"
    )
    # The execution role reads exactly the containers' secrets; the task role reads none.
    policy = dagster.resource("aws_iam_role_policy", "execution_secrets")["policy"]
    assert (
        '{Effect = "Allow", Action = ["secretsmanager:GetSecretValue"], Resource = values(var.secret_arns)}' in policy
    )
    assert "secretsmanager" not in dagster.resource("aws_iam_role_policy", "task")["policy"]
    # Whole secret ARNs only (a ":password::" suffix would not match the policy's resource).
    patterns = _validation_regexes(dagster.variables["secret_arns"])
    assert patterns
    good = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:autotrader-production/registry-url-AbCdEf"
    assert all(p.match(good) for p in patterns)
    assert not all(p.match(f"{good}:password::") for p in patterns)


# ------------------------------------------------------------------- the documented commands


def _terraform_commands() -> list[tuple[str, list[str]]]:
    docs = sorted((ROOT / "docs" / "runbooks").glob("*.md")) + [TF / "README.md"]
    commands = []
    for doc in docs:
        for block in _FENCE.findall(doc.read_text()):
            for line in block.replace("\\\n", " ").splitlines():
                if "terraform" not in line:
                    continue
                for part in re.split(r"\s*(?:&&|;)\s*", line.split(" #")[0]):
                    words = shlex.split(part.split(">")[0]) if part.strip() else []
                    if words[:1] == ["terraform"] or words[:2] == ["cd", "infra/terraform"]:
                        commands.append((doc.name, words))
    return commands


def test_the_runbooks_terraform_lines_name_files_and_outputs_that_exist():
    commands = _terraform_commands()
    docs = {doc for doc, _ in commands}
    assert {"disaster-recovery.md", "system-outage.md", "README.md"} <= docs
    known = {"init", "plan", "apply", "output", "destroy", "fmt", "validate"}
    for doc, words in commands:
        if words[0] == "cd":
            assert (ROOT / words[1]).is_dir()
            continue
        assert words[1] in known, (doc, words)
        for word in words[2:]:
            if word.startswith("-var-file="):
                assert (TF / word.split("=", 1)[1]).is_file(), (doc, word)
        if words[1] == "output":
            names = [w for w in words[2:] if not w.startswith("-")]
            assert names and all(n in module().outputs for n in names), (doc, words)


def test_checkov_skips_are_justified_inline():
    skips = []
    for path in sorted(INFRA.rglob("*")):
        if path.is_file() and path.suffix in {".tf", ".Dockerfile"} or path.name.endswith("Dockerfile"):
            skips += re.findall(r"#\s*checkov:skip=([A-Z0-9_]+)(?::(.*))?", path.read_text())
    assert skips
    for check, reason in skips:
        assert reason and len(reason.strip()) > 20, f"checkov skip {check} has no justification"


@pytest.mark.slow
def test_checkov_finds_no_failed_check_over_infra():
    if not CHECKOV.is_file():
        pytest.skip("checkov is not built: `make checkov-tool` (make test builds it) puts it in .tools/checkov")
    result = subprocess.run(
        [str(CHECKOV), "--directory", str(INFRA), "--output", "json", "--skip-download", "--compact"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
    )
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    by_type = {r["check_type"]: r for r in reports}
    assert {"terraform", "dockerfile"} <= set(by_type), result.stderr[-2000:]
    failed = [
        (r["check_type"], c["check_id"], c["resource"], c["file_path"])
        for r in reports
        for c in r["results"].get("failed_checks", [])
    ]
    assert failed == []
    for report in reports:
        assert report["summary"]["parsing_errors"] == 0, report["check_type"]
        for skipped in report["results"].get("skipped_checks", []):
            assert (skipped.get("check_result") or {}).get("suppress_comment"), skipped["check_id"]
    # The three data buckets are each checked (not only a for_each's first instance).
    passed = {(c["check_id"], c["resource"]) for c in by_type["terraform"]["results"]["passed_checks"]}
    for bucket in ("archive", "artifacts", "backups"):
        for check in ("CKV_AWS_18", "CKV_AWS_21", "CKV_AWS_145", "CKV2_AWS_6", "CKV2_AWS_61"):
            assert any(cid == check and f"module.{bucket}" in res for cid, res in passed), (bucket, check)
