# The stores of the production profile: S3 for the archive, model artifacts, logs and backups;
# RDS PostgreSQL for the registry/deployment state and the Dagster instance; ElastiCache Redis;
# EFS for the DuckDB warehouse that every run's task mounts. Everything encrypted with the
# platform's KMS key, nothing reachable from the internet.

locals {
  production = var.environment == "production"
}

resource "aws_s3_bucket" "logs" {
  bucket = "${var.name}-logs"
  #checkov:skip=CKV_AWS_18:this is the access-log bucket itself; logging it into itself would loop
  #checkov:skip=CKV_AWS_144:logs are re-creatable operational data; cross-region replication is not worth its cost
  #checkov:skip=CKV_AWS_145:ALB access logs only support SSE-S3 (AES256) on their target bucket, not KMS
  #checkov:skip=CKV2_AWS_62:nothing consumes events of the log bucket
}

resource "aws_s3_bucket_public_access_block" "logs" {
  bucket                  = aws_s3_bucket.logs.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "logs" {
  bucket = aws_s3_bucket.logs.id
  versioning_configuration {
    status = "Enabled"
  }
}

# The three data buckets, one module call each (not a for_each: checkov checks only a for_each's
# first instance). Old archive versions stay a year (a data rollback reads them); backups expire.
module "archive" {
  source          = "./bucket"
  bucket          = "${var.name}-archive"
  kms_key_arn     = var.kms_key_arn
  logs_bucket     = aws_s3_bucket.logs.id
  noncurrent_days = var.archive_noncurrent_days
  expire_days     = 0
}

module "artifacts" {
  source          = "./bucket"
  bucket          = "${var.name}-artifacts"
  kms_key_arn     = var.kms_key_arn
  logs_bucket     = aws_s3_bucket.logs.id
  noncurrent_days = 365
  expire_days     = 0
}

module "backups" {
  source          = "./bucket"
  bucket          = "${var.name}-backups"
  kms_key_arn     = var.kms_key_arn
  logs_bucket     = aws_s3_bucket.logs.id
  noncurrent_days = 7
  expire_days     = var.backup_expiry_days
}

resource "aws_s3_bucket_server_side_encryption_configuration" "logs" {
  bucket = aws_s3_bucket.logs.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256" # the only encryption ALB access logs accept
    }
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "logs" {
  bucket = aws_s3_bucket.logs.id
  rule {
    id     = "expire"
    status = "Enabled"
    filter {}
    transition {
      days          = 30
      storage_class = "STANDARD_IA"
    }
    expiration {
      days = 400
    }
    noncurrent_version_expiration {
      noncurrent_days = 30
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }
}

# ---------------------------------------------------------------------------- PostgreSQL

resource "aws_db_subnet_group" "this" {
  name       = var.name
  subnet_ids = var.private_subnet_ids
}

resource "aws_db_parameter_group" "this" {
  name   = var.name
  family = "postgres16"
  parameter {
    name  = "log_min_duration_statement"
    value = "1000"
  }
  parameter {
    name  = "rds.force_ssl"
    value = "1"
  }
}

resource "aws_iam_role" "rds_monitoring" {
  name = "${var.name}-rds-monitoring"
  assume_role_policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [{ Effect = "Allow", Principal = { Service = "monitoring.rds.amazonaws.com" }, Action = "sts:AssumeRole" }]
  })
}

resource "aws_iam_role_policy_attachment" "rds_monitoring" {
  role       = aws_iam_role.rds_monitoring.name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole"
}

resource "aws_db_instance" "this" {
  identifier                            = var.name
  engine                                = "postgres"
  engine_version                        = "16"
  instance_class                        = var.db_instance_class
  allocated_storage                     = var.db_allocated_storage_gb
  max_allocated_storage                 = var.db_allocated_storage_gb * 4
  db_name                               = "autotrader"
  username                              = "autotrader"
  # Terraform's own password, not an RDS-managed one: the registry URL secret below must hold it,
  # and an RDS-managed password can neither be read nor composed into a URL by Terraform.
  password                              = random_password.db_master.result
  multi_az                              = local.production
  storage_encrypted                     = true
  kms_key_id                            = var.kms_key_arn
  publicly_accessible                   = false
  db_subnet_group_name                  = aws_db_subnet_group.this.name
  vpc_security_group_ids                = [var.rds_security_group_id]
  parameter_group_name                  = aws_db_parameter_group.this.name
  backup_retention_period               = var.db_backup_retention_days
  backup_window                         = "03:00-04:00"
  copy_tags_to_snapshot                 = true
  deletion_protection                   = local.production
  skip_final_snapshot                   = !local.production
  final_snapshot_identifier             = local.production ? "${var.name}-final" : null
  auto_minor_version_upgrade            = true
  iam_database_authentication_enabled   = true
  performance_insights_enabled          = true
  performance_insights_kms_key_id       = var.kms_key_arn
  monitoring_interval                   = 60
  monitoring_role_arn                   = aws_iam_role.rds_monitoring.arn
  enabled_cloudwatch_logs_exports       = ["postgresql", "upgrade"]
  #checkov:skip=CKV_AWS_157:multi-AZ is deliberate in production only (var.environment); dev and staging accept a single zone to halve their cost
  #checkov:skip=CKV_AWS_293:deletion protection is on in production; dev and staging are torn down by terraform destroy
}

# The master password and the registry URL built from it. Both live in Terraform state too: keep
# the state in an encrypted, access-controlled backend. Only letters and digits, so the password
# needs no URL escaping inside AUTOTRADER_REGISTRY_URL.
resource "random_password" "db_master" {
  length  = 40
  special = false
}

# DAGSTER_PG_PASSWORD (dagster.yaml's storage).
resource "aws_secretsmanager_secret" "db_password" {
  name       = "${var.name}/db-password"
  kms_key_id = var.kms_key_arn
  #checkov:skip=CKV2_AWS_57:the master password is rotated by re-applying with a new random_password, which rewrites this secret and the registry URL together; a rotation lambda would change the password behind the URL secret
}

resource "aws_secretsmanager_secret_version" "db_password" {
  secret_id     = aws_secretsmanager_secret.db_password.id
  secret_string = random_password.db_master.result
}

# AUTOTRADER_REGISTRY_URL: the whole SQLAlchemy URL (registry, deployment state, breaker), the
# scheme settings.production_problems accepts, in the instance's database (its tables do not
# collide with the Dagster instance's).
resource "aws_secretsmanager_secret" "registry_url" {
  name       = "${var.name}/registry-url"
  kms_key_id = var.kms_key_arn
  #checkov:skip=CKV2_AWS_57:the URL holds the master password; it is rotated with it by re-applying with a new random_password, never by a rotation lambda that would leave the two apart
}

resource "aws_secretsmanager_secret_version" "registry_url" {
  secret_id     = aws_secretsmanager_secret.registry_url.id
  secret_string = "postgresql+psycopg2://${aws_db_instance.this.username}:${random_password.db_master.result}@${aws_db_instance.this.address}:${aws_db_instance.this.port}/${aws_db_instance.this.db_name}"
}

# ---------------------------------------------------------------------------- Redis

resource "aws_elasticache_subnet_group" "this" {
  name       = var.name
  subnet_ids = var.private_subnet_ids
}

resource "aws_secretsmanager_secret" "redis_auth" {
  name       = "${var.name}/redis-auth"
  kms_key_id = var.kms_key_arn
  #checkov:skip=CKV2_AWS_57:Redis AUTH tokens are rotated by re-applying with a new random_password; ElastiCache has no managed rotation lambda
}

resource "random_password" "redis_auth" {
  length  = 48
  special = false
}

resource "aws_secretsmanager_secret_version" "redis_auth" {
  secret_id     = aws_secretsmanager_secret.redis_auth.id
  secret_string = random_password.redis_auth.result
}

resource "aws_elasticache_replication_group" "this" {
  replication_group_id       = var.name
  description                = "autotrader ${var.environment} cache"
  engine                     = "redis"
  engine_version             = "7.1"
  node_type                  = var.redis_node_type
  num_cache_clusters         = local.production ? 2 : 1
  automatic_failover_enabled = local.production
  multi_az_enabled           = local.production
  subnet_group_name          = aws_elasticache_subnet_group.this.name
  security_group_ids         = [var.redis_security_group_id]
  at_rest_encryption_enabled = true
  transit_encryption_enabled = true
  kms_key_id                 = var.kms_key_arn
  auth_token                 = random_password.redis_auth.result
  snapshot_retention_limit   = 1
  auto_minor_version_upgrade = true
}

# ---------------------------------------------------------------------------- EFS (warehouse)

resource "aws_efs_file_system" "warehouse" {
  creation_token = "${var.name}-warehouse"
  encrypted      = true
  kms_key_id     = var.kms_key_arn
  lifecycle_policy {
    transition_to_ia = "AFTER_30_DAYS"
  }
  tags = { Name = "${var.name}-warehouse" }
}

resource "aws_efs_backup_policy" "warehouse" {
  file_system_id = aws_efs_file_system.warehouse.id
  backup_policy {
    status = "ENABLED"
  }
}

resource "aws_efs_mount_target" "warehouse" {
  count           = length(var.private_subnet_ids)
  file_system_id  = aws_efs_file_system.warehouse.id
  subnet_id       = var.private_subnet_ids[count.index]
  security_groups = [var.efs_security_group_id]
}

# Every run mounts this one folder as AUTOTRADER_WAREHOUSE_SHARED_DIR, as the non-root image user.
resource "aws_efs_access_point" "warehouse" {
  file_system_id = aws_efs_file_system.warehouse.id
  posix_user {
    uid = 10001
    gid = 10001
  }
  root_directory {
    path = "/warehouse"
    creation_info {
      owner_uid   = 10001
      owner_gid   = 10001
      permissions = "0750"
    }
  }
}
