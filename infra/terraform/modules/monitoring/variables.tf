variable "name" {
  type        = string
  description = "Prefix of every resource name."
}

variable "cluster_arn" {
  type        = string
  description = "ECS cluster of the monitoring services."
}

variable "private_subnet_ids" {
  type        = list(string)
  description = "Private subnets of the monitoring tasks."
}

variable "ecs_security_group_id" {
  type        = string
  description = "Security group of the monitoring tasks."
}

variable "execution_role_arn" {
  type        = string
  description = "Execution role that pulls the images."
}

variable "kms_key_arn" {
  type        = string
  description = "KMS key of the log group and the alarm topic."
}

variable "alb_arn_suffix" {
  type        = string
  description = "Load balancer the ALB alarms watch."
}

variable "db_instance_id" {
  type        = string
  description = "RDS instance the database alarms watch."
}

variable "images" {
  type        = map(string)
  description = "Image of prometheus, pushgateway, alertmanager and grafana (pinned tags)."
  validation {
    condition     = length(setsubtract(["prometheus", "pushgateway", "alertmanager", "grafana"], keys(var.images))) == 0
    error_message = "images must name prometheus, pushgateway, alertmanager and grafana."
  }
}

variable "log_retention_days" {
  type        = number
  description = "Days the monitoring logs are kept."
  default     = 365
}
