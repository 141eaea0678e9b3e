# The production settings, from what was built. ecs_config is AUTOTRADER_ECS_CONFIG's document:
# its "deployer" keys are all of EcsDeployerConfig's fields, name for name, and its sections those
# settings.parse_ecs_config reads (tests/unit/test_terraform.py holds the three equal). Every field
# is written out, defaults included, so what serves in production is read here, not inferred.

# A local, so main.tf hands the very same document to the Dagster tasks (AUTOTRADER_ECS_CONFIG).
# It reads module.dagster's roles and log group while module.dagster reads it back: no cycle,
# because Terraform resolves a module's outputs one by one and those three depend only on the IAM
# roles and the log group, never on the task definitions that take the document
# (tests/unit/test_terraform.py holds that).
locals {
  ecs_config = {
    deployer = {
      cluster                           = module.compute.cluster_name
      service_prefix                    = module.compute.service_prefix
      task_family                       = "${local.name}-serving"
      container_name                    = "serving"
      image                             = "${module.compute.repository_urls["serving"]}:${var.image_tag}"
      cpu                               = var.serving_cpu
      memory                            = var.serving_memory
      subnets                           = module.networking.private_subnet_ids
      security_groups                   = [module.networking.ecs_security_group_id]
      listener_arn                      = module.compute.listener_arn
      blue_target_group_arn             = module.compute.blue_target_group_arn
      green_target_group_arn            = module.compute.green_target_group_arn
      region                            = var.aws_region
      execution_role_arn                = module.dagster.execution_role_arn
      serving_token_secret_arn          = var.serving_token_secret_arn
      task_role_arn                     = module.dagster.task_role_arn
      log_group                         = module.dagster.log_group
      assign_public_ip                  = false
      # The target groups' port: the ALB must reach the container where it listens.
      container_port                    = module.compute.serving_port
      health_check_grace_period_seconds = 60
      extra_environment                 = {}
      extra_secrets                     = {}
      model_uri_env_var                 = "AUTOTRADER_MODEL_URI"
      model_sha256_env_var              = "AUTOTRADER_MODEL_SHA256"
      model_version_env_var             = "AUTOTRADER_MODEL_VERSION"
      slot_env_var                      = "AUTOTRADER_SLOT"
      serving_token_env_var             = "AUTOTRADER_SERVING_TOKEN"
      stable_timeout_seconds            = 900
      poll_interval_seconds             = 15
      wait_for_healthy_targets          = true
    }
    endpoints = module.compute.slot_endpoints
  }
}

output "ecs_config" {
  description = "AUTOTRADER_ECS_CONFIG: {deployer: EcsDeployerConfig fields, endpoints: slot URLs}."
  # The same document the Dagster tasks get as AUTOTRADER_ECS_CONFIG (main.tf).
  value = local.ecs_config
}

output "dagster_run_task_definition" {
  description = "DAGSTER_RUN_TASK_DEFINITION of infra/dagster/dagster.yaml."
  value       = module.dagster.run_task_definition
}

output "dagster_run_container_name" {
  description = "DAGSTER_RUN_CONTAINER_NAME of infra/dagster/dagster.yaml."
  value       = module.dagster.run_container_name
}

output "dagster_ecs_cluster" {
  description = "DAGSTER_ECS_CLUSTER of infra/dagster/dagster.yaml."
  value       = module.dagster.ecs_cluster
}

output "archive_uri" {
  description = "AUTOTRADER_ARCHIVE_URI."
  value       = "s3://${module.storage.archive_bucket}/archive"
}

output "artifacts_uri" {
  description = "AUTOTRADER_ARTIFACTS_URI."
  value       = "s3://${module.storage.artifacts_bucket}/artifacts"
}

output "backup_uri" {
  description = "AUTOTRADER_BACKUP_URI."
  value       = "s3://${module.storage.backups_bucket}/${var.environment}"
}

output "compute_log_bucket" {
  description = "DAGSTER_COMPUTE_LOG_BUCKET."
  value       = module.storage.logs_bucket
}

output "db_address" {
  description = "Host of AUTOTRADER_REGISTRY_URL and DAGSTER_PG_HOST."
  value       = module.storage.db_address
}

output "db_secret_arn" {
  description = "Secret of the database password (DAGSTER_PG_PASSWORD)."
  value       = module.storage.db_secret_arn
}

output "registry_url_secret_arn" {
  description = "Secret of AUTOTRADER_REGISTRY_URL (the whole PostgreSQL URL), for an operator's CLI."
  value       = module.storage.registry_url_secret_arn
}

output "alb_dns_name" {
  description = "Point serving_domain, blue.<domain> and green.<domain> at this name."
  value       = module.compute.alb_dns_name
}

output "nat_gateway_ids" {
  description = "One NAT gateway per zone."
  value       = module.networking.nat_gateway_ids
}

output "public_subnet_ids" {
  description = "Public subnets (ALB, NAT)."
  value       = module.networking.public_subnet_ids
}

output "vpc_id" {
  description = "The VPC."
  value       = module.networking.vpc_id
}

output "efs_file_system_id" {
  description = "EFS of the warehouse."
  value       = module.storage.efs_file_system_id
}

output "alarm_topic_arn" {
  description = "SNS topic of the CloudWatch alarms."
  value       = module.monitoring.alarm_topic_arn
}

output "alarm_names" {
  description = "The CloudWatch alarms."
  value       = module.monitoring.alarm_names
}

output "repository_urls" {
  description = "ECR repositories to push the images to."
  value       = module.compute.repository_urls
}

output "redis_endpoint" {
  description = "Redis primary endpoint."
  value       = module.storage.redis_endpoint
}

output "dagster_task_role_arn" {
  description = "Task role of Dagster."
  value       = module.dagster.task_role_arn
}

output "alb_security_group_id" {
  description = "Load balancer security group."
  value       = module.networking.alb_security_group_id
}

output "rds_security_group_id" {
  description = "Database security group."
  value       = module.networking.rds_security_group_id
}

output "redis_security_group_id" {
  description = "Redis security group."
  value       = module.networking.redis_security_group_id
}

output "efs_security_group_id" {
  description = "EFS security group."
  value       = module.networking.efs_security_group_id
}

output "private_subnet_ids" {
  description = "Private subnets."
  value       = module.networking.private_subnet_ids
}

output "bucket_arns" {
  description = "Archive, artifacts and backups buckets."
  value       = module.storage.bucket_arns
}

output "logs_bucket_arn" {
  description = "Logs bucket."
  value       = module.storage.logs_bucket_arn
}

output "db_port" {
  description = "Database port."
  value       = module.storage.db_port
}

output "db_name" {
  description = "Database name."
  value       = module.storage.db_name
}

output "db_username" {
  description = "Database user."
  value       = module.storage.db_username
}

output "redis_auth_secret_arn" {
  description = "Secret of the Redis AUTH token."
  value       = module.storage.redis_auth_secret_arn
}

output "efs_access_point_id" {
  description = "EFS access point of the warehouse."
  value       = module.storage.efs_access_point_id
}

output "cluster_name" {
  description = "ECS cluster name."
  value       = module.compute.cluster_name
}

output "alb_arn_suffix" {
  description = "ALB ARN suffix."
  value       = module.compute.alb_arn_suffix
}

output "dagster_execution_role_arn" {
  description = "Execution role of Dagster, serving and monitoring tasks."
  value       = module.dagster.execution_role_arn
}

output "dagster_log_group" {
  description = "Log group of Dagster."
  value       = module.dagster.log_group
}

output "serving_service_prefix" {
  description = "Prefix of the serving services."
  value       = module.compute.service_prefix
}

output "slot_endpoints" {
  description = "Slot URLs."
  value       = module.compute.slot_endpoints
}
