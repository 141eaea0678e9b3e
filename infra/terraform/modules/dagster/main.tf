# Dagster on ECS: the webserver, the daemon (schedules, sensors, the run queue and the
# EcsRunLauncher) and the code location's gRPC server as services, plus the task definition
# every run is launched from (DAGSTER_RUN_TASK_DEFINITION in infra/dagster/dagster.yaml). Secrets
# come from Secrets Manager through the execution role; the task role lets the daemon launch runs.

data "aws_region" "current" {}

locals {
  services = {
    webserver = { command = ["dagster-webserver", "-h", "0.0.0.0", "-p", "3000", "-w", "workspace.yaml"], cpu = 512, memory = 1024 }
    daemon    = { command = ["dagster-daemon", "run"], cpu = 512, memory = 1024 }
    code      = { command = ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "autotrader_assets.definitions"], cpu = 1024, memory = 2048 }
  }
  # The run task definition by family (its newest revision), not by ARN: the ARN would make every
  # task definition of this for_each depend on one of its own instances (a cycle).
  run_task_family = "${var.name}-dagster-run"
  # What infra/dagster/dagster.yaml's run launcher and compute logs read; the root module exports
  # the same values (dagster_run_task_definition, dagster_run_container_name, dagster_ecs_cluster).
  launcher_environment = {
    DAGSTER_RUN_TASK_DEFINITION = local.run_task_family
    DAGSTER_RUN_CONTAINER_NAME  = "run"
    DAGSTER_ECS_CLUSTER         = var.cluster_arn
    DAGSTER_COMPUTE_LOG_BUCKET  = var.logs_bucket
  }
  # What this module itself fixes: the EFS mount below, and the serving deployer's document (the
  # root output ecs_config), so deployment jobs in any run or the daemon can change serving slots.
  task_environment = {
    AUTOTRADER_WAREHOUSE_SHARED_DIR = "/mnt/warehouse"
    AUTOTRADER_ECS_CONFIG           = var.ecs_config
  }
  environment = [for k, v in merge(var.environment_variables, local.launcher_environment, local.task_environment) : { name = k, value = v }]
  secrets = [for k, v in var.secret_arns : { name = k, valueFrom = v }]
  volume  = { name = "warehouse", efs = { fs = var.efs_file_system_id, ap = var.efs_access_point_id } }
}

resource "aws_cloudwatch_log_group" "this" {
  name              = "/autotrader/${var.name}/dagster"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
}

resource "aws_iam_role" "execution" {
  name = "${var.name}-dagster-execution"
  assume_role_policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [{ Effect = "Allow", Principal = { Service = "ecs-tasks.amazonaws.com" }, Action = "sts:AssumeRole" }]
  })
}

resource "aws_iam_role_policy_attachment" "execution" {
  role       = aws_iam_role.execution.name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

# Exactly the secrets of the containers' `secrets` (the registry URL, the database password, the
# serving token, the Redis AUTH token): ECS resolves them with this role at task start, so the task
# role itself reads none.
resource "aws_iam_role_policy" "execution_secrets" {
  name = "read-secrets"
  role = aws_iam_role.execution.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      { Effect = "Allow", Action = ["secretsmanager:GetSecretValue"], Resource = values(var.secret_arns) },
      { Effect = "Allow", Action = ["kms:Decrypt"], Resource = [var.kms_key_arn] },
    ]
  })
}

resource "aws_iam_role" "task" {
  name = "${var.name}-dagster-task"
  assume_role_policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [{ Effect = "Allow", Principal = { Service = "ecs-tasks.amazonaws.com" }, Action = "sts:AssumeRole" }]
  })
}

# What runs and the daemon do: read/write the platform's buckets, launch and watch run tasks
# (EcsRunLauncher), pass the two roles to them, and drive the serving slots (the deployer).
resource "aws_iam_role_policy" "task" {
  name = "dagster"
  role = aws_iam_role.task.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Effect   = "Allow"
        Action   = ["s3:GetObject", "s3:PutObject", "s3:ListBucket", "s3:GetObjectVersion", "s3:ListBucketVersions"]
        Resource = concat(var.bucket_arns, [for b in var.bucket_arns : "${b}/*"], [var.logs_bucket_arn, "${var.logs_bucket_arn}/compute-logs/*"])
      },
      { Effect = "Allow", Action = ["kms:Decrypt", "kms:GenerateDataKey"], Resource = [var.kms_key_arn] },
      {
        Effect   = "Allow"
        Action   = ["ecs:RunTask", "ecs:StopTask", "ecs:DescribeTasks", "ecs:DescribeTaskDefinition", "ecs:RegisterTaskDefinition", "ecs:CreateService", "ecs:UpdateService", "ecs:DescribeServices", "ecs:ListTasks", "ecs:TagResource"]
        Resource = "*"
        Condition = { ArnEquals = { "ecs:cluster" = var.cluster_arn } }
      },
      {
        Effect   = "Allow"
        Action   = ["elasticloadbalancing:ModifyListener", "elasticloadbalancing:DescribeListeners", "elasticloadbalancing:DescribeTargetHealth", "elasticloadbalancing:DescribeRules"]
        Resource = "*"
      },
      { Effect = "Allow", Action = ["iam:PassRole"], Resource = [aws_iam_role.task.arn, aws_iam_role.execution.arn] },
    ]
  })
}

resource "aws_ecs_task_definition" "this" {
  for_each                 = merge(local.services, { run = { command = null, cpu = var.run_cpu, memory = var.run_memory } })
  family                   = "${var.name}-dagster-${each.key}"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = each.value.cpu
  memory                   = each.value.memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn
  volume {
    name = local.volume.name
    efs_volume_configuration {
      file_system_id     = local.volume.efs.fs
      transit_encryption = "ENABLED"
      authorization_config {
        access_point_id = local.volume.efs.ap
        iam             = "ENABLED"
      }
    }
  }
  container_definitions = jsonencode([{
    name                   = each.key
    image                  = var.image
    essential              = true
    command                = each.value.command
    readonlyRootFilesystem = false # dbt writes target/ and Dagster its scratch files under the home
    environment            = local.environment
    secrets                = local.secrets
    mountPoints            = [{ sourceVolume = local.volume.name, containerPath = "/mnt/warehouse" }]
    logConfiguration = {
      logDriver = "awslogs"
      options   = { awslogs-group = aws_cloudwatch_log_group.this.name, awslogs-region = data.aws_region.current.name, awslogs-stream-prefix = each.key }
    }
  }])
}

resource "aws_ecs_service" "this" {
  for_each        = local.services
  name            = "${var.name}-dagster-${each.key}"
  cluster         = var.cluster_arn
  task_definition = aws_ecs_task_definition.this[each.key].arn
  # One daemon only: Dagster requires a single daemon per instance.
  desired_count = 1
  launch_type   = "FARGATE"
  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [var.ecs_security_group_id]
    assign_public_ip = false
  }
}
