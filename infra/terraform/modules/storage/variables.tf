variable "name" {
  type        = string
  description = "Prefix of every resource name, e.g. autotrader-production."
}

variable "environment" {
  type        = string
  description = "dev, staging or production: production alone gets a multi-AZ database and deletion protection."
  validation {
    condition     = contains(["dev", "staging", "production"], var.environment)
    error_message = "environment must be dev, staging or production."
  }
}

variable "kms_key_arn" {
  type        = string
  description = "KMS key that encrypts the buckets, the database, Redis, EFS and the secrets."
}

variable "private_subnet_ids" {
  type        = list(string)
  description = "Private subnets (one per zone) for RDS, Redis and the EFS mount targets."
}

variable "rds_security_group_id" {
  type        = string
  description = "Security group of the PostgreSQL instance."
}

variable "redis_security_group_id" {
  type        = string
  description = "Security group of the Redis replication group."
}

variable "efs_security_group_id" {
  type        = string
  description = "Security group of the EFS mount targets."
}

variable "db_instance_class" {
  type        = string
  description = "RDS instance class of the registry/deployment-state and Dagster database."
  validation {
    condition     = can(regex("^db\\.(t3|t4g|m5|m6g|m6i|m7g|r5|r6g|r6i|r7g)\\.(micro|small|medium|large|xlarge|[0-9]+xlarge)$", var.db_instance_class))
    error_message = "db_instance_class must be an RDS class such as db.t4g.medium or db.r6g.large."
  }
}

variable "db_allocated_storage_gb" {
  type        = number
  description = "Initial database storage in GiB (autoscaled up to 4x)."
  validation {
    condition     = var.db_allocated_storage_gb >= 20 && var.db_allocated_storage_gb <= 16384
    error_message = "db_allocated_storage_gb must be between 20 and 16384."
  }
}

variable "db_backup_retention_days" {
  type        = number
  description = "Days of automated RDS backups (point-in-time recovery window)."
  validation {
    condition     = var.db_backup_retention_days >= 1 && var.db_backup_retention_days <= 35
    error_message = "db_backup_retention_days must be between 1 and 35."
  }
}

variable "redis_node_type" {
  type        = string
  description = "ElastiCache node type."
  validation {
    condition     = can(regex("^cache\\.(t3|t4g|m5|m6g|m7g|r5|r6g|r7g)\\.(micro|small|medium|large|xlarge|[0-9]+xlarge)$", var.redis_node_type))
    error_message = "redis_node_type must be an ElastiCache class such as cache.t4g.small."
  }
}

variable "archive_noncurrent_days" {
  type        = number
  description = "Days a superseded archive object version is kept (data rollback reads them)."
  default     = 365
}

variable "backup_expiry_days" {
  type        = number
  description = "Days a backup (autotrader backup create) is kept."
  default     = 35
}
