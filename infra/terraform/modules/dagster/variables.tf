variable "name" {
  type        = string
  description = "Prefix of every resource name."
}

variable "cluster_arn" {
  type        = string
  description = "ECS cluster the Dagster services and runs use."
}

variable "private_subnet_ids" {
  type        = list(string)
  description = "Private subnets of the Dagster tasks and of every run."
}

variable "ecs_security_group_id" {
  type        = string
  description = "Security group of the Dagster tasks and runs."
}

variable "image" {
  type        = string
  description = "Code-location image (infra/docker/code-location.Dockerfile), by immutable tag or digest."
}

variable "kms_key_arn" {
  type        = string
  description = "KMS key of the log groups and secrets."
}

variable "bucket_arns" {
  type        = list(string)
  description = "Buckets the runs read and write (archive, artifacts, backups)."
}

variable "logs_bucket" {
  type        = string
  description = "Bucket of Dagster's compute logs (DAGSTER_COMPUTE_LOG_BUCKET)."
}

variable "logs_bucket_arn" {
  type        = string
  description = "ARN of the compute-log bucket."
}

variable "environment_variables" {
  type        = map(string)
  description = "Plain settings every Dagster task and run gets (AUTOTRADER_*, DAGSTER_PG_HOST ...); never secrets."
}

variable "secret_arns" {
  type        = map(string)
  description = "Environment variable name -> Secrets Manager ARN, resolved by ECS at task start."
  validation {
    # Whole secrets, no ":jsonkey::" suffix: the execution role's policy grants these very ARNs.
    condition     = alltrue([for arn in values(var.secret_arns) : can(regex("^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:[^:]+$", arn))])
    error_message = "secret_arns values must be whole Secrets Manager secret ARNs (no JSON key suffix)."
  }
}

variable "ecs_config" {
  type        = string
  description = "AUTOTRADER_ECS_CONFIG: the JSON of the root output ecs_config (the serving deployer's document)."
}

variable "efs_file_system_id" {
  type        = string
  description = "EFS file system of the warehouse."
}

variable "efs_access_point_id" {
  type        = string
  description = "EFS access point mounted at /mnt/warehouse (AUTOTRADER_WAREHOUSE_SHARED_DIR)."
}

variable "run_cpu" {
  type        = number
  description = "CPU units of a run task."
}

variable "run_memory" {
  type        = number
  description = "Memory (MiB) of a run task."
}

variable "log_retention_days" {
  type        = number
  description = "Days the Dagster logs are kept."
  default     = 365
}
