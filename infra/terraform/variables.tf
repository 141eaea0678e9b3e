variable "environment" {
  type        = string
  description = "dev, staging or production (the name of environments/<environment>.tfvars)."
  validation {
    condition     = contains(["dev", "staging", "production"], var.environment)
    error_message = "environment must be dev, staging or production."
  }
}

variable "aws_region" {
  type        = string
  description = "AWS region of the whole environment."
  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.aws_region))
    error_message = "aws_region must be a region name such as us-east-1."
  }
}

variable "availability_zones" {
  type        = list(string)
  description = "Three availability zones of aws_region."
  validation {
    condition     = length(var.availability_zones) == 3
    error_message = "availability_zones must name exactly three zones."
  }
}

variable "vpc_cidr" {
  type        = string
  description = "CIDR block of the VPC (/16 to /20)."
  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0))
    error_message = "vpc_cidr must be a valid IPv4 CIDR block."
  }
}

variable "alb_ingress_cidrs" {
  type        = list(string)
  description = "CIDR blocks allowed to reach the load balancer."
  validation {
    condition     = alltrue([for c in var.alb_ingress_cidrs : can(cidrhost(c, 0))])
    error_message = "every alb_ingress_cidrs entry must be a valid CIDR block."
  }
}

variable "certificate_arn" {
  type        = string
  description = "ACM certificate of the HTTPS listener (covers serving_domain and *.serving_domain)."
}

variable "serving_domain" {
  type        = string
  description = "Domain of the serving API."
}

variable "db_instance_class" {
  type        = string
  description = "RDS instance class."
  validation {
    condition     = can(regex("^db\\.[a-z0-9]+\\.[a-z0-9]+$", var.db_instance_class))
    error_message = "db_instance_class must look like db.t4g.medium."
  }
}

variable "db_allocated_storage_gb" {
  type        = number
  description = "Initial database storage in GiB."
}

variable "db_backup_retention_days" {
  type        = number
  description = "Days of automated RDS backups."
}

variable "redis_node_type" {
  type        = string
  description = "ElastiCache node type."
  validation {
    condition     = can(regex("^cache\\.[a-z0-9]+\\.[a-z0-9]+$", var.redis_node_type))
    error_message = "redis_node_type must look like cache.t4g.small."
  }
}

variable "serving_cpu" {
  type        = number
  description = "CPU units of a serving task (EcsDeployerConfig.cpu)."
  validation {
    condition     = contains([256, 512, 1024, 2048, 4096], var.serving_cpu)
    error_message = "serving_cpu must be a Fargate CPU size: 256, 512, 1024, 2048 or 4096."
  }
}

variable "serving_memory" {
  type        = number
  description = "Memory (MiB) of a serving task (EcsDeployerConfig.memory)."
  validation {
    condition     = var.serving_memory >= 512 && var.serving_memory <= 30720
    error_message = "serving_memory must be between 512 and 30720 MiB."
  }
}

variable "serving_min_tasks" {
  type        = number
  description = "Minimum tasks per serving slot."
}

variable "serving_max_tasks" {
  type        = number
  description = "Maximum tasks per serving slot."
}

variable "run_cpu" {
  type        = number
  description = "CPU units of a Dagster run task."
}

variable "run_memory" {
  type        = number
  description = "Memory (MiB) of a Dagster run task."
}

variable "image_tag" {
  type        = string
  description = "Immutable tag of the serving and code-location images in ECR."
  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", var.image_tag)) && var.image_tag != "latest"
    error_message = "image_tag must be a valid, immutable tag (not latest)."
  }
}

variable "monitoring_images" {
  type        = map(string)
  description = "Pinned images of prometheus, pushgateway, alertmanager and grafana."
}

variable "serving_token_secret_arn" {
  type        = string
  description = "Secrets Manager ARN of the serving bearer token (AUTOTRADER_SERVING_TOKEN)."
  validation {
    condition     = can(regex("^arn:aws[a-z-]*:secretsmanager:", var.serving_token_secret_arn))
    error_message = "serving_token_secret_arn must be a Secrets Manager ARN."
  }
}
