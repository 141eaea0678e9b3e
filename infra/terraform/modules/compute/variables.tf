variable "name" {
  type        = string
  description = "Prefix of every resource name."
}

variable "vpc_id" {
  type        = string
  description = "The VPC."
}

variable "public_subnet_ids" {
  type        = list(string)
  description = "Public subnets of the load balancer."
}

variable "alb_security_group_id" {
  type        = string
  description = "Security group of the load balancer."
}

variable "certificate_arn" {
  type        = string
  description = "ACM certificate of the HTTPS listener."
  validation {
    condition     = can(regex("^arn:aws[a-z-]*:acm:", var.certificate_arn))
    error_message = "certificate_arn must be an ACM certificate ARN."
  }
}

variable "serving_domain" {
  type        = string
  description = "Domain of the serving API; blue.<domain> and green.<domain> reach one slot each (the deployer's probes)."
}

variable "serving_port" {
  type        = number
  description = "Port of the serving containers."
  default     = 8080
}

variable "logs_bucket" {
  type        = string
  description = "Bucket of the ALB access logs."
}

variable "kms_key_arn" {
  type        = string
  description = "KMS key of the ECR repositories and log groups."
}

variable "serving_min_tasks" {
  type        = number
  description = "Minimum tasks of each serving slot under autoscaling."
  validation {
    condition     = var.serving_min_tasks >= 1
    error_message = "serving_min_tasks must be at least 1."
  }
}

variable "serving_max_tasks" {
  type        = number
  description = "Maximum tasks of each serving slot under autoscaling."
}
