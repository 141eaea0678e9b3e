# The production profile's infrastructure: networking -> storage -> compute -> dagster ->
# monitoring. Its outputs are the production settings (outputs.tf; ecs_config is the document
# AUTOTRADER_ECS_CONFIG takes, key for key EcsDeployerConfig's fields).

locals {
  name = "autotrader-${var.environment}"
}

data "aws_caller_identity" "current" {}

# One key for every store, log group, topic and secret of the environment.
resource "aws_kms_key" "this" {
  description         = "${local.name}: stores, logs, secrets"
  enable_key_rotation = true
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "Account"
        Effect    = "Allow"
        Principal = { AWS = "arn:aws:iam::${data.aws_caller_identity.current.account_id}:root" }
        Action    = "kms:*"
        Resource  = "*"
      },
      {
        Sid       = "Logs"
        Effect    = "Allow"
        Principal = { Service = "logs.${var.aws_region}.amazonaws.com" }
        Action    = ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
        Resource  = "*"
      },
    ]
  })
}

module "networking" {
  source             = "./modules/networking"
  name               = local.name
  vpc_cidr           = var.vpc_cidr
  availability_zones = var.availability_zones
  alb_ingress_cidrs  = var.alb_ingress_cidrs
  kms_key_arn        = aws_kms_key.this.arn
}

module "storage" {
  source                   = "./modules/storage"
  name                     = local.name
  environment              = var.environment
  kms_key_arn              = aws_kms_key.this.arn
  private_subnet_ids       = module.networking.private_subnet_ids
  rds_security_group_id    = module.networking.rds_security_group_id
  redis_security_group_id  = module.networking.redis_security_group_id
  efs_security_group_id    = module.networking.efs_security_group_id
  db_instance_class        = var.db_instance_class
  db_allocated_storage_gb  = var.db_allocated_storage_gb
  db_backup_retention_days = var.db_backup_retention_days
  redis_node_type          = var.redis_node_type
}

module "compute" {
  source                = "./modules/compute"
  name                  = local.name
  vpc_id                = module.networking.vpc_id
  public_subnet_ids     = module.networking.public_subnet_ids
  alb_security_group_id = module.networking.alb_security_group_id
  certificate_arn       = var.certificate_arn
  serving_domain        = var.serving_domain
  logs_bucket           = module.storage.logs_bucket
  kms_key_arn           = aws_kms_key.this.arn
  serving_min_tasks     = var.serving_min_tasks
  serving_max_tasks     = var.serving_max_tasks
}

module "dagster" {
  source                = "./modules/dagster"
  name                  = local.name
  cluster_arn           = module.compute.cluster_arn
  private_subnet_ids    = module.networking.private_subnet_ids
  ecs_security_group_id = module.networking.ecs_security_group_id
  image                 = "${module.compute.repository_urls["code-location"]}:${var.image_tag}"
  kms_key_arn           = aws_kms_key.this.arn
  bucket_arns           = module.storage.bucket_arns
  logs_bucket           = module.storage.logs_bucket
  logs_bucket_arn       = module.storage.logs_bucket_arn
  efs_file_system_id    = module.storage.efs_file_system_id
  efs_access_point_id   = module.storage.efs_access_point_id
  run_cpu               = var.run_cpu
  run_memory            = var.run_memory
  ecs_config            = jsonencode(local.ecs_config)
  environment_variables = {
    AUTOTRADER_ENV           = "production"
    AUTOTRADER_ARCHIVE_URI   = "s3://${module.storage.archive_bucket}/archive"
    AUTOTRADER_ARTIFACTS_URI = "s3://${module.storage.artifacts_bucket}/artifacts"
    AUTOTRADER_BACKUP_URI    = "s3://${module.storage.backups_bucket}/${var.environment}"
    AWS_REGION               = var.aws_region
    DAGSTER_HOME             = "/opt/dagster/home"
    DAGSTER_PG_HOST          = module.storage.db_address
    DAGSTER_PG_PORT          = tostring(module.storage.db_port)
    DAGSTER_PG_DB            = module.storage.db_name
    DAGSTER_PG_USERNAME      = module.storage.db_username
    AUTOTRADER_REDIS_HOST    = module.storage.redis_endpoint
  }
  # Whole secrets (no JSON keys): the execution role may read exactly these ARNs.
  secret_arns = {
    AUTOTRADER_REGISTRY_URL  = module.storage.registry_url_secret_arn
    DAGSTER_PG_PASSWORD      = module.storage.db_secret_arn
    AUTOTRADER_SERVING_TOKEN = var.serving_token_secret_arn
    AUTOTRADER_REDIS_AUTH    = module.storage.redis_auth_secret_arn
  }
}

module "monitoring" {
  source                = "./modules/monitoring"
  name                  = local.name
  cluster_arn           = module.compute.cluster_arn
  private_subnet_ids    = module.networking.private_subnet_ids
  ecs_security_group_id = module.networking.ecs_security_group_id
  execution_role_arn    = module.dagster.execution_role_arn
  kms_key_arn           = aws_kms_key.this.arn
  alb_arn_suffix        = module.compute.alb_arn_suffix
  db_instance_id        = local.name
  images                = var.monitoring_images
}
