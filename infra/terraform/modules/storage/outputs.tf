output "archive_bucket" {
  description = "Bucket of the raw bar archive (AUTOTRADER_ARCHIVE_URI = s3://<this>/archive)."
  value       = module.archive.bucket
}

output "artifacts_bucket" {
  description = "Bucket of the model artifacts (AUTOTRADER_ARTIFACTS_URI = s3://<this>/artifacts)."
  value       = module.artifacts.bucket
}

output "backups_bucket" {
  description = "Bucket of autotrader backup (AUTOTRADER_BACKUP_URI = s3://<this>/<environment>)."
  value       = module.backups.bucket
}

output "logs_bucket" {
  description = "Bucket of the S3 and ALB access logs and of Dagster's compute logs."
  value       = aws_s3_bucket.logs.bucket
}

output "bucket_arns" {
  description = "ARNs of the archive, artifacts and backups buckets (for task IAM policies)."
  value       = [module.archive.arn, module.artifacts.arn, module.backups.arn]
}

output "logs_bucket_arn" {
  description = "ARN of the logs bucket."
  value       = aws_s3_bucket.logs.arn
}

output "db_address" {
  description = "Host name of the PostgreSQL instance (AUTOTRADER_REGISTRY_URL, DAGSTER_PG_HOST)."
  value       = aws_db_instance.this.address
}

output "db_port" {
  description = "Port of the PostgreSQL instance."
  value       = aws_db_instance.this.port
}

output "db_name" {
  description = "Database name."
  value       = aws_db_instance.this.db_name
}

output "db_username" {
  description = "Master user name."
  value       = aws_db_instance.this.username
}

output "db_secret_arn" {
  description = "Secrets Manager secret holding the database master password (DAGSTER_PG_PASSWORD)."
  # The version's ARN is the secret's, and depends on the value: no task starts before it is written.
  value       = aws_secretsmanager_secret_version.db_password.arn
}

output "registry_url_secret_arn" {
  description = "Secrets Manager secret holding the whole PostgreSQL URL (AUTOTRADER_REGISTRY_URL)."
  value       = aws_secretsmanager_secret_version.registry_url.arn
}

output "redis_endpoint" {
  description = "Primary endpoint of the Redis replication group (TLS)."
  value       = aws_elasticache_replication_group.this.primary_endpoint_address
}

output "redis_auth_secret_arn" {
  description = "Secrets Manager secret holding the Redis AUTH token."
  value       = aws_secretsmanager_secret.redis_auth.arn
}

output "efs_file_system_id" {
  description = "EFS file system of the warehouse."
  value       = aws_efs_file_system.warehouse.id
}

output "efs_access_point_id" {
  description = "EFS access point every run mounts as AUTOTRADER_WAREHOUSE_SHARED_DIR."
  value       = aws_efs_access_point.warehouse.id
}
