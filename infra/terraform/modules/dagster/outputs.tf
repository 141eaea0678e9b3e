output "run_task_definition" {
  description = "Task definition family every run is launched from, its newest revision (DAGSTER_RUN_TASK_DEFINITION)."
  value       = aws_ecs_task_definition.this["run"].family
}

output "run_container_name" {
  description = "Container of the run task definition (DAGSTER_RUN_CONTAINER_NAME)."
  value       = local.launcher_environment.DAGSTER_RUN_CONTAINER_NAME
}

output "ecs_cluster" {
  description = "Cluster the runs start in (DAGSTER_ECS_CLUSTER)."
  value       = local.launcher_environment.DAGSTER_ECS_CLUSTER
}

output "task_role_arn" {
  description = "Task role of Dagster tasks and runs (also the serving slots' deployer)."
  value       = aws_iam_role.task.arn
}

output "execution_role_arn" {
  description = "Execution role that pulls images and resolves secrets."
  value       = aws_iam_role.execution.arn
}

output "log_group" {
  description = "CloudWatch log group of the Dagster tasks."
  value       = aws_cloudwatch_log_group.this.name
}
